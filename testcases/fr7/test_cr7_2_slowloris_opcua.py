"""CR 7.2 over OPC UA: connections held with an unfinished Hello (slowloris) do not lock clients
out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.load.slowloris import BOUND_MARGIN_S, greeting_client, run_slowloris
from harness.protocols.uatcp import hello as opcua_hello
from harness.verdict import not_applicable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.profile import Profile

pytestmark = pytest.mark.requirement("CR 7.2")

#: The device's Hello timeout when the profile does not declare one
#: (``expectations.opcua_hello_timeout_s``): a Hello is one small TCP segment and the
#: OpenSecureChannel follows at once, so 2 s is generous.
DEFAULT_HELLO_TIMEOUT_S = 2.0
#: Bytes of the Hello each held connection sends: the message type and the first half of the
#: message size (OPC 10000-6, 7.1.2.2); the generator then trickles one more byte a second.
PARTIAL_BYTES = 6
#: What a served fresh client receives first: an Acknowledge, final chunk.
ACKNOWLEDGE = b"ACKF"


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.no_hello_timeout")
@pytest.mark.disruptive(traffic="at most {max_connections:g} TCP connections to the OPC UA port "
                                "at once, opened at most {max_connection_rate:g} per second: all "
                                "but two held with the first bytes of a Hello (one more byte a "
                                "second) for at most {max_load_duration_s:g} s, and a fresh "
                                "connection sending a Hello every 0.25 s")
def test_opcua_drops_connections_held_before_hello(
        load: LoadKit, monitor: EssentialMonitor, device_profile: Profile,
        evidence: Evidence) -> None:
    """OPC UA connections held open with an unfinished Hello are dropped in time.

    Requirement: CR 7.2 (resource management), as in the issue ("connection floods: held
    half-open connections, slowloris style, for OPC UA"). A server that waits forever for a
    client's Hello lets anyone who can reach the port hold its connection slots with a
    handful of idle sockets and lock every legitimate client (an HMI, a historian) out. It
    must bound the time a new connection may take to send its Hello and open its secure
    channel.

    Procedure (:func:`harness.load.slowloris.run_slowloris`): a fresh connection whose Hello
    gets an Acknowledge proves the device serves (else ERROR); the essential-function monitor
    must show a healthy baseline. Then the harness opens ``safety.max_connections`` minus two
    connections to the endpoint's port (one is left for the monitor, one for the fresh
    client), at most ``safety.max_connection_rate`` per second, sends each the first six
    bytes of a Hello (``HELF`` and half the message size) and holds them, trickling one byte
    a second on each (so a timer reset by every byte never fires). Once all are open, a fresh
    connection sends a complete Hello every 0.25 s: served when the answer is an Acknowledge.
    The hold lasts long enough to see the bound pass, within ``safety.max_load_duration_s``.
    Afterwards every held connection is closed and a fresh connection must be served again
    (within ``safety.recovery_wait_s``). No secure channel or session is opened.

    The bound: the profile's ``expectations.opcua_hello_timeout_s`` (default 2 s) plus 0.5 s,
    counted from each held connection's opening (it must be closed by then) and from the
    moment every held connection was open (fresh clients must be served again by then). The
    hold must last the bound plus the opening time, so ``safety.max_load_duration_s`` must
    allow that (about 3 s by default); with a shorter cap a device that did not free the
    connections yet cannot be judged (ERROR).

    Pass: every held connection the device accepted was closed by the device within the bound
    (or at once, beyond its connection limit), no fresh client was refused later than the bound
    after the hold was established, at least one fresh client was served while the
    connections were held, the monitor's judgement is within bounds, and a fresh client is
    served after the hold. FAIL names the held connections kept past the bound and the fresh
    clients refused past it; the evidence holds the event timeline (``slowloris-events.csv``)
    beside the monitor's.
    """
    ua = device_profile.interfaces.opcua
    if ua is None:  # selection makes the check NOT APPLICABLE before this runs
        not_applicable("no opcua interface declared in the profile")
        raise AssertionError("unreachable")
    declared = device_profile.expectations.opcua_hello_timeout_s
    hello = opcua_hello(ua.endpoint)
    fresh_client = greeting_client(load.guard, evidence, ua.host, ua.port, request=hello,
                                   served_prefix=ACKNOWLEDGE,
                                   timeout_s=min(1.0, load.safety.request_timeout_s),
                                   channel=ua.endpoint, describe="OPC UA Hello")
    result = run_slowloris(load, monitor, evidence, host=ua.host, port=ua.port,
                           partial=hello[:PARTIAL_BYTES],
                           bound_s=(declared or DEFAULT_HELLO_TIMEOUT_S) + BOUND_MARGIN_S,
                           fresh_client=fresh_client, label="opcua_slowloris_hold",
                           waits_for="the rest of an unfinished Hello")
    result.conclude("under held pre-Hello OPC UA connections")
