"""CR 1.8 Public key infrastructure certificates, over Modbus/TCP Security: certificates
outside their validity period are refused, even when the trusted CA signed them.

CR 1.8 asks the device to use PKI certificates as X.509 (RFC 5280) defines them; the validity
period is part of that certificate path validation. The chain and signature checks are CR 1.9
(``test_cr1_9_public_key_validation_mbtls``).

Both certificates here are signed by the CA the device trusts, so the harness needs that CA's
key (``interfaces.modbus_tls.ca_key``; a test CA installed on the device for the test will do).
Without it the checks cannot make the certificate they need and are ERROR, naming the gap:
the requirement still applies, the profile is what is missing.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus_tls import Mbtls

pytestmark = pytest.mark.requirement("CR 1.8")


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.accepts_untrusted_certs")
def test_expired_certificate_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """An expired client certificate signed by the trusted CA is refused.

    Procedure: control connection with the trusted ReadOnly certificate (must be accepted, else
    ERROR); then a client shows a ``ReadWrite`` certificate signed by the trusted CA whose
    validity ended a day ago (it began 30 days ago), and sends one read. Refused = handshake
    failed or the connection closed before any Modbus reply.

    Pass: refused. Fail: accepted (any Modbus reply).
    """
    ca = mbtls.pki.trusted_ca("an expired certificate")
    now = dt.datetime.now(dt.UTC)
    identity = mbtls.pki.mint("expired ReadWrite client", issuer=ca, modbus_role="ReadWrite",
                              not_before=now - dt.timedelta(days=30),
                              not_after=now - dt.timedelta(days=1))
    mbtls.control("readonly")
    result = mbtls.attempt(cert=identity)
    evidence.note("judgement", certificate=identity.describe(),
                  not_after=identity.summary.get("not_after"), accepted=result.accepted,
                  stage=result.stage, alert=result.alert)
    assert not result.accepted, (
        f"device served a client whose certificate expired on "
        f"{identity.summary.get('not_after')}: {result.detail}")


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.accepts_untrusted_certs")
def test_not_yet_valid_certificate_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """A client certificate signed by the trusted CA but not yet valid is refused.

    Procedure: as for the expired certificate, with a validity that begins tomorrow and ends in
    30 days.

    Pass: refused. Fail: accepted (any Modbus reply).
    """
    ca = mbtls.pki.trusted_ca("a not-yet-valid certificate")
    now = dt.datetime.now(dt.UTC)
    identity = mbtls.pki.mint("not-yet-valid ReadWrite client", issuer=ca,
                              modbus_role="ReadWrite", not_before=now + dt.timedelta(days=1),
                              not_after=now + dt.timedelta(days=30))
    mbtls.control("readonly")
    result = mbtls.attempt(cert=identity)
    evidence.note("judgement", certificate=identity.describe(),
                  not_before=identity.summary.get("not_before"), accepted=result.accepted,
                  stage=result.stage, alert=result.alert)
    assert not result.accepted, (
        f"device served a client whose certificate is valid only from "
        f"{identity.summary.get('not_before')}: {result.detail}")
