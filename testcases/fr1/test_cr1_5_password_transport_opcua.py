"""CR 1.5 over OPC UA: passwords never travel in clear (no UserName token without token
encryption on an unencrypted channel)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 1.5")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.policy_none")
def test_opcua_passwords_never_in_clear(opcua: OpcUa, evidence: Evidence) -> None:
    """No OPC UA endpoint lets a password travel in clear.

    Requirement: CR 1.5 (authenticator management) asks the component to protect authenticators
    from disclosure when they are transmitted. An OPC UA password travels inside a UserName
    identity token; it is protected when the token is encrypted (its user token policy names a
    security policy other than None) or when the channel is (MessageSecurityMode
    SignAndEncrypt). A UserName token policy whose effective policy is None on an endpoint whose
    mode is None or Sign sends the password readable by anyone on the path.

    Where this differs from the issue: the issue lists this under "User tokens" beside CR 1.1
    and CR 1.2; the requirement that names authenticators in transit is CR 1.5. The simulator
    weakness that makes it FAIL, ``opcua.policy_none``, also fails the unsecured-endpoint check
    (CR 3.1): both are true findings (the None endpoint carries everything unsigned, and it
    takes passwords in clear).

    Procedure: GetEndpoints; for every endpoint and every UserName token policy, the effective
    token policy (the declared SecurityPolicyUri, or the endpoint's own when empty) and the
    endpoint's mode are judged. No password is ever sent to find out.

    Pass: no such token policy. Fail: any (the endpoint and the policy id are in the reason).
    """
    endpoints = opcua.endpoints()
    exposed = [(e, t) for e in endpoints for t in e.plaintext_password_tokens()]
    offered = sum(len(e.tokens_of("UserName")) for e in endpoints)
    evidence.note("judgement", username_token_policies=offered,
                  plaintext=[f"{e.policy}/{e.mode} token {t.policy_id!r} "
                             f"(token policy {t.effective_policy})" for e, t in exposed],
                  ok=not exposed)
    assert not exposed, (
        "passwords would travel in clear: " + "; ".join(
            f"endpoint {e.policy}/{e.mode} offers UserName token {t.policy_id!r} with token "
            f"policy {t.effective_policy} on an unencrypted channel" for e, t in exposed))
