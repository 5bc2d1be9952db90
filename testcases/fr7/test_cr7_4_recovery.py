"""CR 7.4 over Modbus/TCP: after a disruption the device comes back by itself to its known state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.fixtures.modbus import modbus_points
from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.fixtures.modbus import ModbusChannels
    from harness.profile import ModbusPoints, Profile

pytestmark = pytest.mark.requirement("CR 7.4")


def _read_state(channels: ModbusChannels, points: list[ModbusPoints]) -> dict[str, list[int]]:
    """The values of ``points`` read on a fresh connection (closed again)."""
    client = channels.connect_tcp()
    try:
        out: dict[str, list[int]] = {}
        for p in points:
            key = f"{p.table} {p.address}..{p.address + p.count - 1}"
            if p.table == "holding":
                out[key] = client.read_registers(p.address, p.count)
            else:
                out[key] = [int(b) for b in client.read_bits(p.address, p.count)]
        return out
    finally:
        channels.release(client)


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("load.fragile")
@pytest.mark.disruptive(traffic="Modbus/TCP reads at most {max_request_rate:g} requests/s over "
                                "up to 4 connections for at most {max_load_duration_s:g} s, and "
                                "reads of the declared protected points before and after")
def test_recovery_after_modbus_flood(load: LoadKit, monitor: EssentialMonitor,
                                     modbus_channels: ModbusChannels, device_profile: Profile,
                                     evidence: Evidence) -> None:
    """After a request flood the device recovers within recovery_wait_s, in its known state.

    Requirement: CR 7.4 (control system recovery and reconstitution): after a disruption the
    component returns to a known secure state. Over the wire that means: once the disruption
    ends, the essential function is back and steady without anyone restarting the device, within
    the time the profile allows (``safety.recovery_wait_s``), and the configuration it protects
    is what it was (the declared protected points read the same). How the function behaved
    *during* the flood is CR 7.1's question, not this one: a device that degrades under load but
    comes straight back passes here.

    Procedure: read the profile's protected Modbus points on a fresh connection; healthy baseline
    on the monitor; FC 3 flood at ``max_request_rate`` for ``max_load_duration_s`` (stopped at
    once by the monitor's abort); then the monitor watches for up to ``recovery_wait_s``; then a
    fresh connection reads the protected points again.

    Pass: every essential function ok and steady within ``recovery_wait_s`` after the flood
    ended, and every protected point unchanged. Otherwise FAIL with the recovery time (or "not
    recovered") and the values that changed.
    """
    points = modbus_points(device_profile.points.protected)
    before = _read_state(modbus_channels, points) if points else {}
    flood = load.modbus_flood()
    verdict = monitor.judge_load(flood)
    evidence.note("judgement", recovered=verdict.recovered, recovery_s=verdict.recovery_s,
                  recovery_wait_s=verdict.recovery_wait_s, flood_stop=flood.stop_reason,
                  during_ok=verdict.within_bounds)
    if not verdict.recovered:
        took = ("did not recover" if verdict.recovery_s is None
                else f"took {verdict.recovery_s:.2f} s to recover")
        fail(f"after a Modbus request flood ({flood.sent} requests at "
             f"{flood.achieved_rate:.0f} req/s, ended by {flood.stop_reason}) the essential "
             f"function {took}; allowed {verdict.recovery_wait_s:g} s (safety.recovery_wait_s)")
    if not points:
        evidence.note("known state", compared=False,
                      reason="the profile declares no protected Modbus points to compare")
        return
    after = _read_state(modbus_channels, points)
    changed = {k: {"before": before[k], "after": v} for k, v in after.items() if v != before[k]}
    evidence.note("known state", compared=True, changed=changed)
    if changed:
        fail(f"the device recovered but its protected points changed: {changed}")
