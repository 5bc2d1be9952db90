"""The guarded Modbus clients: framing, outcomes, timeouts, garbage, bounds, guard refusals.

Three kinds of peer:

- the bundled simulators (hardened Modbus/TCP and RTU), started once for the module through the
  lab launcher, for real exchanges;
- tiny fake devices on the other end of a socket pair or a pty, scripted per test, for what a
  simulator never does (lying about lengths, endless bytes, dripping, wrong transaction ids);
- nothing at all, for the guard: a refused destination must not open a socket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import SafetyViolation, TargetError
from harness.evidence import Evidence
from harness.protocols import mbap
from harness.protocols.modbus import (
    ConnectFailed,
    ModbusRtuClient,
    ModbusTcpClient,
    Outcome,
    describe_pdu,
)
from harness.safety import Guard

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 0
SCRATCH = 100
PROTECTED = 200


# --------------------------------------------------------------------------- simulators
@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A hardened Modbus/TCP and Modbus RTU simulator pair for the whole module."""
    from harness.lab import LabDefinition, lab_down, lab_up

    state_dir = tmp_path_factory.mktemp("modbus-client") / "lab"
    state = lab_up(LabDefinition.model_validate(
        {"name": "client", "simulators": ["modbus_tcp", "modbus_rtu"]}), state_dir)
    try:
        sims = state["simulators"]
        yield {"tcp": sims["modbus_tcp"]["endpoints"]["modbus"],
               "rtu": sims["modbus_rtu"]["endpoints"]["rtu"]}
    finally:
        lab_down(state_dir)


@pytest.fixture
def tcp(sims: dict[str, Any]) -> Iterator[tuple[ModbusTcpClient, Evidence]]:
    ep = sims["tcp"]
    evidence = Evidence("test")
    client = ModbusTcpClient.connect(ep["host"], ep["port"], guard=Guard([ep["host"]]),
                                     evidence=evidence, unit=ep["unit"], request_timeout=2.0)
    yield client, evidence
    client.close()


@pytest.fixture
def rtu(sims: dict[str, Any]) -> Iterator[tuple[ModbusRtuClient, Evidence]]:
    path = sims["rtu"]["path"]
    evidence = Evidence("test")
    client = ModbusRtuClient.open(path, guard=Guard([], serial_devices=[path]),
                                  evidence=evidence, unit=sims["rtu"]["unit"], request_timeout=2.0)
    yield client, evidence
    client.close()


def test_tcp_read_is_framed_and_recorded(tcp: tuple[ModbusTcpClient, Evidence]) -> None:
    client, evidence = tcp
    first = client.read_registers(HEARTBEAT, 3)
    assert len(first) == 3
    ex = client.exchange(mbap.read_pdu(3, SCRATCH, 2))
    assert ex.outcome is Outcome.REPLY and ex.problem is None and ex.accepted
    assert ex.response is not None and ex.response.registers() == [1000, 1001]
    # request and reply carry the same transaction id; the reply's MBAP length is exact
    assert ex.request[:2] == ex.reply[:2]
    assert int.from_bytes(ex.reply[4:6], "big") == len(ex.reply) - 6
    sent = [e for e in evidence.entries if e["kind"] == "sent" and "hex" in e]
    received = [e for e in evidence.entries if e["kind"] == "received" and "hex" in e]
    assert sent[-1]["hex"] == ex.request.hex() and sent[-1]["summary"] == "FC 3 read HR 100 x2"
    assert received[-1]["hex"] == ex.reply.hex()
    assert all(e["channel"] == client.channel for e in sent + received)


def test_tcp_exception_silence_and_close_are_outcomes(
        tcp: tuple[ModbusTcpClient, Evidence], sims: dict[str, Any]) -> None:
    client, _ = tcp
    write = client.exchange(mbap.write_single_register_pdu(SCRATCH, 7))
    assert write.outcome is Outcome.REPLY and not write.accepted and write.exception_code == 1
    other_unit = client.exchange(mbap.read_pdu(3, HEARTBEAT, 1), unit=77, timeout=0.3)
    assert other_unit.outcome is Outcome.SILENCE and other_unit.reply == b""
    with pytest.raises(TargetError, match="no reply"):
        client.request(mbap.read_pdu(3, HEARTBEAT, 1), unit=77)
    bad = mbap.adu(1, client.unit, mbap.read_pdu(3, HEARTBEAT, 1), protocol=3)
    closed = client.send_frame(bad, summary="protocol id 3", timeout=2.0)
    assert closed.outcome is Outcome.CLOSED and client.closed
    again = client.exchange(mbap.read_pdu(3, HEARTBEAT, 1))
    assert again.outcome is Outcome.CLOSED
    assert not client.health_read().ok


def test_tcp_health_read(tcp: tuple[ModbusTcpClient, Evidence]) -> None:
    client, _ = tcp
    health = client.health_read()
    assert health.ok and health.exchange is not None
    assert health.exchange.request[7:] == mbap.read_pdu(3, HEARTBEAT, 1)


def test_rtu_exchanges(rtu: tuple[ModbusRtuClient, Evidence]) -> None:
    client, evidence = rtu
    assert client.health_read().ok
    assert client.read_registers(SCRATCH, 2) == [1000, 1001]
    assert client.exchange(mbap.write_single_register_pdu(SCRATCH, 4242)).accepted
    assert client.read_registers(SCRATCH, 1) == [4242]
    client.write_registers(SCRATCH, [1000])
    assert client.read_registers(SCRATCH, 1) == [1000]
    refused = client.exchange(mbap.write_single_register_pdu(PROTECTED, 1))
    assert refused.exception_code == 2
    corrupt = client.exchange(mbap.read_pdu(3, HEARTBEAT, 1), corrupt_crc=True, timeout=0.3)
    assert corrupt.outcome is Outcome.SILENCE
    other = client.exchange(mbap.read_pdu(3, HEARTBEAT, 1), unit=9, timeout=0.3)
    assert other.outcome is Outcome.SILENCE
    assert client.read_bits(SCRATCH, 3) == [False, False, False]
    sent = [e for e in evidence.entries if e["kind"] == "sent" and "hex" in e]
    assert sent[-1]["summary"] == "FC 1 read C 100 x3"
    assert bytes.fromhex(sent[-1]["hex"]) == mbap.rtu_frame(client.unit, mbap.read_pdu(1, 100, 3))


# --------------------------------------------------------------------------- fake devices
class FakeDevice:
    """A scripted Modbus/TCP peer on the far end of a socket pair.

    ``script(sock)`` runs in a thread; the client gets the near end, wrapped so that every
    ``recv`` size it asks for is recorded.
    """

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.near, self.far = socket.socketpair()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self.thread.start()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _run(self, script: Callable[[socket.socket], None]) -> None:
        with contextlib.suppress(OSError):
            script(self.far)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.far.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        assert not self.thread.is_alive(), "fake device thread did not stop"
        self.far.close()
        self.near.close()


class Recording:
    """A socket proxy that records the size of every ``recv`` call."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recv_sizes: list[int] = []

    def recv(self, n: int) -> bytes:
        self.recv_sizes.append(n)
        return self.sock.recv(n)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


@pytest.fixture
def fake() -> Iterator[Callable[..., tuple[ModbusTcpClient, FakeDevice, Recording]]]:
    devices: list[FakeDevice] = []

    def make(script: Callable[[socket.socket], None], timeout: float = 2.0
             ) -> tuple[ModbusTcpClient, FakeDevice, Recording]:
        dev = FakeDevice(script)
        devices.append(dev)
        rec = Recording(dev.near)
        client = ModbusTcpClient(rec, channel="modbus://fake", unit=1,  # type: ignore[arg-type]
                                 evidence=Evidence("fake"), request_timeout=timeout)
        return client, dev, rec

    yield make
    for dev in devices:
        dev.close()


def _read_request(sock: socket.socket) -> bytes:
    header = sock.recv(7)
    _, _, length, _ = mbap.MBAP.unpack(header)
    return header + sock.recv(length - 1)


def _answer(reply_for: Callable[[bytes], bytes]) -> Callable[[socket.socket], None]:
    def script(sock: socket.socket) -> None:
        request = _read_request(sock)
        sock.sendall(reply_for(request))
        sock.recv(1)  # hold the connection until the test closes it
    return script


def _reply(request: bytes, pdu: bytes, *, length: int | None = None) -> bytes:
    tid, _, _, unit = mbap.MBAP.unpack_from(request)
    return mbap.adu(tid, unit, pdu, length=length)


def test_reply_longer_than_its_mbap_length_is_garbage(fake: Callable[..., Any]) -> None:
    client, _, _ = fake(_answer(lambda r: _reply(r, b"\x03\x02\x00\x01") + b"\xde\xad\xbe\xef"))
    with pytest.raises(TargetError, match="longer than its MBAP length"):
        client.exchange(mbap.read_pdu(3, 0, 1))


def test_endless_bytes_are_garbage_and_reads_stay_bounded(fake: Callable[..., Any]) -> None:
    def endless(sock: socket.socket) -> None:
        _read_request(sock)
        # a header announcing the largest ADU, then bytes that never stop
        sock.sendall(mbap.MBAP.pack(1, 0, 254, 1))
        chunk = b"\x03" * 1024
        for _ in range(10_000):  # bounded: about 10 MB at most
            sock.sendall(chunk)

    client, _, rec = fake(endless, timeout=10.0)
    t0 = time.monotonic()
    with pytest.raises(TargetError):
        client.exchange(mbap.read_pdu(3, 0, 1))
    # it recognised garbage instead of waiting out its 10 s timeout
    assert time.monotonic() - t0 < 5.0
    assert rec.recv_sizes and max(rec.recv_sizes) <= mbap.MAX_ADU
    assert sum(rec.recv_sizes[:2]) <= mbap.MAX_ADU  # header + body of the one ADU


def test_bad_header_is_garbage(fake: Callable[..., Any]) -> None:
    client, _, _ = fake(_answer(lambda r: b"HTTP/1.1 400 Bad Request\r\n\r\n"))
    with pytest.raises(TargetError, match="not a Modbus/TCP reply"):
        client.exchange(mbap.read_pdu(3, 0, 1))


def test_reply_cut_short_then_closed(fake: Callable[..., Any]) -> None:
    def cut(sock: socket.socket) -> None:
        request = _read_request(sock)
        sock.sendall(_reply(request, b"\x03\x02\x00\x01")[:9])
        sock.shutdown(socket.SHUT_WR)

    client, _, _ = fake(cut)
    with pytest.raises(TargetError, match="cut short"):
        client.exchange(mbap.read_pdu(3, 0, 1))


def test_dripping_reply_stops_at_the_deadline(fake: Callable[..., Any]) -> None:
    def drip(sock: socket.socket) -> None:
        request = _read_request(sock)
        for byte in _reply(request, b"\x03\x02\x00\x01", length=200)[:20]:
            sock.sendall(bytes([byte]))
            time.sleep(0.05)

    client, _, _ = fake(drip, timeout=0.5)
    with pytest.raises(TargetError, match="cut short"):
        client.exchange(mbap.read_pdu(3, 0, 1))


def test_wrong_transaction_id_is_a_problem(fake: Callable[..., Any]) -> None:
    def other_tid(request: bytes) -> bytes:
        return mbap.adu(0xBEEF, 1, b"\x03\x02\x00\x01")

    client, _, _ = fake(_answer(other_tid))
    ex = client.exchange(mbap.read_pdu(3, 0, 1))
    assert ex.outcome is Outcome.REPLY and ex.problem is not None
    assert "transaction id" in ex.problem


def test_wrong_function_code_makes_strict_helpers_fail(fake: Callable[..., Any]) -> None:
    client, _, _ = fake(_answer(lambda r: _reply(r, b"\x04\x02\x00\x01")))
    with pytest.raises(TargetError, match="FC 4"):
        client.read_registers(0, 1)


def test_silent_device(fake: Callable[..., Any]) -> None:
    def silent(sock: socket.socket) -> None:
        _read_request(sock)
        sock.recv(1)

    client, _, _ = fake(silent, timeout=0.3)
    ex = client.exchange(mbap.read_pdu(3, 0, 1))
    assert ex.outcome is Outcome.SILENCE
    assert not client.health_read().ok


def test_late_bytes_are_kept_and_recorded(fake: Callable[..., Any]) -> None:
    def late(sock: socket.socket) -> None:
        first = _read_request(sock)
        time.sleep(0.4)
        sock.sendall(_reply(first, b"\x03\x02\x00\x01"))  # after the client gave up
        second = _read_request(sock)
        sock.sendall(_reply(second, b"\x03\x02\x00\x02"))
        sock.recv(1)

    client, _, _ = fake(late, timeout=0.2)
    assert client.exchange(mbap.read_pdu(3, 0, 1)).outcome is Outcome.SILENCE
    time.sleep(0.4)
    ex = client.exchange(mbap.read_pdu(3, 0, 1), timeout=2.0)
    assert ex.accepted and ex.response is not None and ex.response.registers() == [2]
    assert len(client.late) == 1 and client.late[0][7:] == b"\x03\x02\x00\x01"


def test_socket_factory_gets_the_guarded_address() -> None:
    """The Modbus/TCP Security client's way in: a factory that opens (e.g. TLS) sockets."""
    near, far = socket.socketpair()
    calls: list[tuple[str, int, float]] = []

    def factory(address: str, port: int, timeout: float) -> socket.socket:
        calls.append((address, port, timeout))
        return near

    def device() -> None:
        request = _read_request(far)
        far.sendall(_reply(request, b"\x03\x02\x12\x34"))

    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    try:
        client = ModbusTcpClient.connect("127.0.0.1", 802, guard=Guard(["127.0.0.1"]),
                                         connect_timeout=1.5, socket_factory=factory)
        assert client.read_registers(0, 1) == [0x1234]
        assert calls == [("127.0.0.1", 802, 1.5)]
        client.close()
    finally:
        thread.join(5)
        far.close()
        near.close()


# --------------------------------------------------------------------------- the guard
def test_guard_refuses_before_any_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[object] = []

    def factory(address: str, port: int, timeout: float) -> socket.socket:
        opened.append(address)
        raise AssertionError("a socket was requested")

    def no_connection(*args: object, **kwargs: object) -> socket.socket:
        opened.append(args)
        raise AssertionError("socket.create_connection was called")

    monkeypatch.setattr(socket, "create_connection", no_connection)
    guard = Guard(["127.0.0.1"])
    evidence = Evidence("guard")
    with pytest.raises(SafetyViolation, match=r"127\.0\.0\.2"):
        ModbusTcpClient.connect("127.0.0.2", 502, guard=guard, evidence=evidence,
                                socket_factory=factory)
    with pytest.raises(SafetyViolation):
        ModbusTcpClient.connect("127.0.0.2", 502, guard=guard, evidence=evidence)
    assert opened == []
    assert evidence.entries == []  # nothing was even attempted


def test_guard_refuses_undeclared_serial_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import serial

    opened: list[object] = []
    monkeypatch.setattr(serial, "serial_for_url", lambda *a, **k: opened.append(a))
    guard = Guard(["127.0.0.1"], serial_devices=["/dev/ttyS9"])
    with pytest.raises(SafetyViolation, match="not declared"):
        ModbusRtuClient.open("/dev/ttyUSB0", guard=guard)
    with pytest.raises(SafetyViolation):
        ModbusRtuClient.open("socket://127.0.0.2:7000", guard=Guard(
            ["127.0.0.1"], serial_devices=["socket://127.0.0.2:7000"]))
    assert opened == []


def test_connect_refused_is_connect_failed() -> None:
    with socket.socket() as s:  # a port nobody listens on: bind, never listen
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        with pytest.raises(ConnectFailed):
            ModbusTcpClient.connect("127.0.0.1", port, guard=Guard(["127.0.0.1"]),
                                    connect_timeout=1.0)


# --------------------------------------------------------------------------- RTU on a fake line
@pytest.fixture
def line() -> Iterator[tuple[int, str]]:
    """A pty pair: the test plays the device on the master; the client opens the slave."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _rtu_client(path: str, timeout: float = 0.5) -> ModbusRtuClient:
    return ModbusRtuClient.open(path, guard=Guard([], serial_devices=[path]),
                                evidence=Evidence("rtu"), request_timeout=timeout)


def test_rtu_overlong_reply_is_garbage(line: tuple[int, str]) -> None:
    master, path = line
    client = _rtu_client(path)
    try:
        client.send_raw(mbap.rtu_frame(1, mbap.read_pdu(3, 0, 1)), "read")
        os.write(master, b"\x01\x03" + b"\x00" * 300)  # no silence for over 256 bytes
        with pytest.raises(TargetError, match="over 256 bytes"):
            client.recv_frame()
    finally:
        client.close()


def test_rtu_reply_with_bad_crc_is_answered_but_undecoded(line: tuple[int, str]) -> None:
    master, path = line
    client = _rtu_client(path)

    def device() -> None:
        time.sleep(0.1)
        os.write(master, mbap.rtu_frame(1, b"\x03\x02\x00\x05", corrupt_crc=True))

    thread = threading.Thread(target=device, daemon=True)
    thread.start()
    try:
        ex = client.exchange(mbap.read_pdu(3, 0, 1), timeout=1.0)
        assert ex.outcome is Outcome.REPLY and ex.response is None
        assert ex.problem is not None and "CRC" in ex.problem
        with pytest.raises(TargetError):
            client.read_registers(0, 1)  # nothing answers this one: strict helper raises
    finally:
        thread.join(5)
        client.close()


def test_rtu_open_of_missing_device_is_a_target_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "ttyNONE")
    with pytest.raises(TargetError):
        _rtu_client(missing)


def test_describe_pdu() -> None:
    assert describe_pdu(mbap.read_pdu(3, 0, 1)) == "FC 3 read HR 0 x1"
    assert describe_pdu(mbap.write_single_coil_pdu(7, True)) == "FC 5 write C 7 = 0xff00"
    assert describe_pdu(mbap.write_multiple_registers_pdu(200, [1, 2])) == "FC 16 write HR 200 x2"
    assert describe_pdu(bytes([90])) == "FC 90 (0 data bytes)"
    assert describe_pdu(b"") == "empty PDU"
