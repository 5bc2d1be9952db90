"""CR 1.9 over OPC UA: the server's application instance certificate is strong (RSA 2048 bits
or more, SHA-256 or better)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 1.9")

#: Smallest key per key type (OPC UA's current policies need RSA 2048; EC P-256).
MIN_KEY_BITS = {"RSA": 2048, "EC": 256}
#: Signature hashes no longer accepted.
WEAK_HASHES = frozenset({"md5", "sha1"})


def _weakness(cert: dict[str, Any]) -> list[str]:
    problems = []
    minimum = MIN_KEY_BITS.get(str(cert["key_type"]))
    if minimum is not None and (cert["key_bits"] or 0) < minimum:
        problems.append(f"{cert['key_type']} {cert['key_bits']} bits (minimum {minimum})")
    elif minimum is None and cert["key_type"] not in ("Ed25519", "Ed448"):
        problems.append(f"unknown key type {cert['key_type']}")
    if cert["signature_hash"] in WEAK_HASHES:
        problems.append(f"signed with {cert['signature_hash']}")
    elif cert["signature_hash"] is None and cert["key_type"] not in ("Ed25519", "Ed448"):
        problems.append("unknown signature algorithm")
    return problems


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.weak_server_cert")
def test_opcua_server_certificate_is_strong(opcua: OpcUa, evidence: Evidence) -> None:
    """The OPC UA server certificate has a strong key and a strong signature.

    Requirement: CR 1.9 (strength of public key-based authentication): the server proves its
    identity with its application instance certificate; a short key or a SHA-1 signature makes
    that proof forgeable. OPC UA's current policies (Basic256Sha256, Aes128_Sha256_RsaOaep,
    Aes256_Sha256_RsaPss) require RSA keys of at least 2048 bits and SHA-256 signatures.

    Where this differs from the issue: the issue lists the certificate under the endpoint checks
    with CR 3.1 RE(1), CR 4.1 and CR 4.3; the deprecated *policies* are CR 4.3
    (``test_cr4_3_security_policies_opcua``), and the certificate's strength is the strength of
    the server's public-key authentication, CR 1.9, as for SSH host keys
    (``test_cr1_9_host_key_ssh``).

    Procedure: GetEndpoints; the certificate of every secured endpoint (the first of a chain) is
    described in the evidence: key type and size, signature hash, validity, SubjectAltName URIs
    and its SHA-256 fingerprint. Each distinct certificate is judged once.

    Pass: every certificate has RSA >= 2048 bits (or EC >= 256 bits, or EdDSA) and is not signed
    with MD5 or SHA-1. Fail: any certificate is weaker (its fingerprint is in the reason).
    """
    certs: dict[str, dict[str, Any]] = {}
    unreadable = []
    for ep in opcua.endpoints():
        if not ep.secured:
            continue
        if ep.server_cert is not None:
            certs.setdefault(str(ep.server_cert["fingerprint"]), ep.server_cert)
        elif ep.cert_error:
            unreadable.append(f"{ep.policy}/{ep.mode}: {ep.cert_error}")
    if unreadable:
        raise TargetError("server certificate unreadable: " + "; ".join(unreadable))
    if not certs:
        raise TargetError("no secured endpoint carries a server certificate to judge")
    weak = {fp: problems for fp, cert in certs.items() if (problems := _weakness(cert))}
    evidence.note("judgement", certificates=list(certs.values()), weak=weak, ok=not weak)
    assert not weak, "weak OPC UA server certificate: " + "; ".join(
        f"{fp}: {', '.join(problems)}" for fp, problems in weak.items())
