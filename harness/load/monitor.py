"""The essential-function monitor: watches the device while we load it, in its own process.

``python -m harness.load.monitor --config CONFIG.json --flag FLAG --out SAMPLES.jsonl``

Why a process of its own: the load generators run in the check's process and keep it busy; a
monitor thread there would share the interpreter lock with them and measure our own stalls as
the device's. When allowed (root) the monitor process raises its own scheduling priority (nice
-10) and runs its threads in the real-time class (SCHED_FIFO), so a flood on the same host
does not delay its polls (each sample records how late it started, ``late_ms``); it arms
its own safety guard with the profile's allow-list, and stops by itself (``max_runtime_s``, the
parent's stop request, or the parent's death).

Probes (one thread each, polled at ``rate_hz``, default 50 Hz):

- ``modbus_heartbeat``: FC 3 read of one holding register on a persistent connection; the value
  must keep changing: a sample is *stalled* once the value has not changed for ``max_stall_ms``.
  A read must answer within ``max_stall_ms`` too (the profile gives no other bound for it);
- ``tcp_connect``: a TCP connect that must complete within ``max_latency_ms``;
- ``ssh_banner``: a TCP connect and the server's ``SSH-`` identification line, both within
  ``max_latency_ms`` (the daemon, not only the kernel, must answer);
- ``opcua_read``: a Read of the node on a secure session (asyncua, the profile's client
  certificate and an account, read-only preferred) within ``max_latency_ms``; with
  ``max_stall_ms``, the value must also keep changing (a heartbeat node), as for Modbus.
  Without a client certificate in the profile it falls back to a TCP connect to the endpoint
  (said in the config's ``note`` and so in the evidence).

Every poll gives one sample ``{"t", "probe", "ok", "latency_ms", "value", "stall_ms", "error",
"late_ms"}`` (``t``: the system-wide monotonic clock, comparable with the parent's). A sample is
*ok* when the probe answered within its bound and, for a heartbeat, the counter is not stalled.
``late_ms`` is how late the poll started against its schedule: the monitor's own scheduling
delay, so the evidence shows whether our load starved the monitor itself (its figures carry
its p99 and worst) rather than leaving that to trust.

Abort: when any probe has ``abort_failed_samples`` failed samples in a row, or has not been ok
for ``abort_stall_ms`` (checked every 10 ms, so a probe blocked in a read still trips it), the
monitor sets the abort byte of the shared :class:`~harness.load.StopFlag`: every generator polls
it and stops at once. An ``{"event": "abort"}`` line records why. A probe arms the abort with
its first ok sample (a session still opening is not a degraded device; a device never ok fails
the baseline instead).

The parent side is :class:`MonitorProcess`; the judgement over the samples is :func:`judge`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import queue
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from harness.errors import HarnessError
from harness.load import StopFlag, child_env, open_tcp

if TYPE_CHECKING:
    from harness.profile import LoadedProfile

#: Default polling rate (Hz).
DEFAULT_RATE_HZ = 50.0
#: Seconds the monitor process has to print its ready line.
READY_TIMEOUT_S = 30.0
#: Watchdog period of the monitor's main thread (seconds).
WATCH_S = 0.01
#: SCHED_FIFO priority of the monitor's threads (root only; 1 is the lowest real-time one).
MONITOR_RT_PRIORITY = 10
#: Consecutive ok samples per probe that count as "recovered and steady".
SETTLE_SAMPLES = 10
#: Longest response the heartbeat probe reads (an FC 3 answer for one register is 11 bytes).
MAX_REPLY = 260
#: Least time between two reconnect attempts of a probe (seconds): a dead device is not
#: hammered with connects at the polling rate.
RECONNECT_GAP_S = {"modbus_heartbeat": 0.1, "tcp_connect": 0.0, "opcua_read": 1.0}


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ProbeSpec:
    """One essential function to poll."""

    #: ``modbus_heartbeat``, ``tcp_connect``, ``ssh_banner`` or ``opcua_read``.
    kind: str
    #: Name in the samples (``modbus_heartbeat@127.0.0.1:502``).
    name: str
    host: str
    port: int
    #: Latency bound of one poll (ms).
    max_latency_ms: float
    #: Heartbeat only: longest time the value may stand still (ms).
    max_stall_ms: float | None = None
    #: Modbus only.
    unit: int = 1
    address: int = 0
    #: OPC UA only: endpoint, node id, certificate and key paths, application URI, user name
    #: and a secret reference (``env:``/``file:``) for the password.
    opcua: dict[str, str] | None = None


@dataclass
class MonitorConfig:
    """Everything the monitor process needs; written as JSON for it."""

    probes: list[ProbeSpec]
    #: The profile's allow-list (the monitor arms its own guard with it).
    allow: list[str]
    rate_hz: float = DEFAULT_RATE_HZ
    abort_failed_samples: int = 25
    abort_stall_ms: float = 2000.0
    connect_timeout_s: float = 3.0
    request_timeout_s: float = 3.0
    #: The monitor exits by itself after this long.
    max_runtime_s: float = 600.0
    #: Remarks on how the profile's essential functions were mapped to probes.
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.probes:
            raise ValueError("MonitorConfig needs at least one probe")
        if not 1.0 <= self.rate_hz <= 1000.0:
            raise ValueError(f"rate_hz must be 1..1000, got {self.rate_hz}")
        if self.abort_failed_samples < 1:
            raise ValueError(f"abort_failed_samples must be >= 1, got {self.abort_failed_samples}")
        if self.max_runtime_s <= 0:
            raise ValueError(f"max_runtime_s must be > 0, got {self.max_runtime_s}")

    def to_json(self) -> str:
        """The config as JSON."""
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> MonitorConfig:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        data["probes"] = [ProbeSpec(**p) for p in data["probes"]]
        return cls(**data)

    @classmethod
    def from_profile(
        cls,
        loaded: LoadedProfile,
        *,
        rate_hz: float = DEFAULT_RATE_HZ,
        max_runtime_s: float = 600.0,
    ) -> MonitorConfig:
        """Map the profile's essential functions to probes.

        A profile without essential functions gets a TCP connect probe per declared network
        interface (said in :attr:`notes`): a load check must observe *something*.
        """
        prof = loaded.profile
        ifs = prof.interfaces
        probes: list[ProbeSpec] = []
        notes: list[str] = []
        for ef in prof.essential_functions:
            if ef.kind == "modbus_heartbeat":
                mb = ifs.modbus_tcp
                if mb is None:
                    raise HarnessError(
                        "essential function modbus_heartbeat needs a modbus_tcp "
                        "interface in the profile"
                    )
                probes.append(
                    ProbeSpec(
                        "modbus_heartbeat",
                        f"modbus_heartbeat@{mb.host}:{mb.port}/HR{ef.address}",
                        mb.host,
                        mb.port,
                        max_latency_ms=ef.max_stall_ms,
                        max_stall_ms=ef.max_stall_ms,
                        unit=mb.unit_id,
                        address=ef.address,
                    )
                )
            elif ef.kind == "tcp_connect":
                probes.append(_tcp_probe(ef.host, ef.port, ef.max_latency_ms))
            elif ef.kind == "ssh_banner":
                ssh = ifs.ssh
                if ssh is None:
                    raise HarnessError(
                        "essential function ssh_banner needs an ssh interface in the profile"
                    )
                probes.append(
                    ProbeSpec(
                        "ssh_banner",
                        f"ssh_banner@{ssh.host}:{ssh.port}",
                        ssh.host,
                        ssh.port,
                        max_latency_ms=ef.max_latency_ms,
                    )
                )
            elif ef.kind == "opcua_read":
                ua = ifs.opcua
                if ua is None:
                    raise HarnessError(
                        "essential function opcua_read needs an opcua interface in the profile"
                    )
                opcua = _opcua_settings(loaded, ef.node)
                if opcua is None:
                    notes.append(
                        f"opcua_read {ef.node}: the profile has no client certificate "
                        "or account for a secure session; probed as a TCP connect to "
                        f"{ua.host}:{ua.port}"
                    )
                    probes.append(_tcp_probe(ua.host, ua.port, ef.max_latency_ms))
                else:
                    probes.append(
                        ProbeSpec(
                            "opcua_read",
                            f"opcua_read@{ua.endpoint}#{ef.node}",
                            ua.host,
                            ua.port,
                            max_latency_ms=ef.max_latency_ms,
                            max_stall_ms=ef.max_stall_ms,
                            opcua=opcua,
                        )
                    )
        if not probes:
            for name in ("modbus_tcp", "modbus_tls", "opcua", "ssh"):
                iface = getattr(ifs, name)
                if iface is not None:
                    probes.append(_tcp_probe(iface.host, iface.port, 500.0))
            notes.append(
                "the profile declares no essential_functions: monitoring TCP "
                "reachability of each declared network interface (bound 500 ms)"
            )
        s = prof.safety
        return cls(
            probes=probes,
            allow=prof.allow_list(),
            rate_hz=rate_hz,
            abort_failed_samples=s.abort.failed_samples,
            abort_stall_ms=s.abort.stall_ms,
            connect_timeout_s=s.connect_timeout_s,
            request_timeout_s=s.request_timeout_s,
            max_runtime_s=max_runtime_s,
            notes=notes,
        )


def _tcp_probe(host: str, port: int, max_latency_ms: float) -> ProbeSpec:
    """A TCP connect probe, named after its address."""
    return ProbeSpec("tcp_connect", f"tcp_connect@{host}:{port}", host, port,
                     max_latency_ms=max_latency_ms)


def _opcua_settings(loaded: LoadedProfile, node: str) -> dict[str, str] | None:
    prof = loaded.profile
    ua = prof.interfaces.opcua
    if ua is None or ua.client_cert is None or ua.client_key is None:
        return None
    acc = prof.accounts
    creds = next(
        (
            c
            for c in (acc.readonly, acc.operator, acc.admin)
            if c is not None and c.password is not None
        ),
        None,
    )
    if creds is None or creds.password is None:
        return None
    ref = str.__str__(creds.password)
    if creds.password.scheme == "inline":
        ref = "inline:" + ref  # resolved in the parent and passed by environment
    settings = {
        "endpoint": ua.endpoint,
        "node": node,
        "username": creds.username,
        "password_ref": ref,
        "base_dir": str(loaded.base_dir),
        "client_cert": str(loaded.resolve_path(ua.client_cert)),
        "client_key": str(loaded.resolve_path(ua.client_key)),
    }
    if ua.application_uri:
        settings["application_uri"] = ua.application_uri
    return settings


# --------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One poll of one probe."""

    #: Monotonic time the poll started (system-wide clock).
    t: float
    probe: str
    ok: bool
    latency_ms: float | None = None
    #: The value read (heartbeat counter, node value), if any.
    value: int | float | str | None = None
    #: Heartbeat: ms since the value last changed.
    stall_ms: float | None = None
    error: str = ""
    #: How late the poll started against its schedule (ms): the monitor's own scheduling
    #: delay, which shows whether our load starved the monitor (None: not measured).
    late_ms: float | None = None

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(
            {
                "t": round(self.t, 6),
                "probe": self.probe,
                "ok": self.ok,
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
                "value": self.value,
                "stall_ms": None if self.stall_ms is None else round(self.stall_ms, 1),
                "error": self.error,
                "late_ms": None if self.late_ms is None else round(self.late_ms, 3),
            }
        )


class Probe:
    """Base of the probes: ``sample()`` once per period, ``close()`` at the end."""

    def __init__(self, spec: ProbeSpec, config: MonitorConfig) -> None:
        self.spec = spec
        self.bound_s = spec.max_latency_ms / 1000.0
        self.connect_timeout_s = min(config.connect_timeout_s, max(self.bound_s, 0.05))
        self.request_timeout_s = min(config.request_timeout_s, max(self.bound_s, 0.05))
        self._next_connect = 0.0

    def may_connect(self, now: float) -> bool:
        """Rate-limit reconnects (see :data:`RECONNECT_GAP_S`)."""
        if now < self._next_connect:
            return False
        self._next_connect = now + RECONNECT_GAP_S.get(self.spec.kind, 0.0)
        return True

    def sample(self) -> Sample:
        """Poll once."""
        raise NotImplementedError

    def failed(self, t0: float, error: str) -> Sample:
        """A failed sample started at ``t0``, its latency the time spent until now."""
        return Sample(t0, self.spec.name, False, (time.monotonic() - t0) * 1000.0, None, None,
                      error)

    def close(self) -> None:
        """Release the probe's connection."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{type(exc).__name__}: {exc}"[:120]


class ModbusHeartbeatProbe(Probe):
    """FC 3 read of the heartbeat register on a persistent connection."""

    def __init__(self, spec: ProbeSpec, config: MonitorConfig) -> None:
        super().__init__(spec, config)
        from harness.protocols import mbap

        self._mbap = mbap
        self._pdu = mbap.read_pdu(3, spec.address, 1)
        self._sock: socket.socket | None = None
        self._tid = 0
        self._last_value: int | None = None
        self._last_change = 0.0
        self.stall_bound_s = (spec.max_stall_ms or spec.max_latency_ms) / 1000.0

    def _stall_ms(self, now: float) -> float | None:
        return None if self._last_value is None else (now - self._last_change) * 1000.0

    def _fail(self, t0: float, error: str, latency: float | None = None) -> Sample:
        self.close()
        return Sample(t0, self.spec.name, False, latency, None, self._stall_ms(t0), error)

    def sample(self) -> Sample:
        """Read the register; judge latency and progress."""
        t0 = time.monotonic()
        if self._sock is None:
            if not self.may_connect(t0):
                return Sample(
                    t0,
                    self.spec.name,
                    False,
                    None,
                    None,
                    self._stall_ms(t0),
                    "not connected (reconnect pending)",
                )
            try:
                self._sock = open_tcp(self.spec.host, self.spec.port, self.connect_timeout_s)
            except OSError as exc:
                return self._fail(t0, f"connect: {_describe(exc)}")
        sock = self._sock
        self._tid = (self._tid + 1) & 0xFFFF
        request = self._mbap.adu(self._tid, self.spec.unit, self._pdu)
        deadline = t0 + self.request_timeout_s
        buf = bytearray()
        try:
            sock.sendall(request)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return self._fail(t0, "timeout", (time.monotonic() - t0) * 1000.0)
                sock.settimeout(left)
                chunk = sock.recv(MAX_REPLY)
                if not chunk:
                    return self._fail(t0, "connection closed by the device")
                buf += chunk
                if len(buf) > 4 * MAX_REPLY:
                    return self._fail(t0, "unexpected data (too long)")
                adus = self._mbap.split_adus(buf)
                match = [a for a in adus if a.transaction == self._tid]
                if match:
                    break
        except TimeoutError:
            return self._fail(t0, "timeout", (time.monotonic() - t0) * 1000.0)
        except self._mbap.FrameError as exc:
            return self._fail(t0, f"bad frame: {exc}")
        except OSError as exc:
            return self._fail(t0, _describe(exc))
        now = time.monotonic()
        latency = (now - t0) * 1000.0
        try:
            response = self._mbap.parse_pdu(match[0].pdu)
            if response.is_exception:
                return Sample(
                    t0,
                    self.spec.name,
                    False,
                    latency,
                    None,
                    self._stall_ms(t0),
                    f"exception {response.exception}",
                )
            value = response.registers()[0]
        except (self._mbap.FrameError, IndexError) as exc:
            return self._fail(t0, f"bad reply: {exc}", latency)
        if self._last_value is None or value != self._last_value:
            self._last_value = value
            self._last_change = t0
        stall = self._stall_ms(t0) or 0.0
        ok = latency <= self.bound_s * 1000.0 and stall <= self.stall_bound_s * 1000.0
        error = ""
        if stall > self.stall_bound_s * 1000.0:
            error = f"stalled {stall:.0f} ms"
        elif not ok:
            error = f"slow: {latency:.0f} ms"
        return Sample(t0, self.spec.name, ok, latency, value, stall, error)

    def close(self) -> None:
        """Drop the connection (the next sample reconnects)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None


class TcpConnectProbe(Probe):
    """A TCP connect within the bound, then an orderly close."""

    def sample(self) -> Sample:
        """Connect once."""
        t0 = time.monotonic()
        try:
            sock = open_tcp(self.spec.host, self.spec.port, self.connect_timeout_s)
        except OSError as exc:
            return self.failed(t0, f"connect: {_describe(exc)}")
        latency = (time.monotonic() - t0) * 1000.0
        sock.close()
        ok = latency <= self.spec.max_latency_ms
        return Sample(
            t0, self.spec.name, ok, latency, None, None, "" if ok else f"slow: {latency:.0f} ms"
        )


#: The identification line: ``SSH-`` at the start of a line, up to CR LF (or LF).
_SSH_ID = re.compile(rb"(?:^|\n)(SSH-[^\r\n]*)\r?\n")


class SshBannerProbe(Probe):
    """A new connection must bring the server's identification line (RFC 4253 4.2) in time."""

    #: The identification line is at most 255 bytes; other lines may come first (4.2).
    MAX_READ = 4096

    def sample(self) -> Sample:
        """Connect, read until the ``SSH-`` line, close."""
        t0 = time.monotonic()
        bound_s = self.spec.max_latency_ms / 1000.0

        try:
            sock = open_tcp(self.spec.host, self.spec.port, self.connect_timeout_s)
        except OSError as exc:
            return self.failed(t0, f"connect: {_describe(exc)}")
        try:
            data = b""
            deadline = t0 + max(bound_s, self.request_timeout_s)
            while (found := _SSH_ID.search(data)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return self.failed(t0, "timeout: no SSH identification line")
                sock.settimeout(remaining)
                chunk = sock.recv(512)
                if not chunk:
                    return self.failed(t0, "closed before the SSH identification line")
                data += chunk
                if len(data) > self.MAX_READ:
                    return self.failed(t0, "no SSH identification line in the first 4 KiB")
        except TimeoutError:
            return self.failed(t0, "timeout: no SSH identification line")
        except OSError as exc:
            return self.failed(t0, f"read: {_describe(exc)}")
        finally:
            sock.close()
        latency = (time.monotonic() - t0) * 1000.0
        line = found.group(1)
        ok = latency <= self.spec.max_latency_ms
        return Sample(t0, self.spec.name, ok, latency, line[:64].decode("ascii", "replace"),
                      None, "" if ok else f"slow: {latency:.0f} ms")


class OpcUaReadProbe(Probe):
    """A Read of one node on a secure session (asyncua, on this thread's own event loop)."""

    def __init__(self, spec: ProbeSpec, config: MonitorConfig) -> None:
        super().__init__(spec, config)
        assert spec.opcua is not None
        self.settings = spec.opcua
        self._loop = asyncio.new_event_loop()
        self._client: Any = None
        self._node: Any = None
        self._session_timeout_s = max(self.connect_timeout_s, 2.0)
        #: The last value read and when it last changed (for ``max_stall_ms``).
        self._last_value: int | float | str | None = None
        self._last_change = 0.0

    def _password(self) -> str:
        from harness.profile import SecretRef

        ref = self.settings["password_ref"]
        if ref.startswith("inline:"):
            return os.environ.get("HARNESS_MONITOR_OPCUA_PASSWORD", "")
        return SecretRef(ref).resolve(Path(self.settings["base_dir"]))

    async def _open(self) -> None:
        from asyncua.client.client import Client

        s = self.settings
        client = Client(s["endpoint"], timeout=self._session_timeout_s, watchdog_intervall=3600)
        if "application_uri" in s:
            client.application_uri = s["application_uri"]
        await client.set_security_string(
            f"Basic256Sha256,SignAndEncrypt,{s['client_cert']},{s['client_key']}"
        )
        client.set_user(s["username"])
        client.set_password(self._password())
        await asyncio.wait_for(client.connect(), self._session_timeout_s * 2)
        self._client = client
        self._node = client.get_node(s["node"])

    async def _read(self) -> Any:
        return await asyncio.wait_for(self._node.read_value(), self.request_timeout_s)

    def sample(self) -> Sample:
        """Read the node once (opening the session first if needed)."""
        t0 = time.monotonic()
        if self._client is None:
            if not self.may_connect(t0):
                return Sample(
                    t0, self.spec.name, False, None, None, None, "no session (reconnect pending)"
                )
            try:
                self._loop.run_until_complete(self._open())
            except Exception as exc:  # any failure to open is a failed sample
                self.close()
                return Sample(
                    t0, self.spec.name, False, None, None, None, f"session: {_describe(exc)}"
                )
            t0 = time.monotonic()
        try:
            value = self._loop.run_until_complete(self._read())
        except Exception as exc:  # any failed read is a failed sample
            self.close()
            return self.failed(t0, f"read: {_describe(exc)}")
        latency = (time.monotonic() - t0) * 1000.0
        shown = value if isinstance(value, int | float | str) else str(value)[:40]
        stall = None
        if self.spec.max_stall_ms is not None:  # a heartbeat node: it must keep changing
            if self._last_value is None or shown != self._last_value:
                self._last_value, self._last_change = shown, t0
            stall = (t0 - self._last_change) * 1000.0
        error = ""
        if stall is not None and stall > (self.spec.max_stall_ms or 0):
            error = f"stalled {stall:.0f} ms"
        elif latency > self.spec.max_latency_ms:
            error = f"slow: {latency:.0f} ms"
        return Sample(t0, self.spec.name, not error, latency, shown, stall, error)

    def close(self) -> None:
        """Close the session (best effort, bounded)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(asyncio.wait_for(client.disconnect(), 1.0))

    def shutdown(self) -> None:
        """Close the session and the event loop."""
        self.close()
        with contextlib.suppress(Exception):
            self._loop.close()


def make_probe(spec: ProbeSpec, config: MonitorConfig) -> Probe:
    """The probe for ``spec.kind``."""
    if spec.kind == "modbus_heartbeat":
        return ModbusHeartbeatProbe(spec, config)
    if spec.kind == "tcp_connect":
        return TcpConnectProbe(spec, config)
    if spec.kind == "opcua_read":
        return OpcUaReadProbe(spec, config)
    if spec.kind == "ssh_banner":
        return SshBannerProbe(spec, config)
    raise ValueError(f"unknown probe kind {spec.kind!r}")


# --------------------------------------------------------------------------- the process
class _ProbeState:
    """What the watchdog knows of one probe (written by its thread)."""

    def __init__(self) -> None:
        self.consecutive_failed = 0
        #: Time of the last ok sample; None until the first one (the abort is armed from then:
        #: a probe still opening its session, e.g. OPC UA, must not trip it).
        self.last_ok: float | None = None
        self.samples = 0


def _run_probe(
    probe: Probe,
    period: float,
    state: _ProbeState,
    out: queue.SimpleQueue[Sample],
    stop: threading.Event,
) -> None:
    next_at = time.monotonic()
    try:
        while not stop.is_set():
            late_ms = (time.monotonic() - next_at) * 1000.0
            s = probe.sample()
            s.late_ms = late_ms
            if s.ok:
                state.consecutive_failed = 0
                state.last_ok = s.t if state.last_ok is None else max(state.last_ok, s.t)
            else:
                state.consecutive_failed += 1
            state.samples += 1
            out.put(s)
            next_at += period
            now = time.monotonic()
            if next_at < now:  # fell behind (a slow poll): keep the cadence, skip the slots
                next_at += math.ceil((now - next_at) / period) * period
            stop.wait(next_at - now)
    finally:
        if isinstance(probe, OpcUaReadProbe):
            probe.shutdown()
        else:
            probe.close()


def _realtime() -> None:
    """Put the calling thread, and the threads it starts from now on, in the real-time class
    (root only; best effort).

    Under a flood on the same host, a nice -10 probe still waited for a busy core: its
    lateness p99 went from 0.25 ms idle to 0.75 ms. In SCHED_FIFO it preempts the load at
    once (0.15 to 0.25 ms under load; ``tests/perf``). The main thread (it writes the samples)
    is real-time too: an ordinary thread holding the interpreter lock when the kernel
    preempts it would hold up the probes behind it for as long as it waits for a core. No
    thread here can hog a core: each sleeps between its rounds, every wait is bounded, and the
    kernel's real-time throttling stays on.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(MONITOR_RT_PRIORITY))


def _raise_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, -10)  # only root may; best effort


def run_monitor(
    config: MonitorConfig, flag: StopFlag, out: TextIO, ready: TextIO | None = None
) -> str:
    """Poll until stopped; write samples and events to ``out``; return why it stopped.

    Stops on the parent's stop request, after ``max_runtime_s``, or when the parent dies.
    """
    from harness.safety import Guard

    guard = Guard(config.allow)
    for spec in config.probes:
        guard.check_destination(spec.host, spec.port)
    guard.arm()
    _raise_priority()
    _realtime()  # before the probe threads start: they inherit it
    started = time.monotonic()
    parent = os.getppid()
    probes = [make_probe(spec, config) for spec in config.probes]
    states = [_ProbeState() for _ in probes]
    samples: queue.SimpleQueue[Sample] = queue.SimpleQueue()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_run_probe,
            name=f"probe-{p.spec.name}",
            args=(p, 1.0 / config.rate_hz, st, samples, stop),
            daemon=True,
        )
        for p, st in zip(probes, states, strict=True)
    ]
    for th in threads:
        th.start()
    if ready is not None:
        ready.write(
            json.dumps(
                {
                    "event": "ready",
                    "pid": os.getpid(),
                    "t": started,
                    "probes": [p.name for p in config.probes],
                }
            )
            + "\n"
        )
        ready.flush()
    aborted = False
    reason = "max_runtime"
    last_flush = started
    stall_s = config.abort_stall_ms / 1000.0
    try:
        while True:
            now = time.monotonic()
            if flag.stop_requested:
                reason = "stop requested"
                break
            if now - started > config.max_runtime_s:
                break
            if os.getppid() != parent:
                reason = "parent gone"
                break
            if not aborted:
                for p, st in zip(probes, states, strict=True):
                    why = None
                    if st.last_ok is None:
                        continue  # not armed before its first ok sample
                    if st.consecutive_failed >= config.abort_failed_samples:
                        why = (
                            f"{p.spec.name}: {st.consecutive_failed} failed samples in a row "
                            f"(abort threshold {config.abort_failed_samples})"
                        )
                    elif now - st.last_ok >= stall_s:
                        why = (
                            f"{p.spec.name}: not ok for {(now - st.last_ok) * 1000:.0f} ms "
                            f"(abort threshold {config.abort_stall_ms:g} ms)"
                        )
                    if why is not None:
                        flag.set()
                        aborted = True
                        out.write(json.dumps({"event": "abort", "t": now, "reason": why}) + "\n")
                        out.flush()
                        break
            while True:
                try:
                    out.write(samples.get_nowait().to_json() + "\n")
                except queue.Empty:
                    break
            if now - last_flush >= 0.05:
                out.flush()
                last_flush = now
            time.sleep(WATCH_S)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=config.request_timeout_s + config.connect_timeout_s + 2.0)
        while True:
            try:
                out.write(samples.get_nowait().to_json() + "\n")
            except queue.Empty:
                break
        out.write(json.dumps({"event": "stopped", "t": time.monotonic(), "reason": reason}) + "\n")
        out.flush()
        guard.disarm()
    return reason


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m harness.load.monitor``."""
    ap = argparse.ArgumentParser(
        prog="python -m harness.load.monitor",
        description="essential-function monitor (its own process)",
    )
    ap.add_argument("--config", required=True, help="MonitorConfig JSON file")
    ap.add_argument("--flag", required=True, help="shared StopFlag file")
    ap.add_argument("--out", required=True, help="samples JSONL file to write")
    args = ap.parse_args(argv)
    config = MonitorConfig.from_json(Path(args.config).read_text(encoding="utf-8"))
    flag = StopFlag(Path(args.flag))
    try:
        with open(args.out, "a", encoding="utf-8") as out:
            run_monitor(config, flag, out, ready=sys.stdout)
    finally:
        flag.close()
    return 0


class MonitorProcess:
    """The parent's handle on a monitor process.

    :param config: what to poll.
    :param workdir: a private folder for the config, the flag and the samples file.
    """

    def __init__(self, config: MonitorConfig, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.flag = StopFlag()
        self.samples_path = workdir / "monitor-samples.jsonl"
        self.stderr_path = workdir / "monitor.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._partial = b""
        self._samples: list[Sample] = []
        self._events: list[dict[str, Any]] = []
        self.started: float | None = None

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start the process and wait for its ready line.

        :raises HarnessError: it exited or did not get ready in time.
        """
        cfg = self.workdir / "monitor-config.json"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(self.config.to_json())
        env = child_env()
        for spec in self.config.probes:
            if spec.opcua and spec.opcua["password_ref"].startswith("inline:"):
                env["HARNESS_MONITOR_OPCUA_PASSWORD"] = spec.opcua["password_ref"][7:]
        with self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "harness.load.monitor",
                    "--config",
                    str(cfg),
                    "--flag",
                    str(self.flag.path),
                    "--out",
                    str(self.samples_path),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
            )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + ready_timeout_s
        line = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self._proc.stdout], [], [], 0.1)
            if r:
                line = self._proc.stdout.readline()
                break
            if self._proc.poll() is not None:
                break
        try:
            event = json.loads(line) if line else {}
        except ValueError:
            event = {}
        if event.get("event") != "ready":
            self.close()
            tail = self.stderr_path.read_text(errors="replace")[-1500:]
            raise HarnessError(f"the monitor process did not start: {tail.strip() or 'no output'}")
        self.started = float(event["t"])

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The monitor process's id (None before :meth:`start`)."""
        return None if self._proc is None else self._proc.pid

    def poll(self) -> list[Sample]:
        """Read the samples written since the last call; return all samples so far."""
        if not self.samples_path.exists():
            return self._samples
        with self.samples_path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if "event" in item:
                self._events.append(item)
            else:
                self._samples.append(Sample(**item))
        return self._samples

    @property
    def events(self) -> list[dict[str, Any]]:
        """Events (abort, stopped) read so far."""
        self.poll()
        return self._events

    def abort_reason(self) -> str | None:
        """Why the monitor tripped the abort flag, if it did."""
        for e in self.events:
            if e.get("event") == "abort":
                return str(e.get("reason", ""))
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the process to stop, wait, kill it if it does not; read the last samples.

        The abort flag stays usable until :meth:`close`."""
        proc = self._proc
        if proc is not None:
            self.flag.request_stop()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
        self.poll()

    def close(self) -> None:
        """Stop the process (if running) and release the flag."""
        if self.running:
            self.stop()
        self.flag.close()

    def __enter__(self) -> MonitorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.close()


# --------------------------------------------------------------------------- judgement
def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[k]


@dataclass
class ProbeFigures:
    """One probe over one time window."""

    probe: str
    samples: int = 0
    failed: int = 0
    max_consecutive_failed: int = 0
    #: Longest time without an ok sample inside the window (ms).
    longest_outage_ms: float = 0.0
    #: Longest time inside the window during which no poll was in flight (ms), the window's
    #: edges included: from the answer of one poll (or the window's start) to the start of the
    #: next (or the window's end). An outage shorter than this could have gone unseen.
    longest_unwatched_ms: float = 0.0
    max_stall_ms: float = 0.0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    #: The monitor's own lateness against its poll schedule (p99 and worst, ms): small figures
    #: show the load did not starve the monitor, so the latencies above are the device's.
    late_p99_ms: float | None = None
    late_max_ms: float | None = None
    #: Error text -> count (the first 40 characters of each).
    errors: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready (rounded)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 2)
        return d


def figures(samples: Iterable[Sample], probe: str, t0: float, t1: float) -> ProbeFigures:
    """The figures of ``probe`` over samples started in ``[t0, t1]``."""
    fig = ProbeFigures(probe)
    latencies: list[float] = []
    lateness: list[float] = []
    run = 0
    last_ok = t0
    watched_until = t0
    for s in samples:
        if s.probe != probe or not t0 <= s.t <= t1:
            continue
        fig.samples += 1
        fig.longest_unwatched_ms = max(fig.longest_unwatched_ms, (s.t - watched_until) * 1000.0)
        watched_until = max(watched_until, s.t + (s.latency_ms or 0.0) / 1000.0)
        if s.latency_ms is not None:
            latencies.append(s.latency_ms)
        if s.late_ms is not None:
            lateness.append(s.late_ms)
        if s.stall_ms is not None:
            fig.max_stall_ms = max(fig.max_stall_ms, s.stall_ms)
        if s.ok:
            run = 0
            fig.longest_outage_ms = max(fig.longest_outage_ms, (s.t - last_ok) * 1000.0)
            last_ok = s.t
        else:
            fig.failed += 1
            run += 1
            fig.max_consecutive_failed = max(fig.max_consecutive_failed, run)
            key = re.sub(r"\s*[\d.]+\s*ms", "", s.error).rstrip(": ")[:40] or "failed"
            fig.errors[key] = fig.errors.get(key, 0) + 1
    if fig.failed and run:
        fig.longest_outage_ms = max(fig.longest_outage_ms, (t1 - last_ok) * 1000.0)
    fig.longest_unwatched_ms = max(fig.longest_unwatched_ms, (t1 - watched_until) * 1000.0)
    fig.latency_p50_ms = _percentile(latencies, 50)
    fig.latency_p99_ms = _percentile(latencies, 99)
    fig.latency_max_ms = max(latencies) if latencies else None
    fig.late_p99_ms = _percentile(lateness, 99)
    fig.late_max_ms = max(lateness) if lateness else None
    return fig


def recovery_time(
    samples: Sequence[Sample], probes: Sequence[str], load_end: float, settle: int = SETTLE_SAMPLES
) -> float | None:
    """Seconds from ``load_end`` until every probe is ok and stays ok to the last sample.

    0.0 when nothing failed after the load ended; None when some probe has not yet shown
    ``settle`` ok samples in a row at the end of what was observed.
    """
    worst = 0.0
    for name in probes:
        after = [s for s in samples if s.probe == name and s.t >= load_end]
        tail = 0
        for s in reversed(after):
            if not s.ok:
                break
            tail += 1
        if tail < settle:
            return None
        if tail < len(after):
            first_ok = after[len(after) - tail].t
            worst = max(worst, first_ok - load_end)
    return worst


@dataclass
class Judgement:
    """What the monitor saw around one load."""

    #: Figures per probe during the load window.
    during: dict[str, ProbeFigures]
    #: True when every sample during the load was ok.
    within_bounds: bool
    #: Seconds from the end of the load until every probe was ok and steady (None: never).
    recovery_s: float | None
    recovered: bool
    recovery_wait_s: float
    abort_reason: str | None
    #: One line per bound broken (empty when within bounds and recovered).
    problems: list[str] = field(default_factory=list)
    #: One line per probe that went unpolled during the load for longer than its bound allows
    #: (see :func:`judge`): the monitor cannot vouch that nothing happened in between.
    blind: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Within bounds during the load and recovered in time after it."""
        return self.within_bounds and self.recovered

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, for an evidence note."""
        return {
            "within_bounds": self.within_bounds,
            "recovered": self.recovered,
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 3),
            "recovery_wait_s": self.recovery_wait_s,
            "abort_reason": self.abort_reason,
            "problems": self.problems,
            "blind": self.blind,
            "during": {k: v.to_json() for k, v in self.during.items()},
        }


def judge(
    samples: Sequence[Sample],
    probes: Sequence[str],
    *,
    load_start: float,
    load_end: float,
    recovery_wait_s: float,
    abort_reason: str | None = None,
    bounds_ms: Mapping[str, float] | None = None,
    period_s: float = 1.0 / DEFAULT_RATE_HZ,
) -> Judgement:
    """Judge the samples of one load: within bounds during ``[load_start, load_end]``, and
    recovered within ``recovery_wait_s`` after ``load_end``.

    ``bounds_ms`` (probe name -> its latency bound) adds the check of the monitor itself. While
    a poll is in flight the device is watched: an outage then shows in that poll's latency.
    Between one poll's answer and the next poll's start the monitor only waits for its slot,
    at most about two poll periods (``period_s``). A longer unwatched time means the monitor
    itself was held up (starved, stopped), and an outage longer than the bound, which would be
    a failure, could have fitted in it unseen. Such a probe is listed in
    :attr:`Judgement.blind`; the verdict is the caller's (it is not a device failure, so it is
    not a problem).
    """
    during = {p: figures(samples, p, load_start, load_end) for p in probes}
    problems: list[str] = []
    for p, fig in during.items():
        if fig.samples == 0:
            problems.append(f"{p}: no sample during the load (monitor starved or not running)")
        elif fig.failed:
            common = ", ".join(
                f"{k} x{v}" for k, v in sorted(fig.errors.items(), key=lambda kv: -kv[1])[:3]
            )
            problems.append(
                f"{p}: {fig.failed} of {fig.samples} samples out of bounds during the load "
                f"(longest outage {fig.longest_outage_ms:.0f} ms, max stall "
                f"{fig.max_stall_ms:.0f} ms, latency p99 {fig.latency_p99_ms or 0:.1f} ms; "
                f"{common})"
            )
    within = not problems
    rec = recovery_time(samples, probes, load_end)
    recovered = rec is not None and rec <= recovery_wait_s
    if rec is None:
        problems.append(
            f"not recovered: the essential function was not ok and steady within "
            f"{recovery_wait_s:g} s after the load ended"
        )
    elif not recovered:
        problems.append(f"recovered only after {rec:.2f} s (allowed {recovery_wait_s:g} s)")
    if abort_reason:
        problems.append(f"load aborted by the monitor: {abort_reason}")
    blind = []
    for p, fig in during.items():
        bound = (bounds_ms or {}).get(p)
        if bound is None or fig.samples == 0:
            continue
        allowed = bound + 2000.0 * period_s
        if fig.longest_unwatched_ms > allowed:
            blind.append(
                f"{p}: unwatched for {fig.longest_unwatched_ms:.0f} ms during the load, no poll "
                f"in flight (at most {allowed:.0f} ms: the {bound:g} ms bound plus two poll "
                f"periods; the monitor polled up to {fig.late_max_ms or 0:.0f} ms late against "
                "its schedule): an outage that long could have gone unseen"
            )
    return Judgement(during, within, rec, recovered, recovery_wait_s, abort_reason, problems,
                     blind)


def timeline_rows(
    samples: Iterable[Sample], origin: float, marks: Sequence[tuple[str, float]] = ()
) -> list[dict[str, Any]]:
    """Samples as CSV rows, ``t`` in seconds from ``origin`` and a ``phase`` column from the
    ``marks`` (label, start time) in time order."""
    ordered = sorted(marks, key=lambda m: m[1])
    rows = []
    for s in samples:
        phase = "baseline"
        for label, at in ordered:
            if s.t >= at:
                phase = label
        rows.append(
            {
                "t": round(s.t - origin, 4),
                "phase": phase,
                "probe": s.probe,
                "ok": int(s.ok),
                "latency_ms": "" if s.latency_ms is None else round(s.latency_ms, 3),
                "value": "" if s.value is None else s.value,
                "stall_ms": "" if s.stall_ms is None else round(s.stall_ms, 1),
                "error": s.error,
            }
        )
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
