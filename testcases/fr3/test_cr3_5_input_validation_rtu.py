"""CR 3.5 over Modbus RTU: over-long, truncated and garbage frames do not stop the device."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.protocols import mbap
from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.protocols.modbus import ModbusRtuClient

pytestmark = pytest.mark.requirement("CR 3.5")

#: Longest wait for a reply to a malformed frame (none is expected; any is recorded).
MALFORMED_WINDOW_S = 0.3


def malformed_frames(unit: int, health: int) -> list[tuple[str, bytes]]:
    """(label, bytes) of every malformed frame, all addressed to the device's own unit id."""
    valid = mbap.rtu_frame(unit, mbap.read_pdu(3, health, 1))
    over_long_pdu = bytes([16]) + (health).to_bytes(2, "big") + bytes(297)
    return [
        ("over-long frame (304 bytes, over 256)", mbap.rtu_frame(unit, over_long_pdu)),
        ("truncated frame (5 of 8 bytes of a read)", valid[:5]),
        ("runt frame (2 bytes)", valid[:2]),
        ("frame with a PDU cut short but a valid CRC",
         mbap.rtu_frame(unit, mbap.read_pdu(3, health, 1)[:3])),
        ("256 bytes of 0xFF (line noise)", b"\xff" * 256),
    ]


@pytest.mark.protocol("modbus_rtu")
@pytest.mark.weakness("rtu.crash_on_malformed")
@pytest.mark.disruptive(traffic="5 malformed RTU frames, each followed by a health read")
def test_rtu_survives_malformed_frames(modbus_rtu: ModbusRtuClient, evidence: Evidence) -> None:
    """Over-long, truncated and garbage Modbus RTU frames do not stop the device.

    Requirement: CR 3.5 (input validation), as in the issue. Disruptive: a device that fails
    this check stops answering on its serial line.

    Procedure: a health read (the heartbeat register) proves the device answers. Then, each
    separated by the inter-frame silence: a 304-byte frame (over the 256 an RTU frame may hold)
    with a valid CRC, the first 5 bytes of a read request, a 2-byte runt, a read whose PDU is
    cut short but whose CRC is valid, and 256 bytes of 0xFF. Whatever comes back within 0.3 s is
    recorded; then a health read must be answered.

    Pass: the device answers every health read. A device that stops answering FAILS, with the
    exact frame that preceded it. (A normal answer to the short PDU is judged by CR 3.5 on
    Modbus/TCP; the bundled serial device shares that engine.)
    """
    first = modbus_rtu.health_read()
    if not first.ok:
        raise TargetError(f"the device does not answer before any malformed frame: "
                          f"{first.detail}")
    for label, frame in malformed_frames(modbus_rtu.unit, modbus_rtu.health_address):
        modbus_rtu.send_raw(frame, label)
        reply = modbus_rtu.recv_frame(MALFORMED_WINDOW_S)
        evidence.note("judgement", case=label, request=frame.hex(), reply=reply.hex() or None)
        health = modbus_rtu.health_read()
        if not health.ok:
            fail(f"the device stopped answering after the {label}: last frame sent "
                 f"{frame.hex()}; then {health.detail}")
