"""`harness run PROFILE` and `pytest testcases --profile PROFILE` are the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SELECT = "modbus_tcp and (unauthenticated or function_codes or unknown_unit)"


def test_harness_run_and_pytest_give_the_same_verdicts(
    lab: Callable[..., Any], run_harness: Callable[..., Any], tmp_path: Path
) -> None:
    running = lab(simulators=["modbus_tcp"], weaknesses=["modbus.extra_function_codes"])
    via_cli = run_harness(running.profile_path, k=SELECT)
    out = tmp_path / "pytest-out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "testcases",
            "--profile",
            str(running.profile_path),
            "--harness-out",
            str(out),
            "--allow-disruptive",
            "-k",
            SELECT,
            "-p",
            "no:randomly",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
        env={**os.environ, "CI": "true"},
    )
    via_pytest = json.loads((out / "results.json").read_text())
    assert via_cli.verdicts(), via_cli.stdout
    assert {c["nodeid"]: c["verdict"] for c in via_pytest["checks"]} == via_cli.verdicts()
    assert "FAIL" in via_cli.verdicts().values()  # the weakness was seen both ways
    assert proc.returncode == via_cli.code == 1
