"""The safety guard: the allow-list, the process-wide hook, the rate limiter; and a capture proof
that a run sends nothing to an address outside the profile's targets."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.errors import SafetyViolation
from harness.safety import Deadline, Guard, RateLimiter

HERE = Path(__file__).parent


def test_allow_list_accepts_declared_and_refuses_the_rest() -> None:
    guard = Guard(["127.0.0.1", "::1/128"])
    assert guard.check_destination("127.0.0.1", 502) == "127.0.0.1"
    assert guard.check_destination("::1") == "::1"
    with pytest.raises(SafetyViolation, match=r"refused 127\.0\.0\.2:502"):
        guard.check_destination("127.0.0.2", 502)
    with pytest.raises(SafetyViolation, match="does not resolve"):
        guard.check_destination("no-such-host.invalid")


def test_cidr_targets_and_names() -> None:
    guard = Guard(["127.0.0.0/30"])
    assert guard.check_destination("127.0.0.3")
    with pytest.raises(SafetyViolation):
        guard.check_destination("127.0.0.4")
    assert Guard(["localhost"]).check_destination("localhost")


def test_serial_devices_and_disruptive_gate() -> None:
    guard = Guard([], serial_devices=["/dev/ttyUSB0"])
    assert guard.check_serial("/dev/ttyUSB0") == "/dev/ttyUSB0"
    with pytest.raises(SafetyViolation, match="not declared"):
        guard.check_serial("/dev/ttyUSB1")
    with pytest.raises(SafetyViolation, match="disruptive"):
        guard.require_disruptive("a flood")
    Guard([], allow_disruptive=True).require_disruptive("a flood")


def test_armed_hook_refuses_sockets_of_any_library() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        guard = Guard(["127.0.0.1"])
        guard.arm()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()  # allowed
            with pytest.raises(SafetyViolation, match=r"refused connect to 127\.0\.0\.2"):
                socket.create_connection(("127.0.0.2", port), timeout=2)
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
                pytest.raises(SafetyViolation, match="refused sendto"),
            ):
                udp.sendto(b"x", ("127.0.0.9", port))
        finally:
            guard.disarm()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # disarmed: inert


def test_the_hook_remembers_allowed_addresses_only() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        guard = Guard(["127.0.0.1"])
        guard.arm()
        try:
            for _ in range(3):  # the second and third sends take the remembered fast path
                udp.sendto(b"x", ("127.0.0.1", 9))
            for _ in range(2):  # a refusal is decided afresh every time
                with pytest.raises(SafetyViolation, match="refused sendto"):
                    udp.sendto(b"x", ("127.0.0.7", 9))
        finally:
            guard.disarm()
    assert guard.allowed_hosts == {"127.0.0.1": True}
    assert Guard(["127.0.0.0/8"]).with_interfaces(["eth9"]).allowed_hosts == {}


def test_rate_limiter_never_exceeds_its_rate() -> None:
    limiter = RateLimiter(rate=200, burst=5)
    stamps: list[float] = []
    deadline = Deadline(0.5)
    while not deadline.expired:
        limiter.acquire()
        stamps.append(time.monotonic())
    # in any window of one second's fraction, at most burst + rate * window events
    window = 0.1
    for i, t in enumerate(stamps):
        inside = sum(1 for u in stamps[i:] if u - t < window)
        assert inside <= 5 + 200 * window + 1, f"{inside} events in {window} s"


def test_rate_limiter_is_thread_safe() -> None:
    limiter = RateLimiter(rate=100, burst=1)
    count = 0
    lock = threading.Lock()
    stop = Deadline(0.3)

    def worker() -> None:
        nonlocal count
        while not stop.expired:
            limiter.acquire()
            with lock:
                count += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 0.3 s at 100/s plus one token, plus one in-flight acquisition per thread at the end
    assert count <= 100 * 0.3 + 1 + len(threads)


def test_bad_limiter_arguments() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(0)
    with pytest.raises(ValueError, match="burst must be >= 1"):
        RateLimiter(1, burst=0)


# --------------------------------------------------------------------------- capture proof
def _sniffer(filter_expr: str):  # type: ignore[no-untyped-def]
    scapy = pytest.importorskip("scapy.all")
    if os.geteuid() != 0:
        pytest.skip("capturing on lo needs root")
    sniffer = scapy.AsyncSniffer(iface="lo", filter=filter_expr, store=True)
    sniffer.start()
    time.sleep(0.5)  # let the capture attach
    return sniffer


def test_capture_sees_unguarded_traffic_to_the_other_address() -> None:
    """Control: the capture used below does see packets to 127.0.0.2 when nothing guards them."""
    sniffer = _sniffer("host 127.0.0.2")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"control", ("127.0.0.2", 9))
    time.sleep(0.3)
    packets = sniffer.stop()
    assert len(packets) >= 1


def test_a_run_sends_nothing_outside_the_allow_list(
    tmp_path: Path, fake_checks: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        profile = tmp_path / "p.yaml"
        profile.write_text(
            "device: {vendor: A, model: B, firmware: '1', component_type: embedded}\n"
            "claimed_sl: {FR7: 1}\n"
            f"interfaces: {{modbus_tcp: {{host: 127.0.0.1, port: {port}}}}}\n"
            "targets: [127.0.0.1]\n"
        )
        sniffer = _sniffer("host 127.0.0.2")
        out = tmp_path / "out"
        proc = fake_checks(
            HERE / "plugin_checks" / "check_escape.py",
            profile=profile,
            out=out,
            env={"HARNESS_ESCAPE_PORT": str(port)},
        )
        time.sleep(0.3)
        packets = sniffer.stop()
    results = json.loads((out / "results.json").read_text())
    (check,) = results["checks"]
    assert check["verdict"] == "ERROR", proc.stdout
    assert "SafetyViolation" in check["reason"]
    assert "127.0.0.2" in check["reason"]
    assert proc.returncode == 3
    assert len(packets) == 0, [p.summary() for p in packets]
