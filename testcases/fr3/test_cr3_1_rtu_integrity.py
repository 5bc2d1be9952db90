"""CR 3.1 over Modbus RTU: corrupted, misaddressed and broadcast frames do not act on the device."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.protocols import mbap
from harness.verdict import fail, not_run

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus import PointKeeper
    from harness.profile import Profile
    from harness.protocols.modbus import ModbusRtuClient

pytestmark = pytest.mark.requirement("CR 3.1")

#: Modbus RTU broadcast address.
BROADCAST = 0
#: Turnaround delay after a broadcast before the next request (the specification suggests
#: 100 to 200 ms); also the window in which a (forbidden) reply to the broadcast is caught.
TURNAROUND_S = 0.3


def _alive(client: ModbusRtuClient, when: str) -> None:
    """ERROR unless the device answers a valid request: silence must not pass for refusal."""
    health = client.health_read()
    if not health.ok:
        raise TargetError(f"the device does not answer a valid request {when}: {health.detail}")


@pytest.mark.protocol("modbus_rtu")
@pytest.mark.weakness("rtu.ignores_crc")
def test_rtu_frame_with_bad_crc_gets_no_reply(modbus_rtu: ModbusRtuClient,
                                              evidence: Evidence) -> None:
    """A Modbus RTU frame with a wrong CRC is discarded, not answered.

    Requirement: CR 3.1 (communication integrity), as in the issue: the CRC is the RTU line's
    integrity protection, and a device that acts on a frame whose CRC does not match acts on
    data that may have been corrupted in transit.

    Procedure: a valid read of the heartbeat register must be answered; the same read with a
    deliberately wrong CRC must get no reply within the request timeout; a valid read after it
    must be answered again.

    Pass: no reply to the corrupted frame while valid frames are answered before and after.
    Any reply to the corrupted frame FAILS (request and reply recorded).
    """
    _alive(modbus_rtu, "before the test")
    ex = modbus_rtu.exchange(mbap.read_pdu(3, modbus_rtu.health_address, 1), corrupt_crc=True)
    evidence.note("judgement", case="read with a wrong CRC", **ex.frames())
    _alive(modbus_rtu, "after the frame with a wrong CRC")
    if ex.answered:
        fail(f"a frame with a wrong CRC was answered: {ex.describe()}; request "
             f"{ex.request.hex()}, reply {ex.reply.hex()}")


@pytest.mark.protocol("modbus_rtu")
@pytest.mark.weakness("rtu.any_unit_id")
def test_rtu_frame_for_another_unit_gets_no_reply(modbus_rtu: ModbusRtuClient,
                                                  evidence: Evidence) -> None:
    """A Modbus RTU frame addressed to another unit id is ignored.

    Requirement: CR 3.1 (communication integrity), as in the issue: on a multidrop line the
    unit id is what binds a request to one station; a device that acts on frames for other
    stations answers in their place (two replies collide on the line, and the master reads the
    wrong station's data) and can be driven through another station's address.

    Procedure: a valid read at the profile's unit id must be answered; the same read for two
    other unit ids (the next one, and 247) must get no reply within the request timeout; a valid
    read after them must be answered.

    Pass: no reply for the other unit ids while the own unit id is answered before and after.
    """
    own = modbus_rtu.unit
    _alive(modbus_rtu, "at its own unit id")
    violations: list[str] = []
    for unit in [u for u in (own % 247 + 1, 247, 246) if u != own][:2]:
        ex = modbus_rtu.exchange(mbap.read_pdu(3, modbus_rtu.health_address, 1), unit=unit)
        evidence.note("judgement", unit=unit, **ex.frames())
        if ex.answered:
            violations.append(f"unit id {unit}: {ex.describe()}; request {ex.request.hex()}, "
                              f"reply {ex.reply.hex()}")
    _alive(modbus_rtu, "after the frames for other unit ids")
    if violations:
        fail(f"the device (unit id {own}) answers frames for other stations: "
             + "; ".join(violations))


@pytest.mark.protocol("modbus_rtu")
@pytest.mark.weakness("rtu.accepts_broadcast")
@pytest.mark.disruptive(traffic="one broadcast write (unit 0) to a declared scratch register, "
                                "restored")
def test_rtu_broadcast_write_follows_declared_policy(
        modbus_rtu: ModbusRtuClient, modbus_scratch: PointKeeper, device_profile: Profile,
        evidence: Evidence) -> None:
    """A Modbus RTU broadcast write is ignored or executed as the profile declares.

    Requirement: CR 3.1 (communication integrity), as in the issue: a broadcast write is never
    acknowledged, so the master cannot know what each station did with it; a device documented
    to ignore broadcasts must not change its process on one. ``expectations.rtu_broadcast``
    says which behaviour the device documents (``ignore`` by default).

    Procedure: read a declared scratch holding register at the device's unit id; write it a
    different value with FC 6 to unit 0 (broadcast); wait the turnaround delay (0.3 s), catching
    any reply; read the register back. The keeper restores it at teardown.

    Pass: no reply to the broadcast (the specification forbids one), and the read-back shows the
    old value when the policy is ``ignore``, the new value when it is ``execute``.
    """
    reg = modbus_scratch.scratch_address("holding")
    if reg is None:
        not_run("the profile declares no scratch holding register; the harness writes only to "
                "declared scratch points")
    assert reg is not None
    policy = device_profile.expectations.rtu_broadcast
    old = int(modbus_scratch.watch(modbus_rtu)[("holding", reg)])
    new = (old + 1) & 0xFFFF
    frame = mbap.rtu_frame(BROADCAST, mbap.write_single_register_pdu(reg, new))
    modbus_rtu.send_raw(frame, f"FC 6 write HR {reg} = {new} to unit 0 (broadcast)")
    stray = modbus_rtu.recv_frame(TURNAROUND_S)
    after = modbus_rtu.read_registers(reg, 1)[0]
    executed = after == new
    evidence.note("judgement", policy=policy, before=old, written=new, read_back=after,
                  request=frame.hex(), reply=stray.hex() or None)
    problems = []
    if stray:
        problems.append(f"the broadcast was answered ({stray.hex()})")
    if policy == "ignore" and after != old:
        problems.append(f"broadcast write executed although the declared policy is 'ignore': "
                        f"HR {reg} {old} -> {after}")
    if policy == "execute" and not executed:
        problems.append(f"broadcast write not executed although the declared policy is "
                        f"'execute': HR {reg} is {after}, {new} was written")
    if problems:
        fail("; ".join(problems) + f"; request {frame.hex()}")
