"""Fault isolation: the last inputs before a failure, and ``harness replay`` to resend them.

When a malformed-input or load check breaks the device, its evidence folder holds
``last_inputs.json``: the exact frames sent last before the monitor saw the failure, in order,
with the protocol and the target. The vendor reproduces the fault with
``harness replay EVIDENCE_DIR --profile P --allow-disruptive``, which resends exactly those
frames through the safety guard (allow-list, rate cap, duration cap) and then checks that the
replayed interface still works (for Modbus: that it still answers a read).

The file (format ``harness.last_inputs/1``)::

    {
      "format": "harness.last_inputs/1",
      "protocol": "modbus_tcp",          # a check protocol: modbus_tcp, modbus_tls, opcua,
                                          # ssh, network, modbus_rtu, console
      "target": "127.0.0.1:5020",        # where the check sent them (informational, except
                                          # for "network", which has no profile interface)
      "transport": "tcp",                # tcp | udp (network only) | tls | serial; derived
                                          # from the protocol when absent
      "framing": "raw",                  # raw: frames are the exact bytes on the wire;
                                          # mbap: frames are Modbus PDUs, replay adds MBAP
                                          # headers (transaction 1, 2, ..., the profile's
                                          # unit); rtu: PDUs, replay adds unit and CRC
      "connection": "single",            # single: one connection, frames in order;
                                          # per_frame: a new connection for each frame
      "gap_ms": 0,                       # optional least pause between frames
      "frames": [{"hex": "0001000000060103...", "t": 12.5, "note": "FC 3, length 0"}],
      "check": "testcases/fr3/...::test_x",   # optional: who wrote it
      "monitor": {"failed_at": 12.6, "detail": "heartbeat stalled"}   # optional
    }

Replay sends to the *profile's* interface for the protocol (so a vendor replays against their
own bench with their own profile); only ``network`` uses the recorded ``target`` (its host must
be in the profile's targets). Frames are paced at no more than the profile's
``max_request_rate`` and the whole replay stops at ``max_load_duration_s`` plus the timeouts.

Check authors build the file with :class:`LastInputs` (a bounded ring buffer of the frames
sent) and attach it: ``evidence.attach("last_inputs.json", recorder.to_json(...))``.
"""

from __future__ import annotations

import collections
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import SafetyViolation, TargetError, UsageError
from harness.evidence import scrub_bytes

if TYPE_CHECKING:
    from harness.profile import LoadedProfile
    from harness.safety import Guard

FORMAT = "harness.last_inputs/1"
FILE_NAME = "last_inputs.json"
#: Most frames a file may hold, and the largest frame.
MAX_FRAMES = 10_000
MAX_FRAME_BYTES = 65_536
#: Reply bytes shown per replay (the rest is counted, not shown).
MAX_REPLY_BYTES = 65_536
#: Largest last_inputs.json read.
MAX_FILE_BYTES = 64 * 1024 * 1024

_PROTOCOLS = ("modbus_tcp", "modbus_tls", "opcua", "ssh", "network", "modbus_rtu", "console")
_DEFAULT_TRANSPORT = {
    "modbus_tcp": "tcp",
    "modbus_tls": "tls",
    "opcua": "tcp",
    "ssh": "tcp",
    "network": "tcp",
    "modbus_rtu": "serial",
    "console": "serial",
}
_FRAMINGS = {"raw": None, "mbap": ("modbus_tcp", "modbus_tls"), "rtu": ("modbus_rtu",)}


# --------------------------------------------------------------------------- recording
class LastInputs:
    """A bounded record of the last frames a check sent (thread-safe).

    Secrets are scrubbed from each frame as it is recorded (a scrubbed frame is marked
    ``redacted`` and cannot be replayed byte for byte).

    :param protocol: the check's protocol marker value.
    :param target: where the frames go (``host:port`` or a serial device).
    :param keep: how many of the most recent frames to keep.
    """

    def __init__(
        self,
        protocol: str,
        target: str,
        *,
        framing: str = "raw",
        connection: str = "single",
        transport: str | None = None,
        keep: int = 256,
    ) -> None:
        if protocol not in _PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(_PROTOCOLS)}")
        if framing not in _FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}; known: {', '.join(_FRAMINGS)}")
        if connection not in ("single", "per_frame"):
            raise ValueError(f"connection must be 'single' or 'per_frame', got {connection!r}")
        if not 1 <= keep <= MAX_FRAMES:
            raise ValueError(f"keep must be in 1..{MAX_FRAMES}, got {keep}")
        self.protocol, self.target = protocol, target
        self.framing, self.connection, self.transport = framing, connection, transport
        self._frames: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def add(self, frame: bytes, note: str = "") -> None:
        """Record one frame just sent."""
        data = bytes(frame[:MAX_FRAME_BYTES])
        clean = scrub_bytes(data)
        entry: dict[str, Any] = {"hex": clean.hex(), "t": round(time.monotonic() - self._t0, 6)}
        if note:
            entry["note"] = note
        if clean != data:
            entry["redacted"] = True
        if len(frame) > MAX_FRAME_BYTES:
            entry["truncated_from"] = len(frame)
        with self._lock:
            self._frames.append(entry)

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def to_json(self, *, check: str = "", monitor: dict[str, Any] | None = None) -> str:
        """The ``last_inputs.json`` document."""
        with self._lock:
            frames = list(self._frames)
        doc: dict[str, Any] = {
            "format": FORMAT,
            "protocol": self.protocol,
            "target": self.target,
            "framing": self.framing,
            "connection": self.connection,
            "frames": frames,
        }
        if self.transport:
            doc["transport"] = self.transport
        if check:
            doc["check"] = check
        if monitor:
            doc["monitor"] = monitor
        return json.dumps(doc, indent=1) + "\n"


# --------------------------------------------------------------------------- reading
@dataclass
class ReplayPlan:
    """A validated ``last_inputs.json``."""

    protocol: str
    transport: str
    framing: str
    connection: str
    frames: list[bytes]
    notes: list[str]
    target: str = ""
    gap_s: float = 0.0
    check: str = ""
    #: Indexes of frames that were scrubbed of a secret when recorded.
    redacted: list[int] = field(default_factory=list)


def _problem(source: str, message: str) -> UsageError:
    return UsageError(f"{source}: {message}")


def load_plan(path: Path) -> ReplayPlan:
    """Read and validate ``last_inputs.json`` (``path`` may be its evidence folder).

    :raises UsageError: the file is missing or malformed; the message says what is wrong.
    """
    path = Path(path)
    file = path / FILE_NAME if path.is_dir() else path
    src = str(file)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise _problem(src, f"larger than {MAX_FILE_BYTES} bytes")
        raw = file.read_bytes()
    except OSError as exc:
        raise _problem(src, f"cannot read: {exc.strerror}") from None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise _problem(src, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _problem(src, f'not a last-inputs file (expected "format": "{FORMAT}")')
    protocol = doc.get("protocol")
    if protocol not in _PROTOCOLS:
        raise _problem(src, f"protocol {protocol!r} unknown; known: {', '.join(_PROTOCOLS)}")
    transport = doc.get("transport") or _DEFAULT_TRANSPORT[protocol]
    allowed = {"network": ("tcp", "udp")}.get(protocol, (_DEFAULT_TRANSPORT[protocol],))
    if transport not in allowed:
        raise _problem(src, f"transport {transport!r} not possible for {protocol}")
    framing = doc.get("framing", "raw")
    if framing not in _FRAMINGS:
        raise _problem(src, f"framing {framing!r} unknown; known: {', '.join(_FRAMINGS)}")
    scope = _FRAMINGS[framing]
    if scope is not None and protocol not in scope:
        raise _problem(src, f"framing {framing!r} is for {', '.join(scope)}, not {protocol}")
    connection = doc.get("connection", "single")
    if connection not in ("single", "per_frame"):
        raise _problem(src, f"connection must be 'single' or 'per_frame', got {connection!r}")
    items = doc.get("frames")
    if not isinstance(items, list) or not items:
        raise _problem(src, "frames must be a non-empty list")
    if len(items) > MAX_FRAMES:
        raise _problem(src, f"{len(items)} frames; at most {MAX_FRAMES}")
    frames: list[bytes] = []
    notes: list[str] = []
    redacted: list[int] = []
    for i, item in enumerate(items):
        entry = item if isinstance(item, dict) else {"hex": item}
        hx = entry.get("hex")
        if not isinstance(hx, str):
            raise _problem(src, f"frames[{i}]: hex string expected")
        try:
            data = bytes.fromhex(hx)
        except ValueError:
            raise _problem(src, f"frames[{i}]: not hex") from None
        if not data or len(data) > MAX_FRAME_BYTES:
            raise _problem(src, f"frames[{i}]: length {len(data)} not in 1..{MAX_FRAME_BYTES}")
        frames.append(data)
        notes.append(str(entry.get("note", "")))
        if entry.get("redacted"):
            redacted.append(i)
    gap_ms = doc.get("gap_ms", 0)
    if not isinstance(gap_ms, int | float) or not 0 <= gap_ms <= 60_000:
        raise _problem(src, "gap_ms must be a number in 0..60000")
    target = doc.get("target", "")
    if isinstance(target, dict):
        target = f"{target.get('host', '')}:{target.get('port', '')}"
    if protocol == "network" and not _split_hostport(str(target)):
        raise _problem(src, "a network replay needs target HOST:PORT")
    return ReplayPlan(
        protocol=protocol,
        transport=transport,
        framing=framing,
        connection=connection,
        frames=frames,
        notes=notes,
        target=str(target),
        gap_s=float(gap_ms) / 1000.0,
        check=str(doc.get("check", "")),
        redacted=redacted,
    )


def _split_hostport(text: str) -> tuple[str, int] | None:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        return None
    return host.strip("[]"), int(port)


# --------------------------------------------------------------------------- replaying
@dataclass
class ReplayResult:
    """What a replay did and saw."""

    endpoint: str
    sent: int = 0
    reply_bytes: int = 0
    #: Human-readable events in order (connects, closes, replies).
    events: list[str] = field(default_factory=list)
    #: Why the replay stopped before the last frame (None: every frame was sent).
    stopped: str | None = None
    #: Health after the replay (None: not probed, e.g. a dry run).
    healthy: bool | None = None
    health: str = ""


@dataclass
class _Endpoint:
    transport: str
    host: str = ""
    port: int = 0
    unit: int = 1
    device: str = ""
    baud: int = 19200
    parity: str = "N"
    tls: Any = None

    def describe(self) -> str:
        if self.transport == "serial":
            return f"serial {self.device} ({self.baud} baud)"
        return f"{self.transport} {self.host}:{self.port}"


def _endpoint(plan: ReplayPlan, loaded: LoadedProfile) -> _Endpoint:
    ifs = loaded.profile.interfaces
    proto = plan.protocol
    if proto == "network":
        hp = _split_hostport(plan.target)
        assert hp is not None  # checked by load_plan
        return _Endpoint(plan.transport, hp[0], hp[1])
    iface = getattr(ifs, proto)
    if iface is None:
        raise UsageError(f"the profile declares no {proto} interface to replay to")
    if proto in ("modbus_rtu", "console"):
        return _Endpoint(
            "serial",
            device=iface.device,
            baud=iface.baud,
            parity=getattr(iface, "parity", "N"),
            unit=getattr(iface, "unit_id", 1),
        )
    ep = _Endpoint(plan.transport, iface.host, iface.port, unit=getattr(iface, "unit_id", 1))
    if proto == "modbus_tls":
        ep.tls = iface
    return ep


def wire_frames(plan: ReplayPlan, unit: int) -> list[bytes]:
    """The bytes that go on the wire for each frame (framing applied)."""
    from harness.protocols import mbap

    if plan.framing == "mbap":
        return [mbap.adu(i + 1, unit, f) for i, f in enumerate(plan.frames)]
    if plan.framing == "rtu":
        return [mbap.rtu_frame(unit, f) for f in plan.frames]
    return list(plan.frames)


class _Link:
    """One connection to the endpoint: TCP, TLS, UDP or serial, every operation bounded."""

    def __init__(self, ep: _Endpoint, guard: Guard, loaded: LoadedProfile) -> None:
        safety = loaded.profile.safety
        self.ep = ep
        self.timeout = safety.request_timeout_s
        self.sock: socket.socket | None = None
        self.serial: Any = None
        if ep.transport == "serial":
            import serial  # pyserial

            guard.check_serial(ep.device)
            try:
                self.serial = serial.serial_for_url(
                    ep.device,
                    baudrate=ep.baud,
                    parity=ep.parity,
                    timeout=0.05,
                    write_timeout=self.timeout,
                )
            except (serial.SerialException, ValueError) as exc:
                raise TargetError(f"cannot open {ep.device}: {exc}") from exc
            return
        addr = guard.check_destination(ep.host, ep.port)
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        kind = socket.SOCK_DGRAM if ep.transport == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        try:
            sock.settimeout(safety.connect_timeout_s)
            sock.connect((addr, ep.port))
            if ep.transport == "tls":
                sock = _tls_context(ep.tls, loaded).wrap_socket(sock)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise TargetError(f"cannot connect to {ep.describe()}: {exc}") from exc
        sock.settimeout(self.timeout)
        self.sock = sock

    def send(self, data: bytes) -> None:
        if self.serial is not None:
            self.serial.write(data)
            self.serial.flush()
            return
        assert self.sock is not None
        self.sock.sendall(data)

    def read(self, wait_s: float) -> bytes | None:
        """Whatever arrives within ``wait_s`` (b"" if nothing; None: closed by the device)."""
        if self.serial is not None:
            end = time.monotonic() + wait_s
            chunks = b""
            while time.monotonic() < end and len(chunks) < MAX_REPLY_BYTES:
                chunk = self.serial.read(4096)
                if chunk:
                    chunks += chunk
                elif chunks:
                    break
            return chunks
        assert self.sock is not None
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            wait_s = 0.0
        ready, _, _ = select.select([self.sock], [], [], max(0.0, wait_s))
        if not ready:
            return b""
        data = self.sock.recv(4096)
        if not data and self.ep.transport != "udp":
            return None
        return data

    def close(self) -> None:
        if self.serial is not None:
            self.serial.close()
        if self.sock is not None:
            self.sock.close()


def _tls_context(iface: Any, loaded: LoadedProfile) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(loaded.resolve_path(iface.ca_cert)))
    ctx.check_hostname = False  # the guard has already pinned the address
    pair = iface.client_certs.get("readwrite") or iface.client_certs.get("readonly")
    if pair is not None:
        ctx.load_cert_chain(str(loaded.resolve_path(pair.cert)), str(loaded.resolve_path(pair.key)))
    return ctx


def replay(
    plan: ReplayPlan,
    loaded: LoadedProfile,
    guard: Guard,
    *,
    dry_run: bool = False,
    log: Callable[[str], None] = lambda _line: None,
    settle_s: float = 1.0,
) -> ReplayResult:
    """Resend ``plan``'s frames to the profile's interface, then check it still works.

    :param dry_run: show what would be sent; send nothing.
    :raises SafetyViolation: disruptive actions are not allowed, or the destination is not in
        the allow-list.
    :raises TargetError: the first connection could not be made.
    """
    from harness.safety import Deadline, RateLimiter

    ep = _endpoint(plan, loaded)
    frames = wire_frames(plan, ep.unit)
    result = ReplayResult(ep.describe())
    log(
        f"replaying {len(frames)} frames ({plan.protocol}, {plan.framing} framing, "
        f"{plan.connection} connection) to {ep.describe()}"
    )
    if plan.redacted:
        log(
            f"warning: frames {plan.redacted} had a secret scrubbed when recorded; they are "
            "not byte-identical to what the check sent"
        )
    if dry_run:
        for i, data in enumerate(frames):
            note = f"  ({plan.notes[i]})" if plan.notes[i] else ""
            log(f"  would send #{i + 1} {len(data)} B {_short(data)}{note}")
        return result
    guard.require_disruptive("replaying the inputs that broke the device")
    safety = loaded.profile.safety
    rate = RateLimiter(safety.max_request_rate)
    deadline = Deadline(
        safety.max_load_duration_s + safety.connect_timeout_s + safety.request_timeout_s
    )
    link: _Link | None = None
    guard.arm()
    try:
        for i, data in enumerate(frames):
            if deadline.expired:
                result.stopped = f"duration cap reached before frame #{i + 1}"
                break
            if link is None or plan.connection == "per_frame":
                if link is not None:
                    link.close()
                try:
                    link = _Link(ep, guard, loaded)
                except TargetError as exc:
                    if i == 0:
                        raise
                    link = None
                    result.stopped = f"device refused the connection before frame #{i + 1}: {exc}"
                    break
                result.events.append(f"connected before frame #{i + 1}")
            rate.acquire()
            if plan.gap_s and i:
                time.sleep(min(plan.gap_s, deadline.remaining()))
            try:
                link.send(data)
            except (OSError, ssl.SSLError) as exc:
                result.events.append(f"send of frame #{i + 1} failed: {exc}")
                link.close()
                link = None
                if plan.connection == "single":
                    result.events.append("reconnecting for the remaining frames")
                continue
            result.sent += 1
            note = f"  ({plan.notes[i]})" if plan.notes[i] else ""
            log(f"  sent #{i + 1} {len(data)} B {_short(data)}{note}")
            last = i == len(frames) - 1
            wait = min(safety.request_timeout_s, deadline.remaining()) if last else 0.0
            closed = _drain(link, wait, i, result, log)
            if closed:
                link.close()
                link = None
    finally:
        if link is not None:
            link.close()
        guard.disarm()
    time.sleep(settle_s)
    try:
        result.healthy, result.health = check_health(ep, plan, loaded, guard)
    except SafetyViolation as exc:
        result.healthy, result.health = None, str(exc)
    return result


def check_health(
    ep: _Endpoint, plan: ReplayPlan, loaded: LoadedProfile, guard: Guard
) -> tuple[bool, str]:
    """Does the replayed interface still work? A Modbus read for Modbus/TCP (any well-formed
    answer, exceptions included), a connect for the other TCP protocols, and the run's health
    probe (any interface answering) for UDP and serial."""
    from harness.health import probe
    from harness.protocols import mbap

    safety = loaded.profile.safety
    if ep.transport not in ("tcp", "tls") or plan.protocol == "network":
        health = probe(loaded.profile, guard, safety.connect_timeout_s)
        return health.alive, health.describe()
    try:
        link = _Link(ep, guard, loaded)
    except TargetError as exc:
        return False, f"{ep.describe()} refuses connections ({exc})"
    try:
        if plan.protocol not in ("modbus_tcp", "modbus_tls"):
            return True, f"{ep.describe()} accepts connections"
        address = next(
            (f.address for f in loaded.profile.essential_functions if f.kind == "modbus_heartbeat"),
            0,
        )
        link.send(mbap.adu(0x7FFF, ep.unit, mbap.read_pdu(3, address, 1)))
        buf = bytearray()
        end = time.monotonic() + safety.request_timeout_s
        while time.monotonic() < end and len(buf) <= mbap.MAX_ADU:
            data = link.read(max(0.0, end - time.monotonic()))
            if data is None:
                return False, f"{ep.describe()} closed the connection instead of answering a read"
            buf += data
            try:
                adus = mbap.split_adus(buf)
            except mbap.FrameError as exc:
                return False, f"{ep.describe()} answered a read with garbage ({exc})"
            if adus:
                try:
                    what = mbap.parse_pdu(adus[0].pdu).describe()
                except mbap.FrameError as exc:
                    return False, f"{ep.describe()} answered a read with garbage ({exc})"
                return True, f"{ep.describe()} answered a Modbus read ({what})"
        return False, (
            f"{ep.describe()} accepts connections but did not answer a Modbus read within "
            f"{safety.request_timeout_s:g} s"
        )
    except (OSError, ssl.SSLError) as exc:
        return False, f"{ep.describe()}: {exc}"
    finally:
        link.close()


def _drain(
    link: _Link, wait_s: float, index: int, result: ReplayResult, log: Callable[[str], None]
) -> bool:
    """Read replies to frame ``index``; True when the device closed the connection."""
    end = time.monotonic() + wait_s
    while True:
        try:
            data = link.read(max(0.0, end - time.monotonic()))
        except (OSError, ssl.SSLError) as exc:
            result.events.append(f"after frame #{index + 1}: {exc}")
            log(f"  connection error after #{index + 1}: {exc}")
            return True
        if data is None:
            result.events.append(f"device closed the connection after frame #{index + 1}")
            log(f"  device closed the connection after #{index + 1}")
            return True
        if not data:
            return False
        result.reply_bytes += len(data)
        if result.reply_bytes <= MAX_REPLY_BYTES:
            log(f"  received after #{index + 1}: {len(data)} B {_short(data)}")
        end = min(end, time.monotonic() + 0.05)  # a reply came: take what follows quickly


def _short(data: bytes, limit: int = 48) -> str:
    text = data[:limit].hex()
    return text + ("…" if len(data) > limit else "")
