"""Bounded load generators and the essential-function monitor (FR7: resource availability).

The parts:

- :mod:`harness.load.monitor`: the essential-function monitor. It runs in its *own process*
  (so our own load cannot starve it), polls the profile's essential functions at 50 Hz or more,
  records one sample per poll and trips the shared abort flag when the device degrades past the
  profile's abort threshold;
- :mod:`harness.load.modbus_flood`: Modbus/TCP request flood with its own MBAP framing, many
  requests in flight per connection, several connections, and a ramp;
- :mod:`harness.load.connflood`: connect/close storms and half-open (slowloris) holds;
- :mod:`harness.load.netflood`: SYN flood and malformed IP/TCP packets (raw sockets, root);
- :mod:`harness.load.portscan`: bounded-rate TCP connect scan and UDP probes.

What every generator shares lives here and imports nothing heavy:

- :class:`LoadCaps`: the profile's caps (rate, connections, duration); a generator refuses any
  request above them (:class:`~harness.errors.SafetyViolation`) instead of quietly clamping;
- :class:`Pacer`: never more than ``rate`` events in any one-second window (a sliding-window
  hard cap) and smooth inside the second (a token bucket with a small burst), granting events in
  batches so a generator pays for it once per batch, not once per request;
- :class:`StopFlag`: a one-byte flag in shared memory (a small file mapped by both processes).
  The monitor process sets it on abort; generators poll it in their loops, so the load stops
  within one loop iteration, with no thread or pipe in the way;
- :class:`LoadResult`: what a generator did (sent, answered, errors, achieved rate, why it
  stopped) and its time series for the evidence;
- :func:`why_stop`: the three bounds of a sending loop checked in one call;
- :func:`run_senders` and :func:`senders_for`: a sending loop on several threads sharing one
  pacer, for raw and UDP sends (all kernel work, with the GIL released); connect storms, whose
  Python sockets need the GIL at every connect and close, spread over worker *processes*
  instead (:mod:`harness.load.workers`). Both only above :data:`MULTI_SENDER_RATE`;
- :class:`~harness.load.pool.ConnectionPool` (in :mod:`harness.load.pool`): the selector-driven
  connections under the Modbus/TCP and OPC UA floods.

Every loop that sends traffic here is bounded three ways: a deadline (at most the profile's
``max_load_duration_s``), an optional count, and the stop flag.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from harness.errors import SafetyViolation

if TYPE_CHECKING:
    from harness.profile import Safety

#: Width of the time buckets of a generator's series (seconds).
BUCKET_S = 0.1
#: Longest a generator keeps reading answers after it stopped sending (seconds).
DRAIN_S = 0.25


class Stoppable(Protocol):
    """Anything a generator can poll to know it must stop (a :class:`StopFlag`, an Event)."""

    def is_set(self) -> bool:
        """True once the load must stop."""
        ...


class NeverStop:
    """A stop signal that is never set (for generators run without a monitor)."""

    def is_set(self) -> bool:
        """Always False."""
        return False


class StopFlag:
    """A flag in shared memory: byte 0 is *abort* (set by the monitor or by us), byte 1 is
    *stop the monitor* (set by the parent).

    :param path: the backing file; created (mode 0600) when None, and removed by :meth:`close`.
    """

    SIZE = 16

    def __init__(self, path: Path | None = None) -> None:
        self._owner = path is None
        if path is None:
            fd, name = tempfile.mkstemp(prefix="harness-flag-", suffix=".bin")
            os.write(fd, b"\0" * self.SIZE)
            os.close(fd)
            path = Path(name)
        self.path = path
        with path.open("r+b") as fh:
            self._mm = mmap.mmap(fh.fileno(), self.SIZE)

    def is_set(self) -> bool:
        """True once the abort byte is set."""
        return self._mm[0] != 0

    def set(self) -> None:
        """Set the abort byte."""
        self._mm[0] = 1

    def clear(self) -> None:
        """Clear the abort byte."""
        self._mm[0] = 0

    @property
    def stop_requested(self) -> bool:
        """True once the parent asked the monitor to stop."""
        return self._mm[1] != 0

    def request_stop(self) -> None:
        """Ask the monitor process to stop."""
        self._mm[1] = 1

    def close(self) -> None:
        """Unmap, and remove the file if this object created it."""
        if not self._mm.closed:
            self._mm.close()
        if self._owner:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class LoadCaps:
    """The most load the profile allows (DESIGN.md section 4)."""

    #: Requests per second.
    request_rate: float
    #: New connections per second.
    connection_rate: float
    #: Raw packets per second.
    packet_rate: float
    #: Connections open at once.
    connections: int
    #: Seconds one load may last.
    duration_s: float

    def __post_init__(self) -> None:
        for name in ("request_rate", "connection_rate", "packet_rate", "duration_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LoadCaps.{name} must be > 0, got {getattr(self, name)}")
        if self.connections < 1:
            raise ValueError(f"LoadCaps.connections must be >= 1, got {self.connections}")

    @classmethod
    def from_safety(cls, safety: Safety) -> LoadCaps:
        """The caps of a profile's ``safety`` section."""
        return cls(
            request_rate=safety.max_request_rate,
            connection_rate=safety.max_connection_rate,
            packet_rate=safety.max_packet_rate,
            connections=safety.max_connections,
            duration_s=safety.max_load_duration_s,
        )

    def check(self, **asked: float | None) -> None:
        """Refuse any asked value above its cap (``rate=``, ``connection_rate=``...).

        :raises SafetyViolation: naming the value and its cap.
        """
        names = {
            "request_rate": self.request_rate,
            "connection_rate": self.connection_rate,
            "packet_rate": self.packet_rate,
            "connections": self.connections,
            "duration_s": self.duration_s,
        }
        for key, value in asked.items():
            if value is None:
                continue
            cap = names[key]
            if value > cap:
                raise SafetyViolation(
                    f"safety guard: {key}={value:g} is above the profile's cap {cap:g}"
                )
            if value <= 0:
                raise ValueError(f"{key} must be > 0, got {value:g}")


class Pacer:
    """Grants events so that no one-second window ever holds more than ``rate`` of them.

    Two limits apply together: a token bucket refilled at ``rate`` per second holding at most
    ``burst`` tokens (smoothness; it starts empty), and a sliding one-second window whose
    total never exceeds ``floor(rate)`` minus one burst (the hard guarantee). The burst held
    back covers the one case the window cannot see: a sender preempted between a grant and its
    sends, whose batch then lands later than it was counted; so even on the wire no one-second
    window exceeds ``rate``. The price is a long-run rate one burst (1 %) under the cap.

    One pacer per generator. When ``senders`` threads share it (:func:`run_senders`), each may
    hold a granted batch not yet sent, so one burst per sender is held back, and grants are
    taken under a lock.

    :param rate: events per second (> 0).
    :param burst: bucket size (default: 1 % of the rate, at least 1).
    :param clock: the monotonic clock (tests pass a fake one).
    :param senders: threads that take grants from this pacer (>= 1).
    """

    WINDOW_S = 1.0

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        senders: int = 1,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if senders < 1:
            raise ValueError(f"senders must be >= 1, got {senders}")
        self.rate = float(rate)
        self.burst = max(1.0, burst if burst is not None else rate / 100.0)
        whole = int(rate * self.WINDOW_S)
        reserve = math.ceil(self.burst) * senders
        self.window_cap = whole - reserve if whole > 2 * reserve else max(1, whole // senders)
        self._clock = clock
        self._tokens = 0.0
        self._last = clock()
        self._granted: deque[tuple[float, int]] = deque()
        self._in_window = 0
        self._lock = threading.Lock() if senders > 1 else contextlib.nullcontext()
        self.total = 0

    def _expire(self, now: float) -> None:
        edge = now - self.WINDOW_S
        granted = self._granted
        while granted and granted[0][0] <= edge:
            self._in_window -= granted.popleft()[1]

    def take(self, wanted: int, limit: int | None = None) -> int:
        """Grant up to ``wanted`` events now (possibly 0), and never more than ``limit`` in
        all (over every sender: a count bound shared by threads stays exact)."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._expire(now)
            n = min(wanted, int(self._tokens), self.window_cap - self._in_window)
            if limit is not None:
                n = min(n, limit - self.total)
            if n <= 0:
                return 0
            self._tokens -= n
            self._granted.append((now, n))
            self._in_window += n
            self.total += n
            return n

    def wait_s(self) -> float:
        """Seconds until at least one event may be granted."""
        with self._lock:
            now = self._clock()
            tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
            self._expire(now)
            if self._in_window >= self.window_cap and self._granted:
                wait = max(wait, self._granted[0][0] + self.WINDOW_S - now)
            return max(0.0, wait)


@dataclass
class LoadResult:
    """What one generator run did."""

    #: ``modbus_flood``, ``connect_storm``, ``hold``, ``syn_flood``...
    kind: str
    #: ``host:port`` the load went to.
    target: str
    #: The rate cap the generator ran under (events per second).
    rate_cap: float
    #: Monotonic start and end of the sending phase (system-wide clock, comparable with the
    #: monitor process's sample times).
    started: float = 0.0
    ended: float = 0.0
    #: Requests, connections or packets sent.
    sent: int = 0
    #: Answers (responses, accepted connections) received.
    answered: int = 0
    #: Exception responses (Modbus) or refused connections.
    rejected: int = 0
    #: Timeouts and I/O errors.
    errors: int = 0
    #: Connections the device closed or reset under us.
    disconnects: int = 0
    #: ``duration``, ``count``, ``abort`` (the stop flag) or ``error``.
    stop_reason: str = "duration"
    #: Free-form details (per-connection figures, pipelining decision...).
    details: dict[str, Any] = field(default_factory=dict)
    #: Per bucket: [t since start, sent, answered].
    series: list[list[float]] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Length of the sending phase."""
        return max(0.0, self.ended - self.started)

    @property
    def achieved_rate(self) -> float:
        """Events sent per second."""
        return self.sent / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def answered_rate(self) -> float:
        """Answers per second."""
        return self.answered / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def aborted(self) -> bool:
        """True when the stop flag ended the load."""
        return self.stop_reason == "abort"

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary for the evidence."""
        return {
            "kind": self.kind,
            "target": self.target,
            "rate_cap": self.rate_cap,
            "duration_s": round(self.duration_s, 3),
            "sent": self.sent,
            "answered": self.answered,
            "rejected": self.rejected,
            "errors": self.errors,
            "disconnects": self.disconnects,
            "achieved_rate": round(self.achieved_rate, 1),
            "answered_rate": round(self.answered_rate, 1),
            "stop_reason": self.stop_reason,
            **self.details,
        }

    def rows(self) -> list[dict[str, Any]]:
        """The series as timeline rows."""
        return [{"t": round(t, 3), "sent": int(s), "answered": int(a)} for t, s, a in self.series]


class Series:
    """Accumulates (sent, answered) counts in :data:`BUCKET_S` buckets from a start time."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.rows: list[list[float]] = []

    def add(self, now: float, sent: int = 0, answered: int = 0) -> None:
        """Count ``sent`` and ``answered`` events at ``now``."""
        if not (sent or answered):
            return
        index = int((now - self.start) / BUCKET_S)
        rows = self.rows
        if not rows or round(rows[-1][0] / BUCKET_S) < index:
            rows.append([round(index * BUCKET_S, 3), 0, 0])
        rows[-1][1] += sent
        rows[-1][2] += answered


#: Rate (events per second) from which a sending loop runs on more than one thread: below it
#: one Python thread keeps up with the cap with room to spare, and one sender keeps the pacing
#: simple to reason about.
MULTI_SENDER_RATE = 10_000.0
#: Most sender threads a generator uses. The work of a connect or a raw send is in the kernel,
#: with the GIL released, so threads scale with the cores; beyond two the GIL is the limit.
MAX_SENDERS = 2

_T = TypeVar("_T")


def senders_for(rate: float) -> int:
    """How many threads a sending loop capped at ``rate`` uses (1 below
    :data:`MULTI_SENDER_RATE`, else up to :data:`MAX_SENDERS` and the machine's cores)."""
    if rate < MULTI_SENDER_RATE:
        return 1
    return max(1, min(MAX_SENDERS, os.cpu_count() or 1))


class AnyStop:
    """Set when any of its stop signals is set."""

    def __init__(self, *signals: Stoppable) -> None:
        self.signals = signals

    def is_set(self) -> bool:
        """True once any signal is set."""
        return any(s.is_set() for s in self.signals)


def run_senders(count: int, stop: Stoppable, body: Callable[[int, Stoppable], _T]) -> list[_T]:
    """Run ``body(i, halt)`` for i in 0 .. ``count - 1`` at once, ``body(0, halt)`` on the
    calling thread and the others on their own threads; return their results in order.

    ``halt`` is set when ``stop`` is, and as soon as any body raises (Ctrl-C on the calling
    thread included), so the other senders stop within one batch, not at their deadline. Each
    body must be bounded by itself (deadline, count, ``halt``). The first exception raised is
    raised here, after every thread has ended.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    failed = threading.Event()
    halt = AnyStop(stop, failed)
    if count == 1:
        return [body(0, halt)]
    results: dict[int, _T] = {}
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = body(index, halt)
        except BaseException as exc:  # re-raised on the calling thread below
            failures.append(exc)
            failed.set()

    threads = [threading.Thread(target=run, args=(i,), name=f"harness-sender-{i}", daemon=True)
               for i in range(1, count)]
    for th in threads:
        th.start()
    try:
        run(0)
        for th in threads:
            th.join()
    except BaseException:  # e.g. Ctrl-C while waiting: stop every sender before leaving
        failed.set()
        for th in threads:
            th.join()
        raise
    if failures:
        raise failures[0]
    return [results[i] for i in range(count)]


def merge_series(parts: list[list[list[float]]]) -> list[list[float]]:
    """Several :class:`Series` rows (same start, same buckets) added into one."""
    if len(parts) == 1:
        return parts[0]
    buckets: dict[float, list[float]] = {}
    for rows in parts:
        for t, sent, answered in rows:
            row = buckets.setdefault(t, [t, 0, 0])
            row[1] += sent
            row[2] += answered
    return [buckets[t] for t in sorted(buckets)]


def why_stop(
    stop: Stoppable, now: float, deadline: float, done: int = 0, limit: int | None = None
) -> str | None:
    """Why a bounded loop must end now, in this order: ``"abort"`` (``stop`` is set),
    ``"duration"`` (``now`` reached ``deadline``), ``"count"`` (``done`` reached ``limit``);
    None while it may go on. One call per loop iteration (per batch, not per event).
    """
    if stop.is_set():
        return "abort"
    if now >= deadline:
        return "duration"
    if limit is not None and done >= limit:
        return "count"
    return None


class Batches:
    """The grant loop of a simple sender: ``for now, n in Batches(...)`` yields each batch the
    pacer grants (``n`` events, granted at ``now``), sleeping while it grants none, until a
    bound ends the loop; :attr:`reason` then says which one (as :func:`why_stop`).

    :param pacer: grants events (shared by every sender of one load).
    :param stop: the stop signal.
    :param deadline: monotonic end of the load.
    :param batch: most events per batch.
    :param limit: most events in all (over every sender of the pacer), or None.
    """

    def __init__(self, pacer: Pacer, stop: Stoppable, deadline: float, batch: int,
                 limit: int | None = None) -> None:
        self.pacer, self.stop, self.deadline = pacer, stop, deadline
        self.batch, self.limit = batch, limit
        #: Why the loop ended (``duration`` until it has).
        self.reason = "duration"

    def __iter__(self) -> Iterator[tuple[float, int]]:
        pacer, deadline = self.pacer, self.deadline
        while True:
            now = time.monotonic()
            stopped = why_stop(self.stop, now, deadline, pacer.total, self.limit)
            if stopped is not None:
                self.reason = stopped
                return
            n = pacer.take(self.batch, self.limit)
            if n == 0:
                time.sleep(min(pacer.wait_s(), max(0.0, deadline - now), 0.05))
                continue
            yield now, n


def open_tcp(address: str, port: int, timeout_s: float) -> socket.socket:
    """A connected TCP socket (Nagle off) to an address the guard has already allowed."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def child_env() -> dict[str, str]:
    """The environment for a helper process (the monitor, a load worker) that must import this
    very ``harness`` package: ours, with the package's folder first on ``PYTHONPATH``."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def is_root() -> bool:
    """True when raw sockets are available (root)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0
