"""Modbus/TCP simulator: hardened behaviour and each weakness, seen from independent clients.

Normal traffic goes through pymodbus's client; malformed frames, pipelining, dropped replies
and illegal quantities (which the pymodbus client refuses to encode) through a raw socket.
"""

from __future__ import annotations

import itertools
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

pytestmark = pytest.mark.timeout(60)

#: Seconds to wait for a reply that must come.
REPLY_TIMEOUT_S = 3.0
#: Seconds of silence taken as "no reply" where none must come.
SILENCE_S = 0.3

ALL_WEAKNESSES = sorted(
    [
        "modbus.unauthenticated_writes",
        "modbus.unprotected_writes",
        "modbus.crash_on_malformed",
        "modbus.no_input_validation",
        "modbus.extra_function_codes",
        "modbus.no_connection_limit",
        "modbus.no_frame_timeout",
        "modbus.any_unit_id",
        "net.extra_open_port",
        "load.fragile",
        "net.fragile_stack",
        "net.fragile_l2",
        "modbus.torn_reads",
    ]
)


# -- a raw MBAP client ----------------------------------------------------------------------
def adu(tid: int, unit: int, pdu: bytes) -> bytes:
    """An MBAP frame."""
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def read_pdu(fc: int, address: int, count: int) -> bytes:
    return struct.pack(">BHH", fc, address, count)


class Raw:
    """A raw Modbus/TCP connection."""

    def __init__(self, endpoint: dict[str, Any]) -> None:
        self.sock = socket.create_connection((endpoint["host"], endpoint["port"]), timeout=5)
        self.unit = int(endpoint["unit"])
        self.tid = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int, timeout: float = REPLY_TIMEOUT_S) -> bytes | None:
        """``n`` bytes, or None if the peer is silent for ``timeout`` or closes first."""
        self.sock.settimeout(timeout)
        buf = b""
        try:
            while len(buf) < n:
                chunk = self.sock.recv(n - len(buf))
                if not chunk:
                    return None
                buf += chunk
        except TimeoutError:
            return None
        return buf

    def reply(self, timeout: float = REPLY_TIMEOUT_S) -> tuple[int, int, bytes] | None:
        """The next reply as ``(tid, unit, pdu)``, or None."""
        head = self.recv_exact(7, timeout)
        if head is None:
            return None
        tid, proto, length, unit = struct.unpack(">HHHB", head)
        assert proto == 0, f"reply protocol id {proto}"
        body = self.recv_exact(length - 1, timeout)
        assert body is not None, "truncated reply"
        return tid, unit, body

    def request(
        self, pdu: bytes, unit: int | None = None, timeout: float = REPLY_TIMEOUT_S
    ) -> bytes | None:
        """Send one request and return the reply PDU (None when no reply comes)."""
        self.tid = (self.tid + 1) % 65536
        self.send(adu(self.tid, self.unit if unit is None else unit, pdu))
        got = self.reply(timeout)
        if got is None:
            return None
        assert got[0] == self.tid, f"transaction id {got[0]} != {self.tid}"
        return got[2]

    def read_registers(self, address: int, count: int = 1) -> list[int]:
        reply = self.request(read_pdu(3, address, count))
        assert reply is not None, "no reply"
        assert reply[0] == 3, f"read failed: {reply!r}"
        return list(struct.unpack(f">{count}H", reply[2:]))

    def peer_closed(self, timeout: float = REPLY_TIMEOUT_S) -> bool:
        """True if the peer closes (EOF or reset) within ``timeout`` without sending data."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def exc(fc: int, code: int) -> bytes:
    return bytes((fc | 0x80, code))


def endpoint(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["endpoints"]["modbus"])


def pymodbus_client(ep: dict[str, Any]) -> ModbusTcpClient:
    client = ModbusTcpClient(ep["host"], port=ep["port"], timeout=REPLY_TIMEOUT_S, retries=0)
    assert client.connect()
    return client


def config_file(tmp_path: Path, **values: Any) -> str:
    path = tmp_path / "sim.json"
    path.write_text(json.dumps(values))
    return str(path)


@pytest.fixture(scope="module")
def hardened(start_simulator_module: Any) -> dict[str, Any]:
    """Ready event of one hardened simulator shared by the read-only tests."""
    return start_simulator_module("modbus_tcp")  # type: ignore[no-any-return]


@pytest.fixture
def raw(hardened: dict[str, Any]) -> Iterator[Raw]:
    conn = Raw(endpoint(hardened))
    yield conn
    conn.close()


# -- process contract -----------------------------------------------------------------------
def test_ready_line_reports_endpoint(hardened: dict[str, Any]) -> None:
    ep = endpoint(hardened)
    assert hardened["simulator"] == "modbus_tcp"
    assert ep["host"] == "127.0.0.1"
    assert ep["unit"] == 1
    assert ep["port"] > 0
    assert "extra" not in hardened["endpoints"]
    assert hardened["weaknesses"] == []


def test_weak_posture_switches_every_weakness_on(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--posture", "weak")
    assert event["weaknesses"] == ALL_WEAKNESSES
    assert "extra" in event["endpoints"]


def test_taken_port_exits_2_with_error_line(start_simulator: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        event, rc = start_simulator.expect_error("modbus_tcp", "--port", str(port))
    assert rc == 2
    assert event is not None
    assert event["event"] == "error"
    assert str(port) in event["message"]


def test_unknown_weakness_exits_2(start_simulator: Any) -> None:
    event, rc = start_simulator.expect_error("modbus_tcp", "--weakness", "modbus.nope")
    assert rc == 2
    assert event is not None
    assert event["event"] == "error"
    assert "modbus.nope" in event["message"]


def test_sigterm_exits_0_while_a_client_is_connected(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp")
    conn = Raw(endpoint(event))
    try:
        assert conn.read_registers(100) == [1000]
        assert start_simulator.stop(event) == 0
        assert conn.peer_closed()
    finally:
        conn.close()


# -- reads and the process image --------------------------------------------------------------
def test_pymodbus_client_reads_the_process_image(hardened: dict[str, Any]) -> None:
    client = pymodbus_client(endpoint(hardened))
    try:
        scratch = client.read_holding_registers(100, count=10, device_id=1)
        protected = client.read_holding_registers(200, count=10, device_id=1)
        coils = client.read_coils(200, count=8, device_id=1)
        run_state = client.read_discrete_inputs(0, count=1, device_id=1)
        setpoint = client.read_input_registers(0, count=3, device_id=1)
    finally:
        client.close()
    assert scratch.registers == [1000 + i for i in range(10)]
    assert protected.registers == [4000 + i for i in range(10)]
    assert coils.bits[:8] == [True] * 8
    assert run_state.bits[0] is True
    assert len(setpoint.registers) == 3


def test_heartbeat_increments(raw: Raw) -> None:
    first = raw.read_registers(0)[0]
    time.sleep(0.2)
    second = raw.read_registers(0)[0]
    assert second != first, "heartbeat HR 0 did not move in 0.2 s (10 ms scan)"


def test_sixteen_pipelined_requests_get_sixteen_ordered_replies(raw: Raw) -> None:
    addresses = [100 + i % 10 if i % 2 else 200 + i % 10 for i in range(16)]
    raw.send(b"".join(adu(0x100 + i, 1, read_pdu(3, a, 1)) for i, a in enumerate(addresses)))
    for i, address in enumerate(addresses):
        got = raw.reply()
        assert got is not None, f"reply {i} of 16 missing"
        tid, unit, pdu = got
        expected = (1000 if address < 200 else 4000) + address % 100
        assert (tid, unit, pdu) == (0x100 + i, 1, bytes((3, 2)) + struct.pack(">H", expected))


def test_request_split_across_tcp_segments_is_reassembled(raw: Raw) -> None:
    frames = adu(7, 1, read_pdu(3, 100, 2)) + adu(8, 1, read_pdu(3, 105, 1))
    raw.send(frames[:4])
    time.sleep(0.05)
    raw.send(frames[4:15])
    time.sleep(0.05)
    raw.send(frames[15:])
    assert raw.reply() == (7, 1, bytes((3, 4)) + struct.pack(">HH", 1000, 1001))
    assert raw.reply() == (8, 1, bytes((3, 2)) + struct.pack(">H", 1005))


# -- function codes, quantities, addresses ----------------------------------------------------
@pytest.mark.parametrize("fc", [7, 8, 11, 17, 20, 43, 65, 90, 100])
def test_unserved_function_codes_get_exception_01(raw: Raw, fc: int) -> None:
    assert raw.request(bytes((fc, 0, 0, 0, 0))) == exc(fc, 1)


@pytest.mark.parametrize(
    ("fc", "address", "count", "code"),
    [
        (3, 0, 0, 3),
        (3, 0, 126, 3),
        (4, 0, 126, 3),
        (1, 0, 0, 3),
        (1, 0, 2001, 3),
        (2, 0, 2001, 3),
        (1, 0, 2000, 2),
        (3, 999, 2, 2),
        (3, 1000, 1, 2),
        (1, 999, 2, 2),
        (4, 65535, 1, 2),
    ],
)
def test_read_limits(raw: Raw, fc: int, address: int, count: int, code: int) -> None:
    assert raw.request(read_pdu(fc, address, count)) == exc(fc, code)


@pytest.mark.parametrize(("fc", "address", "count"), [(3, 875, 125), (1, 0, 1000), (2, 999, 1)])
def test_read_limits_edges_are_served(raw: Raw, fc: int, address: int, count: int) -> None:
    reply = raw.request(read_pdu(fc, address, count))
    assert reply is not None
    assert reply[0] == fc
    size = count * 2 if fc in (3, 4) else (count + 7) // 8
    assert reply[1] == size
    assert len(reply) == 2 + size


@pytest.mark.parametrize("pdu", [b"\x03\x00\x64", b"\x03\x00\x64\x00\x01\x00", b"\x03"])
def test_wrong_pdu_length_gets_exception_03(raw: Raw, pdu: bytes) -> None:
    assert raw.request(pdu) == exc(3, 3)


# -- writes --------------------------------------------------------------------------------
WRITE_REQUESTS = {
    5: struct.pack(">BHH", 5, 100, 0xFF00),
    6: struct.pack(">BHH", 6, 100, 77),
    15: struct.pack(">BHHB", 15, 100, 8, 1) + b"\xff",
    16: struct.pack(">BHHBH", 16, 100, 1, 2, 77),
    22: struct.pack(">BHHH", 22, 100, 0, 77),
    23: struct.pack(">BHHHHBH", 23, 100, 1, 100, 1, 2, 77),
}


@pytest.mark.parametrize("fc", sorted(WRITE_REQUESTS))
def test_hardened_plain_tcp_refuses_every_write(raw: Raw, fc: int) -> None:
    assert raw.request(WRITE_REQUESTS[fc]) == exc(fc, 1)
    assert raw.read_registers(100) == [1000]
    assert raw.request(read_pdu(1, 100, 8)) == b"\x01\x01\x00"


@pytest.fixture(scope="module")
def writable(start_simulator_module: Any) -> dict[str, Any]:
    """A simulator with ``modbus.unauthenticated_writes`` only."""
    return start_simulator_module(  # type: ignore[no-any-return]
        "modbus_tcp", "--weakness", "modbus.unauthenticated_writes"
    )


def test_unauthenticated_writes_accepts_scratch_writes(writable: dict[str, Any]) -> None:
    client = pymodbus_client(endpoint(writable))
    try:
        assert not client.write_register(101, 4242, device_id=1).isError()
        assert not client.write_registers(102, [1, 2], device_id=1).isError()
        assert not client.write_registers(300, list(range(123)), device_id=1).isError()
        assert not client.write_coils(300, [True] * 600, device_id=1).isError()
        assert not client.write_coil(101, True, device_id=1).isError()
        assert not client.write_coils(102, [True, False, True], device_id=1).isError()
        assert not client.mask_write_register(
            address=105, and_mask=0x00FF, or_mask=0x0F00, device_id=1
        ).isError()
        rw = client.readwrite_registers(
            read_address=101, read_count=5, write_address=106, values=[9], device_id=1
        )
        coils = client.read_coils(100, count=5, device_id=1)
    finally:
        client.close()
    # FC 22: (1005 & 0x00FF) | (0x0F00 & ~0x00FF) = 0xED | 0xF00
    assert rw.registers == [4242, 1, 2, 1004, (1005 & 0xFF) | 0x0F00]
    assert coils.bits[:5] == [False, True, True, False, True]
    raw = Raw(endpoint(writable))
    try:
        assert raw.read_registers(106) == [9]
        assert raw.read_registers(300, 123) == list(range(123))
        # coils 300..899 written: 896..899 on, 900..903 off (LSB first)
        assert raw.request(read_pdu(1, 896, 8)) == b"\x01\x01\x0f"
    finally:
        raw.close()


@pytest.mark.parametrize("fc", sorted(WRITE_REQUESTS))
def test_protected_ranges_refuse_writes_with_02(writable: dict[str, Any], fc: int) -> None:
    raw = Raw(endpoint(writable))
    try:
        pdu = bytearray(WRITE_REQUESTS[fc])
        struct.pack_into(">H", pdu, 1 if fc != 23 else 5, 200)  # target address 200
        assert raw.request(bytes(pdu)) == exc(fc, 2)
        assert raw.read_registers(200) == [4000]
        assert raw.request(read_pdu(1, 200, 8)) == b"\x01\x01\xff"
    finally:
        raw.close()


def test_write_range_overlapping_protected_is_refused_whole(writable: dict[str, Any]) -> None:
    raw = Raw(endpoint(writable))
    try:
        pdu = struct.pack(">BHHB3H", 16, 198, 3, 6, 1, 2, 3)
        assert raw.request(pdu) == exc(16, 2)
        assert raw.read_registers(198, 3) == [0, 0, 4000]
    finally:
        raw.close()


@pytest.mark.parametrize(
    ("pdu", "code"),
    [
        (struct.pack(">BHH", 5, 100, 0x1234), 3),
        (struct.pack(">BHH", 5, 1000, 0xFF00), 2),
        (struct.pack(">BHH", 6, 1000, 1), 2),
        (struct.pack(">BHHB", 16, 100, 0, 0), 3),
        (struct.pack(">BHHBH", 16, 100, 124, 2, 1), 3),  # 124 > 123
        (struct.pack(">BHHBH", 16, 100, 1, 4, 1), 3),  # byte count mismatch
        (struct.pack(">BHHBH", 16, 999, 2, 4, 1) + b"\x00\x01", 2),
        (struct.pack(">BHHBB", 15, 100, 1969, 1, 0), 3),  # 1969 > 1968
        (struct.pack(">BHHB", 15, 100, 9, 1) + b"\xff", 3),  # byte count mismatch
        (struct.pack(">BHHBB", 15, 999, 2, 1, 3), 2),
        (struct.pack(">BHH", 22, 100, 0), 3),  # truncated
        (struct.pack(">BHHH", 22, 1000, 0, 0), 2),
        (struct.pack(">BHHHHB", 23, 100, 126, 100, 1, 2) + b"\x00\x01", 3),
        (struct.pack(">BHHHHBH", 23, 100, 1, 100, 122, 2, 1), 3),  # 122 > 121
        (struct.pack(">BHHHHB", 23, 999, 2, 100, 1, 2) + b"\x00\x01", 2),
        (struct.pack(">BHHHHB", 23, 100, 1, 999, 2, 4) + bytes(4), 2),
    ],
    ids=lambda v: v.hex() if isinstance(v, bytes) else f"exc{v}",
)
def test_write_limits(writable: dict[str, Any], pdu: bytes, code: int) -> None:
    raw = Raw(endpoint(writable))
    try:
        before = raw.read_registers(99, 3)
        assert raw.request(pdu) == exc(pdu[0], code)
        assert raw.read_registers(99, 3) == before
    finally:
        raw.close()


def test_unprotected_writes_opens_the_protected_ranges(start_simulator: Any) -> None:
    event = start_simulator(
        "modbus_tcp",
        "--weakness",
        "modbus.unauthenticated_writes",
        "--weakness",
        "modbus.unprotected_writes",
    )
    client = pymodbus_client(endpoint(event))
    try:
        assert not client.write_register(201, 1, device_id=1).isError()
        assert not client.write_coil(201, False, device_id=1).isError()
        regs = client.read_holding_registers(201, count=1, device_id=1)
        coils = client.read_coils(200, count=2, device_id=1)
    finally:
        client.close()
    assert regs.registers == [1]
    assert coils.bits[:2] == [True, False]


def test_unprotected_writes_opens_only_the_protected_ranges_on_plain_tcp(
    start_simulator: Any,
) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "modbus.unprotected_writes")
    raw = Raw(endpoint(event))
    try:
        # the configuration range takes the write even on the read-only channel ...
        assert raw.request(struct.pack(">BHH", 6, 201, 77)) == struct.pack(">BHH", 6, 201, 77)
        assert raw.read_registers(201) == [77]
        # ... while every other write is still refused there
        assert raw.request(struct.pack(">BHH", 6, 100, 1)) == exc(6, 1)
    finally:
        raw.close()


# -- unit ids ------------------------------------------------------------------------------
def test_hardened_serves_its_unit_and_255_only(raw: Raw) -> None:
    assert raw.request(read_pdu(3, 100, 1), unit=1) == b"\x03\x02\x03\xe8"
    assert raw.request(read_pdu(3, 100, 1), unit=255) == b"\x03\x02\x03\xe8"
    for unit in (0, 2, 17):
        assert raw.request(read_pdu(3, 100, 1), unit=unit, timeout=SILENCE_S) is None
    # the dropped requests did not break the connection
    assert raw.request(read_pdu(3, 101, 1), unit=1) == b"\x03\x02\x03\xe9"


def test_unit_option(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--unit", "7")
    ep = endpoint(event)
    assert ep["unit"] == 7
    raw = Raw(ep)
    try:
        assert raw.request(read_pdu(3, 100, 1), unit=7) == b"\x03\x02\x03\xe8"
        assert raw.request(read_pdu(3, 100, 1), unit=1, timeout=SILENCE_S) is None
    finally:
        raw.close()


def test_any_unit_id_answers_every_unit(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "modbus.any_unit_id")
    raw = Raw(endpoint(event))
    try:
        for unit in (0, 2, 17, 254):
            assert raw.request(read_pdu(3, 100, 1), unit=unit) == b"\x03\x02\x03\xe8"
    finally:
        raw.close()


# -- malformed frames ----------------------------------------------------------------------
MALFORMED = {
    "protocol id 1": struct.pack(">HHHB", 1, 1, 6, 1) + read_pdu(3, 0, 1),
    "length 0": struct.pack(">HHHB", 1, 0, 0, 1) + read_pdu(3, 0, 1),
    "length 1": struct.pack(">HHHB", 1, 0, 1, 1) + read_pdu(3, 0, 1),
    "length 255": struct.pack(">HHHB", 1, 0, 255, 1) + bytes(254),
}


@pytest.mark.parametrize("frame", MALFORMED.values(), ids=MALFORMED.keys())
def test_hardened_closes_a_connection_on_malformed_mbap(
    hardened: dict[str, Any], frame: bytes
) -> None:
    bystander = Raw(endpoint(hardened))
    culprit = Raw(endpoint(hardened))
    try:
        culprit.send(frame)
        assert culprit.peer_closed(), "malformed MBAP header did not close the connection"
        assert bystander.read_registers(100) == [1000]
        fresh = Raw(endpoint(hardened))
        try:
            assert fresh.read_registers(100) == [1000]
        finally:
            fresh.close()
    finally:
        bystander.close()
        culprit.close()


def test_valid_requests_before_a_malformed_one_are_answered(raw: Raw) -> None:
    raw.send(adu(5, 1, read_pdu(3, 100, 1)) + MALFORMED["protocol id 1"])
    assert raw.reply() == (5, 1, b"\x03\x02\x03\xe8")
    assert raw.peer_closed()


def test_crash_on_malformed_hangs_the_whole_device(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "modbus.crash_on_malformed")
    ep = endpoint(event)
    bystander, culprit = Raw(ep), Raw(ep)
    try:
        assert bystander.read_registers(100) == [1000]
        culprit.send(MALFORMED["protocol id 1"])
        assert not culprit.peer_closed(SILENCE_S), "the crashed device closed the connection"
        assert bystander.request(read_pdu(3, 100, 1), timeout=SILENCE_S) is None
        fresh = Raw(ep)  # the listening socket still accepts
        try:
            assert fresh.request(read_pdu(3, 100, 1), timeout=SILENCE_S) is None
        finally:
            fresh.close()
    finally:
        bystander.close()
        culprit.close()


# -- no input validation ---------------------------------------------------------------------
def test_no_input_validation_answers_illegal_requests(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "modbus.no_input_validation")
    raw = Raw(endpoint(event))
    try:
        big = raw.request(read_pdu(3, 0, 126))
        assert big is not None
        assert big[:2] == bytes((3, 250))
        assert len(big) == 252
        zero = raw.request(read_pdu(3, 100, 0))
        assert zero == b"\x03\x02\x03\xe8"
        beyond = raw.request(read_pdu(3, 999, 3))
        assert beyond == b"\x03\x06" + bytes(6)
        coils = raw.request(read_pdu(1, 2000, 8))
        assert coils == b"\x01\x01\x00"
        short = raw.request(b"\x03\x00\x64")
        assert short is not None
        assert short[0] == 3
        # writes stay refused on plain TCP: only the validation is gone
        assert raw.request(struct.pack(">BHH", 6, 100, 1)) == exc(6, 1)
    finally:
        raw.close()


# -- extra function codes ------------------------------------------------------------------
def test_extra_function_codes_are_answered(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "modbus.extra_function_codes")
    ep = endpoint(event)
    raw, other = Raw(ep), Raw(ep)
    try:
        echo = struct.pack(">BHH", 8, 0, 0xBEEF)
        assert raw.request(echo) == echo
        ident = raw.request(bytes((43, 14, 1, 0)))
        assert ident is not None
        assert ident[:2] == bytes((43, 14))
        assert b"Harness Sim" in ident
        assert ident[6] == 3
        vendor = raw.request(bytes((65,)))
        assert vendor is not None
        assert vendor[0] == 65
        assert raw.request(bytes((90, 0, 1))) == bytes((90, 0, 1))
        # FC 8/4 force listen-only: no reply, then the device is mute on every connection
        assert raw.request(struct.pack(">BHH", 8, 4, 0), timeout=SILENCE_S) is None
        assert other.request(read_pdu(3, 100, 1), timeout=SILENCE_S) is None
        # FC 8/1 restart communications: silent (it was listen-only), then it answers again
        assert raw.request(struct.pack(">BHH", 8, 1, 0), timeout=SILENCE_S) is None
        assert other.read_registers(100) == [1000]
    finally:
        raw.close()
        other.close()


def test_pymodbus_reads_device_identification_from_extra_function_codes(
    start_simulator: Any,
) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "modbus.extra_function_codes")
    client = pymodbus_client(endpoint(event))
    try:
        info = client.read_device_information(read_code=1, object_id=0, device_id=1)
    finally:
        client.close()
    assert info.information[0] == b"Harness Sim"
    assert set(info.information) == {0, 1, 2}


# -- connection limit ----------------------------------------------------------------------
def test_connection_limit(start_simulator: Any, tmp_path: Path) -> None:
    event = start_simulator("modbus_tcp", "--config", config_file(tmp_path, connection_limit=2))
    ep = endpoint(event)
    first, second = Raw(ep), Raw(ep)
    try:
        assert first.read_registers(100) == [1000]
        assert second.read_registers(100) == [1000]
        third = Raw(ep)  # accepted by the kernel, then closed by the device
        try:
            assert third.peer_closed()
        finally:
            third.close()
        assert first.read_registers(101) == [1001]
        second.close()
        time.sleep(0.1)
        fourth = Raw(ep)
        try:
            assert fourth.read_registers(102) == [1002]
        finally:
            fourth.close()
    finally:
        first.close()
        second.close()


def test_no_connection_limit(start_simulator: Any, tmp_path: Path) -> None:
    event = start_simulator(
        "modbus_tcp",
        "--weakness",
        "modbus.no_connection_limit",
        "--config",
        config_file(tmp_path, connection_limit=2),
    )
    conns = [Raw(endpoint(event)) for _ in range(4)]
    try:
        for conn in conns:
            assert conn.read_registers(100) == [1000]
    finally:
        for conn in conns:
            conn.close()


# -- extra open port ---------------------------------------------------------------------
def test_extra_open_port_is_a_banner_service(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "net.extra_open_port")
    extra = event["endpoints"]["extra"]
    assert extra["port"] != event["endpoints"]["modbus"]["port"]
    with socket.create_connection((extra["host"], extra["port"]), timeout=REPLY_TIMEOUT_S) as s:
        data = b""
        while chunk := s.recv(1024):
            data += chunk
    assert data.endswith(b"\r\n")
    assert b"debug service" in data


# -- fragile -----------------------------------------------------------------------------
def _heartbeat_after_burst(event: dict[str, Any]) -> tuple[int, int, list[int]]:
    """Send a 60-request burst, then read the heartbeat twice 0.3 s apart and the run state."""
    raw = Raw(endpoint(event))
    try:
        raw.send(b"".join(adu(i, 1, read_pdu(3, 0, 1)) for i in range(60)))
        for _ in range(60):
            assert raw.reply() is not None
        first = raw.read_registers(0)[0]
        time.sleep(0.3)
        second = raw.read_registers(0)[0]
        run = raw.request(read_pdu(2, 0, 1))
        assert run is not None
        return first, second, list(run[2:])
    finally:
        raw.close()


def test_fragile_starves_the_heartbeat_under_a_burst(start_simulator: Any, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, fragile_threshold_rps=20, fragile_recovery_s=3)
    fragile = start_simulator("modbus_tcp", "--weakness", "load.fragile", "--config", cfg)
    first, second, run = _heartbeat_after_burst(fragile)
    assert first == second, "fragile device's heartbeat kept running under load"
    assert run == [0], "run state DI 0 should drop while the scan cycle starves"


def test_hardened_heartbeat_survives_the_same_burst(start_simulator: Any, tmp_path: Path) -> None:
    cfg = config_file(tmp_path, fragile_threshold_rps=20, fragile_recovery_s=3)
    sturdy = start_simulator("modbus_tcp", "--config", cfg)
    first, second, run = _heartbeat_after_burst(sturdy)
    assert first != second
    assert run == [1]


# -- frame and idle timeouts (slowloris) ---------------------------------------------------
#: An MBAP header announcing 253 more bytes: a request that never arrives whole.
PARTIAL_HEADER = struct.pack(">HHH", 1, 0, 254)
#: Seconds between two trickled bytes: far below every timeout used below.
TRICKLE_S = 0.05


def trickle(conns: list[Raw], rounds: int) -> list[bool]:
    """Send one byte on each connection every :data:`TRICKLE_S`, ``rounds`` times; which ones
    the device closed meanwhile."""
    closed = [False] * len(conns)
    for _ in range(rounds):
        for i, conn in enumerate(conns):
            if closed[i]:
                continue
            if conn.peer_closed(TRICKLE_S / len(conns)):
                closed[i] = True
                continue
            try:
                conn.send(b"\0")
            except OSError:
                closed[i] = True
    return closed


def test_ready_line_reports_the_timeouts(hardened: dict[str, Any], start_simulator: Any) -> None:
    ep = endpoint(hardened)
    assert ep["frame_timeout_s"] == 2.0
    assert ep["idle_timeout_s"] == 10.0
    weak = endpoint(start_simulator("modbus_tcp", "--weakness", "modbus.no_frame_timeout"))
    assert weak["frame_timeout_s"] is None and weak["idle_timeout_s"] is None


@pytest.mark.parametrize("option", ["--frame-timeout-s", "--idle-timeout-s"])
@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_bad_timeout_exits_2(start_simulator: Any, option: str, value: str) -> None:
    event, rc = start_simulator.expect_error("modbus_tcp", option, value)
    assert rc == 2
    assert event is not None and event["event"] == "error"
    assert option in event["message"]


def test_hardened_closes_a_trickled_request_that_never_completes(start_simulator: Any) -> None:
    # the bytes come every 0.05 s, ten times faster than the 0.5 s timeout: only a timer that
    # counts from the frame's first byte, not from the last byte, can close this connection
    ep = endpoint(start_simulator("modbus_tcp", "--frame-timeout-s", "0.5"))
    held, other = Raw(ep), Raw(ep)
    try:
        assert held.read_registers(100) == [1000]  # served first: not refused, timed out
        held.send(PARTIAL_HEADER)
        assert trickle([held], rounds=60) == [True], "trickled request kept for 3 s"
        assert other.read_registers(101) == [1001]  # the others are not affected
    finally:
        held.close()
        other.close()


def test_hardened_keeps_a_busy_connection_whose_reads_split_frames(start_simulator: Any) -> None:
    # 30 requests sent over 1.5 s in pieces that each end in the middle of the next request:
    # the buffer is never empty, but every request completes well within the 0.3 s timeout
    ep = endpoint(start_simulator("modbus_tcp", "--frame-timeout-s", "0.3"))
    conn = Raw(ep)
    try:
        stream = b"".join(adu(i, 1, read_pdu(3, 100, 1)) for i in range(1, 31))
        size = len(adu(0, 1, read_pdu(3, 100, 1)))
        cuts = [0, *range(size // 2, len(stream), size), len(stream)]
        for a, b in itertools.pairwise(cuts):
            conn.send(stream[a:b])
            time.sleep(TRICKLE_S)
        tids = []
        for _ in range(30):
            got = conn.reply()
            assert got is not None, f"connection dropped after {len(tids)} replies"
            tids.append(got[0])
        assert tids == list(range(1, 31))
    finally:
        conn.close()


def test_hardened_idle_timeout_closes_silent_connections(start_simulator: Any) -> None:
    ep = endpoint(start_simulator("modbus_tcp", "--idle-timeout-s", "0.5"))
    silent, quiet = Raw(ep), Raw(ep)
    try:
        assert quiet.read_registers(100) == [1000]
        assert silent.peer_closed(), "a connection that never sent anything was kept"
        assert quiet.peer_closed(), "a connection idle after its request was kept"
    finally:
        silent.close()
        quiet.close()


def test_hardened_frees_the_connection_limit_from_held_connections(
    start_simulator: Any, tmp_path: Path
) -> None:
    ep = endpoint(
        start_simulator(
            "modbus_tcp",
            "--frame-timeout-s",
            "0.5",
            "--config",
            config_file(tmp_path, connection_limit=2),
        )
    )
    held = [Raw(ep), Raw(ep)]
    try:
        for conn in held:
            conn.send(PARTIAL_HEADER)
        extra = Raw(ep)  # the limit is full: accepted, then closed at once
        try:
            assert extra.peer_closed()
        finally:
            extra.close()
        assert all(conn.peer_closed() for conn in held), "held connections were kept"
        fresh = Raw(ep)
        try:
            assert fresh.read_registers(100) == [1000]
        finally:
            fresh.close()
    finally:
        for conn in held:
            conn.close()


def test_no_frame_timeout_keeps_held_connections_and_locks_clients_out(
    start_simulator: Any, tmp_path: Path
) -> None:
    event = start_simulator(
        "modbus_tcp",
        "--weakness",
        "modbus.no_frame_timeout",
        "--frame-timeout-s",
        "0.3",
        "--idle-timeout-s",
        "0.3",
        "--config",
        config_file(tmp_path, connection_limit=2),
    )
    ep = endpoint(event)
    trickled, silent = Raw(ep), Raw(ep)
    try:
        trickled.send(PARTIAL_HEADER)
        # 1.5 s of trickling and silence, five times either timeout: nothing is closed
        assert trickle([trickled], rounds=30) == [False]
        assert not silent.peer_closed(0.05)
        fresh = Raw(ep)
        try:
            assert fresh.peer_closed(), "a third client was served past the limit"
        finally:
            fresh.close()
        trickled.close()
        time.sleep(0.1)
        fresh = Raw(ep)
        try:
            assert fresh.read_registers(100) == [1000]  # a slot freed by the client itself
        finally:
            fresh.close()
    finally:
        trickled.close()
        silent.close()


def test_crashed_device_times_nothing_out(start_simulator: Any) -> None:
    ep = endpoint(
        start_simulator(
            "modbus_tcp", "--weakness", "modbus.crash_on_malformed", "--frame-timeout-s", "0.3"
        )
    )
    held, crasher = Raw(ep), Raw(ep)
    try:
        held.send(PARTIAL_HEADER)
        crasher.send(struct.pack(">HHHB", 1, 5, 6, 1) + read_pdu(3, 0, 1))  # protocol id 5
        assert crasher.reply(SILENCE_S) is None
        assert not held.peer_closed(1.0), "a muted device still timed a connection out"
    finally:
        held.close()
        crasher.close()
