"""Connection floods: connect/close storms and half-open (slowloris) holds.

- :func:`connect_storm`: open and close connections as fast as the cap allows (``close="fin"``
  for an orderly close, ``"rst"`` for an abortive one that leaves no TIME_WAIT behind), with an
  optional greeting sent first (:func:`ssh_greeting`, :func:`opcua_hello`) so the device's
  protocol stack, not only its TCP stack, does work for every connection;
- :func:`hold_connections`: open up to ``count`` connections, send each an incomplete request
  (by default an MBAP header announcing 253 more bytes) and keep them open, trickling one byte
  per connection every ``trickle_s`` so that an idle timer alone does not free them; records how
  many the device accepted, closed at once, or closed later (and when), and, with a ``probe``,
  whether a fresh client is served while the connections are held.

Bounds: connection rate (:class:`~harness.load.Pacer`), total time ``duration_s`` / ``hold_s``,
optional ``max_connections`` count, the stop flag; every socket is closed before returning.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.load import (
    Batches,
    LoadResult,
    NeverStop,
    Pacer,
    Series,
    Stoppable,
    senders_for,
    why_stop,
)
from harness.protocols.uatcp import hello

if TYPE_CHECKING:
    from harness.safety import Guard

#: Incomplete MBAP header: transaction 1, protocol 0, length 254 (253 PDU bytes still to come).
MBAP_PARTIAL = struct.pack(">HHH", 1, 0, 254)
#: Most connections one hold may keep open.
MAX_HOLD = 1024
_LINGER_RST = struct.pack("ii", 1, 0)
#: Connections granted to a storm sender at once (it checks its bounds once per batch: a
#: batch lasts a few milliseconds at full speed).
_STORM_BATCH = 32


def ssh_greeting() -> bytes:
    """An SSH identification string (RFC 4253 section 4.2)."""
    return b"SSH-2.0-harness_load\r\n"


def opcua_hello(endpoint_url: str) -> bytes:
    """An OPC UA Hello message (OPC 10000-6, 7.1.2.3) for ``endpoint_url``: the codec's
    :func:`harness.protocols.uatcp.hello`, with its default limits."""
    return hello(endpoint_url)


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def connect_storm(host: str, port: int, *, guard: Guard, rate: float, duration_s: float,
                  payload: bytes | None = None, close: str = "fin", timeout_s: float = 3.0,
                  max_connections: int | None = None, stop: Stoppable | None = None,
                  kind: str = "connect_storm", workers: int | None = None) -> LoadResult:
    """Connect and close at most ``rate`` times per second for ``duration_s``.

    ``sent`` counts attempts, ``answered`` established connections, ``rejected`` refused ones,
    ``errors`` timeouts and other failures.

    ``workers`` processes share the rate cap and the count (default:
    :func:`~harness.load.senders_for` the rate, so one below a few thousand per second): a
    connection's cost is the kernel's, so a second process nearly doubles what one Python loop
    reaches (:mod:`harness.load.workers`).
    """
    if close not in ("fin", "rst"):
        raise ValueError(f"close must be 'fin' or 'rst', got {close!r}")
    address = guard.check_destination(host, port)
    count = workers if workers is not None else senders_for(rate)
    if count > 1:
        from harness.load.workers import merge, run_in_processes, split

        start = time.monotonic()
        limits = split(max_connections, count) if max_connections is not None else [None] * count
        shares = [{"host": host, "port": port, "rate": rate / count, "payload_hex":
                   payload.hex() if payload else None, "close": close, "timeout_s": timeout_s,
                   "max_connections": limit, "kind": kind, "workers": 1} for limit in limits]
        parts = run_in_processes("connect_storm", count, guard=guard, stop=stop or NeverStop(),
                                 deadline=start + duration_s, shares=shares)
        return merge(parts, kind, f"{host}:{port}", rate)
    stop = stop or NeverStop()
    pacer = Pacer(rate)
    start = time.monotonic()
    deadline = start + duration_s
    result = LoadResult(kind, f"{host}:{port}", rate, started=start)
    result.details.update({"close": close, "payload_bytes": len(payload or b"")})
    series = Series(start)
    errors: dict[str, int] = {}
    family = _family(address)
    dest = (address, port)
    rst = close == "rst"
    sol, linger, sndtimeo = socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_SNDTIMEO
    make = socket.socket
    sent = established = refused = failed = 0
    batches = Batches(pacer, stop, deadline, _STORM_BATCH, max_connections)
    for now, n in batches:
        # A blocking connect bounded by SO_SNDTIMEO: one system call, no poll (Linux).
        timeout = max(0.05, min(timeout_s, deadline - now))
        tv = struct.pack("ll", int(timeout), int((timeout % 1) * 1e6))
        before = established
        tried = 0
        for _ in range(n):
            sock = make(family, socket.SOCK_STREAM)
            if rst:
                sock.setsockopt(sol, linger, _LINGER_RST)
            sock.setsockopt(sol, sndtimeo, tv)
            tried += 1
            try:
                sock.connect(dest)
                established += 1
                if payload:
                    sock.send(payload)
            except ConnectionRefusedError:
                refused += 1
            except OSError as exc:
                failed += 1
                key = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                errors[key] = errors.get(key, 0) + 1
                # A device gone silent makes each connect wait its timeout: re-check the bounds
                # now, not after the whole batch.
                if time.monotonic() >= deadline or stop.is_set():
                    break
            finally:
                sock.close()
        sent += tried
        series.add(now, tried, established - before)
    result.sent, result.answered, result.rejected, result.errors = (sent, established, refused,
                                                                    failed)
    result.ended = time.monotonic()
    result.stop_reason = batches.reason
    result.series = series.rows
    if errors:
        result.details["error_kinds"] = errors
    return result


def hold_connections(host: str, port: int, *, guard: Guard, count: int, connection_rate: float,
                     hold_s: float, partial: bytes = MBAP_PARTIAL, trickle_s: float | None = 1.0,
                     timeout_s: float = 3.0, stop: Stoppable | None = None,
                     kind: str = "hold_connections", probe: Callable[[], bool] | None = None,
                     probe_every_s: float = 0.5) -> LoadResult:
    """Open up to ``count`` connections (paced), send ``partial`` on each and hold them.

    The whole run (opening included) lasts at most ``hold_s``. ``answered`` counts connections
    established, ``disconnects`` those the device closed while we held them, ``rejected``
    refused connects.

    With ``probe``: once every connection has been tried (the hold is *established*),
    ``probe()`` is called every ``probe_every_s`` until the hold ends; it stands for a fresh
    client trying its luck (it opens one connection, so each call takes one grant of the same
    pacer: held connections and probes together stay within ``connection_rate``) and returns
    True when that client was served. The generator does nothing else while a probe runs, so
    a probe should be bounded by short timeouts.

    ``details``: ``established_s`` (seconds from the start until every connection was tried;
    None if the hold ended first), ``held_log`` (``[opened_s, closed_s]`` per established
    connection, seconds from the start; ``closed_s`` None when it was still open at the end and
    we closed it), ``probes`` (``[t_s, served, held_open]`` per probe: seconds from the start,
    the probe's outcome, our connections open at that moment), ``closed_by_device_after_s``
    (the first 50 closes, seconds after each connection's own opening), ``max_open_at_once``
    and ``still_open_at_end``.
    """
    if not 1 <= count <= MAX_HOLD:
        raise ValueError(f"count must be 1..{MAX_HOLD}, got {count}")
    if probe is not None and not probe_every_s > 0:
        raise ValueError(f"probe_every_s must be > 0, got {probe_every_s}")
    address = guard.check_destination(host, port)
    family = _family(address)
    stop = stop or NeverStop()
    pacer = Pacer(connection_rate)
    start = time.monotonic()
    deadline = start + hold_s
    result = LoadResult(kind, f"{host}:{port}", connection_rate, started=start)
    series = Series(start)
    sel = selectors.DefaultSelector()
    opened_at: dict[socket.socket, float] = {}
    log_index: dict[socket.socket, int] = {}
    held_log: list[list[float | None]] = []
    probes: list[list[float | bool | int]] = []
    closed_after: list[float] = []
    max_open = 0
    established: float | None = None
    next_probe = 0.0
    next_trickle = start + (trickle_s or hold_s)
    reason = "duration"
    try:
        while True:
            now = time.monotonic()
            stopped = why_stop(stop, now, deadline)
            if stopped is not None:
                reason = stopped
                break
            if established is None and result.sent >= count:
                established = now
                next_probe = now
            probe_due = probe is not None and established is not None and now >= next_probe
            if probe is not None and probe_due and pacer.take(1):
                next_probe = now + probe_every_s
                served = bool(probe())
                probes.append([round(now - start, 3), served, len(opened_at)])
                continue
            if result.sent < count and pacer.take(1):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.settimeout(max(0.05, min(timeout_s, deadline - now)))
                result.sent += 1
                try:
                    sock.connect((address, port))
                    if partial:
                        sock.send(partial)
                except ConnectionRefusedError:
                    result.rejected += 1
                    sock.close()
                except OSError:
                    result.errors += 1
                    sock.close()
                else:
                    sock.setblocking(False)
                    opened_at[sock] = time.monotonic()
                    log_index[sock] = len(held_log)
                    held_log.append([round(opened_at[sock] - start, 3), None])
                    sel.register(sock, selectors.EVENT_READ)
                    result.answered += 1
                    series.add(now, 1, 1)
                max_open = max(max_open, len(opened_at))
            if trickle_s is not None and now >= next_trickle:
                next_trickle = now + trickle_s
                for sock in list(opened_at):
                    with contextlib.suppress(OSError):
                        sock.send(b"\0")
            wait = 0.01 if result.sent < count else min(0.05, max(0.0, deadline - now))
            if probe_due:  # waiting for the pacer's grant
                wait = min(wait, max(0.005, pacer.wait_s()))
            elif probe is not None and established is not None:
                wait = min(wait, max(0.0, next_probe - now))
            if not opened_at:
                time.sleep(wait)
                continue
            for key, _mask in sel.select(wait):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue  # an answer to a partial request: keep holding
                closed = time.monotonic()
                closed_after.append(round(closed - opened_at.pop(sock), 3))
                held_log[log_index.pop(sock)][1] = round(closed - start, 3)
                sel.unregister(sock)
                sock.close()
                result.disconnects += 1
    finally:
        still_open = len(opened_at)
        for sock in list(opened_at):
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(sock)
            sock.close()
        sel.close()
    result.ended = time.monotonic()
    result.stop_reason = reason
    result.series = series.rows
    result.details.update({"requested": count, "max_open_at_once": max_open,
                           "still_open_at_end": still_open,
                           "closed_by_device_after_s": closed_after[:50],
                           "established_s": None if established is None
                           else round(established - start, 3),
                           "held_log": held_log})
    if probe is not None:
        result.details["probes"] = probes
    return result
