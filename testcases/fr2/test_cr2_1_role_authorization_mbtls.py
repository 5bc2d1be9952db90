"""CR 2.1 Authorization enforcement, over Modbus/TCP Security: the role in the client
certificate decides who may write.

Modbus/TCP Security carries the client's role in an X.509 extension (OID
1.3.6.1.4.1.50316.802.1); the device maps roles to rights. CR 2.1 asks it to enforce those
rights on every request: a ``ReadOnly`` client must not change a value, however it asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus_tls import Mbtls, MbtlsScratch
    from harness.protocols.modbus_tls import MbtlsClient

pytestmark = pytest.mark.requirement("CR 2.1")

#: The authorization-failure exception the Modbus/TCP Security specification prescribes.
ILLEGAL_FUNCTION = 1


@dataclass
class _Probe:
    """One write the ReadOnly client tries, and how to read back what it would change."""

    name: str
    pdu: bytes
    table: str
    address: int
    #: The value the write would leave behind.
    target: int | bool


def _probes(register: int, reg_marker: int, coil: int | None,
            coil_marker: bool | None) -> list[_Probe]:
    from harness.protocols import mbap

    values = [reg_marker ^ mask for mask in (0x0F0F, 0x3C3C, 0x5555, 0x6666)]
    probes = [
        _Probe("FC 6", mbap.write_single_register_pdu(register, values[0]), "holding", register,
               values[0]),
        _Probe("FC 16", mbap.write_multiple_registers_pdu(register, [values[1]]), "holding",
               register, values[1]),
        _Probe("FC 22", mbap.mask_write_register_pdu(register, 0x0000, values[2]), "holding",
               register, values[2]),
        _Probe("FC 23", mbap.read_write_registers_pdu(register, 1, register, [values[3]]),
               "holding", register, values[3]),
    ]
    if coil is not None and coil_marker is not None:
        probes += [
            _Probe("FC 5", mbap.write_single_coil_pdu(coil, not coil_marker), "coil", coil,
                   not coil_marker),
            _Probe("FC 15", mbap.write_multiple_coils_pdu(coil, [not coil_marker]), "coil", coil,
                   not coil_marker),
        ]
    return probes


class _Reader:
    """Reads the scratch points with the ReadWrite identity, reconnecting if the device closed."""

    def __init__(self, mbtls: Mbtls) -> None:
        self.mbtls = mbtls
        self.client: MbtlsClient | None = None

    def _conn(self) -> MbtlsClient:
        if self.client is None or self.client.closed:
            self.client = self.mbtls.connect("readwrite")
        return self.client

    def value(self, table: str, address: int) -> int | bool:
        client = self._conn()
        if table == "holding":
            return client.read_registers(address)[0]
        return client.read_bits(address)[0]

    def write(self, table: str, address: int, value: int | bool) -> None:
        client = self._conn()
        if table == "holding":
            client.write_registers(address, [int(value)])
        else:
            client.write_bits(address, [bool(value)])


@pytest.mark.protocol("modbus_tls")
@pytest.mark.weakness("mbtls.no_role_check")
@pytest.mark.disruptive(traffic="at most 8 writes (FC 5, 6, 15, 16, 22, 23) to the declared "
                                "scratch holding register and coil, values restored")
def test_readonly_role_cannot_write(mbtls: Mbtls, mbtls_scratch: MbtlsScratch,
                                    evidence: Evidence) -> None:
    """A client with the ReadOnly role cannot write; one with the ReadWrite role can.

    Procedure: with the ReadWrite certificate, write a marker into the profile's first scratch
    holding register (and scratch coil, when declared) and read it back: this control proves
    the point is writable at all, so a refusal below is about the role (if it fails: ERROR).
    Then, with the ReadOnly certificate (after one read, which that role may do), try every
    write function code on those points: FC 6, 16, 22 and 23 on the register, FC 5 and 15 on
    the coil, each with a value different from the marker, and read the point back with the
    ReadWrite certificate after each. The fixture restores the original values afterwards.

    Pass: every ReadOnly write got an exception reply (the Modbus/TCP Security specification
    prescribes 01; another code is noted, not failed), no reply, or a closed connection, and
    every point still holds its marker. Fail: any ReadOnly write got a normal response, or
    changed a value.
    """
    from harness.protocols.modbus import Outcome
    from harness.protocols.modbus_tls import TlsRefused

    register = mbtls_scratch.require_register()
    original = int(mbtls_scratch.register_value or 0)  # read by the fixture with the register
    reader = _Reader(mbtls)

    # control: the ReadWrite role writes the markers
    reg_marker = original ^ 0xA5A5
    coil_marker: bool | None = None
    if mbtls_scratch.coil is not None and mbtls_scratch.coil_value is not None:
        coil_marker = not mbtls_scratch.coil_value
    try:
        reader.write("holding", register, reg_marker)
        if coil_marker is not None and mbtls_scratch.coil is not None:
            reader.write("coil", mbtls_scratch.coil, coil_marker)
    except TargetError as exc:
        raise TargetError(f"control: the ReadWrite role could not write the scratch points "
                          f"({exc}), so a refusal of the ReadOnly role would prove nothing"
                          ) from exc
    markers: dict[tuple[str, int], int | bool] = {("holding", register): reg_marker}
    if coil_marker is not None and mbtls_scratch.coil is not None:
        markers[("coil", mbtls_scratch.coil)] = coil_marker
    for (table, address), marker in markers.items():
        seen = reader.value(table, address)
        if seen != marker:
            raise TargetError(f"control: the ReadWrite role wrote {marker} to {table} {address} "
                              f"but reads back {seen}; the point is not writable, so a refusal "
                              "of the ReadOnly role would prove nothing")
    evidence.note("control: ReadWrite role wrote the markers",
                  markers={f"{t} {a}": v for (t, a), v in markers.items()})

    readonly: MbtlsClient | None = None
    violations: list[str] = []
    frames: list[dict[str, object]] = []
    for probe in _probes(register, reg_marker, mbtls_scratch.coil, coil_marker):
        if readonly is None or readonly.closed:
            try:
                readonly = mbtls.connect("readonly")
                readonly.read_registers(register)
            except TlsRefused as exc:
                raise TargetError(f"the ReadOnly certificate could not even read ({exc}); its "
                                  "write privileges cannot be judged") from exc
        request = reply = ""
        try:
            ex = readonly.exchange(probe.pdu, summary=f"{probe.name} write as ReadOnly")
            outcome = ex.describe()
            acknowledged = ex.accepted
            code = ex.exception_code
            request, reply = ex.request.hex(), ex.reply.hex()
            if ex.outcome is Outcome.CLOSED:
                readonly.close()
        except TlsRefused as exc:
            outcome, acknowledged, code = f"refused: {exc}", False, None
        after = reader.value(probe.table, probe.address)
        marker = markers[(probe.table, probe.address)]
        changed = after != marker
        evidence.note("ReadOnly write attempt", function=probe.name, request=request,
                      reply=reply, outcome=outcome, exception_code=code, value_before=marker,
                      value_after=after, changed=changed,
                      spec_code=None if code in (None, ILLEGAL_FUNCTION) else
                      f"exception {code}, the specification prescribes {ILLEGAL_FUNCTION:02d}")
        if acknowledged or changed:
            violations.append(f"{probe.name} to {probe.table} {probe.address}: {outcome}, value "
                              f"{marker} -> {after}")
            frames.append({"function": probe.name, "request": request, "reply": reply,
                           "value_before": marker, "value_after": after})
        if changed:  # put the marker back so the next probe starts from it
            reader.write(probe.table, probe.address, marker)
    evidence.note("judgement", violations=violations, frames=frames)
    assert not violations, (
        "a ReadOnly-role client wrote to the device: " + "; ".join(violations))
