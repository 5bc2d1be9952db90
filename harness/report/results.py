"""results.json: the versioned, typed record of a run that every other report renders from."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.report.matrix import build_matrix
from harness.verdict import SCHEMA_VERSION, Verdict

if TYPE_CHECKING:
    from harness.plugin import HarnessRun

_LIBRARIES = (
    "pymodbus",
    "asyncua",
    "paramiko",
    "pyserial",
    "scapy",
    "pytest",
    "pydantic",
    "cryptography",
    "junit-xml",
)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that speak to the device (without importing them)."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_results(run: HarnessRun, *, complete: bool) -> dict[str, Any]:
    """The results document of ``run``."""
    prof = run.loaded.profile
    claimed = {
        fr: prof.claimed_sl.of(fr) for fr in ("FR1", "FR2", "FR3", "FR4", "FR5", "FR6", "FR7")
    }
    summary = {str(v): 0 for v in Verdict}
    for r in run.results:
        summary[str(r.verdict)] += 1
    return {
        "schema_version": SCHEMA_VERSION,
        "complete": complete,
        "harness_version": __version__,
        "versions": library_versions(),
        "host": socket.gethostname(),
        "started": run.started,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "allow_disruptive": run.allow_disruptive,
        "profile": {
            "path": str(run.loaded.path),
            "sha256": run.loaded.sha256,
            "device": prof.device.model_dump(mode="json"),
            "claimed_sl": claimed,
            "waivers": [w.model_dump(mode="json") for w in prof.waivers],
        },
        "summary": summary,
        "matrix": [row.to_json() for row in build_matrix(run.results, claimed)],
        "checks": [r.to_json() for r in run.results],
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_run(run: HarnessRun, *, complete: bool) -> dict[str, Any]:
    """Write results.json and junit.xml into the run folder; return the results document."""
    from harness.report.junit import render_junit

    assert run.out is not None
    run.out.mkdir(parents=True, exist_ok=True)
    results = build_results(run, complete=complete)
    _atomic_write(run.out / "results.json", json.dumps(results, indent=2, sort_keys=False) + "\n")
    _atomic_write(run.out / "junit.xml", render_junit(results))
    return results
