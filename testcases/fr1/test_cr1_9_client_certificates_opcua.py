"""CR 1.9 over OPC UA: client application certificates that do not chain to a trusted CA are
refused (self-signed and not in the trust list, or signed by an unknown CA).

CR 1.9 asks the device to validate a certificate's signature and its chain up to a trust
anchor. Each check shows the device a client application certificate that fails exactly that
and is otherwise right (RSA 2048, SHA-256, the announced ApplicationUri in its SubjectAltName),
and activates the session with the read-only account, so a device that accepted it would serve
a client it cannot know. Certificates signed by the trusted CA but invalid in other ways
(validity period, ApplicationUri) are CR 1.8 (``test_cr1_8_certificates_opcua``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa
    from harness.protocols.opcua import AppCert, Attempt

pytestmark = pytest.mark.requirement("CR 1.9")


def _judge(opcua: OpcUa, evidence: Evidence, cert: AppCert) -> Attempt:
    opcua.control("readonly")
    result = opcua.attempt("readonly", cert=cert, label=f"client certificate: {cert.label}")
    evidence.note("judgement", certificate=cert.describe(), details=cert.summary,
                  accepted=result.accepted, stage=result.stage, status=result.status,
                  ok=not result.accepted)
    return result


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.accepts_untrusted_certs")
def test_opcua_self_signed_certificate_refused(opcua: OpcUa, evidence: Evidence) -> None:
    """An untrusted self-signed client application certificate is refused.

    Procedure: a control session with the profile's trusted client certificate and the
    read-only account must be accepted (else ERROR: a device refusing everyone proves nothing);
    then the same session set-up with a freshly made self-signed certificate (never installed
    in the device's trust list). Refused = OpenSecureChannel, CreateSession or ActivateSession
    answered with a Bad status, or the connection closed after the Hello.

    Pass: refused (the status, e.g. ``BadCertificateUntrusted``, is in the evidence). Fail: the
    session was activated.
    """
    cert = opcua.pki.mint("self-signed OPC UA client")
    result = _judge(opcua, evidence, cert)
    assert not result.accepted, (
        f"the server activated a session for a self-signed, untrusted client certificate "
        f"{cert.fingerprint}")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.accepts_untrusted_certs")
def test_opcua_unknown_ca_certificate_refused(opcua: OpcUa, evidence: Evidence) -> None:
    """A client application certificate signed by an unknown CA is refused.

    Procedure: control session as in the self-signed check; then a session set-up with a
    certificate signed by a CA the harness made for this run (which the device cannot know).

    Pass: refused. Fail: the session was activated.
    """
    cert = opcua.pki.mint("unknown-CA OPC UA client", issuer=opcua.pki.unknown_ca())
    result = _judge(opcua, evidence, cert)
    assert not result.accepted, (
        f"the server activated a session for client certificate {cert.fingerprint}, signed by "
        f"an unknown CA ({cert.summary.get('issuer')})")
