"""CR 1.2 Software process and device identification and authentication, over Modbus/TCP
Security: a client that shows no certificate is refused.

The issue groups the certificate checks under CR 1.2, CR 1.8 and CR 1.9; each module serves
one. This one is CR 1.2 proper: the device authenticates the software or device at the other
end of the connection before serving it, and in Modbus/TCP Security that authentication is
the client certificate. The checks on *which* certificates must be refused live in
``test_cr1_9_public_key_validation_mbtls`` (trust chain, signature) and
``test_cr1_8_pki_certificates_mbtls`` (X.509 validity period).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus_tls import Mbtls

pytestmark = pytest.mark.requirement("CR 1.2")


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.accepts_untrusted_certs")
def test_client_without_certificate_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """A Modbus/TCP Security client without a certificate is refused.

    Procedure: a control connection with the trusted ReadOnly certificate must be accepted (a
    device refusing everyone proves nothing: ERROR). Then a client offering TLS 1.2+ and showing
    no certificate connects and sends one read (FC 3, one register).

    Refused means the handshake failed, or the device closed or alerted on the connection before
    any Modbus reply (TLS 1.3 rejects a missing certificate only after the client's side of the
    handshake is done). Accepted means any Modbus reply came, even an exception reply.

    Pass: refused. Fail: accepted.
    """
    mbtls.control("readonly")
    result = mbtls.attempt(None)
    evidence.note("judgement", accepted=result.accepted, stage=result.stage, alert=result.alert)
    assert not result.accepted, (
        f"device served a client that showed no certificate: {result.detail}")
