"""Guarded Modbus clients: Modbus/TCP over any connected socket, Modbus RTU over pyserial.

Both clients are synchronous and deliberately small: a check sends one request, reads at most
one reply, and decides. They never hang and never buffer without bound:

- every connect goes through :meth:`harness.safety.Guard.check_destination` (TCP) or
  :meth:`~harness.safety.Guard.check_serial` (RTU) *before* a socket or port is opened;
- every exchange has a deadline (the profile's ``request_timeout_s``);
- a Modbus/TCP reply is read by its MBAP length: the header (7 bytes) and then exactly the
  length it announces, never more than :data:`~harness.protocols.mbap.MAX_ADU` bytes per ADU;
  a header that cannot be a Modbus/TCP reply, a reply cut short, or bytes beyond the announced
  length raise :class:`~harness.errors.TargetError`;
- an RTU reply is read until the inter-frame silence, at most
  :data:`~harness.protocols.mbap.MAX_RTU_FRAME` bytes, within the deadline;
- every frame sent and received is recorded in the check's evidence (hex, with a summary such
  as ``FC 3 read HR 0 x1``), and so is every connect, close, silence and late byte.

Outcomes a check may want to judge are values, not exceptions: :meth:`ModbusClient.exchange`
returns an :class:`Exchange` whose :class:`Outcome` is a reply, silence, or a closed
connection. The strict helpers (:meth:`ModbusClient.request`, ``read_*``) raise
:class:`~harness.errors.TargetError` for anything but a well-formed normal reply.

Reuse:

- Modbus/TCP Security: :meth:`ModbusTcpClient.connect` takes a ``socket_factory(address, port,
  timeout)`` (wrap the socket in TLS there), or build :class:`ModbusTcpClient` around an
  already-connected (e.g. :class:`ssl.SSLSocket`) socket;
- load generators need only :mod:`harness.protocols.mbap`.

pyserial is imported only when an RTU port is opened.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from harness.errors import TargetError
from harness.protocols import mbap
from harness.protocols.mbap import FrameError, Response

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.safety import Guard

#: Largest MBAP length field (unit id + a 253-byte PDU: an ADU of 260 bytes).
MAX_MBAP_LENGTH = mbap.MAX_ADU - 6
#: Bound on stray bytes read off a connection or line before the harness gives up on it.
MAX_STRAY_BYTES = 4 * mbap.MAX_ADU
#: Read quantity limits of the Modbus application protocol (for the strict helpers).
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968

_TABLE_SHORT = {1: "C", 2: "DI", 3: "HR", 4: "IR"}


class Outcome(StrEnum):
    """What came back for a request."""

    #: A frame arrived (decoded into :attr:`Exchange.response` when well formed).
    REPLY = "reply"
    #: Nothing arrived within the timeout.
    SILENCE = "silence"
    #: The device closed or reset the connection (Modbus/TCP only).
    CLOSED = "closed"


@dataclass(frozen=True)
class Exchange:
    """One request and what came back."""

    #: The frame sent: the whole ADU (MBAP + PDU) or RTU frame (unit, PDU, CRC).
    request: bytes
    outcome: Outcome
    #: The frame received (whole ADU or RTU frame); empty unless :attr:`outcome` is REPLY.
    reply: bytes = b""
    #: The decoded reply PDU; None without a reply or when the reply could not be decoded.
    response: Response | None = None
    #: Why a reply could not be decoded or does not answer the request (None when it does).
    problem: str | None = None
    #: Seconds from sending to the end of the reply (or of the wait).
    elapsed_s: float = 0.0

    @property
    def answered(self) -> bool:
        """True when any frame came back."""
        return self.outcome is Outcome.REPLY

    @property
    def accepted(self) -> bool:
        """True for a well-formed *normal* response: the device did what was asked."""
        return self.response is not None and not self.response.is_exception

    @property
    def exception_code(self) -> int | None:
        """The exception code of an exception response, else None."""
        return self.response.exception if self.response is not None else None

    def describe(self) -> str:
        """One line: the outcome and, for a reply, what it was."""
        if self.outcome is not Outcome.REPLY:
            return f"no reply ({self.outcome})"
        if self.response is None:
            return f"undecodable reply: {self.problem}"
        text = self.response.describe()
        return f"{text} ({self.problem})" if self.problem else text

    def frames(self) -> dict[str, Any]:
        """The request and reply as hex plus the outcome, for an evidence note or a message."""
        return {"request": self.request.hex(), "reply": self.reply.hex() or None,
                "outcome": str(self.outcome), "observed": self.describe()}


@dataclass(frozen=True)
class Health:
    """Whether the device still answers a plain read."""

    #: True when the health read got a well-formed normal response.
    ok: bool
    #: What was observed.
    detail: str
    #: The exchange of the health read (None when no connection could be made).
    exchange: Exchange | None = None


class ConnectFailed(TargetError):
    """A Modbus/TCP connection could not be opened (refused, reset, timed out)."""


# --------------------------------------------------------------------------- summaries
def describe_pdu(pdu: bytes) -> str:
    """A short human summary of a request PDU (``FC 3 read HR 0 x1``)."""
    if not pdu:
        return "empty PDU"
    fc = pdu[0]
    n = len(pdu)
    if fc in _TABLE_SHORT and n == 5:
        return f"FC {fc} read {_TABLE_SHORT[fc]} {int.from_bytes(pdu[1:3], 'big')} " \
               f"x{int.from_bytes(pdu[3:5], 'big')}"
    if fc == 5 and n == 5:
        return f"FC 5 write C {int.from_bytes(pdu[1:3], 'big')} = 0x{pdu[3:5].hex()}"
    if fc == 6 and n == 5:
        return f"FC 6 write HR {int.from_bytes(pdu[1:3], 'big')} = " \
               f"{int.from_bytes(pdu[3:5], 'big')}"
    if fc in (15, 16) and n >= 6:
        table = "C" if fc == 15 else "HR"
        return f"FC {fc} write {table} {int.from_bytes(pdu[1:3], 'big')} " \
               f"x{int.from_bytes(pdu[3:5], 'big')}"
    if fc == 22 and n == 7:
        return f"FC 22 mask write HR {int.from_bytes(pdu[1:3], 'big')}"
    if fc == 23 and n >= 10:
        return f"FC 23 read HR {int.from_bytes(pdu[1:3], 'big')} " \
               f"x{int.from_bytes(pdu[3:5], 'big')} / write HR {int.from_bytes(pdu[5:7], 'big')} " \
               f"x{int.from_bytes(pdu[7:9], 'big')}"
    if fc == 8 and n >= 3:
        return f"FC 8 diagnostics sub-function {int.from_bytes(pdu[1:3], 'big')}"
    if fc == 43 and n >= 2:
        return f"FC 43 MEI type {pdu[1]}"
    return f"FC {fc} ({n - 1} data bytes)"


def _decode(request_pdu: bytes | None, pdu: bytes) -> tuple[Response | None, str | None]:
    """Decode a reply PDU and say whether it answers ``request_pdu``."""
    try:
        response = mbap.parse_pdu(pdu)
    except FrameError as exc:
        return None, f"bad reply PDU {pdu.hex()}: {exc}"
    if request_pdu and response.function != request_pdu[0]:
        return response, f"reply for FC {response.function}, request was FC {request_pdu[0]}"
    return response, None


# --------------------------------------------------------------------------- the common part
class ModbusClient:
    """What both transports offer: request helpers over :meth:`exchange`.

    :param channel: the target URL recorded as the evidence channel.
    :param unit: default unit id of requests.
    :param evidence: the check's evidence log (None records nothing: tests, tooling).
    :param request_timeout: seconds to wait for one reply.
    :param health_address: holding register :meth:`health_read` reads (the heartbeat).
    """

    def __init__(self, *, channel: str, unit: int, evidence: Evidence | None,
                 request_timeout: float, health_address: int = 0) -> None:
        if request_timeout <= 0:
            raise ValueError(f"request_timeout must be > 0, got {request_timeout}")
        if not 0 <= unit <= 255:
            raise ValueError(f"unit must be 0..255, got {unit}")
        self.channel = channel
        self.unit = unit
        self.evidence = evidence
        self.request_timeout = request_timeout
        self.health_address = health_address
        #: Bytes that arrived when no reply was awaited (late replies, noise), in order.
        self.late: list[bytes] = []

    # -- evidence ------------------------------------------------------------------------
    def _sent(self, data: bytes | None, summary: str) -> None:
        if self.evidence is not None:
            self.evidence.sent(self.channel, data, summary)

    def _received(self, data: bytes | None, summary: str) -> None:
        if self.evidence is not None:
            self.evidence.received(self.channel, data, summary)

    # -- to be provided by the transport -----------------------------------------------
    def exchange(self, pdu: bytes, *, unit: int | None = None, summary: str = "",
                 timeout: float | None = None) -> Exchange:
        """Send one request PDU and wait for at most one reply (never raises for silence)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection or port."""
        raise NotImplementedError

    def __enter__(self) -> ModbusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- strict helpers --------------------------------------------------------------------
    def request(self, pdu: bytes, *, unit: int | None = None, summary: str = "") -> Response:
        """Send ``pdu`` and return the decoded reply (normal or exception).

        :raises TargetError: no reply, a closed connection, or a reply that does not answer.
        """
        ex = self.exchange(pdu, unit=unit, summary=summary)
        what = summary or describe_pdu(pdu)
        if ex.outcome is not Outcome.REPLY:
            raise TargetError(f"{self.channel}: {what}: no reply ({ex.outcome}) within "
                              f"{self.request_timeout:g} s")
        if ex.response is None or ex.problem:
            raise TargetError(f"{self.channel}: {what}: {ex.problem or 'undecodable reply'} "
                              f"(reply {ex.reply.hex()})")
        return ex.response

    def _normal(self, pdu: bytes, unit: int | None) -> Response:
        response = self.request(pdu, unit=unit)
        if response.is_exception:
            raise TargetError(f"{self.channel}: {describe_pdu(pdu)} refused: {response.describe()}")
        return response

    def read_registers(self, address: int, count: int = 1, *, table: int = 3,
                       unit: int | None = None) -> list[int]:
        """FC 3 (``table=3``, holding) or FC 4 (input) read; a refusal is a TargetError."""
        if table not in (3, 4) or not 1 <= count <= MAX_READ_REGISTERS:
            raise ValueError(f"bad register read: table {table}, count {count}")
        response = self._normal(mbap.read_pdu(table, address, count), unit)
        try:
            values = response.registers()
        except FrameError as exc:
            raise TargetError(f"{self.channel}: FC {table} reply: {exc}") from None
        if len(values) != count:
            raise TargetError(f"{self.channel}: FC {table} asked {count} registers, "
                              f"got {len(values)}")
        return values

    def read_bits(self, address: int, count: int = 1, *, table: int = 1,
                  unit: int | None = None) -> list[bool]:
        """FC 1 (``table=1``, coils) or FC 2 (discrete inputs) read."""
        if table not in (1, 2) or not 1 <= count <= MAX_READ_BITS:
            raise ValueError(f"bad bit read: table {table}, count {count}")
        response = self._normal(mbap.read_pdu(table, address, count), unit)
        try:
            return response.bits(count)
        except FrameError as exc:
            raise TargetError(f"{self.channel}: FC {table} reply: {exc}") from None

    def write_registers(self, address: int, values: list[int], *,
                        unit: int | None = None) -> None:
        """FC 16 write that must be acknowledged (restores); a refusal is a TargetError."""
        if not 1 <= len(values) <= MAX_WRITE_REGISTERS:
            raise ValueError(f"FC 16 takes 1..{MAX_WRITE_REGISTERS} values, got {len(values)}")
        self._normal(mbap.write_multiple_registers_pdu(address, values), unit)

    def write_bits(self, address: int, bits: list[bool], *, unit: int | None = None) -> None:
        """FC 15 write that must be acknowledged (restores); a refusal is a TargetError."""
        if not 1 <= len(bits) <= MAX_WRITE_BITS:
            raise ValueError(f"FC 15 takes 1..{MAX_WRITE_BITS} values, got {len(bits)}")
        self._normal(mbap.write_multiple_coils_pdu(address, bits), unit)

    def health_read(self) -> Health:
        """Read the heartbeat register once: does the device still answer?

        Never raises for an unresponsive device: the answer is the :class:`Health` value.
        """
        pdu = mbap.read_pdu(3, self.health_address, 1)
        try:
            ex = self.exchange(pdu, summary=f"health read HR {self.health_address}")
        except TargetError as exc:
            return Health(False, f"health read failed: {exc}")
        if ex.accepted and ex.problem is None and ex.response is not None:
            try:
                ex.response.registers()  # the byte count must match the data it announces
            except mbap.FrameError as exc:
                return Health(False, f"health read: malformed reply ({exc}): {ex.describe()}", ex)
            return Health(True, f"answered: {ex.describe()}", ex)
        return Health(False, f"health read: {ex.describe()}", ex)


# --------------------------------------------------------------------------- Modbus/TCP
#: Opens a connected socket to an address the guard has already allowed.
SocketFactory = Callable[[str, int, float], socket.socket]


def plain_socket(address: str, port: int, timeout: float) -> socket.socket:
    """The default :data:`SocketFactory`: a plain TCP connection."""
    return socket.create_connection((address, port), timeout=timeout)


class ModbusTcpClient(ModbusClient):
    """A Modbus/TCP client over one connected stream socket (plain or TLS).

    Use :meth:`connect` (guarded) or wrap a socket the caller connected after asking the guard.

    :param sock: a connected stream socket; the client owns it from now on.
    """

    def __init__(self, sock: socket.socket, *, channel: str, unit: int = 1,
                 evidence: Evidence | None = None, request_timeout: float = 3.0,
                 health_address: int = 0) -> None:
        super().__init__(channel=channel, unit=unit, evidence=evidence,
                         request_timeout=request_timeout, health_address=health_address)
        self._sock: socket.socket | None = sock
        self._tid = 0
        #: True once the device closed the connection (or we did).
        self.closed = False

    @classmethod
    def connect(cls, host: str, port: int, *, guard: Guard, evidence: Evidence | None = None,
                unit: int = 1, connect_timeout: float = 3.0, request_timeout: float = 3.0,
                health_address: int = 0, channel: str | None = None,
                socket_factory: SocketFactory = plain_socket) -> ModbusTcpClient:
        """Ask the guard, then connect.

        :raises harness.errors.SafetyViolation: the destination is not allowed (no socket opened).
        :raises ConnectFailed: refused, reset or timed out.
        """
        address = guard.check_destination(host, port)
        chan = channel or f"modbus://{host}:{port}?unit={unit}"
        if evidence is not None:
            evidence.sent(chan, None, f"TCP connect to {address}:{port}")
        try:
            sock = socket_factory(address, port, connect_timeout)
        except OSError as exc:
            if evidence is not None:
                evidence.received(chan, None, f"connect failed: {exc}")
            raise ConnectFailed(f"{chan}: cannot connect to {address}:{port}: {exc}") from exc
        try:
            name = sock.getsockname()
        except OSError:
            name = "?"
        local = f"local port {name[1]}" if isinstance(name, tuple) else f"local {name!r}"
        if evidence is not None:
            evidence.received(chan, None, f"connected ({local})")
        return cls(sock, channel=chan, unit=unit, evidence=evidence,
                   request_timeout=request_timeout, health_address=health_address)

    # -- socket plumbing ---------------------------------------------------------------
    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise TargetError(f"{self.channel}: connection already closed by the harness")
        return self._sock

    def _next_tid(self) -> int:
        self._tid = (self._tid + 1) & 0xFFFF
        return self._tid

    def _readable_now(self) -> bool:
        sock = self._socket()
        pending = getattr(sock, "pending", None)
        if callable(pending) and pending() > 0:  # TLS: decrypted bytes select cannot see
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)

    def _collect_stray(self) -> bytes:
        """Read whatever is waiting right now (bounded); note a close."""
        sock = self._socket()
        got = bytearray()
        while not self.closed and self._readable_now():
            sock.settimeout(0.05)
            try:
                chunk = sock.recv(mbap.MAX_ADU)
            except TimeoutError:
                break  # e.g. a TLS record without application data
            except (ConnectionError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._mark_closed("connection reset by the device")
                break
            except OSError as exc:
                raise TargetError(f"{self.channel}: receive failed: {exc}") from exc
            if not chunk:
                self._mark_closed("connection closed by the device")
                break
            got += chunk
            if len(got) > MAX_STRAY_BYTES:
                self._received(bytes(got), "device keeps sending unsolicited bytes")
                raise TargetError(f"{self.channel}: device sent over {MAX_STRAY_BYTES} "
                                  "unsolicited bytes")
        return bytes(got)

    def _mark_closed(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            self._received(None, why)

    def _recv_exact(self, n: int, deadline: float) -> tuple[bytes, Outcome]:
        """Up to ``n`` bytes before ``deadline``; the outcome says why it stopped short."""
        sock = self._socket()
        buf = bytearray()
        while len(buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return bytes(buf), Outcome.SILENCE
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(n - len(buf))
            except TimeoutError:
                return bytes(buf), Outcome.SILENCE
            except (ConnectionError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._mark_closed("connection reset by the device")
                return bytes(buf), Outcome.CLOSED
            except OSError as exc:
                raise TargetError(f"{self.channel}: receive failed: {exc}") from exc
            if not chunk:
                self._mark_closed("connection closed by the device")
                return bytes(buf), Outcome.CLOSED
            buf += chunk
        return bytes(buf), Outcome.REPLY

    # -- public raw API ----------------------------------------------------------------
    def send_raw(self, data: bytes, summary: str) -> bool:
        """Send arbitrary bytes (malformed frames); False if the device had closed the connection.

        Bytes waiting from earlier (late replies) are recorded and kept in :attr:`late` first.
        """
        stray = self._collect_stray()
        if stray:
            self.late.append(stray)
            self._received(stray, "late or unsolicited bytes (discarded)")
        self._sent(data, summary)
        if self.closed:
            self._received(None, "not sent: the connection is closed")
            return False
        sock = self._socket()
        sock.settimeout(self.request_timeout)
        try:
            sock.sendall(data)
        except (ConnectionError, TimeoutError, ssl.SSLZeroReturnError, ssl.SSLEOFError) as exc:
            self._mark_closed(f"send failed: {exc}")
            return False
        except OSError as exc:
            raise TargetError(f"{self.channel}: send failed: {exc}") from exc
        return True

    def recv_adu(self, timeout: float | None = None) -> tuple[Outcome, bytes]:
        """Read one ADU by its MBAP length (at most 260 bytes) within ``timeout``.

        :returns: (REPLY, adu), (SILENCE, b"") or (CLOSED, b"").
        :raises TargetError: a header that cannot be a reply, or an ADU cut short.
        """
        deadline = time.monotonic() + (self.request_timeout if timeout is None else timeout)
        if self.closed:
            return Outcome.CLOSED, b""
        header, how = self._recv_exact(mbap.MBAP_SIZE, deadline)
        if how is not Outcome.REPLY:
            if header:
                self._received(header, f"reply cut short: {len(header)} header bytes, then {how}")
                raise TargetError(f"{self.channel}: reply cut short after {len(header)} bytes "
                                  f"({header.hex()}), then {how}")
            return how, b""
        _, proto, length, _ = mbap.MBAP.unpack(header)
        if proto != 0 or not 2 <= length <= MAX_MBAP_LENGTH:
            garbage = header + self._collect_stray()
            self._received(garbage[: mbap.MAX_ADU], "not a Modbus/TCP reply header")
            raise TargetError(f"{self.channel}: not a Modbus/TCP reply (protocol id {proto}, "
                              f"length {length}): {garbage[:32].hex()}")
        body, how = self._recv_exact(length - 1, deadline)
        if how is not Outcome.REPLY:
            self._received(header + body, f"reply cut short: {len(body)} of {length - 1} "
                                          f"bytes after the header, then {how}")
            raise TargetError(f"{self.channel}: reply cut short: MBAP length {length}, got "
                              f"{len(body)} bytes after the header, then {how}")
        return Outcome.REPLY, header + body

    def send_frame(self, frame: bytes, *, summary: str, timeout: float | None = None,
                   request_pdu: bytes | None = None) -> Exchange:
        """Send a whole ADU (well formed or not) and wait for at most one reply ADU.

        A reply whose transaction id, unit id or function code does not match the request is
        returned with :attr:`Exchange.problem` set.

        :raises TargetError: garbage, a reply cut short, or bytes beyond the announced length.
        """
        t0 = time.monotonic()
        if not self.send_raw(frame, summary):
            return Exchange(frame, Outcome.CLOSED, elapsed_s=time.monotonic() - t0)
        how, reply = self.recv_adu(timeout)
        elapsed = time.monotonic() - t0
        if how is not Outcome.REPLY:
            if how is Outcome.SILENCE:
                wait = self.request_timeout if timeout is None else timeout
                self._received(None, f"no reply within {wait:g} s")
            return Exchange(frame, how, elapsed_s=elapsed)
        extra = self._collect_stray()
        if extra:
            self._received(reply + extra, f"reply longer than its MBAP length "
                                          f"({len(extra)} extra bytes)")
            raise TargetError(f"{self.channel}: reply longer than its MBAP length: "
                              f"{len(extra)} extra bytes after {reply.hex()}")
        response, problem = _decode(request_pdu, reply[mbap.MBAP_SIZE:])
        if len(frame) >= mbap.MBAP_SIZE and problem is None:
            tid, _, _, unit = mbap.MBAP.unpack_from(frame)
            rtid, _, _, runit = mbap.MBAP.unpack_from(reply)
            if rtid != tid:
                problem = f"transaction id {rtid}, request was {tid}"
            elif runit != unit:
                problem = f"unit id {runit}, request was {unit}"
        ex = Exchange(frame, Outcome.REPLY, reply, response, problem, elapsed)
        self._received(reply, ex.describe())
        return ex

    def exchange(self, pdu: bytes, *, unit: int | None = None, summary: str = "",
                 timeout: float | None = None) -> Exchange:
        """Send one request PDU in a well-formed ADU and wait for at most one reply."""
        u = self.unit if unit is None else unit
        frame = mbap.adu(self._next_tid(), u, pdu)
        what = summary or describe_pdu(pdu)
        if u != self.unit:
            what += f" (unit {u})"
        return self.send_frame(frame, summary=what, timeout=timeout, request_pdu=pdu)

    def shutdown_write(self) -> None:
        """Half-close: tell the device no more bytes will come (truncated-ADU tests)."""
        self._sent(None, "half-close (no more bytes from the harness)")
        with contextlib.suppress(OSError):
            self._socket().shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self.closed = True
        with contextlib.suppress(OSError):
            sock.close()
        self._sent(None, "TCP close")


# --------------------------------------------------------------------------- Modbus RTU
class SerialPort(Protocol):
    """The part of :class:`serial.Serial` the RTU client uses (its read timeout stays short)."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def char_time(baud: int) -> float:
    """Seconds per character on the line (11 bits: start, 8 data, parity or stop, stop)."""
    return 11.0 / baud


def _rtu_reply_length(buf: bytes) -> int | None:
    """The length of the reply frame starting ``buf``, when its function code says."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc & 0x80:
        return 5
    if fc in (1, 2, 3, 4, 23):
        return 5 + buf[2] if len(buf) >= 3 else None
    if fc in (5, 6, 8, 15, 16):
        return 8
    if fc == 22:
        return 10
    return None


def _is_pty(device: str) -> bool:
    """True when ``device`` is a Unix pseudo-terminal (the bundled RTU simulator's line)."""
    return os.path.realpath(device).startswith("/dev/pts/")


class ModbusRtuClient(ModbusClient):
    """A Modbus RTU client (master) on a serial line, a pty, or a pyserial URL.

    :param port: an open pyserial port (or anything with its ``read``/``write`` interface).
    :param baud: line speed, for the frame timing.
    """

    #: Floor of the silence that ends a reply (USB adapters and ptys deliver in bursts).
    MIN_SILENCE_S = 0.05
    #: Floor of the idle time before a new frame, so two frames never merge.
    MIN_GAP_S = 0.05
    #: Read timeout of the port: the longest one read call blocks.
    POLL_S = 0.01

    def __init__(self, port: SerialPort, *, channel: str, unit: int = 1, baud: int = 19200,
                 evidence: Evidence | None = None, request_timeout: float = 3.0,
                 health_address: int = 0) -> None:
        super().__init__(channel=channel, unit=unit, evidence=evidence,
                         request_timeout=request_timeout, health_address=health_address)
        if baud <= 0:
            raise ValueError(f"baud must be > 0, got {baud}")
        self._port: SerialPort | None = port
        self.baud = baud
        #: Silence (s) that ends a frame: 3.5 characters, with a floor.
        self.silence_s = max(3.5 * char_time(baud), self.MIN_SILENCE_S)
        #: Idle time (s) kept before sending a frame.
        self.gap_s = max(4 * 3.5 * char_time(baud), self.MIN_GAP_S)
        self._last_io = 0.0

    @classmethod
    def open(cls, device: str, *, guard: Guard, evidence: Evidence | None = None,
             baud: int = 19200, parity: str = "E", unit: int = 1,
             request_timeout: float = 3.0, health_address: int = 0,
             channel: str | None = None) -> ModbusRtuClient:
        """Ask the guard, then open ``device`` (a path or a pyserial URL).

        :raises harness.errors.SafetyViolation: the device is not declared in the profile, or a
            ``socket://``/``rfc2217://`` URL points outside the allow-list.
        :raises TargetError: the port cannot be opened.
        """
        guard.check_serial(device)
        if device.startswith(("socket://", "rfc2217://")):
            parts = urlsplit(device)
            guard.check_destination(parts.hostname or "", parts.port)
        import serial  # pyserial only when an RTU port is opened

        chan = channel or f"{device}?baud={baud}&parity={parity}&unit={unit}"
        if evidence is not None:
            evidence.sent(chan, None, f"open serial port {device} at {baud} baud, parity {parity}")
        errors: tuple[type[BaseException], ...] = (serial.SerialException, ValueError, OSError)
        with contextlib.suppress(ImportError):
            import termios  # POSIX: pyserial lets tcsetattr's own error through

            errors = (*errors, termios.error)
        try:
            port = serial.serial_for_url(
                device, baudrate=baud, bytesize=8, stopbits=2 if parity == "N" else 1,
                timeout=cls.POLL_S, write_timeout=request_timeout, do_not_open=True)
            port.open()
        except errors as exc:
            if evidence is not None:
                evidence.received(chan, None, f"open failed: {exc}")
            raise TargetError(f"{chan}: cannot open serial port: {exc}") from exc
        try:
            port.parity = parity
        except errors as exc:
            if not _is_pty(device):
                port.close()
                if evidence is not None:
                    evidence.received(chan, None, f"cannot set parity {parity}: {exc}")
                raise TargetError(f"{chan}: cannot set parity {parity}: {exc}") from exc
            # Linux pseudo-terminals refuse parity settings; a pty carries bytes, not bits.
            if evidence is not None:
                evidence.note(f"{device} is a pseudo-terminal that refuses parity {parity}; "
                              "continuing without parity (ptys carry bytes, not bits)")
        if evidence is not None:
            evidence.received(chan, None, "serial port open")
        return cls(port, channel=chan, unit=unit, baud=baud, evidence=evidence,
                   request_timeout=request_timeout, health_address=health_address)

    def _serial(self) -> SerialPort:
        if self._port is None:
            raise TargetError(f"{self.channel}: serial port already closed by the harness")
        return self._port

    def _read_some(self, limit: int) -> bytes:
        # The port's own read timeout (POLL_S, set at open) bounds each call; changing it per
        # read would reconfigure the line (tcsetattr) every time.
        port = self._serial()
        try:
            waiting = port.in_waiting
            return port.read(max(1, min(limit, waiting)))
        except OSError as exc:
            raise TargetError(f"{self.channel}: serial read failed: {exc}") from exc

    def _take_stray(self) -> None:
        """Record and keep bytes that arrived while no reply was awaited (bounded)."""
        port = self._serial()
        got = bytearray()
        try:
            while port.in_waiting and len(got) <= MAX_STRAY_BYTES:
                got += port.read(min(port.in_waiting, mbap.MAX_RTU_FRAME))
        except OSError as exc:
            raise TargetError(f"{self.channel}: serial read failed: {exc}") from exc
        if got:
            self.late.append(bytes(got))
            self._received(bytes(got), "late or unsolicited bytes (discarded)")
        if len(got) > MAX_STRAY_BYTES:
            raise TargetError(f"{self.channel}: device keeps sending unsolicited bytes")

    def send_raw(self, data: bytes, summary: str) -> None:
        """Send arbitrary bytes as one frame, after the inter-frame gap (no reply awaited)."""
        port = self._serial()
        idle = self.gap_s - (time.monotonic() - self._last_io)
        if idle > 0:
            time.sleep(idle)
        self._take_stray()
        self._sent(data, summary)
        try:
            port.write(data)
            port.flush()
        except OSError as exc:  # includes serial.SerialTimeoutException
            raise TargetError(f"{self.channel}: serial write failed: {exc}") from exc
        self._last_io = time.monotonic()

    def recv_frame(self, timeout: float | None = None) -> bytes:
        """Read one frame: up to the inter-frame silence, at most 256 bytes, within ``timeout``.

        Stops early when a frame of the length its function code implies has a good CRC.

        :returns: the bytes (empty: nothing arrived).
        :raises TargetError: the device sent more than a frame can hold.
        """
        deadline = time.monotonic() + (self.request_timeout if timeout is None else timeout)
        buf = bytearray()
        last_rx = 0.0
        while True:
            chunk = self._read_some(mbap.MAX_RTU_FRAME + 1 - len(buf))
            now = time.monotonic()
            if chunk:
                buf += chunk
                last_rx = now
                if len(buf) > mbap.MAX_RTU_FRAME:
                    self._received(bytes(buf), "reply longer than an RTU frame can be")
                    raise TargetError(f"{self.channel}: over {mbap.MAX_RTU_FRAME} bytes without "
                                      f"an inter-frame silence: {bytes(buf[:32]).hex()}...")
            if buf:
                expected = _rtu_reply_length(bytes(buf))
                if expected is not None and len(buf) == expected and mbap.crc16(bytes(buf)) == 0:
                    break
                if now - last_rx >= self.silence_s or now >= deadline + self.silence_s:
                    break
            elif now >= deadline:
                break
        self._last_io = time.monotonic()
        return bytes(buf)

    def send_frame(self, frame: bytes, *, summary: str, timeout: float | None = None,
                   request_pdu: bytes | None = None, expect_unit: int | None = None) -> Exchange:
        """Send a whole RTU frame (well formed or not) and wait for at most one reply frame."""
        t0 = time.monotonic()
        self.send_raw(frame, summary)
        reply = self.recv_frame(timeout)
        elapsed = time.monotonic() - t0
        if not reply:
            wait = self.request_timeout if timeout is None else timeout
            self._received(None, f"no reply within {wait:g} s")
            return Exchange(frame, Outcome.SILENCE, elapsed_s=elapsed)
        response: Response | None = None
        try:
            runit, pdu = mbap.check_rtu_frame(reply)
        except FrameError as exc:
            problem: str | None = f"bad reply frame: {exc}"
        else:
            response, problem = _decode(request_pdu, pdu)
            if problem is None and expect_unit is not None and runit != expect_unit:
                problem = f"reply from unit {runit}, request was for unit {expect_unit}"
        ex = Exchange(frame, Outcome.REPLY, reply, response, problem, elapsed)
        self._received(reply, ex.describe())
        return ex

    def exchange(self, pdu: bytes, *, unit: int | None = None, summary: str = "",
                 timeout: float | None = None, corrupt_crc: bool = False) -> Exchange:
        """Send one request PDU as an RTU frame (optionally with a wrong CRC) and wait."""
        u = self.unit if unit is None else unit
        frame = mbap.rtu_frame(u, pdu, corrupt_crc=corrupt_crc)
        what = summary or describe_pdu(pdu)
        if u != self.unit:
            what += f" (unit {u})"
        if corrupt_crc:
            what += " with a wrong CRC"
        return self.send_frame(frame, summary=what, timeout=timeout, request_pdu=pdu,
                               expect_unit=u)

    def close(self) -> None:
        """Close the port (idempotent)."""
        port, self._port = self._port, None
        if port is None:
            return
        with contextlib.suppress(OSError):
            port.close()
        self._sent(None, "serial port closed")
