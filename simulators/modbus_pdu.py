"""Modbus PDU handling over the PLC process image, shared by the TCP, TLS and RTU simulators.

A PDU is the function code plus its data, without the transport's framing (MBAP header or RTU
address and CRC). :class:`PduEngine` answers one request PDU with one response PDU (or with
nothing, in listen-only mode) and knows nothing about connections, unit ids or roles: the
front end says per call whether the caller may write.

Checks, in the order the Modbus application protocol (V1.1b3, section 6) applies them:

1. function code not served -> exception 01 (ILLEGAL FUNCTION);
2. a write function code from a caller that may not write -> exception 01 (this is what the
   Modbus/TCP Security specification prescribes for an authorization failure);
3. PDU length wrong for the function code, quantity outside the specification's limits, byte
   count not matching the quantity, or a bad value (FC 5 other than 0x0000/0xFF00) -> 03
   (ILLEGAL DATA VALUE);
4. any address outside the table (``plc.TABLE_SIZE`` entries each) -> 02 (ILLEGAL DATA
   ADDRESS);
5. a write touching ``plc.PROTECTED_REGISTERS`` / ``plc.PROTECTED_COILS`` -> 02, value
   unchanged.

Served function codes: 1, 2, 3, 4, 5, 6, 15, 16, 22, 23. With
:attr:`PduPolicy.extra_function_codes` also 8 (diagnostics: sub-function 0 echo, 1 restart
communications, 4 force listen-only), 43/14 (read device identification), 65 and 90 (vendor
codes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct, pack, unpack_from
from struct import error as StructError

from simulators.plc import PLC, PROTECTED_COILS, PROTECTED_REGISTERS, TABLE_SIZE

ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03

#: Function codes every posture serves.
STANDARD_FUNCTION_CODES = frozenset({1, 2, 3, 4, 5, 6, 15, 16, 22, 23})
#: Function codes that change the process image.
WRITE_FUNCTION_CODES = frozenset({5, 6, 15, 16, 22, 23})
#: Function codes only the ``modbus.extra_function_codes`` weakness answers.
EXTRA_FUNCTION_CODES = frozenset({8, 43, 65, 90})

#: Quantity limits of the Modbus specification.
MAX_READ_BITS = 2000
MAX_READ_REGISTERS = 125
MAX_WRITE_BITS = 1968
MAX_WRITE_REGISTERS = 123
MAX_RW_READ_REGISTERS = 125
MAX_RW_WRITE_REGISTERS = 121

#: Device identification objects (FC 43/14, basic category).
VENDOR_NAME = b"Harness Sim"
PRODUCT_CODE = b"HSIM-PLC-1"
REVISION = b"1.0.0"
_DEVICE_ID_OBJECTS = {0: VENDOR_NAME, 1: PRODUCT_CODE, 2: REVISION}
#: FC 65 answer of the vendor service.
VENDOR_SERVICE_REPLY = b"HSIM vendor service 1.0"

_PROTECTED_REG_SET = frozenset(PROTECTED_REGISTERS)
_PROTECTED_COIL_SET = frozenset(PROTECTED_COILS)


def _writes_protected_range(pdu: bytes) -> bool:
    """True if a write request PDU (FC 5, 6, 15, 16, 22, 23) targets a protected point."""
    fc = pdu[0]
    try:
        if fc in (5, 6, 22):
            (address,) = unpack_from(">H", pdu, 1)
            count = 1
        elif fc in (15, 16):
            address, count = unpack_from(">HH", pdu, 1)
        elif fc == 23:
            address, count = unpack_from(">HH", pdu, 5)
        else:
            return False
    except StructError:  # a short PDU targets nothing
        return False
    protected = _PROTECTED_COIL_SET if fc in (5, 15) else _PROTECTED_REG_SET
    return any(a in protected for a in range(address, address + min(count, 2000)))
_REG_STRUCTS = [Struct(f">{n}H") for n in range(MAX_READ_REGISTERS + 1)]
_ADDR_QTY = Struct(">HH")


@dataclass(frozen=True)
class PduPolicy:
    """What the device checks and which extra services it answers."""

    #: Refuse writes touching the protected ranges with exception 02.
    protect_ranges: bool = True
    #: Check PDU length, quantities, byte counts, values and addresses (exceptions 03 and 02).
    #: Off (``modbus.no_input_validation``): quantities are clamped, short PDUs padded with
    #: zeros, byte counts ignored, out-of-table reads return zeros and out-of-table writes are
    #: dropped.
    validate: bool = True
    #: Answer FC 8, 43/14, 65 and 90.
    extra_function_codes: bool = False
    #: With ``protect_ranges`` off, let writes to the protected ranges through even on a channel
    #: that refuses every other write (plain Modbus/TCP with ``modbus.unprotected_writes``: the
    #: configuration registers take writes from anyone). A role check (TLS) still applies.
    open_ranges_on_readonly_channel: bool = False


def exception_pdu(function_code: int, code: int) -> bytes:
    """The exception response PDU for ``function_code``."""
    return bytes(((function_code | 0x80) & 0xFF, code))


def pack_bits(bits: list[bool]) -> bytes:
    """Pack coil values LSB-first into bytes, as Modbus sends them."""
    out = bytearray((len(bits) + 7) >> 3)
    for i, bit in enumerate(bits):
        if bit:
            out[i >> 3] |= 1 << (i & 7)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> list[bool]:
    """The first ``count`` coil values packed LSB-first in ``data``."""
    return [bool(data[i >> 3] >> (i & 7) & 1) for i in range(count)]


def _fit(pdu: bytes, size: int) -> bytes:
    """``pdu`` cut or zero-padded to ``size`` bytes (the no-validation path)."""
    if len(pdu) >= size:
        return pdu[:size]
    return pdu + bytes(size - len(pdu))


def _clamp(value: int, low: int, high: int) -> int:
    return low if value < low else high if value > high else value


class PduEngine:
    """Answers request PDUs from the PLC's process image.

    One engine serves a whole simulator (all its connections): listen-only mode (FC 8/4) is a
    device state, as on a real controller.

    :param plc: the PLC whose image is read and written.
    :param policy: which checks apply and which extra services are answered.
    """

    def __init__(self, plc: PLC, policy: PduPolicy) -> None:
        self.plc = plc
        self.policy = policy
        self._validate = policy.validate
        self._protect = policy.protect_ranges
        #: True after FC 8/4 (force listen-only) until FC 8/1 (restart communications).
        self.listen_only = False
        image = plc.image
        self._lock = image.lock
        handlers: dict[int, Callable[[bytes], bytes]] = {
            1: lambda p: self._read_bits(p, image.coils),
            2: lambda p: self._read_bits(p, image.discrete_inputs),
            3: lambda p: self._read_registers(p, image.holding),
            4: lambda p: self._read_registers(p, image.input_registers),
            5: self._write_coil,
            6: self._write_register,
            15: self._write_coils,
            16: self._write_registers,
            22: self._mask_write,
            23: self._read_write,
        }
        if policy.extra_function_codes:
            handlers[43] = self._device_identification
            handlers[65] = self._vendor_service
            handlers[90] = self._vendor_echo
        self._handlers = handlers

    # -- entry point ---------------------------------------------------------------------
    def handle(self, pdu: bytes, can_write: bool) -> bytes | None:
        """Answer one request PDU.

        :param pdu: function code and data.
        :param can_write: False refuses every write function code with exception 01.
        :returns: the response PDU, or None when the device stays silent (listen-only mode,
            FC 8/4, an empty PDU).
        """
        if not pdu:
            return None
        fc = pdu[0]
        if fc == 8 and self.policy.extra_function_codes:
            return self._diagnostics(pdu)
        if self.listen_only:
            return None
        handler = self._handlers.get(fc)
        if handler is None:
            return bytes(((fc | 0x80) & 0xFF, ILLEGAL_FUNCTION))
        if not can_write and fc in WRITE_FUNCTION_CODES and not (
            # ``modbus.unprotected_writes``: the configuration ranges take writes from anyone,
            # even where the channel refuses every other write.
            self.policy.open_ranges_on_readonly_channel
            and not self._protect
            and _writes_protected_range(pdu)
        ):
            return bytes((fc | 0x80, ILLEGAL_FUNCTION))
        return handler(pdu)

    # -- reads -------------------------------------------------------------------------
    def _read_range(self, table: list[int] | list[bool], address: int, count: int) -> list[int]:
        """Values ``address .. address+count-1``; zeros past the table (no-validation path)."""
        end = address + count
        with self._lock:
            values = list(table[address:end]) if address < TABLE_SIZE else []
        if len(values) < count:
            values.extend([0] * (count - len(values)))
        return [int(v) for v in values]

    def _read_bits(self, pdu: bytes, table: list[bool]) -> bytes:
        fc = pdu[0]
        if len(pdu) != 5:
            if self._validate:
                return exception_pdu(fc, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 5)
        address, count = _ADDR_QTY.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_READ_BITS:
            if self._validate:
                return exception_pdu(fc, ILLEGAL_DATA_VALUE)
            count = _clamp(count, 1, MAX_READ_BITS)
        if address + count > TABLE_SIZE:
            if self._validate:
                return exception_pdu(fc, ILLEGAL_DATA_ADDRESS)
            bits = [bool(v) for v in self._read_range(table, address, count)]
        else:
            with self._lock:
                bits = table[address : address + count]
        data = pack_bits(bits)
        return bytes((fc, len(data))) + data

    def _read_registers(self, pdu: bytes, table: list[int]) -> bytes:
        fc = pdu[0]
        if len(pdu) != 5:
            if self._validate:
                return exception_pdu(fc, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 5)
        address, count = _ADDR_QTY.unpack_from(pdu, 1)
        if not 1 <= count <= MAX_READ_REGISTERS:
            if self._validate:
                return exception_pdu(fc, ILLEGAL_DATA_VALUE)
            count = _clamp(count, 1, MAX_READ_REGISTERS)
        end = address + count
        if end > TABLE_SIZE:
            if self._validate:
                return exception_pdu(fc, ILLEGAL_DATA_ADDRESS)
            values = self._read_range(table, address, count)
        else:
            with self._lock:
                values = table[address:end]
        packed: bytes = _REG_STRUCTS[count].pack(*values)
        return bytes((fc, count << 1)) + packed

    # -- writes ------------------------------------------------------------------------
    def _write_coil(self, pdu: bytes) -> bytes:
        if len(pdu) != 5:
            if self._validate:
                return exception_pdu(5, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 5)
        address, value = _ADDR_QTY.unpack_from(pdu, 1)
        if value not in (0x0000, 0xFF00) and self._validate:
            return exception_pdu(5, ILLEGAL_DATA_VALUE)
        if address >= TABLE_SIZE:
            if self._validate:
                return exception_pdu(5, ILLEGAL_DATA_ADDRESS)
            return pdu
        if self._protect and address in _PROTECTED_COIL_SET:
            return exception_pdu(5, ILLEGAL_DATA_ADDRESS)
        with self._lock:
            self.plc.image.coils[address] = value != 0
        return pdu

    def _write_register(self, pdu: bytes) -> bytes:
        if len(pdu) != 5:
            if self._validate:
                return exception_pdu(6, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 5)
        address, value = _ADDR_QTY.unpack_from(pdu, 1)
        if address >= TABLE_SIZE:
            if self._validate:
                return exception_pdu(6, ILLEGAL_DATA_ADDRESS)
            return pdu
        if self._protect and address in _PROTECTED_REG_SET:
            return exception_pdu(6, ILLEGAL_DATA_ADDRESS)
        with self._lock:
            self.plc.image.holding[address] = value
        return pdu

    def _write_coils(self, pdu: bytes) -> bytes:
        if len(pdu) < 6:
            if self._validate:
                return exception_pdu(15, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 6)
        address, count = _ADDR_QTY.unpack_from(pdu, 1)
        byte_count = pdu[5]
        if (
            not 1 <= count <= MAX_WRITE_BITS
            or byte_count != (count + 7) >> 3
            or len(pdu) != 6 + byte_count
        ):
            if self._validate:
                return exception_pdu(15, ILLEGAL_DATA_VALUE)
            count = _clamp(count, 1, MAX_WRITE_BITS)
        data = _fit(pdu[6:], (count + 7) >> 3)
        if address + count > TABLE_SIZE and self._validate:
            return exception_pdu(15, ILLEGAL_DATA_ADDRESS)
        if self._protect and any(a in _PROTECTED_COIL_SET for a in range(address, address + count)):
            return exception_pdu(15, ILLEGAL_DATA_ADDRESS)
        bits = unpack_bits(data, count)
        in_table = max(0, min(count, TABLE_SIZE - address))
        with self._lock:
            self.plc.image.coils[address : address + in_table] = bits[:in_table]
        return pack(">BHH", 15, address, count)

    def _write_registers(self, pdu: bytes) -> bytes:
        if len(pdu) < 6:
            if self._validate:
                return exception_pdu(16, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 6)
        address, count = _ADDR_QTY.unpack_from(pdu, 1)
        byte_count = pdu[5]
        if (
            not 1 <= count <= MAX_WRITE_REGISTERS
            or byte_count != count << 1
            or len(pdu) != 6 + byte_count
        ):
            if self._validate:
                return exception_pdu(16, ILLEGAL_DATA_VALUE)
            count = _clamp(count, 1, MAX_WRITE_REGISTERS)
        data = _fit(pdu[6:], count << 1)
        if address + count > TABLE_SIZE and self._validate:
            return exception_pdu(16, ILLEGAL_DATA_ADDRESS)
        if self._protect and any(a in _PROTECTED_REG_SET for a in range(address, address + count)):
            return exception_pdu(16, ILLEGAL_DATA_ADDRESS)
        values = _REG_STRUCTS[count].unpack(data)
        in_table = max(0, min(count, TABLE_SIZE - address))
        with self._lock:
            self.plc.image.holding[address : address + in_table] = values[:in_table]
        return pack(">BHH", 16, address, count)

    def _mask_write(self, pdu: bytes) -> bytes:
        if len(pdu) != 7:
            if self._validate:
                return exception_pdu(22, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 7)
        address, and_mask, or_mask = unpack_from(">HHH", pdu, 1)
        if address >= TABLE_SIZE:
            if self._validate:
                return exception_pdu(22, ILLEGAL_DATA_ADDRESS)
            return pdu
        if self._protect and address in _PROTECTED_REG_SET:
            return exception_pdu(22, ILLEGAL_DATA_ADDRESS)
        with self._lock:
            current = self.plc.image.holding[address]
            self.plc.image.holding[address] = (current & and_mask) | (or_mask & ~and_mask & 0xFFFF)
        return pdu

    def _read_write(self, pdu: bytes) -> bytes:
        if len(pdu) < 10:
            if self._validate:
                return exception_pdu(23, ILLEGAL_DATA_VALUE)
            pdu = _fit(pdu, 10)
        read_addr, read_count, write_addr, write_count, byte_count = unpack_from(">HHHHB", pdu, 1)
        if (
            not 1 <= read_count <= MAX_RW_READ_REGISTERS
            or not 1 <= write_count <= MAX_RW_WRITE_REGISTERS
            or byte_count != write_count << 1
            or len(pdu) != 10 + byte_count
        ):
            if self._validate:
                return exception_pdu(23, ILLEGAL_DATA_VALUE)
            read_count = _clamp(read_count, 1, MAX_RW_READ_REGISTERS)
            write_count = _clamp(write_count, 1, MAX_RW_WRITE_REGISTERS)
        if self._validate and (
            read_addr + read_count > TABLE_SIZE or write_addr + write_count > TABLE_SIZE
        ):
            return exception_pdu(23, ILLEGAL_DATA_ADDRESS)
        if self._protect and any(
            a in _PROTECTED_REG_SET for a in range(write_addr, write_addr + write_count)
        ):
            return exception_pdu(23, ILLEGAL_DATA_ADDRESS)
        values = _REG_STRUCTS[write_count].unpack(_fit(pdu[10:], write_count << 1))
        in_table = max(0, min(write_count, TABLE_SIZE - write_addr))
        with self._lock:  # the specification performs the write before the read
            self.plc.image.holding[write_addr : write_addr + in_table] = values[:in_table]
            read = self._read_range(self.plc.image.holding, read_addr, read_count)
        packed: bytes = _REG_STRUCTS[read_count].pack(*read)
        return bytes((23, read_count << 1)) + packed

    # -- extra services (modbus.extra_function_codes) ------------------------------------
    def _diagnostics(self, pdu: bytes) -> bytes | None:
        """FC 8: 0 returns the query data, 1 restarts communications (leaves listen-only
        mode; silent if it was on), 4 forces listen-only mode (no reply, mute until FC 8/1)."""
        if len(pdu) < 3:
            if self.listen_only:
                return None
            return exception_pdu(8, ILLEGAL_DATA_VALUE)
        sub_function = (pdu[1] << 8) | pdu[2]
        if self.listen_only:
            if sub_function == 1:
                self.listen_only = False
            return None
        if sub_function in (0, 1):
            return pdu
        if sub_function == 4:
            self.listen_only = True
            return None
        return exception_pdu(8, ILLEGAL_FUNCTION)

    def _device_identification(self, pdu: bytes) -> bytes:
        """FC 43 / MEI 14: basic identification objects, stream (codes 1..3) or single (4)."""
        if len(pdu) < 2 or pdu[1] != 14:
            return exception_pdu(43, ILLEGAL_FUNCTION)
        if len(pdu) != 4 or not 1 <= pdu[2] <= 4:
            return exception_pdu(43, ILLEGAL_DATA_VALUE)
        read_code, object_id = pdu[2], pdu[3]
        if read_code == 4:
            if object_id not in _DEVICE_ID_OBJECTS:
                return exception_pdu(43, ILLEGAL_DATA_ADDRESS)
            ids = [object_id]
        else:
            start = object_id if object_id in _DEVICE_ID_OBJECTS else 0
            ids = [i for i in sorted(_DEVICE_ID_OBJECTS) if i >= start]
        body = b"".join(bytes((i, len(_DEVICE_ID_OBJECTS[i]))) + _DEVICE_ID_OBJECTS[i] for i in ids)
        # conformity level 0x81: basic identification, stream and individual access
        return bytes((43, 14, read_code, 0x81, 0, 0, len(ids))) + body

    def _vendor_service(self, pdu: bytes) -> bytes:
        """FC 65: an undocumented vendor service that answers anyone."""
        return bytes((65, len(VENDOR_SERVICE_REPLY))) + VENDOR_SERVICE_REPLY

    def _vendor_echo(self, pdu: bytes) -> bytes:
        """FC 90: a vendor engineering function code that echoes its request."""
        return pdu
