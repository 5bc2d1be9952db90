"""``harness run --monitor``: the essential function watched for the whole run, per check.

Proved on a real lab: on the hardened Modbus/TCP simulator every sample is within bounds; with
``modbus.crash_on_malformed`` the input-validation check kills the device, and the run monitor
names that check as the one during which the heartbeat was lost, without changing any verdict.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

#: A quick Modbus check, the check that crashes the weak device, and one that runs after it.
CHECKS = "input_validation_modbus or unit_id or least_functionality_modbus"


def _run(lab: Callable[..., Any], run_harness: Callable[..., Any],
         weaknesses: list[str]) -> Any:
    env = lab(simulators=["modbus_tcp"], weaknesses=weaknesses)
    return run_harness(env.profile_path, k=CHECKS, extra=("--monitor-run",))


def test_hardened_run_is_within_bounds_throughout(lab: Callable[..., Any],
                                                  run_harness: Callable[..., Any]) -> None:
    result = _run(lab, run_harness, [])
    assert result.code == 0, result.stdout[-3000:]
    section = result.results["monitor"]
    (probe,) = section["probes"].values()
    assert probe["samples"] > 10 and probe["failed"] == 0
    assert section["checks_out_of_bounds"] == [] and section["between_checks"] == []
    assert all(c["monitor"] == {} for c in result.results["checks"])
    assert "Within bounds during every check." in (result.out / "report.html").read_text()
    assert "essential function:" in result.stdout and "0 out of bounds" in result.stdout
    with (result.out / section["timeline"]).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == section["samples"]
    phases = {r["phase"] for r in rows}
    ran = {c["nodeid"] for c in result.results["checks"] if c["verdict"] != "NOT APPLICABLE"}
    assert ran & phases, "no sample is attributed to a check that ran"
    # the monitor works in a private folder: its config (which may hold a password) stays out
    assert not list(result.out.rglob("monitor-config.json"))


def test_the_check_that_kills_the_device_is_named(lab: Callable[..., Any],
                                                   run_harness: Callable[..., Any]) -> None:
    result = _run(lab, run_harness, ["modbus.crash_on_malformed"])
    checks = {c["nodeid"].rsplit("::", 1)[-1]: c for c in result.results["checks"]}
    crasher = next(c for c in result.results["checks"]
                   if "input_validation" in c["nodeid"] and c["verdict"] == "FAIL")
    section = result.results["monitor"]
    assert crasher["nodeid"] in section["checks_out_of_bounds"]
    (figures,) = crasher["monitor"].values()
    assert figures["failed"] >= 1
    # the heartbeat stays lost after that check: every later check ran with a dead device
    (probe,) = section["probes"].values()
    assert probe["failed"] >= figures["failed"]
    assert "out of bounds" in result.stdout and crasher["nodeid"] in result.stdout
    html = (result.out / "report.html").read_text()
    assert "Essential function over the whole run" in html
    assert "Out of bounds while these checks ran" in html and crasher["nodeid"] in html
    # observing is not judging: the verdicts are those the checks reached themselves
    assert all(c["verdict"] in {"PASS", "FAIL", "ERROR", "NOT APPLICABLE", "NOT RUN"}
               for c in checks.values())
