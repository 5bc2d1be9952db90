"""CR 7.1 over Modbus/TCP: the essential function survives a request flood and a connect storm."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit

pytestmark = pytest.mark.requirement("CR 7.1")


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("load.fragile")
@pytest.mark.disruptive(traffic="Modbus/TCP reads at most {max_request_rate:g} requests/s over "
                                "up to 4 connections (many in flight each) for at most "
                                "{max_load_duration_s:g} s")
def test_modbus_request_flood(load: LoadKit, monitor: EssentialMonitor,
                              evidence: Evidence) -> None:
    """The essential function stays within bounds under a Modbus/TCP request flood.

    Requirement: CR 7.1 (denial-of-service protection): the component keeps its essential
    functions, possibly degraded, under a DoS event. A request flood at the rate the profile
    allows is the DoS a Modbus device meets first; "possibly degraded" is the device's choice
    (it may drop or refuse requests), but the essential function, as the profile defines it,
    must stay within its bounds.

    Procedure: the monitor (its own process, 50 Hz) polls the profile's essential functions and
    must show a healthy baseline. Then FC 3 reads of the heartbeat register are sent at the
    profile's ``max_request_rate`` for ``max_load_duration_s`` over up to 4 connections, with
    many requests in flight on each when the device pipelines (strict request/response when it
    does not). If the monitor sees the device degrade past ``safety.abort`` the load stops at
    once. Then the monitor watches the recovery for up to ``safety.recovery_wait_s``.

    Pass: every monitor sample taken during the flood was within bounds (answered within its
    bound, heartbeat not stalled beyond ``max_stall_ms``) and the function was ok and steady
    again within ``recovery_wait_s``. Otherwise FAIL, with the monitor's figures in the reason
    and the whole timeline (``monitor.csv``) in the evidence.
    """
    flood = load.modbus_flood()
    verdict = monitor.judge_load(flood)
    evidence.note("judgement", offered_rate=flood.rate_cap,
                  achieved_rate=round(flood.achieved_rate, 1),
                  answered_rate=round(flood.answered_rate, 1), ok=verdict.ok,
                  stop_reason=flood.stop_reason)
    monitor.require(verdict, f"under a Modbus request flood of {flood.sent} requests at "
                             f"{flood.achieved_rate:.0f} req/s ({flood.answered} answered)")


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("load.fragile")
@pytest.mark.disruptive(traffic="TCP connect/close to the Modbus/TCP port at most "
                                "{max_connection_rate:g} connections/s for at most "
                                "{max_load_duration_s:g} s")
def test_modbus_connection_storm(load: LoadKit, monitor: EssentialMonitor,
                                 evidence: Evidence) -> None:
    """The essential function stays within bounds under a TCP connection storm on the Modbus port.

    Requirement: CR 7.1, as above, for the other cheap DoS: new connections, each accepted and
    torn down (a device may refuse them; it must not lose its essential function).

    Procedure: healthy baseline; then connect and close (orderly FIN) to the Modbus/TCP port at
    ``max_connection_rate`` for ``max_load_duration_s``, stopping at once on the monitor's
    abort; then watch the recovery for up to ``recovery_wait_s``.

    Pass: as for the request flood: every sample during the storm within bounds, recovered in
    time. Otherwise FAIL with the monitor's figures and timeline.
    """
    host, port, _unit = load.modbus_target()
    storm = load.connect_storm(port, host=host)
    verdict = monitor.judge_load(storm)
    evidence.note("judgement", offered_rate=storm.rate_cap,
                  achieved_rate=round(storm.achieved_rate, 1), established=storm.answered,
                  refused=storm.rejected, ok=verdict.ok, stop_reason=storm.stop_reason)
    monitor.require(verdict, f"under a connection storm of {storm.sent} connections at "
                             f"{storm.achieved_rate:.0f}/s ({storm.answered} established, "
                             f"{storm.rejected} refused)")
