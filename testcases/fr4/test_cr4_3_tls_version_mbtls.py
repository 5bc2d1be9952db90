"""CR 4.3 Use of cryptography, over Modbus/TCP Security: no TLS older than 1.2.

The issue lists CR 3.1 (integrity) and CR 4.3 for this. CR 4.3 is the better home: it asks
that cryptography follow accepted, current practice, and TLS 1.0/1.1 are deprecated protocols
(RFC 8996) whose handshake and record protection rest on MD5/SHA-1 constructions; the
Modbus/TCP Security specification itself requires TLS 1.2 or later. CR 3.1 is met by any TLS
version that authenticates records, so a legacy version is not, strictly, an integrity gap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus_tls import Mbtls

pytestmark = pytest.mark.requirement("CR 4.3")

#: Wire number of TLS 1.2: a device selecting anything below it negotiated legacy TLS.
TLS12 = 0x0303


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.legacy_tls")
def test_legacy_tls_versions_refused(mbtls: Mbtls, evidence: Evidence) -> None:
    """TLS 1.0 and 1.1 are refused; only TLS 1.2 or newer can be negotiated.

    Procedure: the harness sends ClientHellos (OpenSSL's own, no client certificate) and reads
    the device's answer, without completing the handshake: the question is which version the
    device *selects*. This needs no test certificates, and a device that selects TLS 1.0 and
    only then fails the handshake for another reason is still caught.

    1. Control: an offer of TLS 1.2 and newer must get a ServerHello selecting TLS 1.2+; else
       the device does not speak modern TLS to us and a refusal below proves nothing (ERROR).
    2. For TLS 1.0 and TLS 1.1 each, the harness first asks its own OpenSSL, without sending
       anything, whether it can build a ClientHello pinned to that version (``@SECLEVEL=0``;
       OpenSSL 3 refuses these versions at its default level, and some builds compile them
       out), and if it can, offers only that version.

    Pass: every legacy offer the harness could make got an alert, a closed connection, or a
    ServerHello for TLS 1.2+ (which a legacy-only client cannot accept). Fail: a ServerHello
    selecting TLS 1.1 or older. If the harness could not offer a legacy version and none of the
    others was selected, the check is ERROR naming what it could not test: it must not pass on
    an inability to test. (On this project's reference machine, OpenSSL 3.0.19 builds both
    TLS 1.0 and TLS 1.1 ClientHellos at ``@SECLEVEL=0``.)
    """
    import ssl

    from harness.protocols.modbus_tls import ClientCapabilityError, can_offer

    control = mbtls.hello(None)
    if control.outcome != "server_hello" or (control.selected_wire or 0) < TLS12:
        raise TargetError(f"control: an offer of TLS 1.2+ got {control.describe()}, so a refusal "
                          "of legacy TLS would prove nothing")
    negotiated: list[str] = []
    refused: list[str] = []
    untestable: list[str] = []
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        capability = can_offer(version)
        evidence.note("local TLS capability", version=capability.version,
                      can_offer=capability.can_offer, detail=capability.detail,
                      client_hello=capability.client_hello)
        if not capability.can_offer:
            untestable.append(f"{capability.version} ({capability.detail})")
            continue
        try:
            probe = mbtls.hello(version)
        except ClientCapabilityError as exc:
            untestable.append(f"{capability.version} ({exc})")
            continue
        if probe.outcome == "server_hello" and (probe.selected_wire or 0) < TLS12:
            negotiated.append(f"{capability.version} offered -> {probe.describe()} "
                              f"(server bytes {probe.server_bytes[:40]}...)")
        else:
            refused.append(f"{capability.version}: {probe.describe()}")
    evidence.note("judgement", control=control.describe(), negotiated=negotiated,
                  refused=refused, untestable=untestable)
    assert not negotiated, f"device selected legacy TLS: {'; '.join(negotiated)}"
    if untestable:
        raise ClientCapabilityError(
            f"refused {', '.join(refused) or 'nothing'}, but could not test "
            f"{'; '.join(untestable)}: this harness's TLS library cannot offer it")
