"""CR 1.9 Strength of public key-based authentication, over Modbus/TCP Security: certificates
that do not chain to the trusted CA are refused.

CR 1.9 asks the device to validate a certificate's signature (a) and its chain up to a trust
anchor (b). Each check shows the device a certificate that fails exactly one of these and
carries the ``ReadWrite`` role, so a device that accepted it would hand out full rights:

- self-signed: no chain at all;
- signed by a CA the device has never seen: a chain to an unknown anchor;
- signed by a forged CA that copies the trusted CA's name but has its own key: the names
  chain, the signature does not (a device matching issuers by name only accepts it).

Certificates signed by the trusted CA but outside their validity period are CR 1.8
(``test_cr1_8_pki_certificates_mbtls``). Revocation (c) needs a CRL or OCSP service the
simulator does not have; it is not tested here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus_tls import Mbtls
    from harness.protocols.modbus_tls import Attempt, ClientIdentity

pytestmark = pytest.mark.requirement("CR 1.9")


def _judge(mbtls: Mbtls, evidence: Evidence, identity: ClientIdentity, what: str) -> Attempt:
    mbtls.control("readonly")
    result = mbtls.attempt(cert=identity)
    evidence.note("judgement", certificate=what, accepted=result.accepted, stage=result.stage,
                  alert=result.alert)
    return result


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.accepts_untrusted_certs")
def test_self_signed_certificate_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """A self-signed client certificate is refused.

    Procedure: control connection with the trusted ReadOnly certificate (must be accepted, else
    ERROR); then a client shows a self-signed certificate (RSA 2048, SHA-256, role
    ``ReadWrite``) and sends one read. Refused = handshake failed or the connection closed
    before any Modbus reply; accepted = any Modbus reply.

    Pass: refused. Fail: accepted.
    """
    identity = mbtls.pki.mint("self-signed ReadWrite client", modbus_role="ReadWrite")
    result = _judge(mbtls, evidence, identity, identity.describe())
    assert not result.accepted, (
        f"device served a client with a self-signed certificate {identity.fingerprint}: "
        f"{result.detail}")


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.accepts_untrusted_certs")
def test_unknown_ca_certificate_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """A client certificate signed by an unknown CA is refused.

    Procedure: control connection with the trusted ReadOnly certificate (must be accepted, else
    ERROR); then a client shows a certificate (role ``ReadWrite``) signed by a CA the harness
    made for this run, which the device cannot know, and sends one read.

    Pass: refused. Fail: accepted (any Modbus reply).
    """
    identity = mbtls.pki.mint("unknown-CA ReadWrite client", issuer=mbtls.pki.unknown_ca(),
                              modbus_role="ReadWrite")
    result = _judge(mbtls, evidence, identity, identity.describe())
    assert not result.accepted, (
        f"device served a client whose certificate {identity.fingerprint} was signed by an "
        f"unknown CA: {result.detail}")


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.accepts_untrusted_certs")
def test_forged_issuer_certificate_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """A client certificate from a forged CA bearing the trusted CA's name is refused.

    Procedure: control connection with the trusted ReadOnly certificate (must be accepted, else
    ERROR); the harness makes a CA whose subject is exactly the trusted CA's subject but whose
    key is its own (no CA key is needed: only the name is copied from ``ca_cert``), signs a
    ``ReadWrite`` client certificate with it, and connects with it.

    Pass: refused (the device checks the signature, not just the issuer name). Fail: accepted.
    """
    from harness import pki

    trusted = mbtls.pki.trusted_ca_cert()
    forged_ca = pki.issue("forged CA", subject=trusted.subject, is_ca=True, client=False)
    identity = mbtls.pki.mint("forged-issuer ReadWrite client", issuer=forged_ca,
                              modbus_role="ReadWrite")
    evidence.note("forged issuer", trusted_ca=pki.describe(trusted),
                  forged_ca=pki.describe(forged_ca.cert))
    result = _judge(mbtls, evidence, identity, identity.describe())
    assert not result.accepted, (
        f"device served a client whose certificate {identity.fingerprint} names the trusted CA "
        f"({trusted.subject.rfc4514_string()}) as issuer but was signed by another key: "
        f"{result.detail}")
