"""Packet captures in the evidence: only the target's traffic, a valid pcap, bounded."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.capture import Capture

pytestmark = pytest.mark.skipif(not Capture.available(), reason="capturing needs root")


def test_capture_keeps_only_the_targets_packets(tmp_path: Path) -> None:
    scapy = pytest.importorskip("scapy.all")
    capture = Capture(["127.9.8.7"])
    capture.start()
    time.sleep(0.2)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"to-the-target", ("127.9.8.7", 9))
            udp.sendto(b"elsewhere", ("127.9.8.6", 9))
        time.sleep(0.3)
    finally:
        capture.stop()
    path = tmp_path / "c.pcap"
    capture.save(path)
    packets = scapy.rdpcap(str(path))
    payloads = [bytes(p[scapy.UDP].payload) for p in packets if p.haslayer(scapy.UDP)]
    assert payloads == [b"to-the-target"]
    assert all("127.9.8.7" in (p[scapy.IP].src, p[scapy.IP].dst) for p in packets)


def test_disruptive_check_evidence_holds_a_pcap_of_its_frames(
    lab: Callable[..., Any], run_harness: Callable[..., Any]
) -> None:
    scapy = pytest.importorskip("scapy.all")
    running = lab(simulators=["modbus_tcp"])
    result = run_harness(running.profile_path, k="test_modbus_tcp_survives_malformed_mbap")
    (check,) = result.checks("survives_malformed_mbap")
    assert check["verdict"] == "PASS", check["reason"]
    pcaps = [p for p in check["evidence"] if p.endswith("capture.pcap")]
    assert pcaps, check["evidence"]
    path = result.out / pcaps[0]
    packets = scapy.rdpcap(str(path))
    host = running.state["host"]
    assert packets, "empty capture"
    assert all(host in (p[scapy.IP].src, p[scapy.IP].dst) for p in packets)
    sent = b"".join(bytes(p[scapy.TCP].payload) for p in packets if p.haslayer(scapy.TCP))
    # every frame the check says it sent is on the wire in the capture
    from_evidence = [
        bytes.fromhex(o["hex"])
        for o in check["observations"]
        if o.get("kind") == "sent" and o.get("hex")
    ]
    assert from_evidence
    for frame in from_evidence:
        assert frame in sent, frame.hex()
    tshark = shutil.which("tshark")
    if tshark:
        proc = subprocess.run(
            [tshark, "-r", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip()


def test_the_kernel_filter_keeps_every_target_packet_under_other_loopback_traffic(
        tmp_path: Path) -> None:
    """Other traffic on loopback (another test's flood) neither fills the capture nor crowds
    out the target's packets: the filter runs in the kernel, before the socket's queue."""
    scapy = pytest.importorskip("scapy.all")
    capture = Capture(["127.9.8.7"])
    capture.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for i in range(40000):  # bounded: a burst far beyond what the reader takes live
                udp.sendto(b"x" * 512, ("127.9.8.6", 9))
                if i % 1000 == 0:
                    udp.sendto(f"target {i // 1000}".encode(), ("127.9.8.7", 9))
        time.sleep(0.5)
    finally:
        capture.stop()
    path = tmp_path / "c.pcap"
    capture.save(path)
    payloads = [bytes(p[scapy.UDP].payload) for p in scapy.rdpcap(str(path))
                if p.haslayer(scapy.UDP)]
    assert payloads == [f"target {i}".encode() for i in range(40)]
    assert capture.dropped == 0  # (the rest it kept are the ICMP port-unreachable replies)


def test_bpf_program_jumps_land_on_accept_or_drop() -> None:
    from harness.capture import bpf_program

    targets = [socket.inet_aton(f"127.0.0.{i}") for i in range(1, 4)]
    prog = bpf_program(targets)
    accept, drop = len(prog) - 1, len(prog) - 2
    assert prog[accept] == (0x06, 0, 0, 0x40000) and prog[drop] == (0x06, 0, 0, 0)
    for i, (code, jt, _jf, k) in enumerate(prog):
        if code == 0x15 and k != 0x0800:  # a target comparison jumps to accept when equal
            assert i + 1 + jt == accept and int.to_bytes(k, 4, "big") in targets
    assert 1 + 1 + prog[1][2] == drop  # not IPv4: straight to drop
