"""Hostile simulator: each weakness does what it names, seen from independent raw clients.

Every read here is bounded in bytes and time: the device under test is the hostile one, so the
test's own clients must not trust it either.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import struct
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.protocols.uatcp import hello as opcua_hello

pytestmark = pytest.mark.timeout(90)

#: Seconds anything that must answer has to answer.
TIMEOUT_S = 5.0
#: Seconds of silence taken as "nothing more comes".
SILENCE_S = 0.3
ABSURD = 2**31 - 1
MIB = 1 << 20
WEAKNESSES = ["hostile.garbage", "hostile.huge", "hostile.lying_length", "hostile.slow_drip"]


# -- bounded raw clients ------------------------------------------------------------------
def tcp_endpoint(event: dict[str, Any], name: str) -> tuple[str, int]:
    """(host, port) of a protocol endpoint of the ready line."""
    ep = event["endpoints"][name]
    if name == "opcua":
        m = re.fullmatch(r"opc\.tcp://([^:/]+):(\d+)/harness/plc", ep["url"])
        assert m, ep
        return m.group(1), int(m.group(2))
    return ep["host"], int(ep["port"])


@contextlib.contextmanager
def connect(event: dict[str, Any], name: str) -> Iterator[socket.socket]:
    """A TCP connection to one endpoint, closed at exit."""
    sock = socket.create_connection(tcp_endpoint(event, name), timeout=TIMEOUT_S)
    try:
        yield sock
    finally:
        sock.close()


def read_some(sock: socket.socket, limit: int, timeout: float = TIMEOUT_S,
              *, until_silence: float | None = SILENCE_S) -> bytes:
    """Read at most ``limit`` bytes: stop at ``limit``, at EOF, after ``until_silence`` seconds
    without a byte (once something came), or at ``timeout``."""
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < limit:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        wait = remaining if not buf or until_silence is None else min(remaining, until_silence)
        sock.settimeout(wait)
        try:
            chunk = sock.recv(min(65536, limit - len(buf)))
        except TimeoutError:
            if buf:
                break
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_exact(sock: socket.socket, n: int, timeout: float = TIMEOUT_S) -> bytes:
    """Exactly ``n`` bytes (the test fails otherwise)."""
    data = read_some(sock, n, timeout, until_silence=None)
    assert len(data) == n, f"wanted {n} bytes, got {len(data)}: {data[:64]!r}"
    return data


def silent(sock: socket.socket, seconds: float = SILENCE_S) -> bool:
    """True when nothing arrives for ``seconds`` (and the peer does not close)."""
    sock.settimeout(seconds)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    return False


def read_request(tid: int, unit: int = 1, address: int = 0, count: int = 2) -> bytes:
    """A Modbus/TCP FC 3 request."""
    return struct.pack(">HHHBBHH", tid, 0, 6, unit, 3, address, count)


def crc16(data: bytes) -> int:
    """CRC-16/Modbus (written again here: tests trust no simulator code)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def rtu_read(unit: int = 1, address: int = 0, count: int = 2) -> bytes:
    """An RTU FC 3 request with its CRC."""
    frame = struct.pack(">BBHH", unit, 3, address, count)
    return frame + struct.pack("<H", crc16(frame))


class Pty:
    """A client on the slave side of a simulator's pty (raw, non-blocking)."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)

    def close(self) -> None:
        os.close(self.fd)

    def drain(self) -> None:
        """Drop whatever earlier clients left in the line."""
        while self.read(65536, 0.2):
            pass

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read(self, limit: int, timeout: float = TIMEOUT_S,
             until_silence: float | None = SILENCE_S) -> bytes:
        """Like :func:`read_some`, on the pty."""
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while len(buf) < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            wait = remaining if not buf or until_silence is None else min(remaining, until_silence)
            ready, _, _ = select.select([self.fd], [], [], wait)
            if not ready:
                if buf:
                    break
                continue
            try:
                chunk = os.read(self.fd, min(65536, limit - len(buf)))
            except BlockingIOError:
                continue
            if not chunk:
                break
            buf += chunk
        return bytes(buf)


@contextlib.contextmanager
def open_pty(event: dict[str, Any], name: str) -> Iterator[Pty]:
    """A client on the console or RTU pty, closed at exit."""
    pty = Pty(event["endpoints"][name]["path"])
    try:
        pty.drain()
        yield pty
    finally:
        pty.close()


def thread_count(pid: int) -> int:
    """Threads of a process (Linux)."""
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^Threads:\s+(\d+)", text, re.MULTILINE)
    assert m
    return int(m.group(1))


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


@pytest.fixture
def hostile(start_simulator: Any) -> Any:
    """``hostile(*weaknesses)``: a fresh hostile simulator's ready event."""

    def start(*weaknesses: str) -> dict[str, Any]:
        args: list[str] = []
        for w in weaknesses:
            args += ["--weakness", w]
        event: dict[str, Any] = start_simulator("hostile", *args)
        return event

    return start


# -- contract -------------------------------------------------------------------------------
def test_ready_line_has_the_keys_of_the_real_simulators(hostile: Any) -> None:
    event = hostile()
    eps = event["endpoints"]
    assert set(eps) == {"modbus", "ssh", "opcua", "console", "rtu"}
    assert eps["modbus"]["unit"] == 1 and eps["modbus"]["host"] == "127.0.0.1"
    assert eps["ssh"]["port"] > 0 and eps["modbus"]["port"] > 0
    tcp_endpoint(event, "opcua")  # the URL has the documented shape
    assert os.path.exists(eps["console"]["path"]) and os.path.exists(eps["rtu"]["path"])
    # no behaviour named: a hostile device is never hardened
    assert event["weaknesses"] == ["hostile.garbage"]


def test_weak_posture_switches_on_every_behaviour(start_simulator: Any) -> None:
    event = start_simulator("hostile", "--posture", "weak")
    assert event["weaknesses"] == WEAKNESSES


def test_unknown_weakness_is_refused(start_simulator: Any) -> None:
    event, rc = start_simulator.expect_error("hostile", "--weakness", "hostile.polite")
    assert rc == 2 and event is not None and event["event"] == "error"
    assert "hostile.polite" in event["message"]


# -- garbage ----------------------------------------------------------------------------------
def test_garbage(hostile: Any) -> None:
    event = hostile("hostile.garbage")
    with connect(event, "modbus") as sock:
        sock.sendall(read_request(7))
        reply = read_some(sock, 4096)
        assert reply, "no bytes after a Modbus request"
        # a well-formed answer would echo transaction 7, protocol 0, unit 1 and FC 3
        assert reply[:8] != struct.pack(">HHHBB", 7, 0, len(reply) - 6, 1, 3)
    with connect(event, "ssh") as sock:
        sock.sendall(b"SSH-2.0-test\r\n")
        first = read_some(sock, 8192)
        assert first.startswith(b"HTTP/1.1 400 Bad Request\r\n") and len(first) > 100, first[:40]
    with connect(event, "opcua") as sock:
        sock.sendall(opcua_hello(event["endpoints"]["opcua"]["url"]))
        reply = read_some(sock, 4096)
        assert len(reply) >= 64 and not reply.startswith(b"ACKF")
    for name, request in (("console", b"\r"), ("rtu", rtu_read())):
        with open_pty(event, name) as pty:
            pty.write(request)
            reply = pty.read(4096)
            assert 16 <= len(reply) <= 256, (name, reply)
            if name == "rtu":
                assert not (reply[:2] == b"\x01\x03" and len(reply) == 9), reply


# -- lying lengths ----------------------------------------------------------------------------
def test_lying_mbap_lengths(hostile: Any) -> None:
    event = hostile("hostile.lying_length")
    # the variant is the transaction id modulo 6; a fresh connection for each
    with connect(event, "modbus") as sock:  # 0: says 100 bytes more than it sends
        sock.sendall(read_request(6))
        header = read_exact(sock, 7)
        length = struct.unpack(">H", header[4:6])[0]
        body = read_some(sock, 1024)
        assert length == len(body) + 1 + 100 and silent(sock)
    with connect(event, "modbus") as sock:  # 1: says 2, sends the whole PDU
        sock.sendall(read_request(7))
        data = read_some(sock, 1024)
        assert struct.unpack(">H", data[4:6])[0] == 2 and len(data) > 6 + 2
    with connect(event, "modbus") as sock:  # 2: a correct reply plus trailing bytes
        sock.sendall(read_request(8))
        data = read_some(sock, 1024)
        length = struct.unpack(">H", data[4:6])[0]
        assert data[6:9] == b"\x01\x03\x04" and len(data) == 6 + length + 16
    for tid, claimed in ((9, 0xFFFF), (10, 0)):
        with connect(event, "modbus") as sock:
            sock.sendall(read_request(tid))
            data = read_some(sock, 1024)
            assert struct.unpack(">H", data[4:6])[0] == claimed and len(data) < 6 + 0xFFFF
    with connect(event, "modbus") as sock:  # 5: a true MBAP length, a lying byte count
        sock.sendall(read_request(11))
        data = read_some(sock, 1024)
        length = struct.unpack(">H", data[4:6])[0]
        assert len(data) == 6 + length and data[6:9] == b"\x01\x03\xfa" and len(data) - 9 == 4


def test_lying_opcua_sizes(hostile: Any) -> None:
    event = hostile("hostile.lying_length")
    hello = opcua_hello(event["endpoints"]["opcua"]["url"])
    with connect(event, "opcua") as sock:  # first connection: an ACK declaring 2^31-1 bytes
        sock.sendall(hello)
        data = read_some(sock, 4096)
        assert data[:4] == b"ACKF" and struct.unpack("<I", data[4:8])[0] == ABSURD
        assert len(data) < 64 and silent(sock)
    with connect(event, "opcua") as sock:  # second: absurd buffer sizes, then an absurd OPN
        sock.sendall(hello)
        ack = read_exact(sock, 28)
        size, _version, recv_buf, send_buf, max_msg = struct.unpack("<IIIII", ack[4:24])
        assert ack[:4] == b"ACKF" and size == 28
        assert recv_buf == send_buf == max_msg == ABSURD
        sock.sendall(b"OPNF" + struct.pack("<I", 12) + b"\0" * 4)
        opn = read_some(sock, 4096)
        assert opn[:4] == b"OPNF" and struct.unpack("<I", opn[4:8])[0] == ABSURD
        assert len(opn) < 64 and silent(sock)


def test_lying_ssh_packet_length(hostile: Any) -> None:
    event = hostile("hostile.lying_length")
    for claimed in (ABSURD, 32768):
        with connect(event, "ssh") as sock:
            line = read_some(sock, 256)
            assert line.startswith(b"SSH-2.0-") and line.endswith(b"\r\n")
            sock.sendall(b"SSH-2.0-test\r\n")
            packet = read_some(sock, 4096)
            assert struct.unpack(">I", packet[:4])[0] == claimed and len(packet) == 16
            assert silent(sock)


def test_lying_rtu_byte_counts(hostile: Any) -> None:
    event = hostile("hostile.lying_length")
    with open_pty(event, "rtu") as pty:
        frames = []
        for _ in range(3):
            pty.write(rtu_read())
            frames.append(pty.read(512))
    more, less, trailing = frames
    for frame in (more, less):
        assert frame[:2] == b"\x01\x03"
        assert struct.unpack("<H", frame[-2:])[0] == crc16(frame[:-2])  # CRC over what was sent
    assert more[2] == 250 and len(more) - 5 < 250
    assert less[2] == 2 and len(less) - 5 > 2
    assert trailing[:3] == b"\x01\x03\x04" and len(trailing) == 9 + 8
    assert struct.unpack("<H", trailing[7:9])[0] == crc16(trailing[:7])


# -- huge and endless -------------------------------------------------------------------------
def test_huge_ssh_banner(hostile: Any) -> None:
    event = hostile("hostile.huge")
    with connect(event, "ssh") as sock:  # connection 0: 1 MiB of pre-version lines, then silence
        data = read_some(sock, 2 * MIB, timeout=20)
        lines = data.split(b"\r\n")
        assert len(data) == MIB and len(lines) == 1024 + 1 and lines[-1] == b""
        assert not any(line.startswith(b"SSH-") for line in lines)
    with connect(event, "ssh") as sock:  # 1: one 1 MiB line without end, then silence
        data = read_some(sock, 2 * MIB, timeout=20)
        assert len(data) == MIB and b"\n" not in data
    with connect(event, "ssh") as sock:  # 2: a line that never ends
        data = read_some(sock, 4 * MIB, timeout=20)
        assert len(data) == 4 * MIB and b"\n" not in data


def test_endless_modbus(hostile: Any) -> None:
    event = hostile("hostile.huge")
    with connect(event, "modbus") as sock:  # even tid: 254 announced, bytes without end
        sock.sendall(read_request(2))
        data = read_some(sock, 2 * MIB, timeout=20)
        assert struct.unpack(">HHH", data[:6]) == (2, 0, 254) and len(data) == 2 * MIB
    with connect(event, "modbus") as sock:  # odd tid: well-formed replies, other tids, no end
        sock.sendall(read_request(3))
        data = read_some(sock, MIB, timeout=20)
        assert len(data) == MIB
        tids = set()
        for pos in range(0, 13 * 1000, 13):
            tid, proto, length, unit, fc = struct.unpack_from(">HHHBB", data, pos)
            assert (proto, length, unit, fc) == (0, 7, 1, 3)
            tids.add(tid)
        assert 3 not in tids and len(tids) == 1000


def test_endless_opcua(hostile: Any) -> None:
    event = hostile("hostile.huge")
    hello = opcua_hello(event["endpoints"]["opcua"]["url"])
    with connect(event, "opcua") as sock:
        sock.sendall(hello)
        data = read_some(sock, 2 * MIB, timeout=20)
        assert data[:4] == b"ACKF" and struct.unpack("<I", data[4:8])[0] == ABSURD - 15
        assert len(data) == 2 * MIB
    with connect(event, "opcua") as sock:
        sock.sendall(hello)
        ack = read_exact(sock, 28)
        assert ack[:4] == b"ACKF" and struct.unpack("<I", ack[4:8])[0] == 28
        sock.sendall(b"OPNF" + struct.pack("<I", 12) + b"\0" * 4)
        data = read_some(sock, 2 * MIB, timeout=20)
        assert data[:4] == b"OPNF" and len(data) == 2 * MIB


def test_endless_console_and_rtu(hostile: Any) -> None:
    event = hostile("hostile.huge")
    for name in ("console", "rtu"):
        with open_pty(event, name) as pty:
            pty.write(b"\r")
            data = pty.read(2 * MIB, timeout=20)
            assert len(data) == 2 * MIB, (name, len(data))


def test_endless_streams_stop_when_the_client_goes(hostile: Any, start_simulator: Any) -> None:
    event = hostile("hostile.huge")
    pid = int(event["pid"])
    idle = thread_count(pid)
    socks = []
    try:
        for tid in (2, 3, 4):
            sock = socket.create_connection(tcp_endpoint(event, "modbus"), timeout=TIMEOUT_S)
            socks.append(sock)
            sock.sendall(read_request(tid))
            assert read_some(sock, 65536)
        assert thread_count(pid) == idle + 3
    finally:
        for sock in socks:
            sock.close()
    assert wait_for(lambda: thread_count(pid) == idle), (thread_count(pid), idle)
    assert start_simulator.stop(event) == 0


def test_connections_beyond_the_cap_are_closed(hostile: Any) -> None:
    event = hostile("hostile.slow_drip")
    pid = int(event["pid"])
    idle = thread_count(pid)
    socks = []
    try:
        for _ in range(40):
            socks.append(socket.create_connection(tcp_endpoint(event, "modbus"), timeout=5))
        closed: set[socket.socket] = set()
        deadline = time.monotonic() + TIMEOUT_S
        while len(closed) < 40 - 32 and time.monotonic() < deadline:
            readable, _, _ = select.select([s for s in socks if s not in closed], [], [], 0.1)
            for sock in readable:
                with contextlib.suppress(ConnectionError):
                    assert sock.recv(1) == b"", "a slow-drip device spoke unasked"
                closed.add(sock)
        # the rest are served (silently waiting for a request); nothing more closes
        readable, _, _ = select.select([s for s in socks if s not in closed], [], [], SILENCE_S)
        assert len(closed) == 40 - 32 and not readable
        assert thread_count(pid) == idle + 32
    finally:
        for sock in socks:
            sock.close()


# -- slow drip --------------------------------------------------------------------------------
def test_slow_drip(hostile: Any) -> None:
    event = hostile("hostile.slow_drip")
    window = 2.0
    with connect(event, "modbus") as sock:
        sock.sendall(read_request(9))
        got = read_some(sock, 64, timeout=window, until_silence=None)
        full = struct.pack(">HHHBBB", 9, 0, 7, 1, 3, 4) + bytes(4)
        assert 1 <= len(got) < len(full) and full.startswith(got), got
    with connect(event, "ssh") as sock:
        got = read_some(sock, 256, timeout=window, until_silence=None)
        assert 1 <= len(got) < 10 and b"SSH-2.0-".startswith(got[:8]), got
    with connect(event, "opcua") as sock:
        sock.sendall(opcua_hello(event["endpoints"]["opcua"]["url"]))
        got = read_some(sock, 64, timeout=window, until_silence=None)
        assert 1 <= len(got) < 28 and b"ACKF".startswith(got[:4]), got
    with open_pty(event, "console") as pty:
        pty.write(b"\r")
        got = pty.read(64, timeout=window, until_silence=None)
        assert 1 <= len(got) < len(b"\r\nlogin: ") and b"\r\nlogin: ".startswith(got), got
