"""A hostile device never gets a PASS, a hang, a crash or unbounded memory out of the harness.

For each behaviour of the hostile simulator (``simulators/hostile.py``: garbage, lying length
fields, huge and endless replies, slow-drip replies) a lab with only that simulator is brought
up, and ``harness run --allow-disruptive`` runs *every* check against it, as a user would. Then:

- the run ends within a bound derived from the profile's timeouts and the number of checks that
  run (a run still going at the bound is killed and reported as a hang);
- the exit code is 1 or 3 (never 0 "all PASS", never 2 "usage"), with no traceback on stderr;
- no check PASSes: a check that could not observe a sane device must not pass;
- ``results.json`` (complete) and ``junit.xml`` are written, with one result for every check the
  plan said would run, each ERROR or FAIL with its reason;
- the peak RSS of the harness process (``wait4`` rusage: the process and the children it
  reaped, such as the load monitor) stays under :data:`MAX_RSS_MB`.

The four runs go in parallel (each against its own simulator process), so the module costs about
as long as the slowest run rather than the sum. The labs are started with
:func:`harness.lab.lab_up` directly, as the ``lab`` fixture does, because one module-scoped set
of runs is shared by every assertion below.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
WEAKNESSES = ["hostile.garbage", "hostile.lying_length", "hostile.huge", "hostile.slow_drip"]
#: Seconds for interpreter start, collection, lab profile loading and the report.
STARTUP_S = 30.0
#: Peak RSS allowed to a run (MB): generous; a harness that buffers a hostile stream blows it.
MAX_RSS_MB = 400
#: Safety figures written into each hostile lab's profile (seconds).
FAST_SAFETY = {
    "connect_timeout_s": 1,
    "request_timeout_s": 1,
    "recovery_wait_s": 1,
    "max_load_duration_s": 1,
}
#: Verdicts a check may get from a hostile device.
ALLOWED = {"ERROR", "FAIL", "NOT APPLICABLE", "NOT RUN"}

#: The module-scoped fixture runs 4 full runs at once; each is killed at its own bound (see
#: run_bound, which grows with the number of checks), so pytest-timeout is only a backstop.
pytestmark = pytest.mark.timeout(3600)


def run_bound(profile: dict[str, Any], checks: int) -> float:
    """Seconds a whole run may take: startup plus, per check that runs, a load at its duration
    cap, the recovery wait, and four connect-or-request timeouts."""
    s = profile["safety"]
    per_check = (
        float(s["max_load_duration_s"])
        + float(s["recovery_wait_s"])
        + 4 * max(float(s["connect_timeout_s"]), float(s["request_timeout_s"]))
    )
    return STARTUP_S + checks * per_check


def harness(*args: str) -> list[str]:
    """The ``harness`` command line in this interpreter."""
    return [sys.executable, "-m", "harness.cli", *args]


def planned_checks(profile_path: Path) -> list[str]:
    """Node ids of the checks ``harness plan`` says will run (the plan sends nothing)."""
    proc = subprocess.run(
        harness("plan", "--json", "--allow-disruptive", str(profile_path)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout)
    return [c["nodeid"] for r in plan["requirements"] for c in r["checks"] if c["runs"]]


@dataclass
class Run:
    """One ``harness run`` against a hostile lab, measured."""

    weakness: str
    planned: list[str]
    bound_s: float
    out: Path
    #: Exit code; None when the run was still going at the bound (killed: a hang).
    code: int | None = None
    elapsed_s: float = 0.0
    #: Peak RSS of the harness process and the children it reaped (KiB, Linux).
    maxrss_kb: int = 0
    stdout: str = ""
    stderr: str = ""

    @property
    def results(self) -> dict[str, Any]:
        """results.json ({} when missing)."""
        path = self.out / "results.json"
        data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        return data

    def context(self) -> str:
        """Output tails for an assertion message."""
        return (
            f"\n[{self.weakness}] exit {self.code}, {self.elapsed_s:.1f} s "
            f"(bound {self.bound_s:.0f} s)\nstdout:\n{self.stdout[-3000:]}"
            f"\nstderr:\n{self.stderr[-3000:]}"
        )


class Measured:
    """A ``harness run`` subprocess reaped with ``os.wait4`` (exit status and rusage)."""

    def __init__(self, run: Run, profile_path: Path, logs: Path) -> None:
        self.run = run
        self.stdout_path = logs / f"{run.weakness}.stdout"
        self.stderr_path = logs / f"{run.weakness}.stderr"
        cmd = harness("run", "--out", str(run.out), "--allow-disruptive", str(profile_path))
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env={**os.environ, "CI": "true"},
                start_new_session=True,
            )
        self.t0 = time.monotonic()
        self.done = False

    def poll(self) -> bool:
        """Reap the process if it ended, or kill it (and its group) at the bound."""
        if self.done:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        elapsed = time.monotonic() - self.t0
        if pid == 0:
            if elapsed < self.run.bound_s:
                return False
            self.kill()
            pid, status, usage = os.wait4(self.proc.pid, 0)
            self.run.code = None
        else:
            self.run.code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        self.run.elapsed_s = elapsed
        self.run.maxrss_kb = usage.ru_maxrss
        self.run.stdout = self.stdout_path.read_text(errors="replace")
        self.run.stderr = self.stderr_path.read_text(errors="replace")
        self.done = True
        return True

    def kill(self) -> None:
        """SIGKILL the run's whole process group (the run and its load monitor)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def hostile_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every hostile behaviour's run, done in parallel once for the module."""
    from harness.lab import LabDefinition, lab_down, lab_up

    base = tmp_path_factory.mktemp("hostile")
    states: list[Path] = []
    running: list[Measured] = []
    runs: dict[str, Run] = {}
    try:
        for weakness in WEAKNESSES:
            name = weakness.split(".", 1)[1]
            definition = LabDefinition.model_validate(
                {"name": f"hostile-{name}", "simulators": ["hostile"], "weaknesses": [weakness]}
            )
            state_dir = base / f"lab-{name}"
            lab_up(definition, state_dir)
            states.append(state_dir)
            profile_path = state_dir / "profile.yaml"
            profile = yaml.safe_load(profile_path.read_text())
            # Short timeouts and loads: a hostile device is judged by what the harness does
            # with its answers, and each check's time is bounded by these figures.
            profile["safety"].update(FAST_SAFETY)
            profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
            planned = planned_checks(profile_path)
            run = Run(weakness, planned, run_bound(profile, len(planned)), base / f"out-{name}")
            runs[weakness] = run
            running.append(Measured(run, profile_path, base))
        while not all(m.poll() for m in running):
            time.sleep(0.2)
        yield runs
    finally:
        for m in running:
            if not m.done:
                m.kill()
                m.poll()
        for state_dir in states:
            if (state_dir / "state.json").exists():
                lab_down(state_dir)


@pytest.fixture(params=WEAKNESSES)
def run(request: pytest.FixtureRequest, hostile_runs: dict[str, Run]) -> Run:
    """The run of one hostile behaviour."""
    return hostile_runs[request.param]


def test_some_checks_ran(run: Run) -> None:
    # the hostile lab declares every interface, so a run that tries nothing proves nothing
    assert run.planned, "the plan runs no check against the hostile lab"


def test_run_ends_within_its_bound(run: Run) -> None:
    assert run.code is not None, (
        f"harness run did not finish within {run.bound_s:.0f} s "
        f"({len(run.planned)} checks): a hang{run.context()}"
    )
    assert run.elapsed_s < run.bound_s, run.context()


def test_exit_code_is_error_or_fail_without_a_crash(run: Run) -> None:
    assert run.code in (1, 3), f"exit code {run.code}{run.context()}"
    assert "Traceback (most recent call last)" not in run.stderr, run.context()
    assert "INTERNALERROR" not in run.stdout + run.stderr, run.context()


def test_no_check_passes(run: Run) -> None:
    checks = run.results.get("checks", [])
    passed = [c["nodeid"] for c in checks if c["verdict"] == "PASS"]
    assert not passed, f"checks PASSED against a hostile device ({run.weakness}): {passed}"
    odd = {c["nodeid"]: c["verdict"] for c in checks if c["verdict"] not in ALLOWED}
    assert not odd, odd


def test_every_planned_check_has_a_reasoned_verdict(run: Run) -> None:
    results = run.results
    assert results, f"no results.json{run.context()}"
    assert results["complete"] is True
    by_id = {c["nodeid"]: c for c in results["checks"]}
    missing = sorted(set(run.planned) - set(by_id))
    assert not missing, f"checks the plan ran have no result: {missing}{run.context()}"
    for nodeid in run.planned:
        check = by_id[nodeid]
        assert check["verdict"] in ("ERROR", "FAIL"), (nodeid, check["verdict"])
        assert check["reason"].strip(), f"{nodeid}: {check['verdict']} without a reason"


def test_junit_written_with_no_passed_testcase(run: Run) -> None:
    path = run.out / "junit.xml"
    assert path.exists(), run.context()
    root = ET.parse(path).getroot()  # noqa: S314 (the harness's own report, not device data)
    cases = list(root.iter("testcase"))
    assert len(cases) == len(run.results["checks"])
    passed = [
        c.get("name")
        for c in cases
        if not any(child.tag in ("error", "failure", "skipped") for child in c)
    ]
    assert not passed, f"junit.xml reports passed testcases: {passed}"


def test_peak_rss_is_bounded(run: Run, record_property: Any) -> None:
    rss_mb = run.maxrss_kb / 1024
    record_property("peak_rss_mb", round(rss_mb, 1))
    record_property("elapsed_s", round(run.elapsed_s, 1))
    print(
        f"{run.weakness}: peak RSS {rss_mb:.1f} MB, {run.elapsed_s:.1f} s "
        f"(bound {run.bound_s:.0f} s, {len(run.planned)} checks), exit {run.code}"
    )
    assert run.maxrss_kb > 0, "no rusage measured"
    assert rss_mb < MAX_RSS_MB, f"peak RSS {rss_mb:.1f} MB{run.context()}"
