"""CR 7.1 RE(1) over Modbus/TCP: the device manages a rising communication load."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.load import LoadResult
    from harness.load.monitor import Sample

pytestmark = pytest.mark.requirement("CR 7.1 RE(1)")

#: Steps of the ramp: cap/16, cap/8, cap/4, cap/2, cap.
STEPS = 5


def _first_degradation(samples: list[Sample], start: float, end: float) -> float | None:
    """When the essential function first went wrong in ``[start, end]``: for a stalled
    heartbeat, the moment the counter stopped (sample time minus its stall), else the time of
    the first failed sample."""
    for s in samples:
        if start <= s.t <= end and not s.ok:
            if s.stall_ms is not None and s.error.startswith("stalled"):
                return s.t - s.stall_ms / 1000.0
            return s.t
    return None


def _step_at(steps: list[LoadResult], t: float) -> int:
    for i, step in enumerate(steps):
        if t <= step.ended:
            return i
    return len(steps) - 1


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("load.fragile")
@pytest.mark.disruptive(traffic="Modbus/TCP reads ramping from 1/16 of {max_request_rate:g} up to "
                                "{max_request_rate:g} requests/s in 5 steps, at most "
                                "{max_load_duration_s:g} s in all")
def test_modbus_load_ramp(load: LoadKit, monitor: EssentialMonitor, evidence: Evidence) -> None:
    """The essential function stays within bounds at every step of a request ramp to the cap.

    Requirement: CR 7.1 RE(1) (manage communication load, from SL 2): the component mitigates
    the effect of message flooding, i.e. it manages the load it is offered rather than letting it
    reach the essential function. The ramp shows *where* a device stops managing: the first step
    at which the essential function degrades is its breaking point, reported with the offered
    and the answered rate of each step (a device that manages load may answer fewer requests
    than offered; that is its choice and is reported, not judged).

    Procedure: healthy baseline; then one set of connections (pipelined where the device allows)
    carries FC 3 reads at cap/16, cap/8, cap/4, cap/2 and the cap (``max_request_rate``), each
    step for ``max_load_duration_s / 5``; the monitor's abort stops the ramp at once. Then the
    recovery is watched for up to ``recovery_wait_s``.

    Pass: every monitor sample during the whole ramp within bounds and recovered in time. A FAIL
    names the step during which the function first degraded (for a stalled heartbeat, the step
    in which the counter stopped, not the one in which the stall exceeded its bound).
    """
    steps = load.modbus_ramp(steps=STEPS)
    table = [{"step": i + 1, "offered_rate": round(s.rate_cap, 1),
              "achieved_rate": round(s.achieved_rate, 1),
              "answered_rate": round(s.answered_rate, 1), "stop_reason": s.stop_reason}
             for i, s in enumerate(steps)]
    evidence.note("ramp", steps=table)
    verdict = monitor.judge(steps[0].started, steps[-1].ended, label="modbus_ramp")
    if verdict.ok:
        evidence.note("judgement", ok=True, steps_completed=len(steps))
        return
    first = _first_degradation(monitor.samples(), steps[0].started, steps[-1].ended)
    where = ""
    if first is not None:
        i = _step_at(steps, first)
        where = (f"first degraded during step {i + 1} of {STEPS} (offered "
                 f"{steps[i].rate_cap:.0f} req/s, achieved {steps[i].achieved_rate:.0f}); ")
    evidence.note("judgement", ok=False, breaking_point=where, problems=verdict.problems)
    fail(f"the essential function did not stay within bounds under a rising load: {where}"
         + "; ".join(verdict.problems))
