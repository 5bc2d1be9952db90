"""Proof of the CR 7.2 slowloris check over Modbus/TCP, and of the generator's fresh-client probe.

The check FAILS on the lab with ``modbus.no_frame_timeout`` alone and PASSES on the hardened
lab (verdicts from ``harness run`` as a subprocess, with the evidence it leaves); the CR 7.2
connection-limit check runs beside it and PASSES on both (the weakness trips only its own
check). With a load-duration cap too short to see the bound pass, the check cannot decide:
ERROR. The generator's ``probe`` hook is tested against a simulator process with short
timeouts.

The SSH and OPC UA checks (:mod:`testcases.fr7.test_cr7_2_slowloris_ssh`,
:mod:`testcases.fr7.test_cr7_2_slowloris_opcua`, on the same :mod:`harness.load.slowloris`
core) FAIL on a lab with ``ssh.no_login_grace`` / ``opcua.no_hello_timeout`` alone and PASS on
the hardened one.
"""

from __future__ import annotations

import csv
import json
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.load.connflood import hold_connections
from harness.safety import Guard

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
SLOWLORIS = "test_modbus_tcp_drops_held_half_open_connections"
LIMIT = "test_modbus_tcp_limits_connections"
K = f"{SLOWLORIS} or {LIMIT}"
WEAKNESS = "modbus.no_frame_timeout"


def _judgement(run: Any) -> dict[str, Any]:
    (check,) = run.checks(f"::{SLOWLORIS}")
    notes = [o["data"] for o in check["observations"] if o.get("summary") == "judgement"]
    assert notes, f"no judgement note in {check['observations'][-5:]}"
    data: dict[str, Any] = notes[-1]
    return data


def _events(run: Any) -> list[dict[str, str]]:
    (check,) = run.checks(f"::{SLOWLORIS}")
    paths = [run.out / p for p in check["evidence"] if p.endswith("slowloris-events.csv")]
    assert paths, f"no event timeline in {check['evidence']}"
    with paths[0].open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _explain(run: Any) -> str:
    return f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-2000:]}"


def test_hardened_device_drops_held_connections_and_serves_fresh_clients(
        lab: Callable[..., Any], run_harness: Callable[..., Any]) -> None:
    running = lab(["modbus_tcp"])
    run = run_harness(running.profile_path, k=K)
    assert run.verdict(SLOWLORIS) == "PASS", run.reason(SLOWLORIS) + _explain(run)
    assert run.verdict(LIMIT) == "PASS", run.reason(LIMIT)
    assert run.code == 0
    got = _judgement(run)
    # the hold filled the device: some connections were refused at once, the others were
    # held until the device timed them out, and a fresh client got in once they were gone
    assert got["accepted"] == got["held_requested"] > 0
    assert got["closed_at_once"] > 0
    assert got["freed_in_time"] and all(s <= got["bound_s"] for s in got["freed_in_time"])
    assert got["kept_open"] == [] and got["freed_late"] == []
    assert got["fresh_served"] > 0 and got["fresh_refused_past_bound"] == 0
    assert got["monitor_ok"] is True and got["served_after_hold"] is True
    events = [e["event"] for e in _events(run)]
    assert "closed by the device (timed out)" in events
    first_served = events.index("fresh client served")
    assert "fresh client refused" in events[:first_served], "the hold never filled the device"
    assert events.index("closed by the device (timed out)") < first_served


def test_no_frame_timeout_fails_and_too_short_a_hold_is_an_error(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    limit = 6
    running = lab(["modbus_tcp"], weaknesses=[WEAKNESS], policy={"connection_limit": limit})
    run = run_harness(running.profile_path, k=K)
    assert run.verdict(SLOWLORIS) == "FAIL", run.reason(SLOWLORIS) + _explain(run)
    assert run.verdict(LIMIT) == "PASS", run.reason(LIMIT)  # the limit itself still holds
    assert run.code == 1
    reason = run.reason(SLOWLORIS)
    assert "still open" in reason and "fresh clients were still refused" in reason
    got = _judgement(run)
    # the monitor holds one slot; the held connections took every other one and kept them
    assert 0 < len(got["kept_open"]) < limit
    assert all(s > got["bound_s"] for s in got["kept_open"])
    assert got["freed_in_time"] == []
    assert got["fresh_served"] == 0 and got["fresh_refused_past_bound"] > 0
    assert got["served_after_hold"] is True  # the device recovers once the holder leaves
    events = _events(run)
    during = [e["event"] for e in events if e["event"].startswith("fresh client")]
    assert during and set(during) == {"fresh client refused"}
    ended = next(e for e in events if e["event"] == "hold ended")
    assert ended["held_open"] == "0" and ended["detail"].startswith(f"{len(got['kept_open'])} ")
    assert "after the hold: fresh client served" in [e["event"] for e in events]

    # a 1 s cap cannot show the 2.5 s bound passing: neither PASS nor FAIL
    data = running.profile()
    data["safety"]["max_load_duration_s"] = 1.0
    short = run_harness(write_profile(data, "short.yaml"), k=SLOWLORIS)
    assert short.verdict(SLOWLORIS) == "ERROR", short.reason(SLOWLORIS)
    assert "too short to judge" in short.reason(SLOWLORIS)
    assert short.code == 3


# --------------------------------------------------------------------------- the generator
@pytest.fixture
def simulator() -> Iterator[Callable[..., dict[str, Any]]]:
    """``simulator(*args) -> Modbus endpoint``: a Modbus/TCP simulator process, stopped at
    teardown (SIGTERM, then kill)."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> dict[str, Any]:
        proc = subprocess.Popen([sys.executable, "-m", "simulators.modbus_tcp", *args],
                                cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        event = json.loads(proc.stdout.readline())
        assert event["event"] == "ready", event
        ep: dict[str, Any] = event["endpoints"]["modbus"]
        return ep

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _served(ep: dict[str, Any]) -> Callable[[], bool]:
    """A fresh client: connect, read HR 0, True when answered."""

    def probe() -> bool:
        try:
            with socket.create_connection((ep["host"], ep["port"]), timeout=2.0) as sock:
                sock.sendall(struct.pack(">HHHBBHH", 9, 0, 6, ep["unit"], 3, 0, 1))
                return len(sock.recv(64)) >= 9
        except OSError:
            return False

    return probe


@pytest.mark.parametrize("weak", [False, True], ids=["hardened", "no_frame_timeout"])
def test_hold_connections_probes_fresh_clients(simulator: Callable[..., dict[str, Any]],
                                               tmp_path: Path, weak: bool) -> None:
    config = tmp_path / "sim.json"
    config.write_text(json.dumps({"connection_limit": 3}))
    ep = simulator("--config", str(config), "--frame-timeout-s", "0.4",
                   *(["--weakness", WEAKNESS] if weak else []))
    result = hold_connections(ep["host"], ep["port"], guard=Guard([ep["host"]]), count=4,
                              connection_rate=100, hold_s=1.5, probe=_served(ep),
                              probe_every_s=0.1)
    details = result.details
    probes = details["probes"]
    assert result.answered == 4 and len(details["held_log"]) == 4
    assert details["established_s"] is not None
    assert probes and all(t >= details["established_s"] for t, _, _ in probes)
    # one connection beyond the device's limit of 3 is closed at once
    closed = [c for _, c in details["held_log"] if c is not None]
    if weak:
        assert len(closed) == 1 and details["still_open_at_end"] == 3
        assert not any(served for _, served, _ in probes)
        assert all(held >= 3 for _, _, held in probes) and probes[-1][2] == 3
    else:
        assert len(closed) == 4 and details["still_open_at_end"] == 0
        outcomes = [served for _, served, _ in probes]
        assert outcomes[0] is False, "the device was not full when the hold was established"
        assert True in outcomes, "no fresh client got in after the held connections were freed"
        assert outcomes.index(True) > 0


# --------------------------------------------------------------------------- the SSH check
SSH_SLOWLORIS = "test_ssh_drops_connections_held_before_key_exchange"
SSH_WEAKNESS = "ssh.no_login_grace"


def _check_evidence(run: Any, name: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The ``judgement`` note and the ``slowloris-events.csv`` rows of check ``name``."""
    (check,) = run.checks(f"::{name}")
    notes = [o["data"] for o in check["observations"] if o.get("summary") == "judgement"]
    assert notes, f"no judgement note in {check['observations'][-5:]}"
    paths = [run.out / p for p in check["evidence"] if p.endswith("slowloris-events.csv")]
    assert paths, f"no event timeline in {check['evidence']}"
    with paths[0].open(encoding="utf-8") as fh:
        return notes[-1], list(csv.DictReader(fh))


def test_ssh_hardened_drops_held_handshakes_and_serves_fresh_clients(
        lab: Callable[..., Any], run_harness: Callable[..., Any]) -> None:
    running = lab(["ssh"])
    run = run_harness(running.profile_path, k=SSH_SLOWLORIS)
    assert run.verdict(SSH_SLOWLORIS) == "PASS", run.reason(SSH_SLOWLORIS) + _explain(run)
    assert run.code == 0
    got, events = _check_evidence(run, SSH_SLOWLORIS)
    # the held handshakes filled the simulator's cap (more were closed at once), the grace
    # timer closed the others, and fresh clients were served once they were gone
    assert got["accepted"] == got["held_requested"] > 0
    assert got["closed_at_once"] > 0
    assert got["freed_in_time"] and all(s <= got["bound_s"] for s in got["freed_in_time"])
    assert got["kept_open"] == [] and got["freed_late"] == []
    assert got["fresh_served"] > 0 and got["fresh_refused_past_bound"] == 0
    assert got["served_after_hold"] is True
    names = [e["event"] for e in events]
    first_served = names.index("fresh client served")
    assert "fresh client refused" in names[:first_served], "the hold never filled the device"
    served = next(e for e in events if e["event"] == "fresh client served")
    assert served["detail"].startswith("identification SSH-2.0-")


def test_ssh_no_login_grace_fails(lab: Callable[..., Any],
                                  run_harness: Callable[..., Any]) -> None:
    running = lab(["ssh"], weaknesses=[SSH_WEAKNESS])
    run = run_harness(running.profile_path, k=SSH_SLOWLORIS)
    assert run.verdict(SSH_SLOWLORIS) == "FAIL", run.reason(SSH_SLOWLORIS) + _explain(run)
    assert run.code == 1
    reason = run.reason(SSH_SLOWLORIS)
    assert reason.startswith("under held pre-handshake SSH connections")
    assert "an unfinished identification line" in reason
    assert "fresh clients were still refused" in reason
    got, events = _check_evidence(run, SSH_SLOWLORIS)
    assert got["kept_open"] and all(s > got["bound_s"] for s in got["kept_open"])
    assert got["freed_in_time"] == []
    assert got["fresh_served"] == 0 and got["fresh_refused_past_bound"] > 0
    assert got["served_after_hold"] is True  # the device recovers once the holder leaves
    during = {e["event"] for e in events if e["event"].startswith("fresh client")}
    assert during == {"fresh client refused"}


# --------------------------------------------------------------------------- the OPC UA check
OPCUA_SLOWLORIS = "test_opcua_drops_connections_held_before_hello"
OPCUA_WEAKNESS = "opcua.no_hello_timeout"


def test_opcua_hardened_drops_held_hellos_and_serves_fresh_clients(
        lab: Callable[..., Any], run_harness: Callable[..., Any]) -> None:
    running = lab(["opcua"])
    run = run_harness(running.profile_path, k=OPCUA_SLOWLORIS)
    assert run.verdict(OPCUA_SLOWLORIS) == "PASS", run.reason(OPCUA_SLOWLORIS) + _explain(run)
    assert run.code == 0
    got, events = _check_evidence(run, OPCUA_SLOWLORIS)
    assert got["accepted"] == got["held_requested"] > 0
    assert got["closed_at_once"] > 0
    assert got["freed_in_time"] and all(s <= got["bound_s"] for s in got["freed_in_time"])
    assert got["kept_open"] == [] and got["freed_late"] == []
    assert got["fresh_served"] > 0 and got["fresh_refused_past_bound"] == 0
    assert got["monitor_ok"] is True and got["served_after_hold"] is True
    names = [e["event"] for e in events]
    first_served = names.index("fresh client served")
    assert "fresh client refused" in names[:first_served], "the hold never filled the device"
    assert names.index("closed by the device (timed out)") < first_served
    served = next(e for e in events if e["event"] == "fresh client served")
    assert served["detail"] == "answered b'ACKF'"


def test_opcua_no_hello_timeout_fails(lab: Callable[..., Any],
                                      run_harness: Callable[..., Any]) -> None:
    running = lab(["opcua"], weaknesses=[OPCUA_WEAKNESS])
    run = run_harness(running.profile_path, k=OPCUA_SLOWLORIS)
    assert run.verdict(OPCUA_SLOWLORIS) == "FAIL", run.reason(OPCUA_SLOWLORIS) + _explain(run)
    assert run.code == 1
    reason = run.reason(OPCUA_SLOWLORIS)
    assert reason.startswith("under held pre-Hello OPC UA connections")
    assert "the rest of an unfinished Hello" in reason
    assert "fresh clients were still refused" in reason
    got, events = _check_evidence(run, OPCUA_SLOWLORIS)
    assert got["kept_open"] and all(s > got["bound_s"] for s in got["kept_open"])
    assert got["freed_in_time"] == []
    assert got["fresh_served"] == 0 and got["fresh_refused_past_bound"] > 0
    assert got["served_after_hold"] is True  # the device recovers once the holder leaves
    during = {e["event"] for e in events if e["event"].startswith("fresh client")}
    assert during == {"fresh client refused"}
