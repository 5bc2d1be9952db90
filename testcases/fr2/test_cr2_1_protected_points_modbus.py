"""CR 2.1 over Modbus/TCP and Modbus RTU: points the device protects cannot be written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.fixtures.modbus import PointKeeper, modbus_points
from harness.protocols import mbap
from harness.verdict import fail, not_applicable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus import ModbusChannels
    from harness.profile import ModbusPoints, Profile
    from harness.protocols.modbus import ModbusClient, ModbusRtuClient, ModbusTcpClient

pytestmark = pytest.mark.requirement("CR 2.1")

_TRAFFIC = ("for each declared protected range, one write with each of FC 5 and 15 (coils) or "
            "FC 6, 16, 22 and 23 (registers), each followed by a read-back; changed values are "
            "restored")


@dataclass(frozen=True)
class _Attempt:
    """One write attempt on a protected range."""

    fc: int
    point: ModbusPoints
    pdu: bytes
    label: str


def _attempts(point: ModbusPoints, current: list[int] | list[bool]) -> list[_Attempt]:
    """The write requests for ``point``, each asking for values different from ``current``."""
    a = point.address
    n = min(point.count, 2)
    if point.table == "coil":
        bits = [not bool(v) for v in current[:n]]
        return [
            _Attempt(5, point, mbap.write_single_coil_pdu(a, bits[0]), f"FC 5 write C {a}"),
            _Attempt(15, point, mbap.write_multiple_coils_pdu(a, bits), f"FC 15 write C {a} x{n}"),
        ]
    regs = [(int(v) + 1) & 0xFFFF for v in current[:n]]
    return [
        _Attempt(6, point, mbap.write_single_register_pdu(a, regs[0]), f"FC 6 write HR {a}"),
        _Attempt(16, point, mbap.write_multiple_registers_pdu(a, regs),
                 f"FC 16 write HR {a} x{n}"),
        _Attempt(22, point, mbap.mask_write_register_pdu(a, 0x0000, regs[0]),
                 f"FC 22 mask write HR {a}"),
        _Attempt(23, point, mbap.read_write_registers_pdu(a, 1, a, regs),
                 f"FC 23 read/write HR {a} x{n}"),
    ]


def check_protected_points(client: ModbusClient, channels: ModbusChannels, keeper: PointKeeper,
                           profile: Profile, evidence: Evidence) -> None:
    """Try every write function code on every protected range through ``client``; judge.

    Each attempt is judged against the values read just before it: a normal response, or any
    changed value, is a violation. A refusal is an exception response, silence, or a closed
    connection, provided the read-back shows the values unchanged.
    """
    points = modbus_points(profile.points.protected)
    if not points:
        not_applicable("the profile declares no protected Modbus points")
    keeper.watch(client, points)
    violations: list[str] = []
    refusals: dict[str, str] = {}
    for point in points:
        current = keeper.read(client, point)
        for attempt in _attempts(point, current):
            ex = client.exchange(attempt.pdu, summary=f"{attempt.label} (protected)")
            if ex.answered and ex.response is None:
                raise TargetError(f"{attempt.label}: undecodable reply {ex.reply.hex()}: "
                                  f"{ex.problem}")
            client = channels.reopen(client)
            after = keeper.read(client, point)
            changed = [f"{point.address + i}: {int(b)} -> {int(x)}"
                       for i, (b, x) in enumerate(zip(current, after, strict=True)) if b != x]
            refused = not ex.accepted and not changed
            evidence.note("judgement", case=attempt.label, refused=refused, changed=changed,
                          **ex.frames())
            if refused:
                refusals[attempt.label] = ex.describe()
            else:
                violations.append(
                    f"{attempt.label} to protected {point.table} range {point.address} "
                    f"x{point.count}: {ex.describe()}"
                    + (f", values changed ({', '.join(changed)})" if changed else "")
                    + f"; request {ex.request.hex()}, reply {ex.reply.hex() or 'none'}")
            current = after
    evidence.note("refused writes", **refusals)
    if violations:
        fail(f"protected points writable over {client.channel}: " + "; ".join(violations))


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.unprotected_writes")
@pytest.mark.disruptive(traffic=_TRAFFIC)
def test_modbus_tcp_protected_points_refuse_writes(
        modbus: ModbusTcpClient, modbus_channels: ModbusChannels, modbus_scratch: PointKeeper,
        device_profile: Profile, evidence: Evidence) -> None:
    """Writes to declared protected points are refused over plain Modbus/TCP.

    Requirement: CR 2.1 (authorization enforcement). The issue's guidance is kept: CR 2.1 rather
    than CR 2.1 RE(1) (every user, human or not, from SL 2), because a protected configuration
    range is a privilege boundary the device must enforce for whoever sends the request, and
    over plain Modbus/TCP no requester is identified at all; RE(1) would hide the finding below
    SL 2.

    Procedure: for each protected range the profile declares, write its first one or two
    points once with each write function code of its table (coils: FC 5, 15; registers: FC 6,
    16, 22, 23), each time a value different from the current one, and read the range back.

    Pass: every attempt is refused and the read-back shows the range unchanged. A refusal is an
    exception response (the issue's guidance), or, a difference from it, a dropped request or
    a closed connection: the requirement is that the write does not happen, and the read-back
    shows it did not. A device that refuses *every* write on plain Modbus/TCP (as it should at
    FR1 SL 2, see CR 1.2) passes here too: the protected points are then protected, whatever
    the reason. The RTU check below exercises the range protection itself.
    """
    check_protected_points(modbus, modbus_channels, modbus_scratch, device_profile, evidence)


@pytest.mark.protocol("modbus_rtu")
@pytest.mark.weakness("modbus.unprotected_writes")
@pytest.mark.disruptive(traffic=_TRAFFIC)
def test_modbus_rtu_protected_points_refuse_writes(
        modbus_rtu: ModbusRtuClient, modbus_channels: ModbusChannels,
        modbus_scratch: PointKeeper, device_profile: Profile, evidence: Evidence) -> None:
    """Writes to declared protected points are refused over Modbus RTU.

    Requirement: CR 2.1, as for the Modbus/TCP check. A serial line is local access, so a
    device may well accept writes there (to scratch and process points); the protected ranges
    must still refuse them, which makes this the check that exercises range protection itself.

    Procedure and pass line as for the Modbus/TCP check, over the RTU line at the profile's unit
    id; values that did change are restored over the same line at teardown.
    """
    check_protected_points(modbus_rtu, modbus_channels, modbus_scratch, device_profile, evidence)
