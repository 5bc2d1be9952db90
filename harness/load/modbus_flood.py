"""Modbus/TCP request flood: our own MBAP framing, many requests in flight, several connections.

pymodbus's client sends one request at a time; a device that pipelines (answers every complete
ADU of a TCP read, in order) can take far more. The flood keeps up to ``in_flight`` requests
outstanding on each of ``connections`` non-blocking sockets (a sliding window: every answer
frees one slot) and drives them all from one selector loop, so the rate depends on the device
and on the cap, not on our per-request overhead. Requests are slices of one prebuilt buffer of
65536 ADUs (one per transaction id); answers are counted by walking MBAP headers.

``in_flight="auto"`` first asks :func:`probe_pipelining` whether the device answers every
request of one write; a device that answers only the first gets strict request/response
(``in_flight=1``).

Bounds: the rate never exceeds ``rate`` in any one-second window (:class:`~harness.load.Pacer`),
new connections never exceed ``connection_rate``, the whole run (connecting included) ends by
``duration_s``, ``max_requests`` bounds the count, and the stop flag ends it at once.
"""

from __future__ import annotations

import selectors
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.errors import TargetError
from harness.load import DRAIN_S, LoadResult, Pacer, Series, Stoppable, open_tcp, why_stop
from harness.load.pool import ConnectionPool
from harness.protocols import mbap

if TYPE_CHECKING:
    from harness.safety import Guard

#: Most requests in flight on one connection.
MAX_IN_FLIGHT = 256
#: Most connections of one flood.
MAX_CONNECTIONS = 256


def probe_pipelining(
    host: str,
    port: int,
    *,
    guard: Guard,
    unit: int = 1,
    pdu: bytes | None = None,
    count: int = 4,
    timeout_s: float = 1.0,
) -> bool:
    """Send ``count`` requests in one write on a fresh connection; True if all are answered.

    :raises TargetError: not even the first request was answered.
    """
    address = guard.check_destination(host, port)
    pdu = pdu or mbap.read_pdu(3, 0, 1)
    try:
        sock = open_tcp(address, port, timeout_s)
    except OSError as exc:
        raise TargetError(f"modbus {host}:{port}: cannot connect: {exc}") from exc
    buf = bytearray()
    answered = 0
    try:
        sock.sendall(b"".join(mbap.adu(i + 1, unit, pdu) for i in range(count)))
        deadline = time.monotonic() + timeout_s
        while answered < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
            if len(buf) > count * mbap.MAX_ADU:
                raise TargetError(f"modbus {host}:{port}: more data than {count} answers")
            try:
                answered += len(mbap.split_adus(buf))
            except mbap.FrameError as exc:
                raise TargetError(f"modbus {host}:{port}: malformed answer: {exc}") from exc
    except OSError as exc:
        raise TargetError(f"modbus {host}:{port}: {exc}") from exc
    finally:
        sock.close()
    if answered == 0:
        raise TargetError(f"modbus {host}:{port}: no answer to a read within {timeout_s:g} s")
    return answered >= count


@dataclass
class _Conn:
    sock: socket.socket
    #: Bytes received and not yet parsed.
    buf: bytearray = field(default_factory=bytearray)
    #: Bytes to send that the socket did not take yet.
    out: bytearray = field(default_factory=bytearray)
    outstanding: int = 0
    tid: int = 0
    last_progress: float = 0.0
    sent: int = 0
    answered: int = 0


class ModbusFlood(ConnectionPool[_Conn]):
    """A reusable flood over a fixed set of connections (open once, run one or more steps).

    :param host: the device (checked by ``guard`` before every connect).
    :param port: its Modbus/TCP port.
    :param guard: the run's safety guard.
    :param unit: unit id of the requests.
    :param pdu: the request PDU (default: FC 3 read of one register at 0).
    :param connections: sockets to use (<= :data:`MAX_CONNECTIONS`).
    :param in_flight: outstanding requests per socket (1 = strict request/response).
    :param connection_rate: cap on new connections per second.
    :param timeout_s: connect timeout, and how long outstanding requests may go unanswered
        before the connection is dropped and replaced.
    :param stop: polled every loop; set means stop at once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        guard: Guard,
        unit: int = 1,
        pdu: bytes | None = None,
        connections: int = 4,
        in_flight: int = 16,
        connection_rate: float = 20.0,
        timeout_s: float = 3.0,
        stop: Stoppable | None = None,
    ) -> None:
        if not 1 <= connections <= MAX_CONNECTIONS:
            raise ValueError(f"connections must be 1..{MAX_CONNECTIONS}, got {connections}")
        if not 1 <= in_flight <= MAX_IN_FLIGHT:
            raise ValueError(f"in_flight must be 1..{MAX_IN_FLIGHT}, got {in_flight}")
        super().__init__(host, port, guard=guard, connection_rate=connection_rate,
                         timeout_s=timeout_s, stop=stop)
        self.unit = unit
        self.pdu = pdu or mbap.read_pdu(3, 0, 1)
        self.adu_size = mbap.MBAP_SIZE + len(self.pdu)
        self.connections = connections
        self.in_flight = in_flight
        # One ADU per transaction id, back to back, plus the first in_flight again so that a
        # window that wraps past 65535 is still one slice.
        ring = [mbap.adu(t, unit, self.pdu) for t in range(65536)]
        self._ring = b"".join(ring + ring[:MAX_IN_FLIGHT])
        self.opened = 0
        self.connect_failures = 0

    def sample_request(self) -> bytes:
        """One request as sent (for the evidence)."""
        return self._ring[self.adu_size : 2 * self.adu_size]

    # -- connections ------------------------------------------------------------------
    def _connect_one(self, deadline: float) -> bool:
        while not self.stop.is_set():
            if self.conn_pacer.take(1):
                break
            wait = min(self.conn_pacer.wait_s(), deadline - time.monotonic())
            if wait < 0:
                return False
            time.sleep(max(wait, 0.0005))
        else:
            return False
        self.guard.check_destination(self.host, self.port)
        timeout = max(0.05, min(self.timeout_s, deadline - time.monotonic()))
        try:
            sock = open_tcp(self.address, self.port, timeout)
        except OSError:
            self.connect_failures += 1
            return False
        sock.setblocking(False)
        conn = _Conn(sock, last_progress=time.monotonic())
        self._conns.append(conn)
        self._sel.register(sock, selectors.EVENT_READ, conn)
        self.opened += 1
        return True

    def open(self, deadline: float | None = None) -> int:
        """Open the connections (paced); return how many are open.

        :raises TargetError: none could be opened.
        """
        end = deadline if deadline is not None else time.monotonic() + self.timeout_s * 2
        while len(self._conns) < self.connections and time.monotonic() < end:
            if self.stop.is_set():
                break
            if not self._connect_one(end) and self.connect_failures >= self.connections * 2:
                break
        if not self._conns and not self.stop.is_set():
            raise TargetError(
                f"modbus {self.target}: no connection could be opened "
                f"({self.connect_failures} failed)"
            )
        return len(self._conns)

    # -- one step -----------------------------------------------------------------------
    def _receive(self, conn: _Conn, result: LoadResult) -> tuple[int, bool]:
        """Read what is there; return (answers parsed, connection still good)."""
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return 0, True
        except OSError:
            return 0, False
        if not data:
            return 0, False
        buf = conn.buf
        buf += data
        if len(buf) > 1 << 20:
            return 0, False  # a device flooding us back: drop the connection, bounded memory
        size = len(buf)
        pos = 0
        answers = 0
        rejected = 0
        unpack = mbap.MBAP.unpack_from
        while size - pos >= 7:
            _tid, proto, length, _unit = unpack(buf, pos)
            if proto != 0 or length < 2 or length > 254:
                result.errors += 1
                return answers, False
            end = pos + 6 + length
            if end > size:
                break
            if buf[pos + 7] & 0x80:
                rejected += 1
            answers += 1
            pos = end
        if pos:
            del buf[:pos]
        if answers > conn.outstanding:
            result.errors += answers - conn.outstanding
            answers = conn.outstanding
        conn.outstanding -= answers
        conn.answered += answers
        result.rejected += rejected
        return answers, True

    def run(
        self,
        rate: float,
        duration_s: float,
        *,
        max_requests: int | None = None,
        kind: str = "modbus_flood",
    ) -> LoadResult:
        """Send at most ``rate`` requests/s for ``duration_s`` (connections already open or
        opened now) and return what happened."""
        start = time.monotonic()
        deadline = start + duration_s
        result = LoadResult(kind, self.target, rate, started=start)
        result.details.update(
            {
                "connections": self.connections,
                "in_flight": self.in_flight,
                "unit": self.unit,
                "function": self.pdu[0],
            }
        )
        if self.stop.is_set():
            result.stop_reason = "abort"
            result.ended = start
            return result
        if len(self._conns) < self.connections:
            self.open(deadline)
        pacer = Pacer(rate)
        series = Series(start)
        ring = self._ring
        size = self.adu_size
        in_flight = self.in_flight
        limit = max_requests if max_requests is not None else 1 << 62
        sent_total = 0
        answered_total = 0
        select = self._sel.select
        stop = self.stop
        reconnects = 0
        reason = "duration"
        while True:
            now = time.monotonic()
            stopped = why_stop(stop, now, deadline, sent_total, limit)
            if stopped is not None:
                reason = stopped
                break
            sent_now = 0
            for conn in self._conns:
                space = in_flight - conn.outstanding
                if space <= 0 or conn.out:
                    continue
                n = pacer.take(min(space, limit - sent_total - sent_now))
                if n <= 0:
                    break
                off = conn.tid * size
                conn.out += ring[off : off + n * size]
                conn.tid = (conn.tid + n) & 0xFFFF
                if conn.outstanding == 0:
                    conn.last_progress = now
                conn.outstanding += n
                conn.sent += n
                sent_now += n
                if not self._flush(conn):
                    result.disconnects += 1
                    self._drop(conn)
                    break
            sent_total += sent_now
            wait = min(0.05, max(0.0, deadline - now))
            if sent_now == 0 and any(in_flight - c.outstanding > 0 for c in self._conns):
                wait = min(wait, pacer.wait_s())
            answers_now = 0
            for key, mask in select(wait if sent_now == 0 else 0):
                conn = key.data
                if mask & selectors.EVENT_WRITE and conn.out and not self._flush(conn):
                    result.disconnects += 1
                    self._drop(conn)
                    continue
                if mask & selectors.EVENT_READ:
                    got, good = self._receive(conn, result)
                    answers_now += got
                    if got:
                        conn.last_progress = now
                    if not good:
                        result.disconnects += 1
                        self._drop(conn)
            answered_total += answers_now
            series.add(now, sent_now, answers_now)
            for conn in list(self._conns):
                if conn.outstanding and now - conn.last_progress > self.timeout_s:
                    result.errors += conn.outstanding
                    self._drop(conn)
            missing = self.connections - len(self._conns)
            while (
                missing
                and reconnects < self.connections * 10
                and not stop.is_set()
                and self.conn_pacer.wait_s() == 0
                and time.monotonic() < deadline
            ):
                missing -= 1
                reconnects += 1
                self._connect_one(deadline)
            if not self._conns and (reconnects >= self.connections * 10 or self.stop.is_set()):
                reason = "error"
                break
        result.ended = time.monotonic()
        if reason != "abort":  # read what is still on its way; never on abort
            answered_total += self._drain(result, series)
        result.sent = sent_total
        result.answered = answered_total
        result.stop_reason = reason
        result.series = series.rows
        result.details["reconnects"] = reconnects
        result.details["connections_opened"] = self.opened
        for conn in self._conns:  # what remains unanswered after the drain is lost
            result.errors += conn.outstanding
            conn.outstanding = 0
        return result

    def _drain(self, result: LoadResult, series: Series) -> int:
        end = time.monotonic() + DRAIN_S
        total = 0
        while any(c.outstanding for c in self._conns) and not self.stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            for key, mask in self._sel.select(min(left, 0.05)):
                conn = key.data
                if mask & selectors.EVENT_READ:
                    got, good = self._receive(conn, result)
                    total += got
                    series.add(time.monotonic(), 0, got)
                    if not good:
                        result.disconnects += 1
                        self._drop(conn)
        return total


def modbus_flood(
    host: str,
    port: int,
    *,
    guard: Guard,
    rate: float,
    duration_s: float,
    connections: int = 4,
    in_flight: int | str = "auto",
    unit: int = 1,
    pdu: bytes | None = None,
    connection_rate: float = 20.0,
    timeout_s: float = 3.0,
    max_requests: int | None = None,
    stop: Stoppable | None = None,
) -> LoadResult:
    """One flood: open, run, close. ``in_flight="auto"`` probes pipelining first (16 or 1)."""
    pipelined: bool | None = None
    if in_flight == "auto":
        pipelined = probe_pipelining(
            host, port, guard=guard, unit=unit, pdu=pdu, timeout_s=min(timeout_s, 1.0)
        )
        depth = 16 if pipelined else 1
    else:
        depth = int(in_flight)
    with ModbusFlood(
        host,
        port,
        guard=guard,
        unit=unit,
        pdu=pdu,
        connections=connections,
        in_flight=depth,
        connection_rate=connection_rate,
        timeout_s=timeout_s,
        stop=stop,
    ) as flood:
        result = flood.run(rate, duration_s, max_requests=max_requests)
    if pipelined is not None:
        result.details["pipelining"] = pipelined
    return result


def ramp_rates(cap: float, steps: int = 5) -> list[float]:
    """A geometric ramp ending at ``cap``: cap/2^(steps-1), ..., cap/2, cap."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [cap / 2 ** (steps - 1 - i) for i in range(steps)]
