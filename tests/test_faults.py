"""The harness under faults: an unreachable target, a device that dies mid-run, an interrupt.

- **Unreachable target**: a profile whose network interfaces point at closed ports on 127.0.0.1
  and whose serial devices do not exist: every check that runs is ERROR with a reason, the run
  ends within a bound derived from the profile's timeouts, exit code 3.
- **Device dies mid-run**: the lab's simulators are SIGKILLed once the first check has left its
  evidence: the run still ends soon (the plugin's circuit breaker makes later checks ERROR at
  once, "device unavailable, not tried"), the report is written, the exit code is 3 (or 1 when a
  FAIL came first), and no check started after the kill PASSes.
- **Interrupt**: SIGTERM or SIGINT reaches ``harness run`` in the middle of a disruptive write
  check, after the device's scratch register has really been changed: the process exits non-zero
  soon, ``results.json`` says ``"complete": false``, and the scratch register and coil hold their
  old values again (read back straight from the simulator with pymodbus). A small proxy between
  the harness and the simulator sees the write and holds the next request, so the signal lands
  at exactly that point every time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Seconds for interpreter start, collection and the report.
STARTUP_S = 30.0
#: Seconds the interrupted run has to exit after the signal.
EXIT_AFTER_SIGNAL_S = 20.0
#: Modbus function codes that write.
WRITE_FCS = {5, 6, 15, 16, 22, 23}

pytestmark = pytest.mark.timeout(300)


def harness(*args: str) -> list[str]:
    """The ``harness`` command line in this interpreter."""
    return [sys.executable, "-m", "harness.cli", *args]


def planned_checks(profile_path: Path) -> list[str]:
    """Node ids of the checks ``harness plan`` says will run (the plan sends nothing)."""
    proc = subprocess.run(
        harness("plan", "--json", "--allow-disruptive", str(profile_path)),
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    return [c["nodeid"] for r in plan["requirements"] for c in r["checks"] if c["runs"]]


def per_check_budget(profile: dict[str, Any]) -> float:
    """Seconds one check may take against a bad device: a load at its duration cap, the
    recovery wait, and four connect-or-request timeouts."""
    s = profile["safety"]
    return (float(s["max_load_duration_s"]) + float(s["recovery_wait_s"])
            + 4 * max(float(s["connect_timeout_s"]), float(s["request_timeout_s"])))


def parse_time(text: str) -> float:
    """A results.json ISO timestamp as a POSIX time."""
    return dt.datetime.fromisoformat(text).timestamp()


@dataclass
class Started:
    """A ``harness run`` started in the background, with its output in files."""

    proc: subprocess.Popen[bytes]
    out: Path
    logs: Path
    t0: float = field(default_factory=time.monotonic)

    def wait(self, timeout: float) -> int:
        """The exit code; kill the run (and fail) if it is still going after ``timeout``."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"harness run still going after {timeout:.0f} s: a hang{self.tails()}")

    def kill(self) -> None:
        """SIGKILL the run's process group and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    @property
    def stdout(self) -> str:
        return (self.logs / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.logs / "stderr").read_text(errors="replace")

    def results(self) -> dict[str, Any]:
        """results.json ({} when missing)."""
        path = self.out / "results.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return data

    def tails(self) -> str:
        """Output tails for an assertion message."""
        return f"\nstdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"


@pytest.fixture
def start_run(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """``start_run(profile, k=None) -> Started``: ``harness run --allow-disruptive`` in the
    background; every run still going at teardown is killed."""
    started: list[Started] = []

    def start(profile: Path, k: str | None = None) -> Started:
        n = len(started)
        out, logs = tmp_path / f"out{n}", tmp_path / f"logs{n}"
        logs.mkdir()
        cmd = harness("run", "--out", str(out), "--allow-disruptive")
        if k:
            cmd += ["-k", k]
        cmd.append(str(profile))
        # The run must see SIGINT as Ctrl-C even when this test process runs with SIGINT ignored
        # (a background CI job): give the child the default disposition, which Python turns
        # into KeyboardInterrupt.
        restore = None
        if threading.current_thread() is threading.main_thread():
            restore = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with (logs / "stdout").open("wb") as so, (logs / "stderr").open("wb") as se:
                proc = subprocess.Popen(
                    cmd, stdout=so, stderr=se, stdin=subprocess.DEVNULL, cwd=REPO_ROOT,
                    env={**os.environ, "CI": "true"}, start_new_session=True,
                )
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)
        run = Started(proc, out, logs)
        started.append(run)
        return run

    yield start
    for run in started:
        if run.proc.poll() is None:
            run.kill()


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- unreachable
def unreachable_profile(tmp_path: Path) -> dict[str, Any]:
    """A lab-shaped profile whose every interface points at nothing."""
    from harness.lab import LabDefinition, generated_profile

    ports = [closed_port() for _ in range(3)]
    lab = LabDefinition(name="unreachable")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    accounts = {}
    for role, user in (("admin", "admin"), ("operator", "operator"), ("readonly", "viewer"),
                       ("lockout_test", "locktest")):
        (secrets / f"{role}.password").write_text(f"Pw-{role}-unused\n")
        accounts[role] = {"user": user, "password": "unused", "role": "operator"}
    state = {
        "host": "127.0.0.1",
        "state_dir": str(tmp_path),
        "simulators": {
            "ghost": {
                "endpoints": {
                    "modbus": {"host": "127.0.0.1", "port": ports[0], "unit": 1},
                    "ssh": {"host": "127.0.0.1", "port": ports[1]},
                    "opcua": {"url": f"opc.tcp://127.0.0.1:{ports[2]}/harness/plc"},
                    "rtu": {"path": str(tmp_path / "no-such-rtu-pty")},
                    "console": {"path": str(tmp_path / "no-such-console-pty")},
                },
            },
        },
    }
    return generated_profile(lab, state, accounts)


def test_unreachable_target_is_error_within_the_timeouts(
        tmp_path: Path, start_run: Callable[..., Started],
        write_profile: Callable[[dict[str, Any], str], Path],
        record_property: Any) -> None:
    profile = unreachable_profile(tmp_path)
    path = write_profile(profile, "unreachable.yaml")
    planned = planned_checks(path)
    assert planned, "the plan runs no check: nothing would prove the run ends"
    s = profile["safety"]
    # a refused connect is immediate; the bound still allows every check a full connect timeout
    # plus the breaker's probe (at most 1 s)
    bound = STARTUP_S + len(planned) * (float(s["connect_timeout_s"]) + 1.0)
    run = start_run(path)
    code = run.wait(timeout=bound)
    elapsed = time.monotonic() - run.t0
    record_property("elapsed_s", round(elapsed, 1))
    print(f"unreachable: {len(planned)} checks in {elapsed:.1f} s (bound {bound:.0f} s)")
    assert code == 3, f"exit {code}{run.tails()}"
    assert "Traceback (most recent call last)" not in run.stderr, run.tails()
    results = run.results()
    assert results.get("complete") is True, run.tails()
    by_id = {c["nodeid"]: c for c in results["checks"]}
    assert not sorted(set(planned) - set(by_id)), "planned checks without a result"
    for nodeid in planned:
        check = by_id[nodeid]
        assert check["verdict"] == "ERROR", (nodeid, check["verdict"], check["reason"])
        assert check["reason"].strip(), f"{nodeid}: ERROR without a reason"
    breaker = [n for n in planned if "device unavailable, not tried" in by_id[n]["reason"]]
    # the first ERROR opens the breaker (nothing answers its probe): the others are not tried
    assert len(breaker) >= len(planned) - 1, {n: by_id[n]["reason"] for n in planned}
    assert (run.out / "junit.xml").exists()


# --------------------------------------------------------------------------- device dies
def test_device_dying_mid_run_trips_the_breaker(
        lab: Callable[..., Any], start_run: Callable[..., Started],
        record_property: Any) -> None:
    running = lab(["modbus_tcp", "ssh"])
    profile = running.profile()
    planned = planned_checks(running.profile_path)
    assert len(planned) >= 2, f"need checks before and after the kill, plan: {planned}"
    run = start_run(running.profile_path)
    evidence = run.out / "evidence"
    deadline = time.monotonic() + STARTUP_S + per_check_budget(profile)
    while time.monotonic() < deadline and run.proc.poll() is None:
        if evidence.is_dir() and any(evidence.iterdir()):
            break  # the first check is done
        time.sleep(0.05)
    assert run.proc.poll() is None, f"the run ended before the device could die{run.tails()}"
    killed_at = time.time()
    t_kill = time.monotonic()
    for sim in running.state["simulators"].values():
        pid = int(sim["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # the lab started them: reap them here
    # the check in progress may wait out its own timeouts; every later one is refused at once
    bound = per_check_budget(profile) + len(planned) * 2.0 + 10.0
    code = run.wait(timeout=bound)
    after_kill = time.monotonic() - t_kill
    record_property("seconds_after_kill", round(after_kill, 1))
    print(f"device died: run ended {after_kill:.1f} s after the kill (bound {bound:.0f} s)")
    assert code in (1, 3), f"exit {code}{run.tails()}"
    assert "Traceback (most recent call last)" not in run.stderr, run.tails()
    results = run.results()
    assert results.get("complete") is True and (run.out / "junit.xml").exists(), run.tails()
    checks = results["checks"]
    later = [c for c in checks if c["started"] and parse_time(c["started"]) >= killed_at]
    assert later, f"no check started after the kill: {[c['nodeid'] for c in checks]}"
    passed = [c["nodeid"] for c in later if c["verdict"] == "PASS"]
    assert not passed, f"checks PASSED after the device was killed: {passed}"
    for check in later:
        if check["nodeid"] in planned:
            assert check["verdict"] == "ERROR", (check["nodeid"], check["verdict"])
    refused = [c for c in later if "device unavailable, not tried" in c["reason"]]
    assert refused, {c["nodeid"]: c["reason"] for c in later}
    if code == 1:
        assert any(c["verdict"] == "FAIL" for c in checks)


# --------------------------------------------------------------------------- health probe
def test_health_probe_is_bounded_by_its_timeout(lab: Callable[..., Any]) -> None:
    from harness.health import endpoints, probe
    from harness.profile import load_profile
    from harness.safety import Guard

    running = lab(["hostile"], weaknesses=["hostile.slow_drip"])
    profile = load_profile(running.profile_path).profile
    guard = Guard(profile.allow_list(), allow_disruptive=False)
    timeout_s = 1.0
    # each endpoint may take its timeout once; the serial devices are only looked up
    bound = len(endpoints(profile)) * timeout_s + 1.0
    t0 = time.monotonic()
    result = probe(profile, guard, timeout_s)
    elapsed = time.monotonic() - t0
    print(f"probe of a slow-drip device: {elapsed:.1f} s (bound {bound:.0f} s): {result}")
    assert elapsed < bound, f"probe(timeout_s={timeout_s}) took {elapsed:.1f} s: {result}"


# --------------------------------------------------------------------------- interrupt
class HoldingProxy:
    """A Modbus/TCP proxy that holds the client's traffic after the first write went through.

    Everything is forwarded both ways; once a write request (FC 5, 6, 15, 16, 22, 23) has been
    forwarded and its reply returned, :attr:`written` is set and the next client frames wait for
    :attr:`release` (at most ``hold_s``). :attr:`frames` counts the client frames forwarded.

    :param target: the simulator's (host, port); the proxy listens on the same host (the lab's
        loopback address, the only one its profile allows).
    :param hold_s: the longest a frame is held (0: never hold).
    """

    def __init__(self, target: tuple[str, int], hold_s: float = 10.0) -> None:
        self.target = target
        self.hold_s = hold_s
        self.frames = 0
        self.listener = socket.create_server((target[0], 0))
        self.port = int(self.listener.getsockname()[1])
        self.written = threading.Event()
        self.release = threading.Event()
        self.stop = threading.Event()
        self._write_seen = threading.Event()
        self._socks: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.listener], [], [], 0.1)
            if not ready:
                continue
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                continue
            self._socks += [client, upstream]
            self._spawn(self._client_to_device, client, upstream)
            self._spawn(self._device_to_client, upstream, client)

    def _recv(self, sock: socket.socket) -> bytes:
        """Bytes from ``sock``; empty when it closed or the proxy stops."""
        while not self.stop.is_set():
            ready, _, _ = select.select([sock], [], [], 0.1)
            if ready:
                try:
                    return sock.recv(4096)
                except OSError:
                    return b""
        return b""

    def _client_to_device(self, client: socket.socket, upstream: socket.socket) -> None:
        buf = b""
        while data := self._recv(client):
            buf += data
            while len(buf) >= 8:
                length = struct.unpack(">H", buf[4:6])[0]
                if len(buf) < 6 + length:
                    break
                frame, buf = buf[: 6 + length], buf[6 + length :]
                if self.written.is_set() and self.hold_s:
                    self.release.wait(self.hold_s)
                with contextlib.suppress(OSError):
                    upstream.sendall(frame)
                self.frames += 1  # one writer per connection; a lost count only delays a wait
                if len(frame) > 7 and frame[7] in WRITE_FCS:
                    self._write_seen.set()
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)

    def _device_to_client(self, upstream: socket.socket, client: socket.socket) -> None:
        while data := self._recv(upstream):
            with contextlib.suppress(OSError):
                client.sendall(data)
            if self._write_seen.is_set():
                self.written.set()  # the write's reply is on its way back to the harness
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop forwarding, close every socket, join every thread."""
        self.stop.set()
        self.release.set()
        for sock in [self.listener, *self._socks]:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def holding_proxy() -> Iterator[Callable[..., HoldingProxy]]:
    """``holding_proxy((host, port), hold_s=10.0) -> HoldingProxy``; all closed at teardown."""
    proxies: list[HoldingProxy] = []

    def make(target: tuple[str, int], hold_s: float = 10.0) -> HoldingProxy:
        proxy = HoldingProxy(target, hold_s)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()


SCRATCH_HR, SCRATCH_COIL = 100, 100


def read_scratch(host: str, port: int) -> tuple[int, bool]:
    """The first scratch register and coil, read straight from the simulator."""
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient(host, port=port, timeout=3)
    try:
        assert client.connect(), f"cannot reach the simulator at {host}:{port}"
        hr = client.read_holding_registers(SCRATCH_HR, count=1, device_id=1)
        coil = client.read_coils(SCRATCH_COIL, count=1, device_id=1)
        assert not hr.isError() and not coil.isError(), (hr, coil)
        return int(hr.registers[0]), bool(coil.bits[0])
    finally:
        client.close()


def write_scratch(host: str, port: int, value: int, bit: bool) -> None:
    """Set the first scratch register and coil (the weak simulator takes unauthenticated
    writes)."""
    from pymodbus.client import ModbusTcpClient

    client = ModbusTcpClient(host, port=port, timeout=3)
    try:
        assert client.connect()
        assert not client.write_register(SCRATCH_HR, value, device_id=1).isError()
        assert not client.write_coil(SCRATCH_COIL, bit, device_id=1).isError()
    finally:
        client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupt_during_a_write_restores_and_marks_the_report_incomplete(
        signum: int, lab: Callable[..., Any], start_run: Callable[..., Started],
        holding_proxy: Callable[..., HoldingProxy],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    running = lab(["modbus_tcp"], weaknesses=["modbus.unauthenticated_writes"])
    ep = running.endpoints("modbus_tcp")["modbus"]
    host, port = ep["host"], int(ep["port"])
    profile = running.profile()
    scratch = [p for p in profile["points"]["scratch"] if p.get("table") == "holding"]
    assert scratch and scratch[0]["address"] == SCRATCH_HR, profile["points"]
    write_scratch(host, port, 4242, False)
    before = read_scratch(host, port)
    proxy = holding_proxy((host, port))
    profile["interfaces"]["modbus_tcp"]["port"] = proxy.port
    path = write_profile(profile, "via-proxy.yaml")
    run = start_run(path, k="test_plain_modbus_tcp_refuses_unauthenticated_writes")
    assert proxy.written.wait(STARTUP_S), f"the write check never wrote{run.tails()}"
    changed = read_scratch(host, port)
    assert changed != before, "the write did not change the device: nothing to restore"
    run.proc.send_signal(signum)
    t_signal = time.monotonic()
    time.sleep(0.3)  # the signal lands while the harness waits for its held read-back
    proxy.release.set()
    code = run.wait(timeout=EXIT_AFTER_SIGNAL_S)
    after_signal = time.monotonic() - t_signal
    print(f"{signal.Signals(signum).name}: exit {code} {after_signal:.1f} s after the signal")
    assert code != 0, f"an interrupted run exited 0{run.tails()}"
    assert code > 0, f"killed by signal {-code} instead of stopping{run.tails()}"
    assert "Traceback (most recent call last)" not in run.stderr, run.tails()
    results = run.results()
    assert results, f"no partial report{run.tails()}"
    assert results["complete"] is False
    (interrupted,) = results["checks"]  # the check in progress is in the report
    assert interrupted["verdict"] == "ERROR"
    assert interrupted["reason"].startswith("interrupted"), interrupted["reason"]
    assert read_scratch(host, port) == before, (
        f"scratch points not restored after {signal.Signals(signum).name}: "
        f"before {before}, changed to {changed}, now {read_scratch(host, port)}{run.tails()}"
    )


def group_alive(pgid: int) -> bool:
    """True while any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_interrupt_during_a_load_stops_it_at_once(
        lab: Callable[..., Any], start_run: Callable[..., Started],
        holding_proxy: Callable[..., HoldingProxy],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    running = lab(["modbus_tcp"])
    ep = running.endpoints("modbus_tcp")["modbus"]
    proxy = holding_proxy((ep["host"], int(ep["port"])), hold_s=0)
    profile = running.profile()
    profile["interfaces"]["modbus_tcp"]["port"] = proxy.port
    load_s = 60.0  # far longer than the run may take once interrupted
    profile["safety"].update(max_load_duration_s=load_s, max_request_rate=300)
    path = write_profile(profile, "long-load.yaml")
    run = start_run(path, k="test_modbus_request_flood")
    # the monitor's baseline is a few dozen reads; hundreds more mean the flood is on
    deadline = time.monotonic() + STARTUP_S + per_check_budget(profile)
    while proxy.frames < 600 and time.monotonic() < deadline and run.proc.poll() is None:
        time.sleep(0.05)
    assert proxy.frames >= 600, f"no flood seen ({proxy.frames} frames){run.tails()}"
    run.proc.send_signal(signal.SIGTERM)
    t_signal = time.monotonic()
    code = run.wait(timeout=EXIT_AFTER_SIGNAL_S)
    after_signal = time.monotonic() - t_signal
    print(f"SIGTERM during a {load_s:g} s load: exit {code} {after_signal:.1f} s after the signal")
    assert code > 0, f"exit {code}{run.tails()}"
    assert after_signal < load_s / 2, "the load ran on after the signal"
    # nothing of the run is left sending: no process in its group, no frame after it ended
    gone_by = time.monotonic() + 10
    while group_alive(run.proc.pid) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not group_alive(run.proc.pid), "processes of the run outlived it"
    frames = proxy.frames
    time.sleep(0.5)
    assert proxy.frames == frames, f"{proxy.frames - frames} frames after the run ended"
    results = run.results()
    assert results and results["complete"] is False, run.tails()
