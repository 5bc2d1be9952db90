"""CR 1.2 over plain Modbus/TCP: a client that has not authenticated cannot write."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.protocols import mbap
from harness.verdict import fail, not_run

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus import ModbusChannels, PointKeeper
    from harness.protocols.modbus import Exchange, ModbusTcpClient

pytestmark = pytest.mark.requirement("CR 1.2")


def _judge(ex: Exchange, what: str, before: int, after: int) -> str | None:
    """The violation a write exchange shows, or None when the write was refused."""
    if ex.answered and ex.response is None:
        raise TargetError(f"{what}: undecodable reply {ex.reply.hex()}: {ex.problem}")
    frames = f"request {ex.request.hex()}, reply {ex.reply.hex() or 'none'}"
    if ex.accepted:
        return (f"{what} without authentication was acknowledged ({ex.describe()}); "
                f"read-back {after} (was {before}); {frames}")
    if after != before:
        return f"{what} without authentication changed the value {before} -> {after} " \
               f"although the device answered {ex.describe()}; {frames}"
    return None


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.unauthenticated_writes")
@pytest.mark.disruptive(traffic="one write to a declared scratch register and one to a declared "
                                "scratch coil over plain Modbus/TCP, both restored")
def test_plain_modbus_tcp_refuses_unauthenticated_writes(
        modbus: ModbusTcpClient, modbus_channels: ModbusChannels, modbus_scratch: PointKeeper,
        evidence: Evidence) -> None:
    """Plain Modbus/TCP refuses writes from a client that never authenticated.

    Requirement: CR 1.2 (identify and authenticate software processes and devices, from SL 2)
    applies to every client of the component, and a Modbus/TCP master is a software process or
    device. Plain Modbus/TCP has no authentication at all, so a device that claims FR1 SL 2 or
    more must not let it change the process: writes belong on Modbus/TCP Security (or another
    authenticated interface). The plugin makes this check NOT APPLICABLE below FR1 SL 2, and
    when the profile waives CR 1.2 with a compensating countermeasure (for example an
    authenticating gateway in front of port 502). The issue also lists CR 2.1; writes to points
    the device protects are checked under CR 2.1 in ``testcases/fr2``.

    Procedure: read a declared scratch holding register and scratch coil, write each once with a
    different value (FC 6, FC 5) over a plain connection that carried no authentication, read
    back. The keeper restores the values at teardown.

    Pass: every write is refused (an exception response, no response, or a closed connection)
    and the read-back shows the old value. A normal response, or a changed value, FAILS.
    """
    reg = modbus_scratch.scratch_address("holding")
    coil = modbus_scratch.scratch_address("coil")
    if reg is None and coil is None:
        not_run("the profile declares no Modbus scratch point; the harness writes only to "
                "declared scratch points")
    before = modbus_scratch.watch(modbus)
    violations: list[str] = []
    client = modbus
    if reg is not None:
        old = int(before[("holding", reg)])
        new = (old + 1) & 0xFFFF
        ex = client.exchange(mbap.write_single_register_pdu(reg, new),
                             summary=f"FC 6 write HR {reg} = {new} (unauthenticated)")
        client = modbus_channels.reopen(client)
        after = client.read_registers(reg, 1)[0]
        problem = _judge(ex, f"FC 6 write of HR {reg}", old, after)
        evidence.note("judgement", case=f"FC 6 HR {reg}", refused=problem is None,
                      read_back=after, before=old, **ex.frames())
        if problem:
            violations.append(problem)
    if coil is not None:
        old_bit = bool(before[("coil", coil)])
        ex = client.exchange(mbap.write_single_coil_pdu(coil, not old_bit),
                             summary=f"FC 5 write C {coil} = {int(not old_bit)} (unauthenticated)")
        client = modbus_channels.reopen(client)
        after_bit = client.read_bits(coil, 1)[0]
        problem = _judge(ex, f"FC 5 write of coil {coil}", int(old_bit), int(after_bit))
        evidence.note("judgement", case=f"FC 5 C {coil}", refused=problem is None,
                      read_back=int(after_bit), before=int(old_bit), **ex.frames())
        if problem:
            violations.append(problem)
    if violations:
        fail("plain Modbus/TCP accepts writes with no authentication: " + "; ".join(violations))
