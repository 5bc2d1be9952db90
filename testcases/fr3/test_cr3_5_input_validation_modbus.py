"""CR 3.5 over Modbus/TCP: invalid requests, malformed MBAP headers and foreign unit ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.protocols import mbap
from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus import ModbusChannels
    from harness.profile import Profile
    from harness.protocols.modbus import Exchange, ModbusTcpClient

pytestmark = pytest.mark.requirement("CR 3.5")

#: Function codes no edition of the Modbus application protocol assigns (public, unassigned).
UNASSIGNED_FUNCTION_CODES = (49, 50, 51, 52, 53, 54, 55, 56)
#: Longest wait for an answer to a malformed frame: any outcome but a dead device is fine.
MALFORMED_WINDOW_S = 0.5


@dataclass(frozen=True)
class _Case:
    """One invalid request and the exception code the Modbus specification prescribes."""

    label: str
    pdu: bytes
    expected: int


def _invalid_requests(profile: Profile, health: int) -> list[_Case]:
    declared = set(profile.expectations.modbus_function_codes)
    illegal_fc = next(fc for fc in UNASSIGNED_FUNCTION_CODES if fc not in declared)
    return [
        _Case(f"illegal function code {illegal_fc}", bytes([illegal_fc, 0, 0, 0, 1]), 1),
        _Case("FC 3 range past the end of the address space (65535 x2)",
              mbap.read_pdu(3, 0xFFFF, 2), 2),
        _Case("FC 3 quantity 0", mbap.read_pdu(3, health, 0), 3),
        _Case("FC 3 quantity 126 (over 125)", mbap.read_pdu(3, health, 126), 3),
        _Case("FC 1 quantity 2001 (over 2000)", mbap.read_pdu(1, 0, 2001), 3),
        _Case("FC 3 PDU cut short (no quantity)", mbap.read_pdu(3, health, 1)[:3], 3),
    ]


def _stopped(frame: bytes, label: str, health: str) -> None:
    """FAIL: the device stopped answering after ``frame``."""
    fail(f"the device stopped answering after {label}: last frame sent {frame.hex()}; "
         f"then {health}")


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.no_input_validation")
def test_modbus_tcp_rejects_invalid_requests(
        modbus: ModbusTcpClient, modbus_channels: ModbusChannels, device_profile: Profile,
        evidence: Evidence) -> None:
    """Illegal function codes, addresses, quantities and short PDUs are refused over Modbus/TCP.

    Requirement: CR 3.5 (input validation), as in the issue.

    Procedure: in well-formed MBAP frames, send an unassigned function code, a read range that
    runs past the end of the 16-bit address space, read quantities 0, 126 registers and 2001
    coils, and an FC 3 request cut short; all are reads, so nothing can be written even by a
    device that does not validate. After each, a health read (the heartbeat register) must be
    answered, on a fresh connection if the device closed this one.

    Pass: no invalid request gets a normal response, and the device answers its health read
    after each one. The specification's exception codes (01 illegal function, 02 address, 03
    quantity) are expected; a *different* exception code is recorded as a deviation from the
    Modbus specification, not a CR 3.5 violation (the input was refused), which is where this
    check is more lenient than the issue's wording. A request dropped without an answer, or a
    closed connection, is also a refusal. A device that stops answering FAILS, with the frame
    that preceded it.
    """
    health = modbus.health_address
    client = modbus
    violations: list[str] = []
    deviations: dict[str, str] = {}
    for case in _invalid_requests(device_profile, health):
        ex = client.exchange(case.pdu, summary=case.label)
        evidence.note("judgement", case=case.label, expected_exception=case.expected,
                      **ex.frames())
        if ex.accepted:
            violations.append(f"{case.label}: answered as valid ({ex.describe()}); request "
                              f"{ex.request.hex()}, reply {ex.reply.hex()}")
        elif ex.response is not None and ex.exception_code != case.expected:
            deviations[case.label] = f"exception {ex.exception_code:02d}, the specification " \
                                     f"says {case.expected:02d}"
        client = modbus_channels.reopen(client)
        check = client.health_read()
        if not check.ok:
            fresh = modbus_channels.probe_tcp()
            if not fresh.ok:
                _stopped(ex.request, case.label, fresh.detail)
    if deviations:
        evidence.note("exception codes differing from the Modbus specification", **deviations)
    if violations:
        fail("invalid Modbus requests accepted: " + "; ".join(violations))


def _malformed_frames(unit: int, health: int, own_units: set[int]) -> list[tuple[str, bytes, bool]]:
    """(label, frame, judged): ``judged`` frames are MBAP-level errors a normal reply FAILS."""
    read = mbap.read_pdu(3, health, 1)
    foreign = [u for u in (unit % 247 + 1, 247, 0) if u not in own_units][:2]
    return [
        ("MBAP length 0", mbap.adu(0x7101, unit, read, length=0), True),
        ("MBAP length 1 (no PDU)", mbap.adu(0x7102, unit, read, length=1), True),
        ("protocol id 1", mbap.adu(0x7103, unit, read, protocol=1), True),
        ("protocol id 0xFFFF", mbap.adu(0x7104, unit, read, protocol=0xFFFF), True),
        ("ADU of 306 bytes (over 260)",
         mbap.adu(0x7105, unit, bytes([16]) + bytes(298)), True),
        ("MBAP length 40 with a 5-byte PDU (the rest never comes)",
         mbap.adu(0x7106, unit, read, length=40), False),
        *[(f"read for unit id {u} (not served)", mbap.adu(0x7107 + i, u, read), False)
          for i, u in enumerate(foreign)],
    ]


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.crash_on_malformed")
@pytest.mark.disruptive(traffic="8 malformed or misaddressed MBAP frames, one per "
                                "connection, each followed by a health read on a new connection")
def test_modbus_tcp_survives_malformed_mbap(
        modbus_channels: ModbusChannels, device_profile: Profile, evidence: Evidence) -> None:
    """Malformed MBAP headers and foreign unit ids are dropped or refused, and the device lives.

    Requirement: CR 3.5 (input validation), as in the issue. Disruptive: a device that fails
    this check stops answering.

    Procedure: first a health read proves the device answers. Then, each on its own new
    connection: MBAP length 0 and 1, protocol id 1 and 0xFFFF, an ADU of 306 bytes (over 260),
    a length announcing more bytes than ever come, then a half-close (a truncated PDU), and
    requests for unit ids the device does not serve. Whatever the device answers within
    0.5 s is recorded (dropping the frame or closing the connection is the expected reaction);
    then a health read on a fresh connection must be answered.

    Pass: the device answers every health read, and answers none of the MBAP-level errors
    (length, protocol id, size) as if it were valid. A device that stops answering FAILS with
    the exact frame that preceded it. Whether foreign unit ids are *answered* is judged by
    ``test_modbus_tcp_ignores_unknown_unit_ids``; here they count only for survival.
    """
    iface = device_profile.interfaces.modbus_tcp
    assert iface is not None  # the protocol marker guarantees it
    first = modbus_channels.probe_tcp()
    if not first.ok:
        raise TargetError(f"the device does not answer before any malformed frame: "
                          f"{first.detail}")
    health = modbus_channels.health_address
    violations: list[str] = []
    for label, frame, judged in _malformed_frames(iface.unit_id, health, {iface.unit_id, 255}):
        client = modbus_channels.connect_tcp()
        ex: Exchange = client.send_frame(frame, summary=label, timeout=MALFORMED_WINDOW_S)
        if label.startswith("MBAP length 40"):
            client.shutdown_write()
            ex2 = client.recv_adu(MALFORMED_WINDOW_S)
            evidence.note("after half-close", outcome=str(ex2[0]), reply=ex2[1].hex() or None)
        modbus_channels.release(client)
        evidence.note("judgement", case=label, **ex.frames())
        if judged and ex.accepted:
            violations.append(f"{label}: answered as if valid ({ex.describe()}); request "
                              f"{ex.request.hex()}, reply {ex.reply.hex()}")
        after = modbus_channels.probe_tcp()
        if not after.ok:
            _stopped(frame, label, after.detail)
    if violations:
        fail("malformed MBAP headers accepted: " + "; ".join(violations))


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.any_unit_id")
def test_modbus_tcp_ignores_unknown_unit_ids(
        modbus: ModbusTcpClient, modbus_channels: ModbusChannels, evidence: Evidence) -> None:
    """Requests for unit ids the device does not serve get no normal answer over Modbus/TCP.

    Requirement: CR 3.5 (input validation). The issue leaves this mapping open. The unit id is
    part of every request's header; a device that serves a request addressed to a station it
    is not accepts input it should have checked, and a gateway that should forward the request
    misleads its client. CR 3.1 (integrity) was considered and not chosen: on TCP nothing is
    corrupted in transit, the device misjudges what it received. CR 7.7 (least functionality)
    would fit a device exposing extra virtual stations; the simulator's weakness is the missing
    check, so CR 3.5.

    Procedure: a health read at the profile's unit id proves the device answers; then a read
    of the heartbeat register for each of two other unit ids (not 0, the serial broadcast
    address many TCP devices also accept, and not 255, the id the Modbus/TCP specification
    reserves for "this device").

    Pass: no foreign unit id gets a normal response. Silence, a closed connection, or an
    exception (a gateway's 0A/0B) are refusals. Low severity on a single device whose
    specification calls the unit id useless on TCP; a real finding on a gateway.
    """
    own = modbus.unit
    first = modbus.health_read()
    if not first.ok:
        raise TargetError(f"the device does not answer its own unit id {own}: {first.detail}")
    candidates = [u for u in (own % 247 + 1, 247, 246) if u not in (own, 0, 255)][:2]
    violations: list[str] = []
    client = modbus
    for unit in candidates:
        ex = client.exchange(mbap.read_pdu(3, modbus.health_address, 1), unit=unit)
        evidence.note("judgement", unit=unit, **ex.frames())
        if ex.accepted:
            violations.append(f"unit id {unit} answered ({ex.describe()}); request "
                              f"{ex.request.hex()}, reply {ex.reply.hex()}")
        client = modbus_channels.reopen(client)  # a closed connection is a refusal too
    if violations:
        fail(f"the device (unit id {own}) serves requests for other unit ids: "
             + "; ".join(violations))
