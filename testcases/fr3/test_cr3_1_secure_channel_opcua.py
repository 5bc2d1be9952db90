"""CR 3.1 over OPC UA: every endpoint protects the integrity of what it carries (no
SecurityPolicy None, no MessageSecurityMode None)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 3.1")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.policy_none")
def test_opcua_offers_no_unsecured_endpoint(opcua: OpcUa, evidence: Evidence) -> None:
    """The OPC UA server offers no endpoint without message security.

    Requirement: CR 3.1 (communication integrity): the component protects the integrity of
    transmitted information. An endpoint with SecurityPolicy None or MessageSecurityMode None
    carries every request (writes included) unsigned: anyone on the path can alter it. The
    catalog requires CR 3.1 from SL 1, so any FR3 claim makes this check applicable.

    Where this differs from the issue: the issue also names CR 4.1 (confidentiality) and CR 3.1
    RE(1); a Sign-only endpoint keeps integrity and authenticity but not confidentiality, and
    the simulator's hardened posture offers Sign endpoints, so the check judges integrity
    (CR 3.1), which None lacks on every count. The password that a None endpoint lets travel in
    clear is judged by CR 1.5 (``test_cr1_5_password_transport_opcua``).

    Procedure: GetEndpoints (over the discovery channel, which is always None); every endpoint
    is listed in the evidence (``endpoints.json``: policy, mode, user token policies, server
    certificate). When no unsecured endpoint is offered, one CreateSession is also sent on a
    SecurityPolicy None channel without a client certificate (no ActivateSession, so no
    credentials): a server that does not advertise None but creates sessions on it anyway is
    caught too. A created session is closed at once.

    Pass: no endpoint with policy or mode None, and CreateSession on a None channel refused.
    Fail: either.
    """
    endpoints = opcua.endpoints()
    unsecured = [e for e in endpoints if not e.secured]
    probe = opcua.probe_insecure_session() if not unsecured else None
    evidence.note("judgement", endpoints=[f"{e.policy}/{e.mode}" for e in endpoints],
                  unsecured=[e.describe() for e in unsecured],
                  none_channel_session=None if probe is None else probe.status,
                  ok=not unsecured and (probe is None or not probe.accepted))
    assert not unsecured, (
        "the server offers endpoints without message security: "
        + "; ".join(f"{e.policy}/{e.mode} ({e.url})" for e in unsecured))
    assert probe is not None and not probe.accepted, (
        "the server advertises no None endpoint but created a session on a SecurityPolicy None "
        f"channel: {probe.detail if probe else ''}")
