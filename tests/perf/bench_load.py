"""Benchmarks of the load generators and the monitor (ratios against native tools, printed).

Run: ``python -m pytest tests/perf -p no:randomly -o python_files='bench_*.py' -s``

Each measurement lasts SECONDS; every generator runs uncapped (the benchmark's own guard allows
only 127.0.0.1). The only asserts are that each side did something.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.load.connflood import connect_storm
from harness.load.modbus_flood import modbus_flood
from harness.load.monitor import MonitorConfig, MonitorProcess, ProbeSpec, figures
from harness.safety import Guard

SECONDS = 3.0
UNCAPPED = 1e9
LOOPBACK = Guard(["127.0.0.1"])
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def simulators() -> Iterator[Callable[[], int]]:
    """Start bundled Modbus/TCP simulators (hardened); return each one's port."""
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> int:
        proc = subprocess.Popen([sys.executable, "-m", "simulators.modbus_tcp", "--port", "0"],
                                stdout=subprocess.PIPE, cwd=REPO_ROOT)
        procs.append(proc)
        assert proc.stdout is not None
        event = json.loads(proc.stdout.readline())
        return int(event["endpoints"]["modbus"]["port"])

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_modbus_flood_vs_native(native: Any, simulators: Callable[[], int],
                                report: Callable[..., None]) -> None:
    port = native.server("mbserver")
    c16 = native.run("mbclient_pipe", port, SECONDS, 16) / SECONDS
    c1 = native.run("mbclient_lib", port, SECONDS) / SECONDS
    ours = modbus_flood("127.0.0.1", port, guard=LOOPBACK, rate=UNCAPPED, duration_s=SECONDS,
                        connections=1, in_flight=16)
    assert ours.answered > 0 and c16 > 0 and c1 > 0
    report("modbus flood vs libmodbus server (1 connection)",
           c_pipelined_16=c16, c_libmodbus_1=c1, harness_16=ours.answered_rate,
           ratio_vs_c16=ours.answered_rate / c16, ratio_vs_c1=ours.answered_rate / c1,
           harness_errors=ours.errors)
    sim = simulators()
    on_sim = modbus_flood("127.0.0.1", sim, guard=LOOPBACK, rate=UNCAPPED, duration_s=SECONDS,
                          connections=4, in_flight=16, connection_rate=100)
    c16_sim = native.run("mbclient_pipe", sim, SECONDS, 16) / SECONDS
    report("modbus flood vs bundled simulator", harness_4x16=on_sim.answered_rate,
           c_pipelined_16=c16_sim, ratio=on_sim.answered_rate / c16_sim)


def test_connection_storm_vs_native(native: Any, report: Callable[..., None]) -> None:
    port = native.server("acceptor")
    c = native.run("connloop", port, SECONDS) / SECONDS
    ours = connect_storm("127.0.0.1", port, guard=LOOPBACK, rate=UNCAPPED, duration_s=SECONDS,
                         close="rst")
    assert ours.answered > 0 and c > 0
    report("connect/close storm vs C loop (abortive close)", c_loop=c,
           harness=ours.answered / ours.duration_s, ratio=ours.answered / ours.duration_s / c,
           harness_errors=ours.errors)


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
        proc = subprocess.Popen([hping, "--flood", "-S", "-p", str(port), "127.0.0.1"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(SECONDS)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted", out)
        assert m, out
        hp = int(m.group(1)) / SECONDS
        ours = syn_flood("127.0.0.1", port, guard=LOOPBACK, rate=UNCAPPED, duration_s=SECONDS)
    assert ours.sent > 0 and hp > 0
    report("SYN flood vs hping3 --flood (loopback)", hping3=hp, harness=ours.achieved_rate,
           ratio=ours.achieved_rate / hp)


def test_monitor_self_noise(simulators: Callable[[], int], tmp_path: Path,
                            report: Callable[..., None]) -> None:
    watched, loaded = simulators(), simulators()
    spec = ProbeSpec("modbus_heartbeat", "hb", "127.0.0.1", watched, max_latency_ms=500.0,
                     max_stall_ms=500.0)
    cfg = MonitorConfig([spec], ["127.0.0.1"], abort_failed_samples=10**6,
                        abort_stall_ms=10**9, max_runtime_s=60)
    with MonitorProcess(cfg, tmp_path / "mon") as mon:
        time.sleep(0.5)
        t0 = time.monotonic()
        time.sleep(SECONDS)
        t1 = time.monotonic()
        flood = modbus_flood("127.0.0.1", loaded, guard=LOOPBACK, rate=UNCAPPED,
                             duration_s=SECONDS, connections=4, in_flight=16,
                             connection_rate=100)
        time.sleep(0.2)
        samples = mon.poll()
    idle = figures(samples, "hb", t0, t1)
    busy = figures(samples, "hb", flood.started, flood.ended)
    assert idle.latency_p99_ms and busy.latency_p99_ms and flood.answered > 0
    report("monitor self-noise (heartbeat of an idle simulator)",
           idle_p50_ms=idle.latency_p50_ms or 0.0, idle_p99_ms=idle.latency_p99_ms,
           load_p50_ms=busy.latency_p50_ms or 0.0, load_p99_ms=busy.latency_p99_ms,
           p99_ratio=busy.latency_p99_ms / idle.latency_p99_ms,
           samples_idle=idle.samples, samples_load=busy.samples,
           failed_load=busy.failed, other_sim_flood_rps=flood.answered_rate)
