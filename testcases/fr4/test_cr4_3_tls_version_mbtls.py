"""CR 4.3 Use of cryptography, over Modbus/TCP Security: no TLS older than 1.2.

The issue lists CR 3.1 (integrity) and CR 4.3 for this. CR 4.3 is the better home: it asks
that cryptography follow accepted, current practice, and TLS 1.0/1.1 are deprecated protocols
(RFC 8996) whose handshake and record protection rest on MD5/SHA-1 constructions; the
Modbus/TCP Security specification itself requires TLS 1.2 or later. CR 3.1 is met by any TLS
version that authenticates records, so a legacy version is not, strictly, an integrity gap.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus_tls import Mbtls

pytestmark = pytest.mark.requirement("CR 4.3")

LEGACY_VERSIONS = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.legacy_tls")
def test_legacy_tls_versions_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """TLS 1.0 and 1.1 are refused; only TLS 1.2 or newer can be negotiated.

    Procedure: a control connection offering TLS 1.2+ with the trusted ReadOnly certificate must
    be accepted (else the check cannot tell a refusal of the version from a refusal of
    everything: ERROR). Then, for TLS 1.0 and TLS 1.1 each, the harness first asks its own
    OpenSSL, without sending anything, whether it can build a ClientHello pinned to that version
    (``@SECLEVEL=0``; OpenSSL 3 refuses these versions at its default level, and some builds
    compile them out), and if it can, offers only that version with the same certificate.

    Pass: every legacy version the harness could offer was refused (the handshake failed, or the
    connection closed before a Modbus reply). Fail: any legacy version was negotiated. If the
    harness could offer neither legacy version, or only one of them and that one was refused,
    the check is ERROR naming what it could not test: it must not pass on an inability to
    test. (On this project's reference machine, OpenSSL 3.0 offers both at ``@SECLEVEL=0``.)
    """
    from harness.protocols.modbus_tls import ClientCapabilityError, can_offer

    control = mbtls.control("readonly")
    negotiated: list[str] = []
    refused: list[str] = []
    untestable: list[str] = []
    for version in LEGACY_VERSIONS:
        capability = can_offer(version)
        evidence.note("local TLS capability", version=capability.version,
                      can_offer=capability.can_offer, detail=capability.detail,
                      client_hello=capability.client_hello)
        if not capability.can_offer:
            untestable.append(f"{capability.version} ({capability.detail})")
            continue
        try:
            result = mbtls.attempt("readonly", tls_version=version)
        except ClientCapabilityError as exc:
            untestable.append(f"{capability.version} ({exc})")
            continue
        if result.accepted:
            hs = result.handshake
            negotiated.append(f"{capability.version} offered -> {hs.version if hs else '?'} "
                              f"{hs.cipher if hs else ''}".strip())
        else:
            refused.append(f"{capability.version} ({result.stage})")
    evidence.note("judgement", negotiated=negotiated, refused=refused, untestable=untestable,
                  control=control.handshake.version if control.handshake else None)
    assert not negotiated, (
        f"device negotiated legacy TLS and served Modbus over it: {'; '.join(negotiated)}")
    if untestable:
        raise ClientCapabilityError(
            f"refused {', '.join(refused) or 'nothing'}, but could not test "
            f"{'; '.join(untestable)}: this harness's TLS library cannot offer it")
