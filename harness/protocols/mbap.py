"""Modbus framing without a library: PDUs, MBAP (Modbus/TCP) and RTU frames.

Pure functions over bytes, shared by the guarded Modbus clients, the request-flood generator
and the malformed-input checks (which must be able to build frames a library refuses to send).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

#: MBAP header: transaction id, protocol id, length, unit id.
MBAP = struct.Struct(">HHHB")
MBAP_SIZE = MBAP.size  # 7
#: Largest Modbus/TCP ADU the specification allows.
MAX_ADU = 260
#: Largest RTU frame.
MAX_RTU_FRAME = 256

EXCEPTION_NAMES = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER DEVICE BUSY",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}


class FrameError(ValueError):
    """Bytes that are not a well-formed Modbus frame."""


# --------------------------------------------------------------------------- PDUs
def read_pdu(function: int, address: int, count: int) -> bytes:
    """FC 1, 2, 3 or 4: read ``count`` items from ``address``."""
    return struct.pack(">BHH", function, address, count)


def write_single_register_pdu(address: int, value: int) -> bytes:
    """FC 6."""
    return struct.pack(">BHH", 6, address, value & 0xFFFF)


def write_single_coil_pdu(address: int, on: bool) -> bytes:
    """FC 5."""
    return struct.pack(">BHH", 5, address, 0xFF00 if on else 0x0000)


def write_multiple_registers_pdu(address: int, values: list[int]) -> bytes:
    """FC 16."""
    body = b"".join(struct.pack(">H", v & 0xFFFF) for v in values)
    return struct.pack(">BHHB", 16, address, len(values), len(body)) + body


def write_multiple_coils_pdu(address: int, bits: list[bool]) -> bytes:
    """FC 15."""
    packed = bytearray((len(bits) + 7) // 8)
    for i, b in enumerate(bits):
        if b:
            packed[i // 8] |= 1 << (i % 8)
    return struct.pack(">BHHB", 15, address, len(bits), len(packed)) + bytes(packed)


def mask_write_register_pdu(address: int, and_mask: int, or_mask: int) -> bytes:
    """FC 22."""
    return struct.pack(">BHHH", 22, address, and_mask & 0xFFFF, or_mask & 0xFFFF)


def read_write_registers_pdu(
    read_address: int, read_count: int, write_address: int, values: list[int]
) -> bytes:
    """FC 23."""
    body = b"".join(struct.pack(">H", v & 0xFFFF) for v in values)
    return (
        struct.pack(">BHHHHB", 23, read_address, read_count, write_address, len(values), len(body))
        + body
    )


@dataclass(frozen=True)
class Response:
    """A decoded response PDU."""

    function: int
    #: Exception code, or None for a normal response.
    exception: int | None
    #: The PDU after the function code.
    data: bytes

    @property
    def is_exception(self) -> bool:
        """True for an exception response."""
        return self.exception is not None

    def registers(self) -> list[int]:
        """Register values of an FC 3/4/23 response."""
        if self.exception is not None or not self.data:
            raise FrameError("not a register read response")
        n = self.data[0]
        if n != len(self.data) - 1 or n % 2:
            raise FrameError(f"byte count {n} does not match {len(self.data) - 1} data bytes")
        return [int.from_bytes(self.data[1 + 2 * i : 3 + 2 * i], "big") for i in range(n // 2)]

    def bits(self, count: int) -> list[bool]:
        """Bit values of an FC 1/2 response."""
        if self.exception is not None or not self.data:
            raise FrameError("not a bit read response")
        n = self.data[0]
        if n != len(self.data) - 1 or n < (count + 7) // 8:
            raise FrameError(f"byte count {n} too small for {count} bits")
        return [bool(self.data[1 + i // 8] >> (i % 8) & 1) for i in range(count)]

    def describe(self) -> str:
        """Human-readable summary."""
        if self.exception is not None:
            name = EXCEPTION_NAMES.get(self.exception, "unknown")
            return f"FC {self.function} exception {self.exception:02d} ({name})"
        return f"FC {self.function} normal response, {len(self.data)} data bytes"


def parse_pdu(pdu: bytes) -> Response:
    """Decode a response PDU (normal or exception)."""
    if not pdu:
        raise FrameError("empty PDU")
    fc = pdu[0]
    if fc & 0x80:
        if len(pdu) != 2:
            raise FrameError(f"exception PDU of {len(pdu)} bytes (expected 2)")
        return Response(fc & 0x7F, pdu[1], b"")
    return Response(fc, None, bytes(pdu[1:]))


# --------------------------------------------------------------------------- MBAP
def adu(
    transaction: int, unit: int, pdu: bytes, *, protocol: int = 0, length: int | None = None
) -> bytes:
    """A Modbus/TCP ADU; ``protocol`` and ``length`` may be forced for malformed-input tests."""
    ln = len(pdu) + 1 if length is None else length
    return MBAP.pack(transaction & 0xFFFF, protocol & 0xFFFF, ln & 0xFFFF, unit & 0xFF) + pdu


@dataclass(frozen=True)
class Adu:
    """A decoded Modbus/TCP ADU."""

    transaction: int
    protocol: int
    unit: int
    pdu: bytes


def split_adus(buffer: bytearray) -> list[Adu]:
    """Take every complete ADU off the front of ``buffer`` (in place).

    :raises FrameError: a header whose protocol id or length cannot be a Modbus/TCP reply.
    """
    out: list[Adu] = []
    while len(buffer) >= MBAP_SIZE:
        tid, proto, length, unit = MBAP.unpack_from(buffer)
        if proto != 0:
            raise FrameError(f"protocol id {proto} (must be 0)")
        if length < 2 or length > MAX_ADU - 6:
            raise FrameError(f"MBAP length {length} out of range 2..{MAX_ADU - 6}")
        end = 6 + length
        if len(buffer) < end:
            break
        out.append(Adu(tid, proto, unit, bytes(buffer[MBAP_SIZE:end])))
        del buffer[:end]
    return out


# --------------------------------------------------------------------------- RTU
def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data``."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes, *, corrupt_crc: bool = False) -> bytes:
    """An RTU frame: unit, PDU, CRC (low byte first); optionally with a wrong CRC."""
    body = bytes([unit & 0xFF]) + pdu
    crc = crc16(body) ^ (0x5A5A if corrupt_crc else 0)
    return body + struct.pack("<H", crc)


def check_rtu_frame(frame: bytes) -> tuple[int, bytes]:
    """Verify an RTU frame's CRC and return (unit, PDU)."""
    if len(frame) < 4:
        raise FrameError(f"RTU frame of {len(frame)} bytes is too short")
    body, (crc,) = frame[:-2], struct.unpack("<H", frame[-2:])
    if crc16(body) != crc:
        raise FrameError("RTU CRC mismatch")
    return body[0], bytes(body[1:])
