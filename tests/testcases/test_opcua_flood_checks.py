"""Proof of the OPC UA flood checks (CR 7.1): FAIL on ``load.fragile``, PASS on hardened, ERROR
when the endpoint cannot be reached.

The labs run the ``opcua`` simulator alone; verdicts come from ``harness run`` as a subprocess
(results.json), with the profile's load duration cut to 1.5 s to keep this short. The fragile
simulator starves its scan cycle past 150 counted requests per second (CreateSession and Read
count) for 3 s, longer than the profile's ``recovery_wait_s`` (2 s).
"""

from __future__ import annotations

import csv
import io
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

CHECKS = ("test_opcua_channel_and_session_floods", "test_opcua_read_flood")
K = "opcua_floods"


def _short_profile(running: Any, write_profile: Callable[..., Path], **changes: Any) -> Path:
    data = running.profile()
    data["safety"]["max_load_duration_s"] = 1.5
    for key, value in changes.items():
        data["interfaces"]["opcua"][key] = value
    return write_profile(data)


def _results(run: Any) -> dict[str, dict[str, Any]]:
    found = {c["nodeid"].split("::")[-1]: c for c in run.checks("test_cr7_1_opcua_floods")}
    assert sorted(found) == sorted(CHECKS), (
        f"checks run: {sorted(found)}\nstdout:\n{run.stdout[-3000:]}\n"
        f"stderr:\n{run.stderr[-2000:]}")
    return found


def _monitor_rows(run: Any, check: dict[str, Any]) -> list[dict[str, str]]:
    paths = [run.out / p for p in check["evidence"] if p.endswith("monitor.csv")]
    assert paths, f"no monitor.csv in {check['evidence']}"
    return list(csv.DictReader(io.StringIO(paths[0].read_text())))


def test_floods_pass_on_the_hardened_lab(lab: Callable[..., Any],
                                         run_harness: Callable[..., Any],
                                         write_profile: Callable[..., Path]) -> None:
    running = lab(["opcua"])
    run = run_harness(_short_profile(running, write_profile), k=K)
    got = _results(run)
    assert {n: c["verdict"] for n, c in got.items()} == dict.fromkeys(CHECKS, "PASS"), {
        n: c["reason"] for n, c in got.items()}
    assert run.code == 0
    # the PASS rests on observation: the monitor read the heartbeat during each flood
    rows = _monitor_rows(run, got["test_opcua_channel_and_session_floods"])
    phases = {r["phase"] for r in rows}
    assert {"load:opcua_channel_flood", "load:opcua_session_flood"} <= phases
    during = [r for r in rows if r["phase"] == "load:opcua_session_flood"]
    assert during and all(r["ok"] == "1" for r in during)
    assert len({r["value"] for r in during}) > 5  # the heartbeat kept counting


def test_floods_fail_on_a_fragile_device(lab: Callable[..., Any],
                                         run_harness: Callable[..., Any],
                                         write_profile: Callable[..., Path]) -> None:
    running = lab(["opcua"], weaknesses=["load.fragile"])
    run = run_harness(_short_profile(running, write_profile), k=K)
    got = _results(run)
    reasons = {n: c["reason"] for n, c in got.items()}
    assert {n: c["verdict"] for n, c in got.items()} == dict.fromkeys(CHECKS, "FAIL"), reasons
    assert run.code == 1
    # each connection costs the fragile simulator a request: the channel phase starves it
    assert "secure-channel flood" in reasons["test_opcua_channel_and_session_floods"]
    for reason in reasons.values():
        assert "stood still" in reason
    rows = _monitor_rows(run, got["test_opcua_read_flood"])
    during = [r for r in rows if r["phase"] == "load:opcua_read_flood"]
    # reads are answered in time, with a value that stands still: the monitor says stalled
    assert during and any(r["error"].startswith("stalled") for r in during), during[-3:]
    assert all(r["error"] == "" or r["error"].startswith("stalled") for r in during)
    assert len({r["value"] for r in during}) < len(during) / 4


def test_an_unreachable_endpoint_is_an_error(lab: Callable[..., Any],
                                             run_harness: Callable[..., Any],
                                             write_profile: Callable[..., Path]) -> None:
    running = lab(["opcua"])
    host = running.endpoints("opcua")["opcua"]["host"]
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind((host, 0))
        dead = sock.getsockname()[1]
    url = f"opc.tcp://{host}:{dead}/harness/plc"
    run = run_harness(_short_profile(running, write_profile, endpoint=url), k=K)
    got = _results(run)
    reasons = {n: c["reason"] for n, c in got.items()}
    assert {n: c["verdict"] for n, c in got.items()} == dict.fromkeys(CHECKS, "ERROR"), reasons
    assert all(str(dead) in r for r in reasons.values()), reasons
    assert run.code == 3
