"""The load generators stay inside their caps, stop by themselves and stop at once on abort.

Caps are checked where they matter: on what the (test) device *received*, per one-second window.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import harness.load as load_mod
from harness.errors import SafetyViolation, TargetError
from harness.load import LoadCaps, Pacer, StopFlag
from harness.load.connflood import connect_storm, hold_connections, opcua_hello
from harness.load.modbus_flood import modbus_flood, probe_pipelining, ramp_rates
from harness.load.portscan import tcp_connect_scan, udp_probe
from harness.safety import Guard

pytestmark = pytest.mark.timeout(90)

LOOPBACK = Guard(["127.0.0.1"])
#: Linux's SO_TIMESTAMPNS (Python's socket module does not name it).
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
root_only = pytest.mark.skipif(not load_mod.is_root(), reason="raw sockets need root")


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any ``window``-second interval."""
    ordered = sorted(times)
    best = j = 0
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def _settle(get: Callable[[], int], target: int, timeout: float = 3.0) -> int:
    """Wait (bounded) until a server-side count reaches ``target``; return the count."""
    end = time.monotonic() + timeout
    while get() < target and time.monotonic() < end:
        time.sleep(0.01)
    return get()


def _kernel_time(ancillary: Sequence[tuple[int, int, bytes]]) -> float | None:
    """The kernel's receive time (``SO_TIMESTAMPNS``) in a ``recvmsg`` answer, or None."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = struct.unpack("qq", data[:16])
            return float(sec + nsec / 1e9)
    return None


@contextlib.contextmanager
def tripwire(count: Callable[[], int], at: int, clock: Callable[[], float]
             ) -> Iterator[tuple[StopFlag, list[float]]]:
    """A stop flag that a thread sets once ``count()`` reaches ``at`` (10 s at most), and the
    list it puts the moment in (by ``clock``); the flag is closed and the thread joined after
    the block."""
    flag = StopFlag()
    tripped: list[float] = []

    def trip() -> None:
        end = time.monotonic() + 10
        while count() < at and time.monotonic() < end:
            time.sleep(0.001)
        tripped.append(clock())
        flag.set()

    th = threading.Thread(target=trip, daemon=True)
    th.start()
    try:
        yield flag, tripped
    finally:
        flag.close()
        th.join(timeout=5)


def _read_stamped(sock: socket.socket, stop: threading.Event, size: int,
                  take: Callable[[float, bytes, Any], None]) -> None:
    """Until ``stop``: read ``sock`` (it has a short timeout) and hand every packet that has a
    kernel receive time to ``take(time, data, address)``."""
    while not stop.is_set():
        try:
            data, anc, _flags, addr = sock.recvmsg(size, 64)
        except TimeoutError:
            continue
        stamp = _kernel_time(anc)
        if stamp is not None:
            take(stamp, data, addr)


@contextlib.contextmanager
def wire_times(ifname: str, keep: Callable[[bytes, int], bool], *, link_layer: bool = False
               ) -> Iterator[list[float]]:
    """Record, while the block runs, the kernel's times of the packets on ``ifname`` (IPv4
    packets, or whole frames with ``link_layer``) for which ``keep(data, packet_type)`` holds.

    A packet socket read by a thread; ready when the block starts, stopped and closed after it.
    """
    proto = 0x0003 if link_layer else 0x0800
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW if link_layer else socket.SOCK_DGRAM,
                          socket.htons(proto))
    sniff.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sniff.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sniff.bind((ifname, 0))
    sniff.settimeout(0.05)
    seen: list[float] = []
    stop = threading.Event()

    def take(stamp: float, data: bytes, addr: Any) -> None:
        if keep(data, addr[2]):
            seen.append(stamp)

    th = threading.Thread(target=_read_stamped, args=(sniff, stop, 128, take), daemon=True)
    th.start()
    time.sleep(0.1)
    try:
        yield seen
    finally:
        stop.set()
        th.join(timeout=5)
        sniff.close()


# --------------------------------------------------------------------------- primitives
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.mark.parametrize(("rate", "seed"), [(5.0, 1), (50.0, 2), (1000.0, 3), (12345.0, 4)])
def test_pacer_never_grants_more_than_rate_in_any_second(rate: float, seed: int) -> None:
    clock = FakeClock()
    pacer = Pacer(rate, clock=clock.monotonic)
    rng = random.Random(seed)  # noqa: S311 - reproducible schedule
    grants: list[float] = []
    for _ in range(20000):
        clock.now += rng.choice([0.0, 0.0001, 0.001, 0.01, 0.2])
        n = pacer.take(rng.choice([1, 8, 64, 100000]))
        grants += [clock.now] * n
    assert grants, "the pacer never granted anything"
    assert max_in_window(grants) <= int(rate)


@pytest.mark.parametrize("rate", [5.0, 1000.0, 50000.0])
def test_pacer_polled_often_delivers_its_rate(rate: float) -> None:
    clock = FakeClock()
    pacer = Pacer(rate, clock=clock.monotonic)
    granted = 0
    for _ in range(10000):  # 10 s of polling every millisecond, always wanting more
        clock.now += 0.001
        granted += pacer.take(1 << 30)
    assert pacer.window_cap * 10 * 0.95 <= granted <= rate * 10
    assert pacer.window_cap >= min(int(rate), int(rate * 0.99) - 1)  # at most 1 % held back


def test_pacer_wait_is_zero_only_when_a_grant_is_possible() -> None:
    clock = FakeClock()
    pacer = Pacer(10.0, clock=clock.monotonic)
    assert pacer.wait_s() > 0 and pacer.take(1) == 0  # starts empty
    clock.now += pacer.wait_s()
    assert pacer.take(1) == 1


def test_caps_refuse_values_above_the_profile() -> None:
    caps = LoadCaps(request_rate=100, connection_rate=10, packet_rate=1000, connections=4,
                    duration_s=2)
    caps.check(request_rate=100, duration_s=2, connections=4)
    with pytest.raises(SafetyViolation, match="request_rate=101 is above the profile's cap 100"):
        caps.check(request_rate=101)
    with pytest.raises(SafetyViolation, match="duration_s"):
        caps.check(duration_s=2.5)
    with pytest.raises(ValueError, match="must be > 0"):
        caps.check(connections=0)


def test_stop_flag_is_shared_between_processes() -> None:
    flag = StopFlag()
    try:
        code = ("import sys; from pathlib import Path; from harness.load import StopFlag; "
                "f = StopFlag(Path(sys.argv[1])); f.set(); f.close()")
        subprocess.run([sys.executable, "-c", code, str(flag.path)], check=True, timeout=30)
        assert flag.is_set()
        assert flag.path.exists()
    finally:
        flag.close()
    assert not flag.path.exists()


def test_ramp_rates_end_at_the_cap() -> None:
    assert ramp_rates(1600, 5) == [100, 200, 400, 800, 1600]


# --------------------------------------------------------------------------- Modbus flood
def test_modbus_flood_never_exceeds_its_rate_at_the_device(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    cap, conns, depth = 300.0, 2, 4
    result = modbus_flood("127.0.0.1", plc.port, guard=LOOPBACK, rate=cap, duration_s=2.2,
                          connections=conns, in_flight=depth, connection_rate=50)
    received = _settle(lambda: len(plc.requests), result.sent)
    assert received == result.sent > 0
    assert result.answered == result.sent and result.errors == 0
    # at most what was still in flight can bunch up at the device beyond the sender's window
    assert max_in_window(plc.requests) <= cap + conns * depth
    assert result.stop_reason == "duration"
    assert result.details["connections_opened"] == conns


def test_modbus_flood_stops_at_its_duration(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    result = modbus_flood("127.0.0.1", plc.port, guard=LOOPBACK, rate=1e6, duration_s=0.5,
                          connections=2, in_flight=16)
    assert result.stop_reason == "duration"
    assert result.duration_s <= 0.5 + 0.5  # the deadline plus at most a loop step and slack
    assert result.sent > 0


def test_modbus_flood_stops_at_once_on_abort(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    with tripwire(lambda: len(plc.requests), 200, time.monotonic) as (flag, tripped):
        result = modbus_flood("127.0.0.1", plc.port, guard=LOOPBACK, rate=2000, duration_s=5.0,
                              connections=2, in_flight=8, stop=flag)
    assert result.stop_reason == "abort"
    assert result.duration_s < 5.0
    time.sleep(0.2)
    late = [t for t in plc.requests if t > tripped[0]]
    assert len(late) <= 2 * 2 * 8  # what was in flight, plus at most one more window


def test_flood_with_the_flag_already_set_sends_nothing(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    flag = StopFlag()
    flag.set()
    try:
        result = modbus_flood("127.0.0.1", plc.port, guard=LOOPBACK, rate=100, duration_s=1.0,
                              connections=1, in_flight=4, stop=flag)
    finally:
        flag.close()
    assert result.sent == 0 and result.stop_reason == "abort"
    assert plc.requests == []


def test_pipelining_probe_and_strict_fallback(fake_plc: Callable[..., Any]) -> None:
    strict = fake_plc(pipelining=False)
    piped = fake_plc()
    assert probe_pipelining("127.0.0.1", piped.port, guard=LOOPBACK) is True
    assert probe_pipelining("127.0.0.1", strict.port, guard=LOOPBACK) is False
    result = modbus_flood("127.0.0.1", strict.port, guard=LOOPBACK, rate=200, duration_s=0.5,
                          connections=1, in_flight="auto")
    assert result.details["pipelining"] is False and result.details["in_flight"] == 1
    assert result.sent > 0 and result.answered == result.sent and result.errors == 0


def test_mute_device_is_a_target_error_for_the_probe(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    plc.muted = True
    with pytest.raises(TargetError, match="no answer"):
        probe_pipelining("127.0.0.1", plc.port, guard=LOOPBACK, timeout_s=0.3)


def test_generators_ask_the_guard_first(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    elsewhere = Guard(["192.0.2.0/24"])
    with pytest.raises(SafetyViolation):
        modbus_flood("127.0.0.1", plc.port, guard=elsewhere, rate=10, duration_s=0.2,
                     in_flight=1)
    with pytest.raises(SafetyViolation):
        connect_storm("127.0.0.1", plc.port, guard=elsewhere, rate=10, duration_s=0.2)
    with pytest.raises(SafetyViolation):
        tcp_connect_scan("127.0.0.1", [plc.port], guard=elsewhere, rate=10)
    time.sleep(0.1)
    assert plc.accepts == []


# --------------------------------------------------------------------------- connections
def test_connect_storm_never_exceeds_its_rate_at_the_device(
        fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    cap = 80.0
    result = connect_storm("127.0.0.1", plc.port, guard=LOOPBACK, rate=cap, duration_s=2.2,
                           close="rst", payload=opcua_hello("opc.tcp://127.0.0.1/x"))
    accepted = _settle(lambda: len(plc.accepts), result.answered)
    assert accepted == result.answered == result.sent > 0
    assert max_in_window(plc.accepts) <= cap
    assert result.stop_reason == "duration"


def test_connect_storm_counts_refusals() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = connect_storm("127.0.0.1", port, guard=LOOPBACK, rate=50, duration_s=0.5)
    assert result.sent > 0 and result.rejected == result.sent and result.answered == 0


def test_hold_connections_sees_the_device_close_extras(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc(connection_limit=3)
    result = hold_connections("127.0.0.1", plc.port, guard=LOOPBACK, count=6,
                              connection_rate=50, hold_s=1.0, trickle_s=0.2)
    assert result.answered == 6
    assert result.disconnects == 3
    assert result.details["still_open_at_end"] == 3
    assert result.stop_reason == "duration"
    assert plc.requests == []  # the partial header never completed a request


# --------------------------------------------------------------------------- inventory
@pytest.fixture
def udp_echo() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            r, _, _ = select.select([sock], [], [], 0.05)
            if r:
                data, addr = sock.recvfrom(2048)
                sock.sendto(data, addr)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield sock.getsockname()[1]
    stop.set()
    th.join(timeout=5)
    sock.close()


def test_tcp_scan_finds_the_listener_and_nothing_else(fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    ports = range(max(1, plc.port - 100), min(65535, plc.port + 100))
    scan = tcp_connect_scan("127.0.0.1", ports, guard=LOOPBACK, rate=2000, window=16)
    # another process may listen in the range on a shared host; ours must be there
    assert plc.port in scan.open
    assert scan.ports_scanned == len(ports) and scan.not_scanned == 0
    assert scan.closed + len(scan.open) + len(scan.filtered) == len(ports)
    assert scan.stop_reason == "complete"


def test_udp_probe_tells_open_closed_and_silent(udp_echo: int) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        states = udp_probe("127.0.0.1", [udp_echo, silent.getsockname()[1], closed_port],
                           guard=LOOPBACK, rate=100, timeout_s=0.5)
    finally:
        silent.close()
    assert states[udp_echo] == "open"
    assert states[closed_port] == "closed"
    assert set(states.values()) == {"open", "closed", "open|filtered"}


# --------------------------------------------------------------------------- raw sockets
def _syn_to(port: int) -> Callable[[bytes, int], bool]:
    """For :func:`wire_times`: a TCP SYN to ``port`` arriving on lo."""
    def keep(data: bytes, kind: int) -> bool:
        if kind != socket.PACKET_HOST or len(data) < 40 or data[9] != 6:
            return False
        ihl = (data[0] & 0x0F) * 4
        dport, flags = struct.unpack_from(">H", data, ihl + 2)[0], data[ihl + 13]
        return bool(dport == port and flags & 0x3F == 0x02)
    return keep


@root_only
@pytest.mark.parametrize("senders", [1, 2])
def test_syn_flood_never_exceeds_its_rate_on_the_wire(senders: int) -> None:
    from harness.load.netflood import syn_flood

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        with wire_times("lo", _syn_to(port)) as seen:
            cap = 1500.0
            result = syn_flood("127.0.0.1", port, guard=LOOPBACK, rate=cap, duration_s=1.6,
                               senders=senders)
            time.sleep(0.2)
    finally:
        listener.close()
    assert result.details["senders"] == senders
    assert result.sent > cap and result.stop_reason == "duration"
    assert 0 < len(seen) <= result.sent
    assert max_in_window(seen) <= cap


@root_only
def test_malformed_packets_are_all_sendable_and_named() -> None:
    from harness.load.netflood import RawSender, malformed_packets

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        packets = malformed_packets("127.0.0.1", port)
        names = [n for n, _ in packets]
        assert len(names) == len(set(names)) >= 15
        assert {"land", "bad_tcp_checksum", "syn_fin", "overlapping_fragment_1"} <= set(names)
        with RawSender(LOOPBACK, "127.0.0.1") as sender:
            for _name, pkt in packets:
                sender.send_one(pkt)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # the local stack still accepts a normal connection
    finally:
        listener.close()


@root_only
def test_raw_sender_asks_the_guard() -> None:
    from harness.load.netflood import RawSender

    with pytest.raises(SafetyViolation):
        RawSender(Guard(["192.0.2.0/24"]), "127.0.0.1")


@root_only
def test_raw_sender_refuses_a_packet_for_another_address() -> None:
    from harness.load.netflood import RawSender, syn_packets

    with socket.socket() as spare:  # a port nobody else's SYNs go to while we watch
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    elsewhere = syn_packets("127.0.0.2", port, count=3, src="127.0.0.1")
    with wire_times("lo", _syn_to(port)) as seen, RawSender(LOOPBACK, "127.0.0.1") as sender:
        mine = syn_packets(sender.address, port, count=3)
        with pytest.raises(SafetyViolation, match=r"raw packet for 127\.0\.0\.2"):
            sender.flood(mine + elsewhere[:1], rate=100, duration_s=1.0)
        with pytest.raises(SafetyViolation, match="raw packet"):
            sender.send_one(elsewhere[0])
        with pytest.raises(SafetyViolation, match="raw packet for none"):
            sender.send_one(b"\x45")
        time.sleep(0.1)
    assert seen == []  # refused before anything went out, the allowed packets included


# --------------------------------------------------------------------------- UDP / ICMP storms
def _udp_sink(stop: threading.Event, sock: socket.socket, out: list[tuple[float, int]]) -> None:
    """Record (kernel receive time, size) of every datagram ``sock`` receives."""
    sock.settimeout(0.05)
    _read_stamped(sock, stop, 2048, lambda stamp, data, _addr: out.append((stamp, len(data))))


@pytest.fixture
def udp_sink() -> Iterator[tuple[int, list[tuple[float, int]]]]:
    """A UDP socket on loopback recording what arrives: (port, [(time, size)])."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sock.bind(("127.0.0.1", 0))
    seen: list[tuple[float, int]] = []
    stop = threading.Event()
    th = threading.Thread(target=_udp_sink, args=(stop, sock, seen), daemon=True)
    th.start()
    try:
        yield sock.getsockname()[1], seen
    finally:
        stop.set()
        th.join(timeout=5)
        sock.close()


def test_udp_storm_never_exceeds_its_rate_at_the_device(
        udp_sink: tuple[int, list[tuple[float, int]]]) -> None:
    from harness.load.netflood import UDP_SIZES, udp_storm

    port, seen = udp_sink
    cap = 1500.0
    result = udp_storm("127.0.0.1", port, guard=LOOPBACK, rate=cap, duration_s=1.6)
    _settle(lambda: len(seen), result.sent)
    assert result.kind == "udp_storm" and result.stop_reason == "duration"
    assert result.sent > cap  # more than one second's worth was sent
    assert 0 < len(seen) <= result.sent
    assert max_in_window([t for t, _ in seen]) <= cap
    assert {size for _, size in seen} == set(UDP_SIZES)


def test_udp_storm_stops_at_its_count_and_on_abort(
        udp_sink: tuple[int, list[tuple[float, int]]]) -> None:
    from harness.load.netflood import udp_storm

    port, seen = udp_sink
    counted = udp_storm("127.0.0.1", port, guard=LOOPBACK, rate=5000, duration_s=5,
                        max_packets=37)
    assert (counted.sent, counted.stop_reason) == (37, "count")
    assert _settle(lambda: len(seen), 37) == 37
    # the sink's times are the kernel's wall clock
    with tripwire(lambda: len(seen), 37 + 200, time.time) as (flag, tripped):
        aborted = udp_storm("127.0.0.1", port, guard=LOOPBACK, rate=2000, duration_s=5,
                            stop=flag)
    assert aborted.stop_reason == "abort"
    assert aborted.duration_s < 5.0
    time.sleep(0.2)
    late = [t for t, _ in seen if t > tripped[0]]
    assert len(late) <= 256  # at most the batch being sent when the flag was set


def test_udp_storm_asks_the_guard_first(udp_sink: tuple[int, list[tuple[float, int]]]) -> None:
    from harness.load.netflood import udp_storm

    port, seen = udp_sink
    with pytest.raises(SafetyViolation):
        udp_storm("127.0.0.1", port, guard=Guard(["192.0.2.0/24"]), rate=100, duration_s=1)
    time.sleep(0.1)
    assert seen == []


def test_icmp_echo_packets_are_echo_requests_to_the_destination() -> None:
    from scapy.layers.inet import ICMP, IP

    from harness.load.netflood import ICMP_PAYLOAD, icmp_echo_packets

    packets = icmp_echo_packets("127.0.0.1", count=8, src="127.0.0.1", seed=1)
    parsed = [IP(p) for p in packets]
    assert len(set(packets)) == 8
    assert all(p.dst == "127.0.0.1" and p[ICMP].type == 8 and p[ICMP].code == 0
               for p in parsed)
    assert all(len(bytes(p[ICMP].payload)) == ICMP_PAYLOAD for p in parsed)
    assert [p[ICMP].seq for p in parsed] == list(range(1, 9))


def _echo_request_to(dst: str) -> Callable[[bytes, int], bool]:
    """For :func:`wire_times`: an ICMP echo request to ``dst`` arriving on lo."""
    target = socket.inet_aton(dst)

    def keep(data: bytes, kind: int) -> bool:
        if kind != socket.PACKET_HOST or len(data) < 21:
            return False
        ihl = (data[0] & 0x0F) * 4
        return data[9] == 1 and data[16:20] == target and data[ihl] == 8
    return keep


@root_only
def test_icmp_storm_never_exceeds_its_rate_on_the_wire() -> None:
    from harness.load.netflood import icmp_storm

    dst = "127.0.0.1"
    with wire_times("lo", _echo_request_to(dst)) as seen:
        cap = 1500.0
        result = icmp_storm(dst, guard=LOOPBACK, rate=cap, duration_s=1.6)
        time.sleep(0.2)
    assert result.kind == "icmp_storm" and result.stop_reason == "duration"
    assert result.sent > cap
    assert 0 < len(seen) <= result.sent
    assert max_in_window(seen) <= cap


@root_only
def test_icmp_storm_asks_the_guard() -> None:
    from harness.load.netflood import icmp_storm

    with pytest.raises(SafetyViolation):
        icmp_storm("127.0.0.1", guard=Guard(["192.0.2.0/24"]), rate=100, duration_s=1)


# --------------------------------------------------------------------------- layer 2
def test_l2_frames_are_broadcasts_from_our_own_addresses() -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether

    from harness.load.l2flood import BROADCAST_MAC, arp_frames, broadcast_frames

    mac, ours, device = "02:00:00:00:00:01", "198.18.0.1", "198.18.0.2"
    arps = [Ether(f) for f in arp_frames(mac, ours, device, count=6)]
    assert all(f.dst == BROADCAST_MAC and f.src == mac and f[ARP].op == 1 for f in arps)
    assert all(f[ARP].hwsrc == mac and f[ARP].psrc == ours for f in arps)  # nothing spoofed
    assert [f[ARP].pdst for f in arps] == [device, ours] * 3  # requests and gratuitous ARPs
    casts = [Ether(f) for f in broadcast_frames(mac, ours, count=8, seed=1)]
    assert all(f.dst == BROADCAST_MAC and f[IP].src == ours and f[IP].dst == "255.255.255.255"
               and f[UDP].dport == 9 for f in casts)
    assert max(len(f) for f in casts) <= 1514  # no frame above the Ethernet MTU


def test_guard_allows_layer2_only_on_declared_interfaces() -> None:
    from harness.load.l2flood import L2Sender

    guard = Guard(["198.18.0.2"], allow_disruptive=True, serial_devices=["/dev/ttyS9"])
    with pytest.raises(SafetyViolation, match="interface 'lo'"):
        guard.check_interface("lo")
    with pytest.raises(SafetyViolation, match=r"interfaces\.ethernet"):
        L2Sender(guard, "lo", "198.18.0.2")
    widened = guard.with_interfaces(["hlab000000h"])
    assert widened.check_interface("hlab000000h") == "hlab000000h"
    assert widened.networks == guard.networks and widened.allow_disruptive
    assert widened.serial_devices == guard.serial_devices
    with pytest.raises(SafetyViolation):
        widened.check_interface("eth0")
    with pytest.raises(SafetyViolation):
        guard.check_interface("hlab000000h")  # the original guard is unchanged
    # the device's address is still checked against the allow-list
    with pytest.raises(SafetyViolation, match="not in the profile's targets"):
        L2Sender(Guard(["192.0.2.0/24"]).with_interfaces(["lo"]), "lo", "198.18.0.2")


def _broadcast_leaving(data: bytes, kind: int) -> bool:
    """For :func:`wire_times` (``link_layer``): a broadcast frame leaving the interface."""
    return kind == socket.PACKET_OUTGOING and data[:6] == b"\xff" * 6


@root_only
@pytest.mark.parametrize("kind", ["arp", "broadcast"])
def test_l2_storm_never_exceeds_its_rate_on_the_declared_link(kind: str) -> None:
    from harness import netns
    from harness.load.l2flood import arp_storm, broadcast_storm

    storm = arp_storm if kind == "arp" else broadcast_storm
    with netns.netns_link() as link:
        # a permanent neighbour entry: the kernel's own ARP requests for the device (which look
        # exactly like the storm's) never join the frames counted on the wire
        subprocess.run([netns.ip_command(), "neigh", "replace", link.device_address, "lladdr",
                        link.device_mac, "nud", "permanent", "dev", link.host_if], check=True,
                       capture_output=True, timeout=10)
        guard = Guard([link.device_address]).with_interfaces([link.host_if])
        with wire_times(link.host_if, _broadcast_leaving, link_layer=True) as seen:
            cap = 1500.0
            result = storm(link.host_if, link.device_address, guard=guard, rate=cap,
                           duration_s=1.6)
            time.sleep(0.2)
        counted = storm(link.host_if, link.device_address, guard=guard, rate=5000,
                        duration_s=5, max_packets=25)
    assert result.stop_reason == "duration" and result.sent > cap
    assert result.details["interface"] == link.host_if
    assert 0 < len(seen) <= result.sent
    assert max_in_window(seen) <= cap
    assert (counted.sent, counted.stop_reason) == (25, "count")


# --------------------------------------------------------------------------- several senders
def test_a_shared_pacer_holds_one_burst_back_per_sender() -> None:
    clock = FakeClock()
    one, two = (Pacer(1000.0, clock=clock.monotonic, senders=n) for n in (1, 2))
    assert (one.window_cap, two.window_cap) == (990, 980)
    with pytest.raises(ValueError, match="senders"):
        Pacer(1000.0, senders=0)


def test_a_shared_pacer_grants_exactly_its_limit_across_threads() -> None:
    pacer = Pacer(1e9, senders=4)
    granted: list[int] = []

    def take() -> None:
        end = time.monotonic() + 5
        while pacer.total < 5000 and time.monotonic() < end:
            granted.append(pacer.take(7, 5000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=10)
    assert sum(granted) == pacer.total == 5000


def test_a_failing_sender_halts_the_others_and_its_error_is_raised() -> None:
    saw_halt: list[bool] = []

    def body(index: int, halt: load_mod.Stoppable) -> int:
        if index == 0:
            raise OSError("send failed")
        end = time.monotonic() + 10
        while not halt.is_set() and time.monotonic() < end:
            time.sleep(0.001)
        saw_halt.append(halt.is_set())
        return index

    with pytest.raises(OSError, match="send failed"):
        load_mod.run_senders(2, load_mod.NeverStop(), body)
    assert saw_halt == [True]
    assert load_mod.run_senders(3, load_mod.NeverStop(), lambda i, _h: i * 10) == [0, 10, 20]


def test_senders_for_keeps_low_rates_on_one_thread() -> None:
    assert load_mod.senders_for(load_mod.MULTI_SENDER_RATE - 1) == 1
    assert 1 <= load_mod.senders_for(1e9) <= load_mod.MAX_SENDERS


def test_udp_storm_on_two_senders_never_exceeds_its_rate_and_stops_at_its_count(
        udp_sink: tuple[int, list[tuple[float, int]]]) -> None:
    from harness.load.netflood import UDP_SIZES, udp_storm

    port, seen = udp_sink
    cap = 3000.0
    result = udp_storm("127.0.0.1", port, guard=LOOPBACK, rate=cap, duration_s=1.6, senders=2)
    _settle(lambda: len(seen), result.sent)
    assert result.details["senders"] == 2 and result.stop_reason == "duration"
    assert result.sent > cap
    assert 0 < len(seen) <= result.sent
    assert max_in_window([t for t, _ in seen]) <= cap
    assert {size for _, size in seen} == set(UDP_SIZES)
    assert sum(sent for _t, sent, _a in result.series) == result.sent
    before = len(seen)
    counted = udp_storm("127.0.0.1", port, guard=LOOPBACK, rate=5000, duration_s=5,
                        max_packets=37, senders=2)
    assert (counted.sent, counted.stop_reason) == (37, "count")
    assert _settle(lambda: len(seen), before + 37) == before + 37


def test_connect_storm_in_two_workers_never_exceeds_its_rate_at_the_device(
        fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    cap = 120.0
    result = connect_storm("127.0.0.1", plc.port, guard=LOOPBACK, rate=cap, duration_s=2.2,
                           close="rst", payload=opcua_hello("opc.tcp://127.0.0.1/x"), workers=2)
    accepted = _settle(lambda: len(plc.accepts), result.answered)
    assert result.details["workers"] == 2
    assert accepted == result.answered == result.sent > cap  # both workers sent
    assert max_in_window(plc.accepts) <= cap
    assert result.stop_reason == "duration"
    assert sum(sent for _t, sent, _a in result.series) == result.sent


def test_connect_storm_workers_stop_at_their_count_and_when_told(
        fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    counted = connect_storm("127.0.0.1", plc.port, guard=LOOPBACK, rate=1000, duration_s=5,
                            close="rst", max_connections=25, workers=2)
    assert (counted.sent, counted.answered, counted.stop_reason) == (25, 25, "count")
    assert _settle(lambda: len(plc.accepts), 25) == 25
    # A plain Event (not shared memory): the caller relays it to the workers.
    told = threading.Event()
    timer = threading.Timer(0.8, told.set)
    timer.start()
    try:
        stopped = connect_storm("127.0.0.1", plc.port, guard=LOOPBACK, rate=200, duration_s=8,
                                close="rst", stop=told, workers=2)
    finally:
        timer.cancel()
    assert stopped.stop_reason == "abort"
    assert stopped.duration_s < 8.0
    assert 0 < stopped.sent < 200 * 8


def _worker_children() -> list[int]:
    """Our child processes running a load worker (from /proc)."""
    mine = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == mine and b"harness.load.workers" in cmdline:
            found.append(int(entry))
    return found


def test_ctrl_c_during_a_worker_storm_stops_every_worker(
        fake_plc: Callable[..., Any]) -> None:
    plc = fake_plc()
    timer = threading.Timer(1.0, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            connect_storm("127.0.0.1", plc.port, guard=LOOPBACK, rate=200, duration_s=8,
                          close="rst", workers=2)
        interrupted = time.monotonic()
    finally:
        timer.cancel()
    assert _worker_children() == []  # reaped before the interrupt was raised on
    before = len(plc.accepts)
    time.sleep(0.5)
    assert len(plc.accepts) == before  # nothing more reached the device
    assert before > 0 and all(t <= interrupted for t in plc.accepts)


def test_a_worker_failure_is_one_clear_error() -> None:
    from harness.errors import HarnessError
    from harness.load.workers import run_in_processes

    with pytest.raises(HarnessError, match=r"load worker 0: KeyError: 'no_such_task'"):
        run_in_processes("no_such_task", 1, guard=LOOPBACK, stop=load_mod.NeverStop(),
                         deadline=time.monotonic() + 1, shares=[{}])
