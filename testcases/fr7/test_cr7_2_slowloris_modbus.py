"""CR 7.2 over Modbus/TCP: connections held with incomplete requests (slowloris) do not lock
clients out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.load.connflood import MBAP_PARTIAL
from harness.load.slowloris import BOUND_MARGIN_S, run_slowloris

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.fixtures.modbus import ModbusChannels
    from harness.profile import Profile

pytestmark = pytest.mark.requirement("CR 7.2")

#: The device's request (frame) timeout when the profile does not declare one
#: (``expectations.modbus_frame_timeout_s``): a Modbus request is at most 260 bytes and fits
#: one TCP segment, so 2 s to complete one is generous.
DEFAULT_FRAME_TIMEOUT_S = 2.0


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
    declared = device_profile.expectations.modbus_frame_timeout_s
    host, port, _unit = load.modbus_target()

    def fresh_client() -> tuple[bool, str]:
        health = modbus_channels.probe_tcp()
        return health.ok, health.detail

    result = run_slowloris(load, monitor, evidence, host=host, port=port, partial=MBAP_PARTIAL,
                           bound_s=(declared or DEFAULT_FRAME_TIMEOUT_S) + BOUND_MARGIN_S,
                           fresh_client=fresh_client,
                           waits_for="the rest of an incomplete request")
    result.conclude("under held half-open Modbus/TCP connections")
