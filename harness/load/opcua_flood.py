"""OPC UA floods: secure channels, sessions and reads (CR 7.1), and the heartbeat judgement.

Three generators, bounded like every other here (a rate cap, a deadline, an optional count, the
stop flag) and closing every socket before they return:

- :func:`channel_flood`: per connection, Hello -> Acknowledge, OpenSecureChannel with
  SecurityPolicy None -> its answer, CloseSecureChannel, close; paced at a connection rate, up
  to ``concurrency`` connections at once. When the device refuses None channels (see
  :func:`probe_endpoint`) pass ``open_channel=False``: each connection then stops at the
  Hello/Acknowledge (the load is said to be Hello-only in the result);
- :func:`session_flood`: per connection, Hello, a None channel, then ``sessions_per_channel``
  times CreateSession (no client certificate) -> ActivateSession (anonymous token) ->
  CloseSession, then CloseSecureChannel; paced in CreateSession requests per second. A device
  that refuses the CreateSession (a ServiceFault: e.g. BadSecurityChecksFailed when every
  endpoint needs a certificate) still does the work of parsing and refusing it: that is the
  flood an unauthenticated client can send, and what the result counts as ``rejected``;
- :func:`read_flood`: Read requests (one node each) on one activated session, up to
  ``in_flight`` outstanding, paced in requests per second; asyncua does the channel security
  (the session comes from :mod:`harness.protocols.opcua`, on its event loop).

The first two write OPC UA TCP themselves, with the codec of :mod:`harness.protocols.uatcp`
(OPC 10000-6: Hello, OpenSecureChannel None, CreateSession...), non-blocking over a selector,
so one process opens hundreds of channels a second: asyncua's full client costs milliseconds
per connection. :func:`probe_endpoint` tries one Hello and one None channel (blocking) first.

:class:`HeartbeatWatch` and :func:`heartbeat_progress` judge the profile's OPC UA essential
function beyond its read latency: the ``opcua_read`` monitor probe records the value it read,
and a node whose value kept changing before the load (a heartbeat counter) must keep changing
during it and after it. A device whose scan cycle starves under a flood still answers reads
(with a stale value) in time; only the value shows it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import selectors
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import TargetError
from harness.load import DRAIN_S, LoadResult, NeverStop, Pacer, Series, Stoppable, why_stop
from harness.load.pool import ConnectionPool
from harness.protocols.uatcp import (
    ACTIVATE_SESSION_RESPONSE,
    CLOSE_SESSION_RESPONSE,
    CREATE_SESSION_RESPONSE,
    MAX_MESSAGE_SIZE,
    MIN_BUFFER_SIZE,
    NULL_NODE,
    OPEN_SECURE_CHANNEL_RESPONSE,
    RECEIVE_BUFFER_SIZE,
    Acknowledge,
    Chunk,
    FrameError,
    Response,
    activate_session_service,
    close_secure_channel,
    close_session_service,
    create_session_service,
    hello,
    open_secure_channel_none,
    parse_acknowledge,
    parse_error,
    parse_response,
    secure_message,
    split_chunks,
)

if TYPE_CHECKING:
    from harness.load.monitor import Sample
    from harness.protocols.opcua import UaSession
    from harness.safety import Guard

#: Most connections a flood keeps open at once.
MAX_CONCURRENCY = 256
#: Most sessions one flood channel carries.
MAX_SESSIONS_PER_CHANNEL = 1024
#: Most Read requests outstanding on the read flood's session.
MAX_IN_FLIGHT = 256


# --------------------------------------------------------------------------- probe
@dataclass
class EndpointProbe:
    """What one Hello and one None OpenSecureChannel showed before a flood."""

    #: The Acknowledge (None when the device answered the Hello with an Error).
    acknowledge: Acknowledge | None
    #: True when the device opened a SecurityPolicy None channel.
    none_channel: bool
    #: Status name of a refusal (an Error message or a Bad ServiceResult), if any.
    refused: str | None = None
    #: The messages sent and received, for the evidence.
    exchanges: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: Seconds the probe took.
    elapsed_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary."""
        ack = self.acknowledge
        return {
            "acknowledge": None if ack is None else {
                "receive_buffer_size": ack.receive_buffer_size,
                "send_buffer_size": ack.send_buffer_size,
                "max_message_size": ack.max_message_size,
                "max_chunk_count": ack.max_chunk_count},
            "none_channel": self.none_channel,
            "refused": self.refused,
            "elapsed_s": round(self.elapsed_s, 4),
        }


def status_text(code: int) -> str:
    """The status code's name (``BadSecurityChecksFailed``)."""
    from harness.protocols.opcua import status_name

    return status_name(code)


def _read_chunk(sock: socket.socket, buf: bytearray, deadline: float, what: str) -> Chunk:
    while True:
        chunks = split_chunks(buf)
        if chunks:
            if buf:
                raise FrameError(f"{what}: {len(buf)} unexpected bytes after the answer")
            if len(chunks) > 1:
                raise FrameError(f"{what}: {len(chunks)} messages where one was expected")
            return chunks[0]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{what}: no answer")
        sock.settimeout(left)
        data = sock.recv(RECEIVE_BUFFER_SIZE)
        if not data:
            raise ConnectionResetError(f"{what}: the device closed the connection")
        buf += data
        if len(buf) > 2 * RECEIVE_BUFFER_SIZE:
            raise FrameError(f"{what}: more data than one message")


def probe_endpoint(host: str, port: int, endpoint_url: str, *, guard: Guard,
                   timeout_s: float = 3.0) -> EndpointProbe:
    """Hello, then OpenSecureChannel with SecurityPolicy None, then CloseSecureChannel.

    :raises TargetError: no TCP connection, no answer in time, or not OPC UA TCP.
    """
    address = guard.check_destination(host, port)
    from harness.load import open_tcp

    started = time.monotonic()
    deadline = started + timeout_s
    probe = EndpointProbe(None, False)
    where = f"opcua {host}:{port}"
    try:
        sock = open_tcp(address, port, timeout_s)
    except OSError as exc:
        raise TargetError(f"{where}: cannot connect: {exc}") from exc
    buf = bytearray()
    try:
        msg = hello(endpoint_url)
        sock.sendall(msg)
        probe.exchanges.append(("sent", "Hello", msg))
        chunk = _read_chunk(sock, buf, deadline, "Hello")
        probe.exchanges.append(("received", chunk.mtype.decode(), chunk.data[:64]))
        if chunk.mtype == b"ERR":
            probe.refused = status_text(parse_error(chunk)[0])
            return probe
        probe.acknowledge = parse_acknowledge(chunk)
        if probe.acknowledge.receive_buffer_size < MIN_BUFFER_SIZE:
            raise FrameError(f"Acknowledge ReceiveBufferSize "
                             f"{probe.acknowledge.receive_buffer_size} is under "
                             f"{MIN_BUFFER_SIZE}")
        msg = open_secure_channel_none(1, 1)
        sock.sendall(msg)
        probe.exchanges.append(("sent", "OpenSecureChannel None", msg))
        try:
            chunk = _read_chunk(sock, buf, deadline, "OpenSecureChannel")
        except ConnectionResetError:
            probe.refused = "connection closed"
            return probe
        probe.exchanges.append(("received", chunk.mtype.decode(), chunk.data[:96]))
        if chunk.mtype == b"ERR":
            probe.refused = status_text(parse_error(chunk)[0])
            return probe
        answer = parse_response(chunk)
        if answer.status >= 0x80000000 or answer.type_id != OPEN_SECURE_CHANNEL_RESPONSE:
            probe.refused = status_text(answer.status)
            return probe
        probe.none_channel = True
        with contextlib.suppress(OSError):
            sock.sendall(close_secure_channel(answer.channel_id, answer.token_id, 2, 2))
    except FrameError as exc:
        raise TargetError(f"{where}: not an OPC UA TCP answer: {exc}") from exc
    except TimeoutError as exc:
        raise TargetError(f"{where}: no answer within {timeout_s:g} s ({exc})") from exc
    except OSError as exc:
        raise TargetError(f"{where}: {exc}") from exc
    finally:
        sock.close()
        probe.elapsed_s = time.monotonic() - started
    return probe


# --------------------------------------------------------------------------- the engine
#: Connection states.
_CONNECTING, _HELLO, _OPEN, _READY, _CREATE, _ACTIVATE, _CLOSE = range(7)


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    started: float
    state: int = _CONNECTING
    buf: bytearray = field(default_factory=bytearray)
    out: bytearray = field(default_factory=bytearray)
    last_progress: float = 0.0
    sequence: int = 0
    request_id: int = 0
    channel_id: int = 0
    token_id: int = 0
    auth_token: bytes = NULL_NODE
    sessions: int = 0
    #: A message spread over chunks: its first chunk's head.
    partial: Response | None = None


class UaTcpFlood(ConnectionPool[_Conn]):
    """The non-blocking engine behind :func:`channel_flood` and :func:`session_flood`.

    :param mode: ``hello`` (Hello/Acknowledge only), ``channel`` (plus a None channel) or
        ``session`` (plus sessions on it).
    """

    def __init__(self, host: str, port: int, endpoint_url: str, *, guard: Guard, mode: str,
                 concurrency: int, connection_rate: float, session_rate: float | None = None,
                 sessions_per_channel: int = 1, anonymous_policy_id: str = "anonymous",
                 timeout_s: float = 3.0, stop: Stoppable | None = None) -> None:
        if mode not in ("hello", "channel", "session"):
            raise ValueError(f"mode must be hello, channel or session, got {mode!r}")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
        if not 1 <= sessions_per_channel <= MAX_SESSIONS_PER_CHANNEL:
            raise ValueError(f"sessions_per_channel must be 1..{MAX_SESSIONS_PER_CHANNEL}, "
                             f"got {sessions_per_channel}")
        if mode == "session" and session_rate is None:
            raise ValueError("a session flood needs session_rate")
        super().__init__(host, port, guard=guard, connection_rate=connection_rate,
                         timeout_s=timeout_s, stop=stop)
        self.family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        self.endpoint_url = endpoint_url
        self.mode = mode
        self.concurrency = concurrency
        self.session_pacer = Pacer(session_rate) if session_rate is not None else None
        self.sessions_per_channel = sessions_per_channel
        self.anonymous_policy_id = anonymous_policy_id
        self.hello_bytes = hello(endpoint_url)
        self._handle = 0
        # counters
        self.connects = 0
        self.connected = 0
        self.refused_connects = 0
        self.acknowledged = 0
        self.channels = 0
        self.sessions_sent = 0
        self.sessions_answered = 0
        self.sessions_created = 0
        self.activated = 0
        self.closed_sessions = 0
        self.rejected = 0
        self.errors = 0
        self.disconnects = 0
        self.statuses: dict[int, int] = {}
        self.error_kinds: dict[str, int] = {}

    def sample_request(self) -> bytes:
        """The characteristic message of this flood (for the evidence)."""
        if self.mode == "hello":
            return self.hello_bytes
        if self.mode == "channel":
            return open_secure_channel_none(1, 1)
        return secure_message(b"MSG", 1, 1, 2, 2, service=create_session_service(
            1, self.endpoint_url, "harness load"))

    # -- bookkeeping --------------------------------------------------------------------
    def _status(self, code: int) -> None:
        self.statuses[code] = self.statuses.get(code, 0) + 1

    def _error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    # -- sending ------------------------------------------------------------------------
    def _send(self, conn: _Conn, data: bytes) -> bool:
        conn.out += data
        return self._flush(conn)

    def _next_ids(self, conn: _Conn) -> tuple[int, int]:
        conn.sequence += 1
        conn.request_id += 1
        return conn.sequence, conn.request_id

    def _next_handle(self) -> int:
        self._handle = (self._handle + 1) & 0xFFFFFFFF
        return self._handle

    def _service(self, conn: _Conn, service: bytes) -> bool:
        seq, rid = self._next_ids(conn)
        return self._send(conn, secure_message(b"MSG", conn.channel_id, conn.token_id, seq, rid,
                                               service=service))

    def _goodbye(self, conn: _Conn) -> None:
        """CloseSecureChannel (when a channel is open) and close the socket."""
        if conn.state in (_READY, _CREATE, _ACTIVATE, _CLOSE) or (
                conn.state == _OPEN and conn.channel_id):
            seq, rid = self._next_ids(conn)
            with contextlib.suppress(OSError):
                conn.sock.send(close_secure_channel(conn.channel_id, conn.token_id, seq, rid))
        self._drop(conn)

    # -- opening ------------------------------------------------------------------------
    def _open_one(self, now: float) -> None:
        self.guard.check_destination(self.host, self.port)
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setblocking(False)
        self.connects += 1
        code = sock.connect_ex((self.address, self.port))
        if code not in (0, errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            sock.close()
            if code == errno.ECONNREFUSED:
                self.refused_connects += 1
                self.rejected += 1
            else:
                self._error(errno.errorcode.get(code, str(code)))
            return
        conn = _Conn(sock, now, last_progress=now)
        self._conns.append(conn)
        self._sel.register(sock, selectors.EVENT_WRITE, conn)

    def _connected(self, conn: _Conn) -> bool:
        code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            if code == errno.ECONNREFUSED:
                self.refused_connects += 1
                self.rejected += 1
            else:
                self._error(errno.errorcode.get(code, str(code)))
            self._drop(conn)
            return False
        self.connected += 1
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.state = _HELLO
        if not self._send(conn, self.hello_bytes):
            self.disconnects += 1
            self._drop(conn)
            return False
        return True

    # -- answers ------------------------------------------------------------------------
    def _on_chunk(self, conn: _Conn, chunk: Chunk) -> bool:
        """Advance one connection on one chunk; False when it is finished (dropped)."""
        if chunk.mtype == b"ERR":
            code, _reason = parse_error(chunk)
            self._status(code)
            self.rejected += 1
            if conn.state in (_CREATE, _ACTIVATE):
                self.sessions_answered += conn.state == _CREATE
            self._drop(conn)
            return False
        if conn.state == _HELLO:
            parse_acknowledge(chunk)
            self.acknowledged += 1
            if self.mode == "hello":
                self._drop(conn)
                return False
            seq, rid = self._next_ids(conn)
            conn.state = _OPEN
            return self._send(conn, open_secure_channel_none(seq, rid, self._next_handle()))
        if chunk.ctype == b"A":
            self._error("aborted message")
            self._drop(conn)
            return False
        head = conn.partial or parse_response(chunk)
        if chunk.ctype == b"C":
            conn.partial = head
            return True
        conn.partial = None
        if conn.state == _OPEN:
            if head.type_id != OPEN_SECURE_CHANNEL_RESPONSE or head.status >= 0x80000000:
                self._status(head.status)
                self.rejected += 1
                self._drop(conn)
                return False
            conn.channel_id, conn.token_id = head.channel_id, head.token_id
            self.channels += 1
            if self.mode == "channel":
                self._goodbye(conn)
                return False
            conn.state = _READY
            return True
        if conn.state == _CREATE:
            self.sessions_answered += 1
            conn.sessions += 1
            if head.status >= 0x80000000 or head.type_id != CREATE_SESSION_RESPONSE:
                self._status(head.status)
                self.rejected += 1
                return self._after_session(conn)
            self.sessions_created += 1
            conn.auth_token = head.auth_token or NULL_NODE
            conn.state = _ACTIVATE
            return self._service(conn, activate_session_service(
                self._next_handle(), conn.auth_token, self.anonymous_policy_id))
        if conn.state == _ACTIVATE:
            if head.status >= 0x80000000 or head.type_id != ACTIVATE_SESSION_RESPONSE:
                self._status(head.status)
            else:
                self.activated += 1
            conn.state = _CLOSE
            return self._service(conn, close_session_service(self._next_handle(),
                                                             conn.auth_token))
        if conn.state == _CLOSE:
            if head.status < 0x80000000 and head.type_id == CLOSE_SESSION_RESPONSE:
                self.closed_sessions += 1
            else:
                self._status(head.status)
            conn.auth_token = NULL_NODE
            return self._after_session(conn)
        self._error(f"unexpected {chunk.mtype.decode()}")
        self._drop(conn)
        return False

    def _after_session(self, conn: _Conn) -> bool:
        if conn.sessions >= self.sessions_per_channel:
            self._goodbye(conn)
            return False
        conn.state = _READY
        return True

    def _receive(self, conn: _Conn) -> None:
        """Read and process what arrived."""
        try:
            data = conn.sock.recv(RECEIVE_BUFFER_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.disconnects += 1
            self._drop(conn)
            return
        if not data:
            self.disconnects += 1
            self._drop(conn)
            return
        conn.buf += data
        if len(conn.buf) > MAX_MESSAGE_SIZE:
            self._error("too much data")
            self._drop(conn)
            return
        try:
            for chunk in split_chunks(conn.buf):
                conn.last_progress = time.monotonic()
                if not self._on_chunk(conn, chunk):
                    break
        except FrameError as exc:
            self._error(f"malformed: {str(exc)[:40]}")
            self._drop(conn)

    # -- the loop -------------------------------------------------------------------------
    def run(self, duration_s: float, *, max_cycles: int | None = None,
            kind: str = "opcua_flood") -> LoadResult:
        """Flood for ``duration_s``; a cycle is a connection (``hello``/``channel``) or a
        CreateSession (``session``), at most ``max_cycles`` of them."""
        start = time.monotonic()
        deadline = start + duration_s
        main_rate = (self.session_pacer.rate if self.session_pacer is not None
                     else self.conn_pacer.rate)
        result = LoadResult(kind, self.target, main_rate, started=start)
        series = Series(start)
        limit = max_cycles if max_cycles is not None else 1 << 62
        reason = "duration"
        sessions = self.mode == "session"
        while True:
            now = time.monotonic()
            if self.stop.is_set():
                reason = "abort"
                break
            if now >= deadline:
                break
            cycles = self.sessions_sent if sessions else self.connects
            done = cycles >= limit
            if done:  # all started: let them finish (bounded by their timeouts)
                reason = "count"
                for conn in [c for c in self._conns if c.state == _READY]:
                    self._goodbye(conn)
                if not self._conns:
                    break
            sent_now = 0
            # new sessions on channels that are ready
            if sessions:
                assert self.session_pacer is not None
                for conn in [c for c in self._conns if c.state == _READY]:
                    if self.sessions_sent >= limit or not self.session_pacer.take(1):
                        break
                    conn.state = _CREATE
                    conn.last_progress = now
                    self.sessions_sent += 1
                    sent_now += 1
                    if not self._service(conn, create_session_service(
                            self._next_handle(), self.endpoint_url, "harness load")):
                        self.disconnects += 1
                        self._drop(conn)
            # new connections while there is room (a session flood opens none while an open
            # channel waits for its turn: the session rate, not the channels, is the limit)
            waiting = sessions and any(c.state == _READY for c in self._conns)
            while len(self._conns) < self.concurrency and not waiting and not done:
                if not sessions and self.connects >= limit:
                    break
                if not self.conn_pacer.take(1):
                    break
                self._open_one(now)
                if not sessions:
                    sent_now += 1
            wait = min(0.02, max(0.0, deadline - now))
            if sent_now:
                wait = 0.0
            elif len(self._conns) < self.concurrency and not done:
                wait = min(wait, self.conn_pacer.wait_s())
            before = self._answered()
            self._poll(wait)
            series.add(now, sent_now, self._answered() - before)
            self._expire(time.monotonic())
        result.ended = time.monotonic()
        if reason != "abort":
            self._drain(series)
        self.close()
        result.stop_reason = reason
        self._fill(result)
        result.series = series.rows
        return result

    def _answered(self) -> int:
        """Answers so far, as :class:`LoadResult` counts them for this mode."""
        if self.mode == "session":
            return self.sessions_answered
        return self.channels if self.mode == "channel" else self.acknowledged

    def _poll(self, wait: float) -> None:
        for key, mask in self._sel.select(wait):
            conn: _Conn = key.data
            if conn.state == _CONNECTING:
                if mask & selectors.EVENT_WRITE:
                    conn.last_progress = time.monotonic()
                    self._connected(conn)
                continue
            if mask & selectors.EVENT_WRITE and conn.out and not self._flush(conn):
                self.disconnects += 1
                self._drop(conn)
                continue
            if mask & selectors.EVENT_READ:
                self._receive(conn)

    def _expire(self, now: float) -> None:
        for conn in list(self._conns):
            if conn.state != _READY and now - conn.last_progress > self.timeout_s:
                self._error("timeout")
                self._drop(conn)

    def _drain(self, series: Series) -> None:
        """Let the cycles under way finish (at most :data:`DRAIN_S`), then close."""
        end = time.monotonic() + DRAIN_S
        for conn in [c for c in self._conns if c.state == _READY]:
            self._goodbye(conn)
        while self._conns and not self.stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            before = self._answered()
            self._poll(min(left, 0.02))
            series.add(time.monotonic(), 0, self._answered() - before)
            for conn in [c for c in self._conns if c.state == _READY]:
                self._goodbye(conn)
        for conn in list(self._conns):
            if conn.state != _CONNECTING:
                self._error("unfinished at the end")
            self._goodbye(conn)

    def _fill(self, result: LoadResult) -> None:
        if self.mode == "session":
            result.sent = self.sessions_sent
            result.answered = self.sessions_answered
        else:
            result.sent = self.connects
            result.answered = self._answered()
        result.rejected = self.rejected
        result.errors = self.errors
        result.disconnects = self.disconnects
        details: dict[str, Any] = {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "connection_rate_cap": self.conn_pacer.rate,
            "connections": self.connects,
            "connected": self.connected,
            "refused_connects": self.refused_connects,
            "acknowledged": self.acknowledged,
            "channels_opened": self.channels,
        }
        if self.mode == "session":
            details.update({
                "sessions_per_channel": self.sessions_per_channel,
                "sessions_created": self.sessions_created,
                "sessions_activated": self.activated,
                "sessions_closed": self.closed_sessions,
            })
        if self.statuses:
            details["statuses"] = {status_text(k): v for k, v in sorted(self.statuses.items())}
        if self.error_kinds:
            details["error_kinds"] = dict(self.error_kinds)
        result.details.update(details)


def channel_flood(host: str, port: int, endpoint_url: str, *, guard: Guard, rate: float,
                  duration_s: float, concurrency: int = 4, open_channel: bool = True,
                  timeout_s: float = 3.0, max_connections: int | None = None,
                  stop: Stoppable | None = None, kind: str = "opcua_channel_flood",
                  ) -> LoadResult:
    """Open (and close) at most ``rate`` SecurityPolicy None secure channels per second.

    ``sent`` counts TCP connects, ``answered`` channels opened (Acknowledges with
    ``open_channel=False``), ``rejected`` refused connects and refusals (Error messages, Bad
    statuses: by name in ``details["statuses"]``), ``errors`` timeouts and malformed answers.
    """
    mode = "channel" if open_channel else "hello"
    with UaTcpFlood(host, port, endpoint_url, guard=guard, mode=mode, concurrency=concurrency,
                    connection_rate=rate, timeout_s=timeout_s, stop=stop) as flood:
        return flood.run(duration_s, max_cycles=max_connections, kind=kind)


def session_flood(host: str, port: int, endpoint_url: str, *, guard: Guard, rate: float,
                  duration_s: float, connection_rate: float, concurrency: int = 4,
                  sessions_per_channel: int = 1, anonymous_policy_id: str = "anonymous",
                  timeout_s: float = 3.0, max_sessions: int | None = None,
                  stop: Stoppable | None = None, kind: str = "opcua_session_flood",
                  ) -> LoadResult:
    """Send at most ``rate`` CreateSession requests per second over None channels (opened at
    most ``connection_rate`` per second, ``sessions_per_channel`` sessions each); a created
    session is activated with an anonymous token and closed.

    ``sent`` counts CreateSession requests, ``answered`` their answers (sessions or faults),
    ``rejected`` refusals (by status name in ``details["statuses"]``).
    """
    with UaTcpFlood(host, port, endpoint_url, guard=guard, mode="session",
                    concurrency=concurrency, connection_rate=connection_rate,
                    session_rate=rate, sessions_per_channel=sessions_per_channel,
                    anonymous_policy_id=anonymous_policy_id, timeout_s=timeout_s,
                    stop=stop) as flood:
        return flood.run(duration_s, max_cycles=max_sessions, kind=kind)


# --------------------------------------------------------------------------- read flood
def read_flood(session: UaSession, node: str, *, rate: float, duration_s: float,
               in_flight: int = 16, timeout_s: float = 3.0, max_requests: int | None = None,
               stop: Stoppable | None = None, kind: str = "opcua_read_flood") -> LoadResult:
    """Read ``node`` at most ``rate`` times per second on ``session``, at most ``in_flight``
    requests outstanding (asyncua's client encodes and secures them).

    ``answered`` counts Good values, ``rejected`` Bad answers (a ServiceFault or a Bad value
    status), ``errors`` timeouts; a connection lost ends the flood (``stop_reason`` ``error``).
    """
    if not 1 <= in_flight <= MAX_IN_FLIGHT:
        raise ValueError(f"in_flight must be 1..{MAX_IN_FLIGHT}, got {in_flight}")
    client = session._client  # the asyncua Client of the harness's session
    loop = session._conn.loop
    result = LoadResult(kind, session._conn.target.url, rate)
    result.details.update({"in_flight": in_flight, "node": node})
    coro = _read_flood(client, node, result, rate=rate, duration_s=duration_s,
                       in_flight=in_flight, timeout_s=timeout_s,
                       limit=max_requests if max_requests is not None else 1 << 62,
                       stop=stop or NeverStop())
    loop.run(coro, duration_s + DRAIN_S + timeout_s + 5.0, "OPC UA read flood")
    return result


async def _read_flood(client: Any, node: str, result: LoadResult, *, rate: float,
                      duration_s: float, in_flight: int, timeout_s: float, limit: int,
                      stop: Stoppable) -> None:
    import asyncio

    from asyncua import ua
    from asyncua.ua.attribute_ids import AttributeIds
    from asyncua.ua.uaerrors import UaStatusCodeError

    item = ua.ReadValueId()
    item.NodeId = ua.NodeId.from_string(node)
    item.AttributeId = AttributeIds.Value
    params = ua.ReadParameters()
    params.NodesToRead = [item]
    uaclient = client.uaclient
    pacer = Pacer(rate)
    pending: set[asyncio.Future[Any]] = set()
    statuses: dict[int, int] = {}
    counts = {"answered": 0, "rejected": 0, "errors": 0, "lost": 0}
    start = time.monotonic()
    result.started = start
    series = Series(start)
    deadline = start + duration_s
    reason = "duration"

    def done(task: asyncio.Future[Any]) -> None:
        pending.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            values = task.result()
            status = int(values[0].StatusCode.value) if values and values[0].StatusCode else 0
            if status & 0x80000000:
                counts["rejected"] += 1
                statuses[status] = statuses.get(status, 0) + 1
            else:
                counts["answered"] += 1
                series.add(time.monotonic(), 0, 1)
        elif isinstance(exc, UaStatusCodeError):
            counts["rejected"] += 1
            statuses[exc.code] = statuses.get(exc.code, 0) + 1
        elif isinstance(exc, TimeoutError | asyncio.TimeoutError):
            counts["errors"] += 1
        else:
            counts["errors"] += 1
            counts["lost"] += 1

    sent = 0
    while True:
        now = time.monotonic()
        stopped = why_stop(stop, now, deadline, sent, limit)
        if stopped is not None:
            reason = stopped
            break
        if counts["lost"]:
            reason = "error"
            break
        n = pacer.take(min(in_flight - len(pending), limit - sent))
        for _ in range(n):
            task: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.wait_for(uaclient.read(params), timeout_s))
            pending.add(task)
            task.add_done_callback(done)
        if n:
            sent += n
            series.add(now, n, 0)
            await asyncio.sleep(0)
            continue
        if len(pending) >= in_flight:
            await asyncio.wait(set(pending), timeout=min(0.02, deadline - now),
                               return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(min(pacer.wait_s(), 0.02, max(0.0, deadline - now)))
    result.ended = time.monotonic()
    if pending and reason != "abort":
        await asyncio.wait(set(pending), timeout=DRAIN_S)
    leftover = list(pending)
    for task in leftover:
        task.cancel()
    if leftover:
        await asyncio.wait(leftover, timeout=1.0)
        counts["errors"] += len(leftover)
    result.sent = sent
    result.answered = counts["answered"]
    result.rejected = counts["rejected"]
    result.errors = counts["errors"]
    result.disconnects = 1 if counts["lost"] else 0
    result.stop_reason = reason
    result.series = series.rows
    if statuses:
        result.details["statuses"] = {status_text(k): v for k, v in sorted(statuses.items())}


# --------------------------------------------------------------------------- heartbeat
@dataclass
class Progress:
    """Whether a node's value kept changing around one load."""

    #: The monitor probe judged.
    probe: str
    #: True when the value changed in the baseline often enough to count as a heartbeat;
    #: otherwise nothing else here is judged.
    live: bool
    #: Value changes seen in the baseline window.
    baseline_changes: int = 0
    #: Longest time the value stood still during the load (ms).
    longest_stall_ms: float = 0.0
    #: Seconds from the end of the load until the value advanced steadily again (None: never).
    recovery_s: float | None = None
    #: The stall bound (ms).
    bound_ms: float = 0.0
    #: One line per bound broken.
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing broken (a node that is not a heartbeat is not judged)."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """JSON-ready, for an evidence note."""
        return {
            "probe": self.probe, "live": self.live, "baseline_changes": self.baseline_changes,
            "longest_stall_ms": round(self.longest_stall_ms, 1),
            "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 3),
            "bound_ms": self.bound_ms, "problems": self.problems,
        }


#: Seconds of samples before a load that decide whether the node is a heartbeat.
BASELINE_WINDOW_S = 2.0
#: Value changes the baseline needs for the node to count as a heartbeat.
BASELINE_CHANGES = 2
#: Samples in a row, all fresh, that count as "advancing steadily again".
STEADY_SAMPLES = 10


def _stalls(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """(time, ms since the value last changed) per sample that read a value; the first
    value seen counts as a change."""
    out: list[tuple[float, float]] = []
    last_value: object = None
    last_change: float | None = None
    for s in samples:
        if s.value is None:
            if last_change is not None:
                out.append((s.t, (s.t - last_change) * 1000.0))
            continue
        if last_change is None or s.value != last_value:
            last_value = s.value
            last_change = s.t
        out.append((s.t, (s.t - last_change) * 1000.0))
    return out


def _baseline(mine: Sequence[Sample], stalls: Sequence[tuple[float, float]], before: float,
              bound_ms: float) -> tuple[int, bool]:
    """(value changes, heartbeat or not) in the :data:`BASELINE_WINDOW_S` before ``before``."""
    base = [s for s in mine if before - BASELINE_WINDOW_S <= s.t < before and s.value is not None]
    changes = sum(1 for a, b in itertools.pairwise(base) if a.value != b.value)
    base_stall = max((ms for t, ms in stalls if before - BASELINE_WINDOW_S <= t < before),
                     default=0.0)
    return changes, changes >= BASELINE_CHANGES and base_stall <= bound_ms


def advancing(samples: Sequence[Sample], probe: str, *, at: float, bound_ms: float) -> bool:
    """True when ``probe``'s value counts as a heartbeat just before ``at`` (the baseline
    rule of :func:`heartbeat_progress`)."""
    mine = sorted((s for s in samples if s.probe == probe), key=lambda s: s.t)
    return _baseline(mine, _stalls(mine), at, bound_ms)[1]


def heartbeat_progress(samples: Sequence[Sample], probe: str, *, load_start: float,
                       load_end: float, bound_ms: float, recovery_wait_s: float) -> Progress:
    """Judge the value the ``probe`` read around the load ``[load_start, load_end]``.

    The node counts as a heartbeat when its value changed at least :data:`BASELINE_CHANGES`
    times in the :data:`BASELINE_WINDOW_S` before the load and never stood still longer than
    ``bound_ms`` there. Then it must not stand still longer than ``bound_ms`` during the load,
    and must be advancing again (:data:`STEADY_SAMPLES` fresh samples in a row, to the last
    one) within ``recovery_wait_s`` after it.
    """
    mine = sorted((s for s in samples if s.probe == probe), key=lambda s: s.t)
    progress = Progress(probe, False, bound_ms=bound_ms)
    stalls = _stalls(mine)
    progress.baseline_changes, progress.live = _baseline(mine, stalls, load_start, bound_ms)
    if not progress.live:
        return progress
    during = [ms for t, ms in stalls if load_start <= t <= load_end]
    progress.longest_stall_ms = max(during, default=0.0)
    if progress.longest_stall_ms > bound_ms:
        progress.problems.append(
            f"{probe}: the value stood still for {progress.longest_stall_ms:.0f} ms during the "
            f"load (bound {bound_ms:g} ms): the device answered reads but its heartbeat stopped")
    after = [(t, ms) for t, ms in stalls if t >= load_end]
    tail = 0
    for _t, ms in reversed(after):
        if ms > bound_ms:
            break
        tail += 1
    if tail >= STEADY_SAMPLES:
        if tail == len(after):
            progress.recovery_s = 0.0
        else:
            progress.recovery_s = max(0.0, after[len(after) - tail][0] - load_end)
    if progress.recovery_s is None:
        progress.problems.append(
            f"{probe}: the value was not advancing steadily within {recovery_wait_s:g} s after "
            "the load")
    elif progress.recovery_s > recovery_wait_s:
        progress.problems.append(
            f"{probe}: the value advanced steadily again only {progress.recovery_s:.2f} s after "
            f"the load (allowed {recovery_wait_s:g} s)")
    return progress


class HeartbeatWatch:
    """A thread that stops a load when the probe's value stands still too long.

    It polls ``samples`` (the monitor's samples) every ``period_s`` and sets itself (it is a
    :class:`~harness.load.Stoppable`) once the value of a node that was advancing has not
    changed for ``abort_ms``: the monitor's own abort sees latency and failures, not a stale
    value. Use as a context manager around the load; combine with the monitor's flag through
    :class:`~harness.load.AnyStop`.

    :param samples: returns every sample so far (called on the watch's thread only while the
        watch runs).
    :param probe: the monitor probe to watch.
    :param abort_ms: the stall that stops the load.
    """

    def __init__(self, samples: Callable[[], Sequence[Sample]], probe: str, abort_ms: float,
                 period_s: float = 0.05) -> None:
        self._samples = samples
        self.probe = probe
        self.abort_ms = abort_ms
        self.period_s = period_s
        self._set = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reason: str | None = None

    def is_set(self) -> bool:
        """True once the heartbeat stood still longer than ``abort_ms``."""
        return self._set.is_set()

    def _run(self) -> None:
        armed = False
        while not self._stop.wait(self.period_s):
            mine = [s for s in self._samples() if s.probe == self.probe]
            stalls = _stalls(mine[-max(1, int(10 * self.abort_ms / 1000.0 / 0.02)):])
            if not stalls:
                continue
            _t, ms = stalls[-1]
            if ms < self.abort_ms / 4:
                armed = True  # advancing: from now on a stall is the device's
            if armed and ms >= self.abort_ms:
                self.reason = (f"{self.probe}: value unchanged for {ms:.0f} ms (abort threshold "
                               f"{self.abort_ms:g} ms)")
                self._set.set()
                return

    def __enter__(self) -> HeartbeatWatch:
        self._thread = threading.Thread(target=self._run, name="heartbeat-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

