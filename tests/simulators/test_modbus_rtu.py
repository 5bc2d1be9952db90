"""Modbus RTU simulator on a pty: framing, CRC, unit addressing, broadcast, and each weakness.

Clients: pymodbus's serial client for normal traffic, pyserial with hand-built frames (and a
CRC written here, independent of the simulator's) for bad CRCs, broadcasts and odd frames.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
import serial
from pymodbus.client import ModbusSerialClient

pytestmark = pytest.mark.timeout(60)

#: Seconds to wait for the first byte of a reply that must come.
REPLY_TIMEOUT_S = 2.0
#: Seconds of silence taken as "no reply".
SILENCE_S = 0.3


def crc(data: bytes) -> bytes:
    """CRC-16/Modbus, bit by bit, low byte first."""
    value = 0xFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            value = (value >> 1) ^ 0xA001 if value & 1 else value >> 1
    return struct.pack("<H", value)


def frame(unit: int, pdu: bytes) -> bytes:
    return bytes((unit,)) + pdu + crc(bytes((unit,)) + pdu)


def read_pdu(address: int, count: int = 1) -> bytes:
    return struct.pack(">BHH", 3, address, count)


class Line:
    """A pyserial connection to the simulator's pty."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 19200, timeout=REPLY_TIMEOUT_S)

    def close(self) -> None:
        self.port.close()

    def exchange(self, data: bytes, timeout: float = REPLY_TIMEOUT_S) -> bytes:
        """Send raw bytes and return the reply frame that comes back (b"" if nothing).

        The reply's length is worked out from its function code (``port.read(n)`` returns as
        soon as ``n`` bytes are in); unknown function codes are read until 50 ms of silence.
        """
        port = self.port
        port.reset_input_buffer()
        port.timeout = timeout
        port.write(data)
        port.flush()
        head = bytes(port.read(2))
        if len(head) < 2:
            return head
        port.timeout = REPLY_TIMEOUT_S
        fc = head[1]
        if fc & 0x80:
            return head + bytes(port.read(3))
        if fc in (1, 2, 3, 4, 23, 65):
            count = bytes(port.read(1))
            return head + count + bytes(port.read(count[0] + 2 if count else 0))
        if fc in (5, 6, 8, 15, 16):
            return head + bytes(port.read(6))
        if fc == 22:
            return head + bytes(port.read(8))
        port.timeout = 0.05
        rest = b""
        while chunk := bytes(port.read(256)):
            rest += chunk
        return head + rest

    def request(self, unit: int, pdu: bytes, timeout: float = REPLY_TIMEOUT_S) -> bytes | None:
        """Send a good frame; the reply PDU after checking unit and CRC, or None."""
        reply = self.exchange(frame(unit, pdu), timeout)
        if not reply:
            return None
        assert reply[-2:] == crc(reply[:-2]), f"bad CRC in reply {reply.hex()}"
        assert reply[0] == unit
        return reply[1:-2]

    def read(self, address: int, count: int = 1, unit: int = 1) -> list[int]:
        reply = self.request(unit, read_pdu(address, count))
        assert reply is not None, "no reply"
        assert reply[:2] == bytes((3, 2 * count)), f"read failed: {reply!r}"
        return list(struct.unpack(f">{count}H", reply[2:]))


def rtu(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["endpoints"]["rtu"])


@pytest.fixture(scope="module")
def hardened(start_simulator_module: Any) -> dict[str, Any]:
    return start_simulator_module("modbus_rtu")  # type: ignore[no-any-return]


@pytest.fixture
def line(hardened: dict[str, Any]) -> Iterator[Line]:
    conn = Line(rtu(hardened)["path"])
    yield conn
    conn.close()


def open_line(event: dict[str, Any]) -> Line:
    return Line(rtu(event)["path"])


# -- process contract -----------------------------------------------------------------------
def test_ready_line_reports_the_pty(hardened: dict[str, Any]) -> None:
    ep = rtu(hardened)
    assert ep["path"].startswith("/dev/pts/")
    assert (ep["unit"], ep["baud"]) == (1, 19200)
    assert hardened["weaknesses"] == []


def test_weak_posture_lists_its_weaknesses(start_simulator: Any) -> None:
    event = start_simulator("modbus_rtu", "--posture", "weak")
    assert event["weaknesses"] == sorted(
        [
            "rtu.ignores_crc",
            "rtu.any_unit_id",
            "rtu.accepts_broadcast",
            "rtu.crash_on_malformed",
            "modbus.unprotected_writes",
            "load.fragile",
        ]
    )


def test_bad_unit_option_exits_2(start_simulator: Any) -> None:
    event, rc = start_simulator.expect_error("modbus_rtu", "--unit", "0")
    assert rc == 2
    assert event is not None
    assert event["event"] == "error"


def test_sigterm_exits_0_while_the_line_is_open(start_simulator: Any) -> None:
    event = start_simulator("modbus_rtu")
    conn = open_line(event)
    try:
        assert conn.read(100) == [1000]
        assert start_simulator.stop(event) == 0
    finally:
        conn.close()


# -- hardened ------------------------------------------------------------------------------
def test_pymodbus_serial_client_reads_and_writes(hardened: dict[str, Any]) -> None:
    client = ModbusSerialClient(
        rtu(hardened)["path"], baudrate=19200, timeout=REPLY_TIMEOUT_S, retries=0
    )
    assert client.connect()
    try:
        regs = client.read_holding_registers(100, count=3, device_id=1)
        assert regs.registers == [1000, 1001, 1002]
        assert not client.write_register(108, 31, device_id=1).isError()
        assert client.read_holding_registers(108, count=1, device_id=1).registers == [31]
        assert not client.write_register(108, 1008, device_id=1).isError()
        refused = client.write_register(201, 1, device_id=1)
        assert refused.isError()
        assert refused.exception_code == 2
        refused = client.write_coils(199, [True, False], device_id=1)
        assert refused.exception_code == 2
        assert client.read_holding_registers(201, count=1, device_id=1).registers == [4001]
        assert client.read_coils(200, count=1, device_id=1).bits[0] is True
    finally:
        client.close()


def test_heartbeat_increments(line: Line) -> None:
    first = line.read(0)[0]
    time.sleep(0.2)
    assert line.read(0)[0] != first


def test_exceptions_over_rtu(line: Line) -> None:
    assert line.request(1, bytes((7,))) == b"\x87\x01"
    assert line.request(1, read_pdu(0, 126)) == b"\x83\x03"
    assert line.request(1, read_pdu(999, 2)) == b"\x83\x02"
    assert line.request(1, b"\x03\x00\x01") == b"\x83\x03"  # CRC fine, PDU truncated


def test_bad_crc_gets_no_reply(line: Line) -> None:
    good = frame(1, read_pdu(100))
    assert line.exchange(good[:-1] + bytes((good[-1] ^ 0xFF,)), SILENCE_S) == b""
    assert line.read(100) == [1000]


def test_other_unit_gets_no_reply(line: Line) -> None:
    for unit in (2, 17, 247, 255):
        assert line.request(unit, read_pdu(100), SILENCE_S) is None
    assert line.read(100) == [1000]


def test_broadcast_writes_are_ignored(line: Line) -> None:
    assert line.exchange(frame(0, struct.pack(">BHH", 6, 109, 77)), SILENCE_S) == b""
    assert line.read(109) == [1009]


@pytest.mark.parametrize("size", [300, 257])
def test_overlong_frame_is_discarded(line: Line, size: int) -> None:
    junk = frame(1, read_pdu(100) + bytes(size - 8))
    assert len(junk) == size
    assert line.exchange(junk, SILENCE_S) == b""
    assert line.read(100) == [1000]


@pytest.mark.parametrize("junk", [b"\x01", b"\x01\x03\x00", b"\x01\x03\x00\x64\x00"])
def test_truncated_frame_is_discarded(line: Line, junk: bytes) -> None:
    assert line.exchange(junk, SILENCE_S) == b""
    assert line.read(100) == [1000]


def test_unit_option(start_simulator: Any) -> None:
    event = start_simulator("modbus_rtu", "--unit", "5", "--baud", "9600")
    assert (rtu(event)["unit"], rtu(event)["baud"]) == (5, 9600)
    conn = open_line(event)
    try:
        assert conn.read(100, unit=5) == [1000]
        assert conn.request(1, read_pdu(100), SILENCE_S) is None
    finally:
        conn.close()


# -- weaknesses ---------------------------------------------------------------------------
def test_ignores_crc(start_simulator: Any) -> None:
    conn = open_line(start_simulator("modbus_rtu", "--weakness", "rtu.ignores_crc"))
    try:
        bad = frame(1, read_pdu(100))[:-2] + b"\x00\x00"
        reply = conn.exchange(bad)
        assert reply[:5] == b"\x01\x03\x02\x03\xe8"
        assert reply[-2:] == crc(reply[:-2])
    finally:
        conn.close()


def test_any_unit_id(start_simulator: Any) -> None:
    conn = open_line(start_simulator("modbus_rtu", "--weakness", "rtu.any_unit_id"))
    try:
        for unit in (2, 17, 255):
            assert conn.read(100, unit=unit) == [1000]
    finally:
        conn.close()


def test_accepts_broadcast(start_simulator: Any) -> None:
    conn = open_line(start_simulator("modbus_rtu", "--weakness", "rtu.accepts_broadcast"))
    try:
        assert conn.exchange(frame(0, struct.pack(">BHH", 6, 109, 77)), SILENCE_S) == b""
        assert conn.read(109) == [77]
        # broadcast reads are still never answered
        assert conn.exchange(frame(0, read_pdu(109)), SILENCE_S) == b""
    finally:
        conn.close()


def test_crash_on_malformed(start_simulator: Any) -> None:
    conn = open_line(start_simulator("modbus_rtu", "--weakness", "rtu.crash_on_malformed"))
    try:
        assert conn.read(100) == [1000]
        assert conn.exchange(bytes(300), SILENCE_S) == b""
        assert conn.request(1, read_pdu(100), SILENCE_S) is None
        assert conn.request(1, read_pdu(100), SILENCE_S) is None
    finally:
        conn.close()


def test_unprotected_writes_over_rtu(start_simulator: Any) -> None:
    conn = open_line(start_simulator("modbus_rtu", "--weakness", "modbus.unprotected_writes"))
    try:
        assert conn.request(1, struct.pack(">BHH", 6, 201, 5)) == struct.pack(">BHH", 6, 201, 5)
        assert conn.read(201) == [5]
    finally:
        conn.close()
