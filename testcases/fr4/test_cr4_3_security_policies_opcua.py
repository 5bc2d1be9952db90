"""CR 4.3 over OPC UA: no deprecated security policy is offered or accepted."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 4.3")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.deprecated_policies")
def test_opcua_offers_no_deprecated_policy(opcua: OpcUa, evidence: Evidence) -> None:
    """The OPC UA server neither offers nor accepts a deprecated security policy.

    Requirement: CR 4.3 (use of cryptography): where cryptography is required, the component
    uses algorithms and key sizes per accepted practice. OPC UA deprecated Basic128Rsa15 (RSA
    PKCS#1 v1.5, SHA-1) and Basic256 (SHA-1 signatures); accepted practice is Basic256Sha256,
    Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss.

    Procedure: GetEndpoints; every endpoint's security policy and every user token policy is
    judged (``endpoints.json`` in the evidence). Then, for each deprecated policy the server
    does *not* advertise, one OpenSecureChannel with it (SignAndEncrypt, the profile's client
    certificate) is tried and closed again: a server that hides a policy but still accepts it
    is caught too (a probe the server leaves unanswered opened no channel). Without a client
    certificate in the profile only the advertised list is judged (said in the evidence).
    SecurityPolicy None is no cryptography at all and is judged by CR 3.1
    (``test_cr3_1_secure_channel_opcua``), server certificate strength by CR 1.9.

    Pass: no endpoint or token policy uses a deprecated policy, and no probe opened a channel.
    Fail: any offered, or a probe's channel opened.
    """
    from harness.protocols.opcua import DEPRECATED_POLICIES, POLICIES, NoAnswer, ProfileGap

    endpoints = opcua.endpoints()
    offered = [e for e in endpoints if e.policy in DEPRECATED_POLICIES]
    tokens = [(e, t) for e in endpoints for t in e.tokens
              if t.effective_policy in DEPRECATED_POLICIES and e.policy not in DEPRECATED_POLICIES]
    unknown = sorted({e.policy for e in endpoints if e.policy not in POLICIES})
    advertised = {e.policy for e in endpoints}
    accepted: list[str] = []
    probed: dict[str, str | None] = {}
    try:
        opcua.pki.application()
    except ProfileGap as gap:
        evidence.note("no hidden-policy probes: the profile has no client certificate",
                      gap=str(gap))
    else:
        for policy in sorted(DEPRECATED_POLICIES - advertised):
            try:
                result = opcua.open_channel(policy, "SignAndEncrypt")
            except NoAnswer:  # some servers ignore a channel request for a policy they lack
                probed[policy] = "no answer (no channel opened)"
                continue
            probed[policy] = result.status
            if result.accepted:
                accepted.append(policy)
    evidence.note("judgement", policies=sorted(advertised), deprecated_endpoints=[
        f"{e.policy}/{e.mode}" for e in offered], deprecated_token_policies=[
        f"{e.policy}/{e.mode} token {t.policy_id!r} ({t.effective_policy})" for e, t in tokens],
        unknown_policies=unknown, hidden_policy_probes=probed, hidden_accepted=accepted,
        ok=not (offered or tokens or accepted))
    problems = [f"endpoint {e.policy}/{e.mode}" for e in offered]
    problems += [f"user token {t.policy_id!r} of {e.policy}/{e.mode} encrypted with "
                 f"{t.effective_policy}" for e, t in tokens]
    problems += [f"{p} not advertised but a {p}/SignAndEncrypt channel was opened"
                 for p in accepted]
    assert not problems, "deprecated OPC UA security policies in use: " + "; ".join(problems)
