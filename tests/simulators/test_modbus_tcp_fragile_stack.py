"""Modbus/TCP simulator, ``net.fragile_stack``: abnormal IP/TCP traffic starves the scan cycle.

Two layers: the packet judge (:class:`simulators.modbus_tcp.FragileStack`) fed with packets
crafted by scapy, in process and without privileges; and the simulator process with its packet
socket, driven by raw packets from this test (root only). Every process test serves on its own
random loopback address, sends only there, and bounds every burst in count.

"Stalled" is read from the device itself: the run state (DI 0) drops to 0 while the scan cycle
starves, and the heartbeat (HR 0) stops changing.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from simulators.modbus_tcp import FragileStack, bpf_program, tcp_checksum_ok
from simulators.plc import PLC

pytestmark = pytest.mark.timeout(60)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
root_only = pytest.mark.skipif(
    not IS_ROOT,
    reason="the net.fragile_stack sniffer and the raw packets of these tests need root "
    "(CAP_NET_RAW)",
)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Half-open SYNs per second above which the simulators of these tests starve.
THRESHOLD = 50
#: Seconds each starvation lasts in the process tests (long enough to observe it).
RECOVERY_S = 3.0
#: Seconds a stall has to show after the packet that causes it.
STALL_TIMEOUT_S = 2.0
#: Seconds the run state is watched where no stall may happen.
WATCH_S = 1.0
#: Source address of the crafted packets (the device's answers come back to our own kernel).
SOURCE = "127.0.0.1"
#: Address and port of the in-process judge.
HOST, PORT = "127.10.20.30", 5020


# -- crafted packets ------------------------------------------------------------------------
def tcp_packet(
    dst: str,
    dport: int,
    *,
    flags: str | int = "S",
    src: str = SOURCE,
    sport: int = 40000,
    **kw: Any,
) -> bytes:
    """One IPv4/TCP packet (scapy computes lengths and checksums unless given)."""
    return bytes(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, **kw))


def abnormal_packets(dst: str, dport: int) -> dict[str, bytes]:
    """One packet of each abnormal kind the weakness chokes on."""
    seg = bytes(TCP(sport=40001, dport=dport, flags="S") / Raw(b"A" * 20))
    return {
        "xmas": tcp_packet(dst, dport, flags="FPU", urgptr=1),
        "syn_fin": tcp_packet(dst, dport, flags="SF"),
        "syn_rst": tcp_packet(dst, dport, flags="SR"),
        "null_flags": tcp_packet(dst, dport, flags=0),
        "all_flags": tcp_packet(dst, dport, flags="FSRPAUEC"),
        "land": tcp_packet(dst, dport, src=dst, sport=dport),
        "bad_checksum": tcp_packet(dst, dport, chksum=0xDEAD),
        "data_offset_below_5": tcp_packet(dst, dport, dataofs=2),
        "data_offset_past_end": tcp_packet(dst, dport, dataofs=15),
        "first_fragment": bytes(IP(src=SOURCE, dst=dst, proto=6, flags="MF") / Raw(seg[:24])),
        "later_fragment": bytes(IP(src=SOURCE, dst=dst, proto=6, frag=3) / Raw(seg[24:])),
        "short_tcp_header": bytes(IP(src=SOURCE, dst=dst, proto=6) / Raw(seg[:12])),
    }


def syn_burst(dst: str, dport: int, count: int) -> list[bytes]:
    """``count`` SYNs from distinct source ports."""
    return [tcp_packet(dst, dport, sport=20000 + i, seq=i) for i in range(count)]


# -- the judge, in process ------------------------------------------------------------------
class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def judge(clock: FakeClock) -> FragileStack:
    # a long recovery: plc.starved (real clock) stays true for the rest of the test once hit
    return FragileStack(
        PLC(),
        socket.inet_aton(HOST),
        PORT,
        threshold_rps=10,
        recovery_s=60,
        clock=clock,
    )


@pytest.mark.parametrize("kind", sorted(abnormal_packets(HOST, PORT)))
def test_each_abnormal_packet_starves_the_scan_cycle(judge: FragileStack, kind: str) -> None:
    reason = judge.feed(abnormal_packets(HOST, PORT)[kind])
    assert reason is not None, f"{kind} was not judged abnormal"
    assert judge.plc.starved
    assert judge.offences == 1


@pytest.mark.parametrize("flags", ["S", "SEC", "SA", "A", "PA", "FA", "FPA", "R", "RA", "PAU"])
def test_valid_segments_do_not_starve(judge: FragileStack, flags: str) -> None:
    packet = bytes(
        IP(src=SOURCE, dst=HOST, flags="DF")
        / TCP(sport=40000, dport=PORT, flags=flags)
        / Raw(b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x01")
    )
    assert judge.feed(packet) is None
    assert not judge.plc.starved


def test_other_address_port_and_protocol_are_ignored(judge: FragileStack) -> None:
    assert judge.feed(tcp_packet("127.10.20.31", PORT, flags="FPU", urgptr=1)) is None
    assert judge.feed(tcp_packet(HOST, PORT + 1, flags="FPU", urgptr=1)) is None
    assert judge.feed(tcp_packet(HOST, PORT + 1, chksum=0xDEAD)) is None
    # a first fragment names its port: another port's fragment is not ours
    seg = bytes(TCP(sport=40001, dport=PORT + 1, flags="S") / Raw(b"A" * 20))
    assert judge.feed(bytes(IP(src=SOURCE, dst=HOST, proto=6, flags="MF") / Raw(seg[:24]))) is None
    assert judge.feed(bytes(IP(src=SOURCE, dst=HOST, proto=17) / Raw(b"\x00" * 20))) is None
    assert judge.feed(b"\x45\x00") is None  # too short to be judged
    assert not judge.plc.starved


def test_checksum_left_to_the_kernel_is_not_judged(judge: FragileStack) -> None:
    # the kernel's own loopback traffic carries a partial checksum (CHECKSUM_PARTIAL)
    packet = tcp_packet(HOST, PORT, flags="PA", chksum=0x1234)
    assert judge.feed(packet, checksum_ready=False) is None
    assert judge.feed(packet, truncated=True) is None
    assert not judge.plc.starved
    assert judge.feed(packet) == "bad TCP checksum"


def test_checksum_verification() -> None:
    good = tcp_packet(HOST, PORT, flags="PA")
    ip_len = (good[0] & 0x0F) * 4
    src, dst = good[12:16], good[16:20]
    assert tcp_checksum_ok(src, dst, good[ip_len:])
    odd = bytes(IP(src=SOURCE, dst=HOST) / TCP(dport=PORT, flags="PA") / Raw(b"abc"))
    assert tcp_checksum_ok(src, dst, odd[ip_len:])
    broken = bytearray(good[ip_len:])
    broken[16] ^= 0x01
    assert not tcp_checksum_ok(src, dst, bytes(broken))


def test_half_open_syns_above_the_threshold_starve(judge: FragileStack, clock: FakeClock) -> None:
    burst = syn_burst(HOST, PORT, 11)
    for packet in burst[:10]:
        assert judge.feed(packet) is None
        clock.now += 0.01
    assert not judge.plc.starved
    reason = judge.feed(burst[10])
    assert reason is not None and "SYN flood" in reason
    assert judge.plc.starved


def test_completed_handshakes_do_not_count_as_a_flood(
    judge: FragileStack, clock: FakeClock
) -> None:
    # a connection storm far above the threshold: every SYN gets its final ACK
    for i in range(100):
        sport = 30000 + i
        assert judge.feed(tcp_packet(HOST, PORT, sport=sport, flags="S")) is None
        assert judge.feed(tcp_packet(HOST, PORT, sport=sport, flags="A")) is None
        assert judge.feed(tcp_packet(HOST, PORT, sport=sport, flags="FA")) is None
        clock.now += 0.001
    assert judge.half_open() == 0
    assert not judge.plc.starved


def test_syns_older_than_the_window_do_not_count(judge: FragileStack, clock: FakeClock) -> None:
    burst = syn_burst(HOST, PORT, 20)
    for packet in burst[:10]:
        assert judge.feed(packet) is None
    clock.now += 1.5
    for packet in burst[10:]:
        assert judge.feed(packet) is None
    assert judge.half_open() == 10
    assert not judge.plc.starved


def test_bpf_program_jumps_stay_inside_and_end_in_returns() -> None:
    for address in (socket.inet_aton(HOST), None):
        program = bpf_program(address, PORT)
        assert [code for code, *_ in program[-2:]] == [0x06, 0x06]
        for i, (code, jt, jf, _k) in enumerate(program):
            if code & 0x07 == 0x05:  # a jump
                assert i + 1 + max(jt, jf) < len(program), program


# -- the simulator process (root) -----------------------------------------------------------
def _loopback() -> str:
    while True:
        a, b, c = (secrets.randbelow(254) + 1 for _ in range(3))
        if (a, b, c) != (0, 0, 1):
            return f"127.{a}.{b}.{c}"


class Device:
    """A Modbus/TCP connection that reads the run state and the heartbeat."""

    def __init__(self, event: dict[str, Any]) -> None:
        ep = event["endpoints"]["modbus"]
        self.host, self.port = str(ep["host"]), int(ep["port"])
        self.sock = socket.create_connection((self.host, self.port), timeout=3)
        self.tid = 0

    def close(self) -> None:
        self.sock.close()

    def _read(self, fc: int, address: int) -> int:
        self.tid = (self.tid + 1) % 65536
        self.sock.sendall(struct.pack(">HHHBBHH", self.tid, 0, 6, 1, fc, address, 1))
        reply = b""
        while len(reply) < 9 or len(reply) < 6 + struct.unpack_from(">H", reply, 4)[0]:
            chunk = self.sock.recv(260)
            assert chunk, "the simulator closed the connection"
            reply += chunk
        assert reply[7] == fc, f"exception reply {reply!r}"
        return reply[9] if fc == 2 else int.from_bytes(reply[9:11], "big")

    def running(self) -> bool:
        """DI 0: 1 while the scan cycle runs."""
        return self._read(2, 0) == 1

    def heartbeat(self) -> int:
        return self._read(3, 0)

    def wait_running(self, value: bool, timeout: float) -> bool:
        """True once the run state is ``value`` (polled every 10 ms for at most ``timeout``)."""
        end = time.monotonic() + timeout
        while True:
            if self.running() is value:
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)

    def run_states(self, duration: float) -> list[bool]:
        """The run state polled every 20 ms for ``duration``."""
        out = []
        end = time.monotonic() + duration
        while time.monotonic() < end:
            out.append(self.running())
            time.sleep(0.02)
        return out


@pytest.fixture
def raw_sender() -> Iterator[Callable[[str, list[bytes]], None]]:
    """``send(dst, packets)``: each prebuilt IPv4 packet once, through one raw socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(dst: str, packets: list[bytes]) -> None:
        assert len(packets) <= 1000
        assert dst.startswith("127."), dst
        for packet in packets:
            sock.sendto(packet, (dst, 0))

    try:
        yield send
    finally:
        sock.close()


@pytest.fixture
def device_factory(start_simulator: Any, tmp_path: Path) -> Iterator[Callable[..., Device]]:
    """``device(*weaknesses) -> Device`` on a fresh simulator at its own loopback address."""
    cfg = tmp_path / "sim.json"
    cfg.write_text(
        json.dumps({"fragile_threshold_rps": THRESHOLD, "fragile_recovery_s": RECOVERY_S})
    )
    devices: list[Device] = []

    def make(*weaknesses: str) -> Device:
        flags = [arg for w in weaknesses for arg in ("--weakness", w)]
        event = start_simulator("modbus_tcp", "--host", _loopback(), "--config", str(cfg), *flags)
        device = Device(event)
        devices.append(device)
        assert device.wait_running(True, STALL_TIMEOUT_S), "the scan cycle never ran"
        return device

    try:
        yield make
    finally:
        for device in devices:
            device.close()


def assert_stalled(device: Device) -> None:
    __tracebackhide__ = True
    assert device.wait_running(False, STALL_TIMEOUT_S), "the scan cycle kept running"
    first = device.heartbeat()
    time.sleep(0.3)
    assert device.heartbeat() == first, "the heartbeat kept counting while starved"


def assert_never_stalled(device: Device) -> None:
    __tracebackhide__ = True
    first = device.heartbeat()
    states = device.run_states(WATCH_S)
    assert all(states), f"the scan cycle stalled: run states {states}"
    assert device.heartbeat() != first, "the heartbeat stopped"


@root_only
def test_syn_burst_above_the_threshold_stalls_the_heartbeat(
    device_factory: Callable[..., Device], raw_sender: Callable[[str, list[bytes]], None]
) -> None:
    device = device_factory("net.fragile_stack")
    raw_sender(device.host, syn_burst(device.host, device.port, 3 * THRESHOLD))
    assert_stalled(device)


@root_only
@pytest.mark.parametrize("kind", ["xmas", "land", "bad_checksum"])
def test_one_abnormal_packet_stalls_the_heartbeat(
    device_factory: Callable[..., Device],
    raw_sender: Callable[[str, list[bytes]], None],
    kind: str,
) -> None:
    device = device_factory("net.fragile_stack")
    raw_sender(device.host, [abnormal_packets(device.host, device.port)[kind]])
    assert_stalled(device)


@root_only
def test_normal_modbus_traffic_does_not_stall(
    device_factory: Callable[..., Device], raw_sender: Callable[[str, list[bytes]], None]
) -> None:
    device = device_factory("net.fragile_stack")
    # complete connections at several times the SYN threshold, each with a request
    for i in range(3 * THRESHOLD):
        with socket.create_connection((device.host, device.port), timeout=3) as conn:
            conn.sendall(struct.pack(">HHHBBHH", i, 0, 6, 1, 3, 0, 1))
            assert conn.recv(260)
    # pipelined requests, and a malformed MBAP header over valid TCP (the server closes)
    with socket.create_connection((device.host, device.port), timeout=3) as conn:
        conn.sendall(b"".join(struct.pack(">HHHBBHH", i, 0, 6, 1, 3, 0, 1) for i in range(16)))
        conn.sendall(struct.pack(">HHHB", 99, 7, 2, 1) + b"\x03")
        received = b""
        while chunk := conn.recv(4096):
            received += chunk
        assert len(received) == 16 * 11
    # a few SYNs of our own, below the threshold
    raw_sender(device.host, syn_burst(device.host, device.port, THRESHOLD // 2))
    assert_never_stalled(device)


@root_only
def test_packets_to_another_port_or_address_do_not_stall(
    device_factory: Callable[..., Device], raw_sender: Callable[[str, list[bytes]], None]
) -> None:
    device = device_factory("net.fragile_stack")
    other_port = device.port + 1 if device.port < 65535 else device.port - 1
    other_host = _loopback()
    for host, port in ((device.host, other_port), (other_host, device.port)):
        packets = abnormal_packets(host, port)
        raw_sender(host, [packets["xmas"], packets["land"], packets["bad_checksum"]])
        raw_sender(host, syn_burst(host, port, 3 * THRESHOLD))
    assert_never_stalled(device)


@root_only
def test_without_the_weakness_nothing_stalls(
    device_factory: Callable[..., Device], raw_sender: Callable[[str, list[bytes]], None]
) -> None:
    device = device_factory()
    packets = abnormal_packets(device.host, device.port)
    raw_sender(device.host, list(packets.values()))
    raw_sender(device.host, syn_burst(device.host, device.port, 3 * THRESHOLD))
    assert_never_stalled(device)


def _drop_cap_net_raw() -> None:
    """In the child before exec: remove CAP_NET_RAW from the bounding set (root keeps the rest)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_net_raw = 24, 13
    if libc.prctl(pr_capbset_drop, cap_net_raw, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_RAW)")


def test_without_raw_socket_rights_the_weakness_fails_at_start() -> None:
    cmd = [sys.executable, "-m", "simulators.modbus_tcp", "--host", _loopback()]
    preexec = _drop_cap_net_raw if IS_ROOT else None
    proc = subprocess.run(
        [*cmd, "--weakness", "net.fragile_stack"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        preexec_fn=preexec,  # a single prctl call in the child, before exec
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    event = json.loads(proc.stdout.splitlines()[0])
    assert event["event"] == "error"
    assert "CAP_NET_RAW" in event["message"] and "lo" in event["message"], event
