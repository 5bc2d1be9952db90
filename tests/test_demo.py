"""``harness demo``, the README's main job: lab up, run, report, lab down, nothing left behind.

The full demo runs every check (minutes); these runs keep to a few quick checks with ``-k`` and
prove the same path: the lab starts, the verdicts reach the report and the summary, the exit
code follows them, and no simulator or state folder outlives the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[1]
QUICK = "banner_ssh or anonymous_opcua"


def _simulators_of(state_prefix: str) -> list[int]:
    """Processes whose command line names a demo state folder."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"simulators." in cmd and state_prefix.encode() in cmd:
            found.append(int(entry))
    return found


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "report"
    # a private temporary folder: the demo's lab state goes there, so it can be checked empty
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "demo", "--out", str(out), "-k", QUICK, *args],
        capture_output=True, text=True, cwd=ROOT, timeout=280, check=False,
        env={**os.environ, "TMPDIR": str(tmp)})
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert list(tmp.iterdir()) == [], "the demo left its lab state behind"
    assert not _simulators_of(str(tmp)), "a demo simulator outlived the demo"
    return proc, out


def test_demo_on_the_hardened_lab_passes_and_cleans_up(tmp_path: Path) -> None:
    proc, out = _demo(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    ran = {c["nodeid"].rsplit("::", 1)[1]: c["verdict"] for c in results["checks"]
           if c["verdict"] not in ("NOT APPLICABLE", "NOT RUN")}
    assert ran and set(ran.values()) == {"PASS"}, ran
    assert "FR   claimed  achieved" in proc.stdout and f"report: {out}" in proc.stdout
    for name in ("junit.xml", "report.html", "manifest.json"):
        assert (out / name).is_file()


def test_demo_with_a_weakness_fails_and_says_so(tmp_path: Path) -> None:
    proc, out = _demo(tmp_path, "--weakness", "ssh.no_banner")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    failed = [c["nodeid"] for c in results["checks"] if c["verdict"] == "FAIL"]
    assert len(failed) == 1 and "banner" in failed[0] and "ssh" in failed[0]

