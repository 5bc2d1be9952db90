"""CR 7.2 over Modbus/TCP: connections held with incomplete requests (slowloris) do not lock
clients out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import TargetError
from harness.verdict import fail, not_run

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.fixtures.modbus import ModbusChannels
    from harness.load import LoadResult
    from harness.profile import Profile

pytestmark = pytest.mark.requirement("CR 7.2")

#: The device's request (frame) timeout when the profile does not declare one
#: (``expectations.modbus_frame_timeout_s``): a Modbus request is at most 260 bytes and fits
#: one TCP segment, so 2 s to complete one is generous.
DEFAULT_FRAME_TIMEOUT_S = 2.0
#: Slack on top of the frame timeout for scheduling and our own probing.
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


@dataclass(frozen=True)
class Probe:
    """One fresh-client attempt."""

    #: Monotonic time the attempt started.
    t: float
    #: True when the fresh connection's heartbeat read was answered.
    served: bool
    #: What was observed.
    detail: str


@dataclass
class Judged:
    """The held connections, sorted by what the device did with them."""

    #: Closed by the device within :data:`CLOSED_AT_ONCE_S` (refused beyond its limit).
    refused: list[int]
    #: Closed by the device within the bound (timed out): ``(index, seconds held)``.
    freed: list[tuple[int, float]]
    #: Closed by the device, but later than the bound.
    freed_late: list[tuple[int, float]]
    #: Still open at the end of the hold, held longer than the bound.
    kept: list[tuple[int, float]]
    #: Still open at the end of the hold, but held too briefly to judge.
    unjudged: list[tuple[int, float]]


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.no_frame_timeout")
@pytest.mark.disruptive(traffic="at most {max_connections:g} Modbus/TCP connections at once, "
                                "opened at most {max_connection_rate:g} per second: all but two "
                                "held with an incomplete MBAP request (one more byte a second) "
                                "for at most {max_load_duration_s:g} s, and a fresh connection "
                                "with one read every 0.25 s")
def test_modbus_tcp_drops_held_half_open_connections(
        load: LoadKit, monitor: EssentialMonitor, modbus_channels: ModbusChannels,
        device_profile: Profile, evidence: Evidence) -> None:
    """Connections held open with a request that never completes are dropped in time.

    Requirement: CR 7.2 (resource management), as in the issue ("connection floods: held
    half-open connections, slowloris style"). A connection slot is a resource: a device that
    waits forever for the rest of a request lets anyone who can reach its port fill its
    connection limit with a handful of idle sockets and lock every legitimate client out, at
    almost no cost to the attacker. A device must bound the time a started request may take.

    Procedure: a heartbeat read on a fresh connection proves the device serves (else ERROR);
    the essential-function monitor holds its own connection and must show a healthy baseline.
    Then the harness opens ``safety.max_connections`` minus two connections (one is left for
    the monitor, one for the fresh probe), at most ``safety.max_connection_rate`` per second,
    sends each an MBAP header announcing 253 more bytes and holds them, trickling one byte a
    second on each (so a timer reset by every byte never fires). Once all are open, a fresh
    connection with one heartbeat read is tried every 0.25 s. The hold lasts long enough to see
    the bound pass, within ``safety.max_load_duration_s``. Afterwards every held
    connection is closed and a fresh connection must be served again (within
    ``safety.recovery_wait_s``).

    The bound: within how long the device must close a connection whose request never arrives
    whole (counted from the connection's opening) and serve fresh clients again (counted from
    the moment every held connection was open): the profile's
    ``expectations.modbus_frame_timeout_s`` (default 2 s) plus 0.5 s. The hold must last the
    bound plus the opening time, so ``safety.max_load_duration_s`` must allow that (about 3 s
    by default); with a shorter cap a device that did not free the connections yet cannot be
    judged (ERROR).

    Pass: every held connection the device accepted was closed by the device within the
    bound (or at once, beyond its connection limit), no fresh client was refused later than
    the bound after the hold was established, at least one fresh client was served while the
    connections were held, the monitor's judgement is within bounds, and a fresh client is
    served after the hold. FAIL names the held connections kept past the bound and the fresh
    clients refused past it; the evidence holds the event timeline
    (``slowloris-events.csv``: each held connection opened and closed, each fresh attempt with
    its outcome) beside the monitor's.
    """
    safety = load.safety
    declared = device_profile.expectations.modbus_frame_timeout_s
    bound = (declared or DEFAULT_FRAME_TIMEOUT_S) + BOUND_MARGIN_S
    host, port, _unit = load.modbus_target()
    first = modbus_channels.probe_tcp()
    if not first.ok:
        raise TargetError(f"the device does not serve a fresh connection before the hold: "
                          f"{first.detail}")
    count = load.caps.connections - RESERVED
    if count < 1:
        not_run(f"safety.max_connections = {load.caps.connections} leaves no connection to "
                f"hold (the monitor and the fresh-client probe need {RESERVED})")
    # opening at the rate cap takes count/rate seconds (twice that, for slack); then the bound,
    # and a few probes past it
    opening_s = 2 * count / load.caps.connection_rate
    hold_s = min(load.caps.duration_s, opening_s + bound + 3 * PROBE_EVERY_S)
    probes: list[Probe] = []

    def fresh_client() -> bool:
        t = time.monotonic()
        health = modbus_channels.probe_tcp()
        probes.append(Probe(t, health.ok, health.detail))
        return health.ok

    result = load.hold_connections(port, host=host, count=count, hold_s=hold_s,
                                   label="slowloris_hold", probe=fresh_client,
                                   probe_every_s=PROBE_EVERY_S)
    verdict = monitor.judge_load(result)
    after = _after_hold(modbus_channels, safety.recovery_wait_s)
    if result.answered == 0:
        raise TargetError(f"the device accepted none of the {result.sent} connections to hold "
                          f"({result.rejected} refused, {result.errors} failed)")
    established_s = result.details["established_s"]
    if established_s is None:
        raise TargetError(f"the {count} connections could not all be opened within the "
                          f"{hold_s:g} s hold ({result.sent} tried)")
    established = result.started + established_s
    end_s = result.ended - result.started
    judged = _judge(result.details["held_log"], end_s, bound)
    late_refused = [p for p in probes if not p.served and p.t - established > bound]
    served = [p for p in probes if p.served]
    first_served = next((round(p.t - established, 2) for p in served), None)
    evidence.timeline("slowloris-events", _timeline(result, probes, after))
    evidence.note("judgement", bound_s=bound, hold_s=round(end_s, 2),
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
            f"the rest of an incomplete request longer than {bound:g} s "
            f"({result.answered} of {count} connections accepted, "
            f"{len(judged.refused)} closed at once)")
    if late_refused:
        worst = max(p.t - established for p in late_refused)
        problems.append(
            f"fresh clients were still refused {worst:.1f} s after the hold was established "
            f"(bound {bound:g} s; {len(late_refused)} of {len(probes)} attempts refused "
            f"past the bound, {len(served)} served): {late_refused[-1].detail}")
    if not verdict.ok:
        problems.append("essential function out of bounds: " + "; ".join(verdict.problems))
    if not after or not after[-1].served:
        problems.append(f"after the held connections were closed, a fresh client was not "
                        f"served within {safety.recovery_wait_s:g} s"
                        + (f": {after[-1].detail}" if after else ""))
    if problems:
        fail("under held half-open Modbus/TCP connections: " + "; ".join(problems))
    if judged.unjudged:
        raise TargetError(
            f"{len(judged.unjudged)} held connection(s) were still open when the hold ended "
            f"after {end_s:.1f} s, held at most {max(s for _, s in judged.unjudged):.1f} s: "
            f"too short to judge against the {bound:g} s bound (raise "
            f"safety.max_load_duration_s to at least "
            f"{opening_s + bound + 3 * PROBE_EVERY_S:.1f} s)")
    if not served:
        raise TargetError(f"no fresh client was served during the {end_s:.1f} s hold and none "
                          f"was tried later than the bound: cannot tell whether the freed "
                          f"connections serve new clients")


def _judge(held_log: list[list[Any]], end_s: float, bound: float) -> Judged:
    """Sort the generator's ``held_log`` (``[opened_s, closed_s]``) against ``bound``."""
    out = Judged([], [], [], [], [])
    for index, (opened, closed) in enumerate(held_log):
        held = round((end_s if closed is None else closed) - opened, 3)
        if closed is None:
            (out.kept if held > bound else out.unjudged).append((index, held))
        elif held <= CLOSED_AT_ONCE_S:
            out.refused.append(index)
        elif held <= bound:
            out.freed.append((index, held))
        else:
            out.freed_late.append((index, held))
    return out


def _after_hold(channels: ModbusChannels, wait_s: float) -> list[Probe]:
    """Fresh clients after the hold until one is served, for at most ``wait_s`` (at least one
    attempt): the device may take a moment to see the held connections closed."""
    end = time.monotonic() + wait_s
    out: list[Probe] = []
    while True:
        t = time.monotonic()
        health = channels.probe_tcp()
        out.append(Probe(t, health.ok, health.detail))
        if health.ok or time.monotonic() >= end:
            return out
        time.sleep(AFTER_EVERY_S)


def _timeline(result: LoadResult, probes: list[Probe], after: list[Probe]) -> list[dict[str, Any]]:
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
