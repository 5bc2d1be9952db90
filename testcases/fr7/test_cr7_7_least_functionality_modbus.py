"""CR 7.7 over Modbus/TCP: the device answers only the function codes it is documented to serve."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus import ModbusChannels
    from harness.profile import Profile
    from harness.protocols.modbus import Exchange, ModbusTcpClient

pytestmark = pytest.mark.requirement("CR 7.7")

#: Vendor (user-defined) function codes probed, with an empty body.
VENDOR_FUNCTION_CODES = (65, 66, 67, 68, 69, 70, 71, 72, 90, *range(100, 111))
#: Exception "illegal function": the code is not offered.
ILLEGAL_FUNCTION = 1


def probes(health: int) -> list[tuple[int, bytes, str]]:
    """(function code, request PDU, label) of every probe; all read-only or empty.

    FC 8 is sent with sub-function 0 (return query data) only: sub-function 4 (force listen
    only) would silence the device, and is never sent. FC 21 (write file record) is sent with
    an empty record list, which writes nothing. Vendor codes carry no data at all.
    """
    return [
        (7, bytes([7]), "FC 7 read exception status"),
        (8, bytes([8, 0x00, 0x00, 0xA5, 0x37]), "FC 8 diagnostics sub-function 0 (echo)"),
        (11, bytes([11]), "FC 11 get comm event counter"),
        (12, bytes([12]), "FC 12 get comm event log"),
        (17, bytes([17]), "FC 17 report server id"),
        (20, bytes([20, 7, 6, 0, 1, 0, 0, 0, 1]), "FC 20 read file record (file 1, record 0)"),
        (21, bytes([21, 0]), "FC 21 write file record with no record (writes nothing)"),
        (24, bytes([24]) + health.to_bytes(2, "big"), "FC 24 read FIFO queue"),
        (43, bytes([43, 14, 1, 0]), "FC 43/14 read device identification (basic)"),
        *[(fc, bytes([fc]), f"FC {fc} vendor code (no data)") for fc in VENDOR_FUNCTION_CODES],
    ]


def _offered(ex: Exchange) -> bool:
    """True when the reply shows the function code is implemented."""
    if not ex.answered:
        return False
    if ex.response is not None and ex.response.is_exception:
        return ex.exception_code != ILLEGAL_FUNCTION
    return True  # a normal response, or any other reply at all


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.extra_function_codes")
def test_modbus_tcp_serves_only_declared_function_codes(
        modbus: ModbusTcpClient, modbus_channels: ModbusChannels, device_profile: Profile,
        evidence: Evidence) -> None:
    """Only the function codes the profile declares are answered over Modbus/TCP.

    Requirement: CR 7.7 (least functionality), as in the issue: every function code the device
    answers is a service; those it is not documented to need (diagnostics, identification,
    file records, vendor engineering codes) widen what an attacker can reach.

    Procedure: a health read proves the device answers. Then, one request each: FC 7, FC 8
    sub-function 0 (echo; sub-function 4, force listen-only, is never sent, disruptive or not),
    FC 11, 12, 17, 20, 21 (with an empty record list: nothing written), 24, 43/14, and the
    vendor codes 65..72, 90 and 100..110 with no data. Undeclared standard write codes are not
    probed (a real write could result); ``expectations.modbus_function_codes`` lists the
    declared codes, and declared codes are skipped. After a probe that went unanswered or
    closed the connection, and at the end, a health read must succeed, otherwise silence would
    be mistaken for refusal: the check is then ERROR.

    Pass: every probed code is refused with exception 01 (illegal function), dropped, or the
    connection closed. A normal response, any other exception (the code exists and judged its
    data), or any other reply FAILS, listing each such code with its request and reply.
    """
    declared = set(device_profile.expectations.modbus_function_codes)
    first = modbus.health_read()
    if not first.ok:
        raise TargetError(f"the device does not answer a health read: {first.detail}")
    client = modbus
    offered: list[str] = []
    frames: dict[str, dict[str, object]] = {}
    for fc, pdu, label in probes(modbus.health_address):
        if fc in declared:
            continue
        ex = client.exchange(pdu, summary=label)
        if _offered(ex):
            offered.append(f"FC {fc} ({label}: {ex.describe()}; request {ex.request.hex()}, "
                           f"reply {ex.reply.hex()})")
            frames[f"FC {fc}"] = ex.frames()
        if not ex.answered:
            client = modbus_channels.reopen(client)
            alive = client.health_read()
            if not alive.ok:
                raise TargetError(f"the device stopped answering after {label} "
                                  f"(request {ex.request.hex()}): {alive.detail}")
    last = client.health_read()
    if not last.ok:
        raise TargetError(f"the device stopped answering during the probes: {last.detail}")
    evidence.note("judgement", declared=sorted(declared), offered=frames)
    if offered:
        fail(f"function codes answered but not declared in expectations.modbus_function_codes "
             f"{sorted(declared)}: " + "; ".join(offered))
