"""Benchmarks of the load generators and the monitor (ratios against native tools, printed).

Run: ``python -m pytest tests/perf -p no:randomly -o python_files='bench_*.py' -s``

Each measurement lasts SECONDS; every generator runs uncapped. The benchmark's own guard allows
only 127.0.0.1 and is armed as in a real run, so every connect and send passes its audit hook.
The native tool and the harness run alternately, ROUNDS times each, and the median of the
per-round ratios is reported (the host is shared: single rounds are noisy). The only asserts
are that each side did something.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.load.connflood import connect_storm
from harness.load.modbus_flood import modbus_flood
from harness.load.monitor import MonitorConfig, MonitorProcess, ProbeSpec
from harness.safety import Guard

SECONDS = 2.0
ROUNDS = 3
UNCAPPED = 1e9
LOOPBACK = Guard(["127.0.0.1"])
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def armed_guard() -> Iterator[None]:
    """The process-wide guard armed, as in a real run (every connect and send is checked)."""
    LOOPBACK.arm()
    yield
    LOOPBACK.disarm()


@pytest.fixture
def simulators() -> Iterator[Callable[..., int]]:
    """Start bundled Modbus/TCP simulators (hardened); return each one's port.

    ``start(priority=-10)`` renices it (root only), e.g. to take the watched simulator's own
    CPU starvation out of a measurement of the monitor.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(priority: int | None = None) -> int:
        proc = subprocess.Popen([sys.executable, "-m", "simulators.modbus_tcp", "--port", "0"],
                                stdout=subprocess.PIPE, cwd=REPO_ROOT)
        procs.append(proc)
        assert proc.stdout is not None
        event = json.loads(proc.stdout.readline())
        if priority is not None:
            os.setpriority(os.PRIO_PROCESS, proc.pid, priority)
        return int(event["endpoints"]["modbus"]["port"])

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def _alternate(native_fn: Callable[[], float], ours_fn: Callable[[], float]
               ) -> tuple[list[float], list[float], float]:
    """ROUNDS alternating measurements; (native rates, our rates, median ratio)."""
    theirs, ours = [], []
    for _ in range(ROUNDS):
        theirs.append(native_fn())
        ours.append(ours_fn())
    assert min(theirs) > 0 and min(ours) > 0
    return theirs, ours, statistics.median(o / t for o, t in zip(ours, theirs, strict=True))


def _fmt(rates: list[float]) -> str:
    return "/".join(f"{r:,.0f}" for r in rates)


def test_modbus_flood_vs_native(native: Any, simulators: Callable[..., int],
                                report: Callable[..., None]) -> None:
    port = native.server("mbserver")

    def flood(target: int, connections: int = 1) -> float:
        r = modbus_flood("127.0.0.1", target, guard=LOOPBACK, rate=UNCAPPED, duration_s=SECONDS,
                         connections=connections, in_flight=16, connection_rate=100)
        assert r.errors == 0
        return r.answered_rate

    c16, ours, ratio16 = _alternate(
        lambda: native.run("mbclient_pipe", port, SECONDS, 16) / SECONDS, lambda: flood(port))
    c1, ours1, ratio1 = _alternate(
        lambda: native.run("mbclient_lib", port, SECONDS) / SECONDS, lambda: flood(port))
    report("modbus flood, 16 in flight, vs libmodbus server (1 connection)",
           c_pipelined_16=_fmt(c16), harness_16=_fmt(ours), median_ratio=ratio16)
    report("modbus flood, 16 in flight, vs C libmodbus one-at-a-time client",
           c_libmodbus_1=_fmt(c1), harness_16=_fmt(ours1), median_ratio=ratio1)
    sim = simulators()
    csim, oursim, ratiosim = _alternate(
        lambda: native.run("mbclient_pipe", sim, SECONDS, 16) / SECONDS, lambda: flood(sim))
    report("modbus flood vs bundled simulator (1 connection, 16 in flight)",
           c_pipelined_16=_fmt(csim), harness_16=_fmt(oursim), median_ratio=ratiosim)


def test_connection_storm_vs_native(native: Any, report: Callable[..., None]) -> None:
    port = native.server("acceptor")

    def storm() -> float:
        r = connect_storm("127.0.0.1", port, guard=LOOPBACK, rate=UNCAPPED, duration_s=SECONDS,
                          close="rst")
        return r.answered / r.duration_s

    c, ours, ratio = _alternate(lambda: native.run("connloop", port, SECONDS) / SECONDS, storm)
    report("connect/close storm vs C loop (abortive close)", c_loop=_fmt(c), harness=_fmt(ours),
           median_ratio=ratio)


@pytest.mark.skipif(not (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="raw sockets need root")
def test_syn_flood_vs_hping3(report: Callable[..., None]) -> None:
    from harness.load.netflood import syn_flood

    hping = shutil.which("hping3")
    if hping is None:
        pytest.skip("hping3 is not installed (apt-get install -y hping3)")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]

        def hping3() -> float:
            proc = subprocess.Popen([hping, "--flood", "-S", "-p", str(port), "127.0.0.1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            time.sleep(SECONDS)
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=10)
            m = re.search(r"(\d+) packets transmitted", out)
            assert m, out
            return int(m.group(1)) / SECONDS

        def ours() -> float:
            return syn_flood("127.0.0.1", port, guard=LOOPBACK, rate=UNCAPPED,
                             duration_s=SECONDS).achieved_rate

        hp, mine, ratio = _alternate(hping3, ours)
    report("SYN flood vs hping3 --flood (loopback)", hping3=_fmt(hp), harness=_fmt(mine),
           median_ratio=ratio)


#: Self-noise: rounds of (idle window, flood window), each NOISE_SECONDS long, sampled at
#: NOISE_HZ: 1,500 samples per condition, so the p99 is the 15th-worst sample, not the 3rd.
NOISE_ROUNDS = 5
NOISE_SECONDS = 3.0
NOISE_HZ = 100.0


@pytest.mark.parametrize("watched_priority", [None, -10], ids=["as-is", "watched-sim-reniced"])
def test_monitor_self_noise(simulators: Callable[..., int], tmp_path: Path,
                            report: Callable[..., None], watched_priority: int | None) -> None:
    if watched_priority is not None and not (hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.skip("renicing needs root")
    watched, loaded = simulators(watched_priority), simulators()
    spec = ProbeSpec("modbus_heartbeat", "hb", "127.0.0.1", watched, max_latency_ms=500.0,
                     max_stall_ms=500.0)
    cfg = MonitorConfig([spec], ["127.0.0.1"], rate_hz=NOISE_HZ, abort_failed_samples=10**6,
                        abort_stall_ms=10**9, max_runtime_s=120)
    windows: list[tuple[float, float, float, float]] = []
    with MonitorProcess(cfg, tmp_path / "mon") as mon:
        time.sleep(0.5)
        for _ in range(NOISE_ROUNDS):
            t0 = time.monotonic()
            time.sleep(NOISE_SECONDS)
            t1 = time.monotonic()
            flood = modbus_flood("127.0.0.1", loaded, guard=LOOPBACK, rate=UNCAPPED,
                                 duration_s=NOISE_SECONDS, connections=4, in_flight=16,
                                 connection_rate=100)
            assert flood.answered > 0
            windows.append((t0, t1, flood.started, flood.ended))
        time.sleep(0.2)
        samples = mon.poll()
    idle_lat: list[float] = []
    busy_lat: list[float] = []
    idle_late: list[float] = []
    busy_late: list[float] = []
    round_ratios: list[float] = []
    failed = 0
    for t0, t1, f0, f1 in windows:
        idle = [x.latency_ms for x in samples if t0 <= x.t <= t1 and x.latency_ms]
        busy = [x for x in samples if f0 <= x.t <= f1]
        busy_ok = [x.latency_ms for x in busy if x.latency_ms]
        failed += sum(1 for x in busy if not x.ok)
        idle_lat += idle
        busy_lat += busy_ok
        idle_late += [x.late_ms for x in samples if t0 <= x.t <= t1 and x.late_ms is not None]
        busy_late += [x.late_ms for x in busy if x.late_ms is not None]
        round_ratios.append(_p99(busy_ok) / _p99(idle))
    idle_p99 = _p99(idle_lat)
    busy_p99 = _p99(busy_lat)
    report("monitor self-noise (heartbeat latency of an idle simulator, idle vs while another "
           f"simulator is flooded; samples of all rounds pooled; watched simulator nice "
           f"{watched_priority or 0})", samples=len(idle_lat),
           idle_p50_ms=statistics.median(idle_lat), idle_p99_ms=idle_p99,
           load_p50_ms=statistics.median(busy_lat), load_p99_ms=busy_p99,
           p99_ratio=busy_p99 / idle_p99, per_round=_fmt_ratios(round_ratios),
           median_round_ratio=statistics.median(round_ratios),
           failed_samples_under_load=failed)
    # The monitor's own part: how late it polled against its schedule (its scheduling delay),
    # idle and under load. The latency above also holds the watched simulator's own delay.
    report(f"monitor lateness against its schedule (watched simulator nice "
           f"{watched_priority or 0})", idle_p99_ms=_p99(idle_late), load_p99_ms=_p99(busy_late),
           idle_max_ms=max(idle_late), load_max_ms=max(busy_late))


def _fmt_ratios(ratios: list[float]) -> str:
    return "/".join(f"{r:.2f}" for r in ratios)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    assert ordered
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
