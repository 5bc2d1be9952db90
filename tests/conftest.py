"""Fixtures shared by the harness's own tests.

- ``lab``: a factory that brings up a bundled-simulator lab (only the simulators asked for, with
  single weaknesses switched on) and tears every lab down at the end of the test;
- ``run_harness``: runs ``harness run`` as a real subprocess against a profile and returns the
  exit code, the parsed results.json and the output, so tests assert on verdicts the way a user
  would see them;
- ``write_profile``: writes a profile YAML (from a dict) into the test's temp folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Lab:
    """A running lab."""

    state: dict[str, Any]
    state_dir: Path

    @property
    def profile_path(self) -> Path:
        """The generated device profile."""
        return self.state_dir / "profile.yaml"

    def profile(self) -> dict[str, Any]:
        """The generated profile as a dict (to derive variants from)."""
        data: dict[str, Any] = yaml.safe_load(self.profile_path.read_text())
        return data

    def endpoints(self, simulator: str) -> dict[str, Any]:
        """A simulator's ready-line endpoints."""
        eps: dict[str, Any] = self.state["simulators"][simulator]["endpoints"]
        return eps


@pytest.fixture
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Lab]]:
    """``lab(simulators=[...], weaknesses=[...], posture="hardened", policy={...})``."""
    from harness.lab import LabDefinition, lab_down, lab_up

    started: list[Path] = []

    def start(
        simulators: list[str],
        weaknesses: list[str] | None = None,
        posture: str = "hardened",
        policy: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> Lab:
        definition = LabDefinition.model_validate(
            {
                "name": "test",
                "posture": posture,
                "simulators": simulators,
                "weaknesses": weaknesses or [],
                "policy": policy or {},
                **overrides,
            }
        )
        state_dir = tmp_path_factory.mktemp("lab") / "state"
        state = lab_up(definition, state_dir)
        started.append(state_dir)
        return Lab(state, state_dir)

    yield start
    for state_dir in started:
        if (state_dir / "state.json").exists():
            lab_down(state_dir)


@dataclass
class RunResult:
    """What ``harness run`` produced."""

    code: int
    stdout: str
    stderr: str
    out: Path
    results: dict[str, Any] = field(default_factory=dict)

    def checks(self, contains: str = "") -> list[dict[str, Any]]:
        """Results of the checks whose node id contains ``contains``."""
        return [c for c in self.results.get("checks", []) if contains in c["nodeid"]]

    def verdict(self, contains: str) -> str:
        """The verdict of the one check whose node id contains ``contains``."""
        found = self.checks(contains)
        assert len(found) == 1, (
            f"expected one check matching {contains!r}, got {[c['nodeid'] for c in found]}\n"
            f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"
        )
        return str(found[0]["verdict"])

    def verdicts(self) -> dict[str, str]:
        """Node id -> verdict."""
        return {c["nodeid"]: c["verdict"] for c in self.results.get("checks", [])}

    def protocol_verdicts(self, protocol: str) -> dict[str, str]:
        """Check function name -> verdict, for the checks in modules named ``*_PROTOCOL.py``;
        at least one must have run (else the output tail says why)."""
        found = {
            nodeid.split("::")[-1]: v
            for nodeid, v in self.verdicts().items()
            if f"_{protocol}.py::" in nodeid
        }
        assert found, f"no {protocol} checks ran:\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"
        return found

    def reason(self, name: str) -> str:
        """The verdict reason of the one check whose function is ``name``."""
        (check,) = self.checks(f"::{name}")
        return str(check["reason"])


def harness_cmd(*args: str) -> list[str]:
    """The command line of ``harness`` in this interpreter."""
    return [sys.executable, "-m", "harness.cli", *args]


@pytest.fixture
def run_harness(tmp_path: Path) -> Callable[..., RunResult]:
    """``run_harness(profile, k=None, allow_disruptive=True, extra=(), timeout=300)``."""
    counter = iter(range(1000))

    def run(
        profile: Path | str,
        k: str | None = None,
        *,
        allow_disruptive: bool = True,
        extra: tuple[str, ...] = (),
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> RunResult:
        out = tmp_path / f"run{next(counter)}"
        cmd = harness_cmd("run", str(profile), "--out", str(out))
        if allow_disruptive:
            cmd.append("--allow-disruptive")
        if k:
            cmd += ["-k", k]
        if extra:
            cmd += ["--", *extra]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
            env={**os.environ, "CI": "true", **(env or {})},
            check=False,
        )
        results = {}
        if (out / "results.json").exists():
            results = json.loads((out / "results.json").read_text())
        return RunResult(proc.returncode, proc.stdout, proc.stderr, out, results)

    return run


@pytest.fixture
def write_profile(tmp_path: Path) -> Callable[[dict[str, Any], str], Path]:
    """Write ``data`` as YAML to ``tmp_path/name`` and return the path."""

    def write(data: dict[str, Any], name: str = "profile.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def _answer_modbus(listener: socket.socket) -> None:
    """A fake device: answers every Modbus request with one register read reply."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                while header := conn.recv(7):
                    if len(header) < 7:
                        break
                    conn.recv(int.from_bytes(header[4:6], "big") - 1)
                    conn.sendall(header[:4] + b"\x00\x05" + header[6:7] + b"\x03\x02\x00\x2a")
            except OSError:
                continue


@pytest.fixture(scope="session")
def fake_modbus_port() -> Iterator[int]:
    """A listening fake device that answers the health probe's Modbus read."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    thread = threading.Thread(target=_answer_modbus, args=(listener,), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- parallel runs
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "spread: independent test that may run on any xdist worker (no shared fixture)"
    )
    config.addinivalue_line("markers", "xdist_group(name): run on one xdist worker with its group")


def pytest_itemcollected(item: pytest.Item) -> None:
    """Keep each module on one worker (its module-scoped labs and runs are built once), except
    the tests marked ``spread``, which xdist may hand to any worker. Marked as each item is
    collected, so xdist's ``loadgroup`` scheduling (at the end of collection) always sees it."""
    if item.get_closest_marker("spread") or item.get_closest_marker("xdist_group"):
        return
    item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


#: Test groups that take minutes, started first so that no worker begins one near the end of a
#: parallel run (xdist hands out groups in collection order).
LONG_GROUPS = (
    "tests/test_hostile_device.py",
    "tests/testcases/test_load_checks.py",
    "matrix-hardened-",
    "tests/testcases/test_slowloris_check.py",
    "tests/testcases/test_opcua_checks.py",
    "tests/simulators/test_opcua.py",
)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the long groups to the front (a stable sort: order within a group is kept)."""

    def rank(item: pytest.Item) -> int:
        marker = item.get_closest_marker("xdist_group")
        group = str(marker.args[0]) if marker and marker.args else item.nodeid
        return next((i for i, prefix in enumerate(LONG_GROUPS) if group.startswith(prefix)),
                    len(LONG_GROUPS))

    items.sort(key=rank)


# --------------------------------------------------------------------------- fake checks
@pytest.fixture(scope="session")
def fake_checks() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``fake_checks(MODULE, profile=P, out=DIR, env={...}, extra=(...))``: run a module of fake
    checks (``check_*.py``, outside the bundled testcases) under the harness plugin alone, in a
    subprocess, as ``pytest MODULE --profile P --harness-out DIR`` would."""

    def run(
        module: Path,
        *,
        profile: Path | None = None,
        out: Path | None = None,
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            str(module),
            "-p",
            "harness.plugin",
            "-p",
            "no:cacheprovider",
            "-o",
            "python_files=check_*.py",
            "--rootdir",
            str(module.parent),
        ]
        if profile is not None:
            cmd += ["--profile", str(profile)]
        if out is not None:
            cmd += ["--harness-out", str(out)]
        return subprocess.run(
            [*cmd, *extra],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", **(env or {})},
        )

    return run
