"""Slowloris checks (CR 7.2): connections held half-open must not lock fresh clients out.

The protocol-independent part of every "held half-open connections" check: the protocol check
supplies what an incomplete request looks like on its wire (``partial``), how a fresh client
is tried (``fresh_client``) and the bound within which the device must drop a connection whose
request never completes; :func:`run_slowloris` does the rest and returns a
:class:`SlowlorisResult` whose :meth:`~SlowlorisResult.conclude` states the verdict.

What :func:`run_slowloris` does:

1. one fresh client must be served first (else ERROR: the device could not be judged);
2. ``safety.max_connections`` minus :data:`RESERVED` connections (one is left for the
   essential-function monitor, one for the fresh client) are opened at most
   ``safety.max_connection_rate`` per second, each sent ``partial`` and held, one more byte a
   second trickled on each (a timer that every byte restarts never fires); once all are open,
   a fresh client is tried every :data:`PROBE_EVERY_S` (see
   :meth:`harness.fixtures.load.LoadKit.hold_connections`). The hold lasts long enough to see
   the bound pass, within ``safety.max_load_duration_s``;
3. the monitor judges the hold; after it, fresh clients are tried until one is served, at most
   ``safety.recovery_wait_s``;
4. every held connection is sorted by what the device did with it (:func:`judge_held`): closed
   at once (beyond its connection limit), closed within the bound (timed out), closed too late,
   kept open past the bound, or held too briefly to judge. The evidence gets the timeline
   ``slowloris-events.csv`` (:func:`timeline`) and a ``judgement`` note.

:func:`greeting_client` makes a fresh client out of one request and the first bytes of the
answer that proves service (an OPC UA Hello and its Acknowledge), over a guarded socket.

Verdict (:meth:`SlowlorisResult.conclude`): FAIL when a held connection outlived the bound,
a fresh client was refused later than the bound after the hold was established, the monitor
saw the essential function out of bounds, or no fresh client was served after the hold;
otherwise ERROR when a held connection was held too briefly to judge or no fresh client was
served during the hold; otherwise PASS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.errors import TargetError
from harness.load import open_tcp
from harness.verdict import fail, not_run

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.load import LoadResult
    from harness.safety import Guard

#: Slack on top of the device's timeout for scheduling and our own probing.
BOUND_MARGIN_S = 0.5
#: Seconds between two fresh-client probes during the hold.
PROBE_EVERY_S = 0.25
#: A held connection the device closes within this many seconds was refused (beyond its
#: connection limit), not timed out.
CLOSED_AT_ONCE_S = 0.5
#: Connections of ``safety.max_connections`` not held: the monitor's and the fresh probe's.
RESERVED = 2
#: Seconds between two fresh-client probes after the hold (waiting for the device to notice
#: that the held connections were closed).
AFTER_EVERY_S = 0.2

#: A fresh client: opens one new connection, tries to be served, closes it; returns (served,
#: what was observed). It must never raise for a device that refuses it, and must be bounded by
#: short timeouts (the generator does nothing else while it runs).
FreshClient = Callable[[], tuple[bool, str]]


@dataclass(frozen=True)
class Probe:
    """One fresh-client attempt."""

    #: Monotonic time the attempt started.
    t: float
    #: True when the fresh client was served.
    served: bool
    #: What was observed.
    detail: str


@dataclass
class Judged:
    """The held connections, sorted by what the device did with them."""

    #: Closed by the device within :data:`CLOSED_AT_ONCE_S` (refused beyond its limit).
    refused: list[int] = field(default_factory=list)
    #: Closed by the device within the bound (timed out): ``(index, seconds held)``.
    freed: list[tuple[int, float]] = field(default_factory=list)
    #: Closed by the device, but later than the bound.
    freed_late: list[tuple[int, float]] = field(default_factory=list)
    #: Still open at the end of the hold, held longer than the bound.
    kept: list[tuple[int, float]] = field(default_factory=list)
    #: Still open at the end of the hold, but held too briefly to judge.
    unjudged: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class SlowlorisResult:
    """The judged outcome of one hold; :meth:`conclude` turns it into the verdict."""

    #: The bound the held connections and the fresh clients were judged against (seconds).
    bound_s: float
    #: The generator's result (``details["held_log"]``, ``details["probes"]``...).
    hold: LoadResult
    #: The held connections, sorted.
    judged: Judged
    #: Fresh clients tried during the hold.
    probes: list[Probe]
    #: Fresh clients tried after the hold (the last one decides recovery).
    after: list[Probe]
    #: Violations (FAIL reasons), empty when none was observed.
    problems: list[str]
    #: Why the check cannot decide (ERROR), when it has no violation to report.
    undecided: str | None

    @property
    def passed(self) -> bool:
        """True when nothing was violated and the outcome could be judged."""
        return not self.problems and self.undecided is None

    def conclude(self, context: str) -> None:
        """FAIL with ``context: <problems>``, raise :class:`TargetError` (ERROR) when the
        outcome cannot be judged, else return (PASS)."""
        __tracebackhide__ = True
        if self.problems:
            fail(f"{context}: " + "; ".join(self.problems))
        if self.undecided is not None:
            raise TargetError(self.undecided)


def run_slowloris(load: LoadKit, monitor: EssentialMonitor, evidence: Evidence, *, host: str,
                  port: int, partial: bytes, bound_s: float, fresh_client: FreshClient,
                  waits_for: str, label: str = "slowloris_hold",
                  probe_every_s: float = PROBE_EVERY_S) -> SlowlorisResult:
    """Hold half-open connections to ``host:port`` and judge them against ``bound_s``.

    :param load: the check's generators (caps, guard, monitor's abort flag).
    :param monitor: the essential-function monitor (judges the hold).
    :param evidence: where the timeline and the judgement go.
    :param host: the device's address.
    :param port: the port to hold connections on.
    :param partial: the incomplete request each held connection sends first.
    :param bound_s: seconds within which the device must close a held connection (counted
        from its opening) and serve fresh clients again (counted from the moment every held
        connection was open).
    :param fresh_client: one fresh-client attempt (see :data:`FreshClient`).
    :param waits_for: what the device would be waiting for, for the FAIL message ("the rest of
        an incomplete request").
    :param label: the load's name in the evidence.
    :param probe_every_s: seconds between two fresh clients during the hold.
    :raises TargetError: no fresh client was served before the hold, the device accepted none
        of the held connections, or they could not all be opened within the hold.
    """
    safety = load.safety
    served_first, detail = fresh_client()
    if not served_first:
        raise TargetError(f"the device does not serve a fresh connection before the hold: "
                          f"{detail}")
    count = load.caps.connections - RESERVED
    if count < 1:
        not_run(f"safety.max_connections = {load.caps.connections} leaves no connection to "
                f"hold (the monitor and the fresh-client probe need {RESERVED})")
    # opening at the rate cap takes count/rate seconds (twice that, for slack); then the bound,
    # and a few probes past it
    opening_s = 2 * count / load.caps.connection_rate
    wanted_s = opening_s + bound_s + 3 * probe_every_s
    hold_s = min(load.caps.duration_s, wanted_s)
    probes: list[Probe] = []

    def probe() -> bool:
        t = time.monotonic()
        ok, seen = fresh_client()
        probes.append(Probe(t, ok, seen))
        return ok

    result = load.hold_connections(port, host=host, count=count, hold_s=hold_s, partial=partial,
                                   label=label, probe=probe, probe_every_s=probe_every_s)
    verdict = monitor.judge_load(result)
    after = after_hold(fresh_client, safety.recovery_wait_s)
    if result.answered == 0:
        raise TargetError(f"the device accepted none of the {result.sent} connections to hold "
                          f"({result.rejected} refused, {result.errors} failed)")
    established_s = result.details["established_s"]
    if established_s is None:
        raise TargetError(f"the {count} connections could not all be opened within the "
                          f"{hold_s:g} s hold ({result.sent} tried)")
    established = result.started + established_s
    end_s = result.ended - result.started
    judged = judge_held(result.details["held_log"], end_s, bound_s)
    late_refused = [p for p in probes if not p.served and p.t - established > bound_s]
    served = [p for p in probes if p.served]
    first_served = next((round(p.t - established, 2) for p in served), None)
    evidence.timeline("slowloris-events", timeline(result, probes, after))
    evidence.note("judgement", bound_s=bound_s, hold_s=round(end_s, 2),
                  established_after_s=established_s, held_requested=count,
                  accepted=result.answered, refused_at_connect=result.rejected,
                  connect_errors=result.errors, closed_at_once=len(judged.refused),
                  freed_in_time=[s for _, s in judged.freed],
                  freed_late=[s for _, s in judged.freed_late],
                  kept_open=[s for _, s in judged.kept],
                  unjudged=[s for _, s in judged.unjudged],
                  fresh_probes=len(probes), fresh_served=len(served),
                  first_fresh_served_after_s=first_served,
                  fresh_refused_past_bound=len(late_refused),
                  monitor_ok=verdict.ok, served_after_hold=after[-1].served if after else None)
    problems: list[str] = []
    if judged.kept or judged.freed_late:
        longest = max(s for _, s in judged.kept + judged.freed_late)
        problems.append(
            f"{len(judged.kept)} held connection(s) still open after up to {longest:.1f} s and "
            f"{len(judged.freed_late)} closed only later than the bound: the device waits for "
            f"{waits_for} longer than {bound_s:g} s "
            f"({result.answered} of {count} connections accepted, "
            f"{len(judged.refused)} closed at once)")
    if late_refused:
        worst = max(p.t - established for p in late_refused)
        problems.append(
            f"fresh clients were still refused {worst:.1f} s after the hold was established "
            f"(bound {bound_s:g} s; {len(late_refused)} of {len(probes)} attempts refused "
            f"past the bound, {len(served)} served): {late_refused[-1].detail}")
    if not verdict.ok:
        problems.append("essential function out of bounds: " + "; ".join(verdict.problems))
    if not after or not after[-1].served:
        problems.append(f"after the held connections were closed, a fresh client was not "
                        f"served within {safety.recovery_wait_s:g} s"
                        + (f": {after[-1].detail}" if after else ""))
    undecided: str | None = None
    if judged.unjudged:
        undecided = (
            f"{len(judged.unjudged)} held connection(s) were still open when the hold ended "
            f"after {end_s:.1f} s, held at most {max(s for _, s in judged.unjudged):.1f} s: "
            f"too short to judge against the {bound_s:g} s bound (raise "
            f"safety.max_load_duration_s to at least {wanted_s:.1f} s)")
    elif not served:
        undecided = (f"no fresh client was served during the {end_s:.1f} s hold and none "
                     f"was tried later than the bound: cannot tell whether the freed "
                     f"connections serve new clients")
    return SlowlorisResult(bound_s, result, judged, probes, after, problems, undecided)


def judge_held(held_log: list[list[Any]], end_s: float, bound_s: float) -> Judged:
    """Sort the generator's ``held_log`` (``[opened_s, closed_s]``) against ``bound_s``."""
    out = Judged()
    for index, (opened, closed) in enumerate(held_log):
        held = round((end_s if closed is None else closed) - opened, 3)
        if closed is None:
            (out.kept if held > bound_s else out.unjudged).append((index, held))
        elif held <= CLOSED_AT_ONCE_S:
            out.refused.append(index)
        elif held <= bound_s:
            out.freed.append((index, held))
        else:
            out.freed_late.append((index, held))
    return out


def after_hold(fresh_client: FreshClient, wait_s: float) -> list[Probe]:
    """Fresh clients after the hold until one is served, for at most ``wait_s`` (at least one
    attempt): the device may take a moment to see the held connections closed."""
    end = time.monotonic() + wait_s
    out: list[Probe] = []
    while True:
        t = time.monotonic()
        served, detail = fresh_client()
        out.append(Probe(t, served, detail))
        if served or time.monotonic() >= end:
            return out
        time.sleep(AFTER_EVERY_S)


def timeline(result: LoadResult, probes: list[Probe], after: list[Probe]) -> list[dict[str, Any]]:
    """One row per event, seconds from the start of the hold; ``held_open``: held connections
    the device still had open after the event."""
    events: list[tuple[float, int, str, str, str]] = []
    for index, (opened, closed) in enumerate(result.details["held_log"]):
        events.append((opened, 0, "held connection opened", str(index), ""))
        if closed is not None:
            how = "at once" if closed - opened <= CLOSED_AT_ONCE_S else "timed out"
            events.append((closed, 1, f"closed by the device ({how})", str(index),
                           f"after {closed - opened:.3f} s"))
    end_s = round(result.ended - result.started, 3)
    still = result.details.get("still_open_at_end", 0)
    events.append((end_s, 2, "hold ended", "", f"{still} still open, closed by the harness"))
    for p in probes:
        events.append((round(p.t - result.started, 3), 3,
                       "fresh client served" if p.served else "fresh client refused", "",
                       p.detail))
    for p in after:
        events.append((round(p.t - result.started, 3), 3,
                       "after the hold: fresh client " + ("served" if p.served else "refused"),
                       "", p.detail))
    rows: list[dict[str, Any]] = []
    held_open = 0
    for t, kind, event, connection, detail in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == 0:
            held_open += 1
        elif kind in (1, 2):
            held_open = 0 if kind == 2 else held_open - 1
        rows.append({"t": t, "event": event, "connection": connection, "held_open": held_open,
                     "detail": detail})
    return rows


def greeting_client(guard: Guard, evidence: Evidence, host: str, port: int, *, request: bytes,
                    served_prefix: bytes, timeout_s: float, channel: str,
                    describe: str) -> FreshClient:
    """A fresh client that sends ``request`` on a new connection and is served when the answer
    starts with ``served_prefix``; the connection is closed again.

    Every attempt asks the guard first (a refusal raises) and is recorded in ``evidence`` (what
    was sent, and the first bytes of the answer or what happened instead). At most
    ``len(served_prefix)`` bytes are read, within ``timeout_s`` for the connect and as much
    again for the answer.

    :param describe: the request in words, for the evidence ("OPC UA Hello").
    """
    need = len(served_prefix)
    if need < 1:
        raise ValueError("served_prefix must not be empty")

    def attempt() -> tuple[bool, str]:
        address = guard.check_destination(host, port)
        try:
            sock = open_tcp(address, port, timeout_s)
        except OSError as exc:
            evidence.received(channel, None, f"fresh connection failed: {exc}")
            return False, f"fresh connection failed: {exc}"
        got = b""
        try:
            sock.sendall(request)
            evidence.sent(channel, request, f"fresh connection: {describe}")
            deadline = time.monotonic() + timeout_s
            while len(got) < need:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(need - len(got))
                if not chunk:
                    break
                got += chunk
        except TimeoutError:
            detail = f"no answer within {timeout_s:g} s ({len(got)} bytes)"
        except OSError as exc:
            detail = f"connection error: {exc} ({len(got)} bytes)"
        else:
            if got == served_prefix:
                evidence.received(channel, got, "fresh connection served")
                return True, f"answered {got!r}"
            detail = (f"the device closed the connection ({len(got)} bytes)"
                      if len(got) < need else f"answered {got!r}, not {served_prefix!r}")
        finally:
            sock.close()
        evidence.received(channel, got or None, f"fresh connection refused: {detail}")
        return False, detail

    return attempt
