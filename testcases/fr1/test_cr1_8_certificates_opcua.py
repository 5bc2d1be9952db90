"""CR 1.8 over OPC UA: client application certificates signed by the trusted CA are still
refused when they are outside their validity period or name another ApplicationUri.

CR 1.8 asks the device to use PKI certificates per accepted practice: for OPC UA that is the
certificate validation of Part 4 (validity period, and the ApplicationUri in the SubjectAltName
matching the one the client announces), on top of RFC 5280 path validation. The trust chain and
signature are CR 1.9 (``test_cr1_9_client_certificates_opcua``).

Every certificate here is signed by the CA the device trusts, so the harness needs that CA's
key (``interfaces.opcua.ca_cert`` + ``ca_key``; a test CA installed in the device's trust list
for the test will do). Without it the checks cannot make the certificate they need and are
ERROR, naming the gap: the requirement still applies, the profile is what is missing.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa
    from harness.protocols.opcua import AppCert, Attempt

pytestmark = pytest.mark.requirement("CR 1.8")

#: An ApplicationUri no client announces.
WRONG_URI = "urn:harness:not-the-announced-application"


def _judge(opcua: OpcUa, evidence: Evidence, cert: AppCert) -> Attempt:
    opcua.control("readonly")
    result = opcua.attempt("readonly", cert=cert, label=f"client certificate: {cert.label}")
    evidence.note("judgement", certificate=cert.describe(), details=cert.summary,
                  announced_uri=opcua.pki.application_uri(), accepted=result.accepted,
                  stage=result.stage, status=result.status, ok=not result.accepted)
    return result


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.accepts_untrusted_certs")
def test_opcua_expired_certificate_refused(opcua: OpcUa, evidence: Evidence) -> None:
    """An expired client application certificate signed by the trusted CA is refused.

    Procedure: a control session with the profile's trusted certificate and the read-only
    account must be accepted (else ERROR); then the same set-up with a certificate signed by
    the trusted CA, carrying the announced ApplicationUri, whose validity began 30 days ago and
    ended yesterday.

    Pass: refused (e.g. ``BadCertificateTimeInvalid``). Fail: the session was activated.
    """
    now = dt.datetime.now(dt.UTC)
    ca = opcua.pki.trusted_ca("an expired client certificate")
    cert = opcua.pki.mint("expired OPC UA client", issuer=ca,
                          not_before=now - dt.timedelta(days=30),
                          not_after=now - dt.timedelta(days=1))
    result = _judge(opcua, evidence, cert)
    assert not result.accepted, (
        f"the server activated a session for client certificate {cert.fingerprint}, which "
        f"expired on {cert.summary.get('not_after')}")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.accepts_untrusted_certs")
def test_opcua_not_yet_valid_certificate_refused(opcua: OpcUa, evidence: Evidence) -> None:
    """A not-yet-valid client application certificate signed by the trusted CA is refused.

    Procedure: control session as in the expired check; then a certificate signed by the
    trusted CA whose validity begins tomorrow.

    Pass: refused (e.g. ``BadCertificateTimeInvalid``). Fail: the session was activated.
    """
    now = dt.datetime.now(dt.UTC)
    ca = opcua.pki.trusted_ca("a not-yet-valid client certificate")
    cert = opcua.pki.mint("not-yet-valid OPC UA client", issuer=ca,
                          not_before=now + dt.timedelta(days=1),
                          not_after=now + dt.timedelta(days=366))
    result = _judge(opcua, evidence, cert)
    assert not result.accepted, (
        f"the server activated a session for client certificate {cert.fingerprint}, valid only "
        f"from {cert.summary.get('not_before')}")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.accepts_untrusted_certs")
def test_opcua_wrong_application_uri_refused(opcua: OpcUa, evidence: Evidence) -> None:
    """A trusted client certificate whose ApplicationUri is not the announced one is refused.

    Procedure: control session as in the expired check; then a valid certificate signed by the
    trusted CA whose SubjectAltName names ``urn:harness:not-the-announced-application``, while
    the client announces the profile's ApplicationUri in CreateSession (OPC UA Part 4: the
    server checks they match, so one application cannot pose as another).

    Pass: refused (e.g. ``BadCertificateUriInvalid``). Fail: the session was activated.
    """
    ca = opcua.pki.trusted_ca("a client certificate with another ApplicationUri")
    cert = opcua.pki.mint("wrong-URI OPC UA client", issuer=ca, uri=WRONG_URI)
    result = _judge(opcua, evidence, cert)
    assert not result.accepted, (
        f"the server activated a session for client certificate {cert.fingerprint} naming "
        f"{WRONG_URI} while the client announced {opcua.pki.application_uri()}")
