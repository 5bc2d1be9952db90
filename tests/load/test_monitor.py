"""The essential-function monitor: the judgement over samples, and the monitor process itself."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessError, ProfileError
from harness.load.monitor import (
    MonitorConfig,
    MonitorProcess,
    ProbeSpec,
    Sample,
    figures,
    judge,
    recovery_time,
    timeline_rows,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)

HB = "hb"


def _series(pattern: str, start: float = 100.0, period: float = 0.02,
            probe: str = HB) -> list[Sample]:
    """Samples from a pattern: ``o`` ok, ``s`` stalled, ``x`` timeout."""
    out = []
    for i, c in enumerate(pattern):
        t = start + i * period
        if c == "o":
            out.append(Sample(t, probe, True, 1.0, i, 0.0, ""))
        elif c == "s":
            out.append(Sample(t, probe, False, 1.0, 7, 600.0 + i, f"stalled {600 + i} ms"))
        else:
            out.append(Sample(t, probe, False, 500.0, None, None, "timeout"))
    return out


# --------------------------------------------------------------------------- judgement
def test_figures_count_failures_runs_and_error_kinds() -> None:
    samples = _series("ooosssxxoo")
    fig = figures(samples, HB, 100.0, 101.0)
    assert (fig.samples, fig.failed, fig.max_consecutive_failed) == (10, 5, 5)
    assert fig.errors == {"stalled": 3, "timeout": 2}
    assert fig.max_stall_ms >= 605.0
    assert fig.latency_max_ms == 500.0


def test_figures_carry_the_monitors_own_lateness() -> None:
    samples = _series("oooooooooo")
    for i, sample in enumerate(samples):
        sample.late_ms = 0.1 if i != 6 else 40.0
    fig = figures(samples, HB, 100.0, 101.0)
    assert (fig.late_p99_ms, fig.late_max_ms) == (40.0, 40.0)
    assert figures(_series("oo"), HB, 100.0, 101.0).late_p99_ms is None  # not measured


def test_figures_measure_the_longest_time_no_poll_was_in_flight() -> None:
    # Answers take 1 ms; a hole of 0.5 s after the 5th sample.
    samples = _series("ooooo") + _series("ooooo", start=100.0 + 5 * 0.02 + 0.5)
    fig = figures(samples, HB, 100.0, 100.7)
    assert fig.longest_unwatched_ms == pytest.approx(519.0, abs=1e-6)  # answer 4 -> poll 5
    assert figures([], HB, 100.0, 100.3).longest_unwatched_ms == pytest.approx(300.0)  # edges
    # A slow answer covers its own time: 190 ms in flight, then the next poll 10 ms later.
    slow = [Sample(100.0 + i * 0.2, HB, True, 190.0, i, 0.0, "") for i in range(5)]
    assert figures(slow, HB, 100.0, 100.99).longest_unwatched_ms == pytest.approx(10.0, abs=1e-6)


def test_judge_lists_a_probe_the_monitor_did_not_poll_for_longer_than_its_bound() -> None:
    holed = _series("o" * 10) + _series("o" * 30, start=100.0 + 10 * 0.02 + 0.5)
    verdict = judge(holed, [HB], load_start=100.0, load_end=100.8, recovery_wait_s=1.0,
                    bounds_ms={HB: 200.0}, period_s=0.02)
    assert verdict.ok  # nothing the monitor saw failed ...
    assert len(verdict.blind) == 1 and "unwatched for 519 ms" in verdict.blind[0]  # ... but
    assert verdict.to_json()["blind"] == verdict.blind
    steady = judge(_series("o" * 40), [HB], load_start=100.0, load_end=100.8,
                   recovery_wait_s=1.0, bounds_ms={HB: 200.0}, period_s=0.02)
    assert steady.blind == []
    assert judge(holed, [HB], load_start=100.0, load_end=100.8, recovery_wait_s=1.0).blind == []


def test_a_slow_device_that_answers_within_its_bound_is_not_a_blind_monitor() -> None:
    # Each answer takes 190 ms of a 200 ms bound, and a poll starts every 300 ms (a slow
    # slot): 110 ms unwatched each time, well inside the bound.
    slow = [Sample(100.0 + i * 0.3, HB, True, 190.0, i, 0.0, "") for i in range(10)]
    verdict = judge(slow, [HB], load_start=100.0, load_end=102.6, recovery_wait_s=5.0,
                    bounds_ms={HB: 200.0}, period_s=0.02)
    assert verdict.blind == []
    assert verdict.during[HB].longest_unwatched_ms == pytest.approx(110.0, abs=1e-6)


def test_figures_only_count_the_window_and_the_probe() -> None:
    samples = _series("xxoooo") + _series("xxxx", probe="other")
    fig = figures(samples, HB, 100.0 + 2 * 0.02, 101.0)
    assert (fig.samples, fig.failed) == (4, 0)


def test_judge_passes_a_clean_load_with_zero_recovery() -> None:
    samples = _series("o" * 60)
    verdict = judge(samples, [HB], load_start=100.2, load_end=100.8, recovery_wait_s=1.0)
    assert verdict.ok
    assert verdict.within_bounds and verdict.recovered
    assert verdict.recovery_s == 0.0
    assert verdict.problems == []


def test_judge_fails_a_stall_during_the_load_and_measures_the_recovery() -> None:
    # load from sample 10 to 30; stalled 15..39; ok again from 40 on
    samples = _series("o" * 15 + "s" * 25 + "o" * 20)
    verdict = judge(samples, [HB], load_start=100.0 + 10 * 0.02, load_end=100.0 + 30 * 0.02,
                    recovery_wait_s=1.0)
    assert not verdict.within_bounds
    assert verdict.recovered
    assert verdict.recovery_s == pytest.approx(0.2, abs=1e-6)
    assert any("out of bounds during the load" in p for p in verdict.problems)


def test_judge_fails_a_late_recovery() -> None:
    samples = _series("o" * 10 + "x" * 50 + "o" * 20)
    verdict = judge(samples, [HB], load_start=100.0, load_end=100.0 + 10 * 0.02,
                    recovery_wait_s=0.5)
    assert not verdict.recovered
    assert verdict.recovery_s == pytest.approx(1.0, abs=1e-6)
    assert any("recovered only after" in p for p in verdict.problems)


def test_recovery_needs_settled_samples_on_every_probe() -> None:
    samples = _series("xxxooo") + _series("o" * 20, probe="b")
    assert recovery_time(samples, [HB, "b"], 100.0, settle=5) is None
    samples += _series("o" * 10, start=100.0 + 6 * 0.02)
    assert recovery_time(samples, [HB, "b"], 100.0, settle=5) == pytest.approx(0.06, abs=1e-6)


def test_judge_reports_a_probe_without_samples_and_the_abort() -> None:
    verdict = judge(_series("oooo"), [HB, "silent"], load_start=100.0, load_end=100.1,
                    recovery_wait_s=1.0, abort_reason="hb: 25 failed samples")
    assert not verdict.ok
    assert any("silent: no sample during the load" in p for p in verdict.problems)
    assert any("aborted by the monitor" in p for p in verdict.problems)


def test_timeline_rows_carry_phases_from_marks() -> None:
    rows = timeline_rows(_series("oooo"), 100.0, [("load", 100.02), ("after", 100.05)])
    assert [r["phase"] for r in rows] == ["baseline", "load", "load", "after"]
    assert rows[1]["t"] == pytest.approx(0.02)


def test_config_round_trips_and_refuses_nonsense() -> None:
    cfg = MonitorConfig([ProbeSpec("tcp_connect", "x", "127.0.0.1", 1, 100.0)], ["127.0.0.1"])
    assert MonitorConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="at least one probe"):
        MonitorConfig([], ["127.0.0.1"])
    with pytest.raises(ValueError, match="rate_hz"):
        MonitorConfig(cfg.probes, ["127.0.0.1"], rate_hz=0.5)


# --------------------------------------------------------------------------- the process
def _heartbeat_config(port: int, **kw: float) -> MonitorConfig:
    spec = ProbeSpec("modbus_heartbeat", "hb", "127.0.0.1", port, max_latency_ms=200.0,
                     max_stall_ms=200.0)
    return MonitorConfig([spec], ["127.0.0.1"], connect_timeout_s=1.0, request_timeout_s=1.0,
                         **kw)  # type: ignore[arg-type]


@pytest.fixture
def run_monitor(tmp_path: Path) -> Iterator[Callable[[MonitorConfig], MonitorProcess]]:
    started: list[MonitorProcess] = []

    def start(config: MonitorConfig) -> MonitorProcess:
        proc = MonitorProcess(config, tmp_path / f"m{len(started)}")
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.close()
        assert not proc.running


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def test_monitor_samples_a_counting_heartbeat(fake_plc: Callable[..., Any],
                                              run_monitor: Callable[..., MonitorProcess]) -> None:
    plc = fake_plc()
    mon = run_monitor(_heartbeat_config(plc.port))
    _wait_for(lambda: len(mon.poll()) >= 20)
    samples = mon.poll()
    assert all(s.ok for s in samples), [s.error for s in samples if not s.ok]
    values = [s.value for s in samples]
    assert values == sorted(values)  # int and increasing (no wrap within a second)
    assert len(set(values)) > 1
    assert not mon.flag.is_set()


def test_a_starved_monitor_shows_in_its_own_lateness(
        fake_plc: Callable[..., Any], run_monitor: Callable[..., MonitorProcess]) -> None:
    plc = fake_plc()
    mon = run_monitor(_heartbeat_config(plc.port, abort_stall_ms=60_000.0))
    _wait_for(lambda: len(mon.poll()) >= 10)
    calm = [s.late_ms for s in mon.poll()]
    assert all(late is not None for late in calm)
    pid = mon.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # starve the monitor for 0.4 s, as a load that hogged it would
    try:
        time.sleep(0.4)
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait_for(lambda: len(mon.poll()) >= len(calm) + 10)
    later = [s.late_ms for s in mon.poll()[len(calm):] if s.late_ms is not None]
    assert max(later) >= 300.0
    assert max(calm) < 300.0  # so the figure is the stop, not the monitor's usual pace


def test_a_check_whose_monitor_stopped_during_the_load_is_an_error_not_a_pass(
        fake_plc: Callable[..., Any], tmp_path: Path) -> None:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor
    from harness.profile import load_profile

    plc = fake_plc()
    template = (REPO_ROOT / "device_profiles" / "template-plc.yaml").read_text()
    profile = tmp_path / "plc.yaml"
    profile.write_text(template.replace("port: 502", f"port: {plc.port}", 1))
    monitor = EssentialMonitor(load_profile(profile), Evidence("t::blind"))
    monitor.start()
    try:
        monitor.wait_healthy()
        start = time.monotonic()
        time.sleep(0.3)
        calm = monitor.judge(start, time.monotonic(), label="calm")
        assert calm.ok and calm.blind == []
        pid = monitor.process.pid
        assert pid is not None
        start = time.monotonic()
        os.kill(pid, signal.SIGSTOP)  # the monitor sees nothing for 0.6 s
        try:
            time.sleep(0.6)
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
        with pytest.raises(HarnessError, match=r"cannot vouch .* unwatched for"):
            monitor.judge(start, time.monotonic(), label="stopped")
    finally:
        monitor.finish()


@pytest.mark.skipif(not (hasattr(os, "geteuid") and os.geteuid() == 0),
                    reason="the real-time class needs root")
def test_as_root_the_monitor_polls_in_the_real_time_class(
        fake_plc: Callable[..., Any], run_monitor: Callable[..., MonitorProcess]) -> None:
    plc = fake_plc()
    mon = run_monitor(_heartbeat_config(plc.port))
    _wait_for(lambda: len(mon.poll()) >= 5)
    pid = mon.pid
    assert pid is not None
    tasks = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    policies = {tid: os.sched_getscheduler(tid) for tid in tasks}
    assert len(policies) >= 2  # the main thread (it writes the samples) and the probe
    assert set(policies.values()) == {os.SCHED_FIFO}
    assert os.getpriority(os.PRIO_PROCESS, pid) == -10


def test_stall_fails_samples_and_trips_the_abort(fake_plc: Callable[..., Any],
                                                 run_monitor: Callable[..., MonitorProcess]
                                                 ) -> None:
    plc = fake_plc()
    mon = run_monitor(_heartbeat_config(plc.port, abort_failed_samples=5, abort_stall_ms=5000))
    _wait_for(lambda: len(mon.poll()) >= 5)
    plc.stall()
    _wait_for(mon.flag.is_set)
    stalled = [s for s in mon.poll() if s.error.startswith("stalled")]
    assert stalled and all(s.stall_ms is not None and s.stall_ms >= 200 for s in stalled)
    assert "5 failed samples in a row" in (mon.abort_reason() or "")


def test_mute_device_gives_timeouts_and_the_stall_abort(
        fake_plc: Callable[..., Any], run_monitor: Callable[..., MonitorProcess]) -> None:
    plc = fake_plc()
    mon = run_monitor(_heartbeat_config(plc.port, abort_failed_samples=1000,
                                        abort_stall_ms=600))
    _wait_for(lambda: len(mon.poll()) >= 5)
    plc.muted = True
    _wait_for(mon.flag.is_set)
    assert any(s.error == "timeout" for s in mon.poll())
    assert "not ok for" in (mon.abort_reason() or "")


def test_lost_connection_is_a_failed_sample_then_reconnects(
        fake_plc: Callable[..., Any], run_monitor: Callable[..., MonitorProcess]) -> None:
    plc = fake_plc()
    mon = run_monitor(_heartbeat_config(plc.port))
    _wait_for(lambda: len(mon.poll()) >= 5)
    plc.drop_connections()
    _wait_for(lambda: any(not s.ok for s in mon.poll()))
    first_bad = next(s for s in mon.poll() if not s.ok)
    assert "closed" in first_bad.error or "reset" in first_bad.error
    _wait_for(lambda: any(s.ok and s.t > first_bad.t for s in mon.poll()))
    assert len(plc.accepts) >= 2


def test_tcp_connect_probe_reports_refused_connections(
        run_monitor: Callable[..., MonitorProcess]) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = ProbeSpec("tcp_connect", "tcp", "127.0.0.1", port, max_latency_ms=200.0)
    mon = run_monitor(MonitorConfig([spec], ["127.0.0.1"], connect_timeout_s=1.0))
    _wait_for(lambda: len(mon.poll()) >= 3)
    assert all(not s.ok and "refused" in s.error for s in mon.poll())
    assert not mon.flag.is_set()  # never ok, so the abort was never armed


def test_monitor_refuses_a_probe_outside_the_allow_list(tmp_path: Path) -> None:
    spec = ProbeSpec("tcp_connect", "tcp", "127.0.0.1", 502, max_latency_ms=200.0)
    proc = MonitorProcess(MonitorConfig([spec], ["192.0.2.0/24"]), tmp_path / "m")
    with pytest.raises(HarnessError, match="not in the profile's targets"):
        proc.start(ready_timeout_s=20)
    assert not proc.running


def test_monitor_stops_by_itself_after_its_max_runtime(
        fake_plc: Callable[..., Any], run_monitor: Callable[..., MonitorProcess]) -> None:
    plc = fake_plc()
    mon = run_monitor(_heartbeat_config(plc.port, max_runtime_s=1.0))
    _wait_for(lambda: not mon.running)
    assert any(e.get("event") == "stopped" and e.get("reason") == "max_runtime"
               for e in mon.events)


# --------------------------------------------------------------------------- ssh_banner
class _BannerServer:
    """Accepts connections; says ``greeting`` on each (nothing at all when it is empty)."""

    def __init__(self, greeting: bytes) -> None:
        import threading

        self.greeting = greeting
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            if self.greeting:
                conn.sendall(self.greeting)
                conn.close()
            else:
                self.held.append(conn)  # a hung daemon: the kernel accepted, nobody speaks

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self.held:
            conn.close()
        self.listener.close()


@pytest.fixture
def banner_server() -> Iterator[Callable[[bytes], _BannerServer]]:
    servers: list[_BannerServer] = []

    def start(greeting: bytes) -> _BannerServer:
        servers.append(_BannerServer(greeting))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _ssh_config(port: int) -> MonitorConfig:
    spec = ProbeSpec("ssh_banner", "ssh", "127.0.0.1", port, max_latency_ms=300.0)
    return MonitorConfig([spec], ["127.0.0.1"], connect_timeout_s=1.0, request_timeout_s=1.0)


def test_ssh_banner_probe_reads_the_identification_line(
        banner_server: Callable[[bytes], _BannerServer],
        run_monitor: Callable[..., MonitorProcess]) -> None:
    # RFC 4253 4.2: other lines may come before the identification line
    server = banner_server(b"welcome to the plant\r\nSSH-2.0-FakePLC_1.0\r\n")
    mon = run_monitor(_ssh_config(server.port))
    _wait_for(lambda: len(mon.poll()) >= 5)
    samples = mon.poll()
    assert all(s.ok for s in samples), [s.error for s in samples]
    assert {s.value for s in samples} == {"SSH-2.0-FakePLC_1.0"}


@pytest.mark.parametrize(("greeting", "error"), [
    (b"", "timeout: no SSH identification line"),  # accepted by the kernel, daemon silent
    (b"HTTP/1.0 400 Bad Request\r\n", "closed before the SSH identification line"),
])
def test_ssh_banner_probe_fails_a_daemon_that_does_not_speak_ssh(
        banner_server: Callable[[bytes], _BannerServer],
        run_monitor: Callable[..., MonitorProcess], greeting: bytes, error: str) -> None:
    server = banner_server(greeting)
    mon = run_monitor(_ssh_config(server.port))
    _wait_for(lambda: len(mon.poll()) >= 2)
    samples = mon.poll()
    assert samples and all(not s.ok and s.error == error for s in samples)


def test_ssh_banner_comes_from_the_profile_ssh_interface(tmp_path: Path) -> None:
    from harness.profile import load_profile

    base = ("device: {vendor: A, model: B, firmware: '1', component_type: embedded}\n"
            "claimed_sl: {FR1: 1, FR2: 1, FR3: 1, FR4: 1, FR5: 1, FR6: 1, FR7: 1}\n"
            "essential_functions:\n  - {kind: ssh_banner, max_latency_ms: 250}\n")
    good = tmp_path / "good.yaml"
    good.write_text(base + "interfaces:\n  ssh: {host: 127.0.0.9, port: 2222}\n")
    (spec,) = MonitorConfig.from_profile(load_profile(good)).probes
    assert (spec.kind, spec.host, spec.port, spec.max_latency_ms) == (
        "ssh_banner", "127.0.0.9", 2222, 250)
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "interfaces:\n  modbus_tcp: {host: 127.0.0.9}\n")
    with pytest.raises(ProfileError) as err:
        load_profile(bad)
    assert err.value.problems == [
        f"{bad}:4: essential_functions.0: ssh_banner needs interfaces.ssh"]


# --------------------------------------------------------------------------- opcua_read stall
@pytest.mark.parametrize(("node", "stalls"),
                         [("PLC.Heartbeat", False), ("PLC.Setpoint", True)])
def test_opcua_read_with_max_stall_fails_a_value_that_stands_still(
        lab: Callable[..., Any], write_profile: Callable[..., Path],
        run_monitor: Callable[..., MonitorProcess], node: str, stalls: bool) -> None:
    """A node that answers at once but never changes is stalled, not healthy."""
    from harness.profile import load_profile

    running = lab(["opcua"])
    data = running.profile()
    (ef,) = data["essential_functions"]
    assert ef["kind"] == "opcua_read" and ef["max_stall_ms"] == 500  # what the lab declares
    ef.update({"node": ef["node"].replace("PLC.Heartbeat", node), "max_stall_ms": 300})
    config = MonitorConfig.from_profile(load_profile(write_profile(data)))
    mon = run_monitor(config)
    _wait_for(lambda: sum(s.ok or s.stall_ms is not None for s in mon.poll()) >= 40, 30)
    read = [s for s in mon.poll() if s.stall_ms is not None]
    assert read, [s.error for s in mon.poll()]
    if stalls:
        assert any(s.error.startswith("stalled") and s.stall_ms > 300 for s in read)
        assert not read[-1].ok
    else:
        assert all(s.ok and s.stall_ms <= 300 for s in read[-20:]), [s.error for s in read]
