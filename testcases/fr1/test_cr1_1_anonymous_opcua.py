"""CR 1.1 over OPC UA: no session without identifying the user (anonymous refused)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 1.1")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.anonymous")
def test_opcua_refuses_anonymous_sessions(opcua: OpcUa, evidence: Evidence) -> None:
    """The OPC UA server refuses to activate a session with an anonymous identity token.

    Requirement: CR 1.1 (human user identification and authentication) on every interface: an
    anonymous OPC UA session is a user nobody identified. The catalog requires CR 1.1 from SL 1,
    so any FR1 claim needs it.

    Procedure: GetEndpoints (the evidence lists which endpoints advertise an Anonymous token
    policy); a control session with the profile's client certificate and the read-only account
    must be accepted (else ERROR: the secure channel itself must work, or a refusal proves
    nothing); then the same secure channel and CreateSession with an AnonymousIdentityToken in
    ActivateSession. An accepted anonymous session reads the probe node once, so the evidence
    shows what it could see, and is closed.

    Pass: ActivateSession refused (e.g. ``BadIdentityTokenRejected``). An Anonymous policy
    that is advertised but refused is noted, not failed. Fail: the anonymous session was
    activated.
    """
    from harness.protocols.opcua import Identity

    advertised = [f"{e.policy}/{e.mode}" for e in opcua.endpoints() if e.tokens_of("Anonymous")]
    opcua.control("readonly")
    result = opcua.attempt(identity=Identity.anonymous(), keep=True, label="anonymous session")
    seen = None
    if result.session is not None:
        seen = result.session.read(opcua.probe_node())
        result.session.close()
    evidence.note("judgement", anonymous_advertised_on=advertised, accepted=result.accepted,
                  stage=result.stage, status=result.status,
                  anonymous_read=None if seen is None else {"status": seen.status,
                                                            "value": seen.value},
                  ok=not result.accepted)
    assert not result.accepted, (
        "the server activated an anonymous session"
        + (f" (it read {opcua.probe_node()} = {seen.value!r}, {seen.status})" if seen else "")
        + (f"; anonymous advertised on {', '.join(advertised)}" if advertised else ""))
