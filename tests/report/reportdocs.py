"""Builders of realistic run folders for the report tests (no lab, no device).

:func:`make_run_folder` builds a :class:`~harness.plugin.HarnessRun` from a real profile and
the real catalog, gives it one check per verdict (with evidence saved the way the plugin saves
it, and a load check with a monitor timeline), and writes the folder with ``write_run``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from harness.catalog import load_catalog
from harness.evidence import Evidence, slug
from harness.plugin import HarnessRun
from harness.profile import load_profile
from harness.report.results import write_run
from harness.safety import Guard
from harness.verdict import CheckResult, Verdict

PROFILE: dict[str, Any] = {
    "device": {
        "vendor": "ACME",
        "model": "Fake PLC",
        "firmware": "1.0",
        "component_type": "embedded",
    },
    "claimed_sl": {"FR1": 2, "FR2": 1, "FR3": 1, "FR7": 2},
    "interfaces": {"modbus_tcp": {"host": "127.0.0.1", "port": 5020}},
    "waivers": [
        {
            "requirement": "CR 2.8",
            "justification": "audit records are kept by the plant historian (site SOP-17)",
            "expires": "2099-12-31",
        }
    ],
}

#: (name, requirement, verdict, reason) of the checks of the default run.
CHECKS: list[tuple[str, str, Verdict, str]] = [
    ("test_login_required", "CR 1.1", Verdict.PASS, ""),
    ("test_unique_users", "CR 1.1 RE(1)", Verdict.FAIL, "two operators share the account op"),
    ("test_privileges", "CR 2.1", Verdict.PASS, ""),
    ("test_audit", "CR 2.8", Verdict.NOT_APPLICABLE, "waived until 2099-12-31: historian"),
    ("test_malformed", "CR 3.5", Verdict.ERROR, "TargetError: no reply within 3 s"),
    ("test_flood", "CR 7.1", Verdict.PASS, ""),
    ("test_own_traffic", "CR 7.1 RE(1)", Verdict.NOT_RUN, "disruptive and not allowed"),
]


def monitor_rows(*, outage: bool = False) -> list[dict[str, Any]]:
    """A monitor timeline: 1 s before, 2 s of load, 1 s after, 50 Hz."""
    rows = []
    for i in range(200):
        t = i * 0.02
        phase = "before" if t < 1.0 else ("load" if t < 3.0 else "after")
        ok = not (outage and 2.0 <= t < 2.4)
        latency = (4.0 + (i % 7) * 0.3) * (3.0 if phase == "load" else 1.0)
        rows.append(
            {
                "t": round(t, 3),
                "ok": int(ok),
                "latency_ms": round(latency, 2) if ok else "",
                "phase": phase,
            }
        )
    return rows


def make_run(
    out: Path,
    *,
    profile: dict[str, Any] | None = None,
    checks: list[tuple[str, str, Verdict, str]] | None = None,
    outage: bool = False,
) -> HarnessRun:
    """A HarnessRun with results and evidence in ``out`` (nothing written at the top yet)."""
    prof = profile or PROFILE
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}-profile.yaml"
    path.write_text(yaml.safe_dump(prof))
    loaded = load_profile(path)
    catalog = load_catalog()
    run = HarnessRun(loaded, catalog, Guard(["127.0.0.1"]), out, allow_disruptive=False)
    for name, req_id, verdict, reason in checks or CHECKS:
        req = catalog.get(req_id)
        nodeid = f"testcases/{str(req.fr).lower()}/test_x.py::{name}"
        ev = Evidence(nodeid)
        if verdict in (Verdict.PASS, Verdict.FAIL, Verdict.ERROR):
            ev.sent(
                "modbus://127.0.0.1:5020",
                b"\x00\x01\x00\x00\x00\x06\x01\x03\x00\x00\x00\x01",
                "read holding register 0",
            )
            ev.received(
                "modbus://127.0.0.1:5020",
                b"\x00\x01\x00\x00\x00\x05\x01\x03\x02\x00\x2a",
                "FC 3 normal response",
            )
            ev.note("judgement", observed=42)
        if name == "test_flood":
            ev.timeline("monitor", monitor_rows(outage=outage))
            ev.note("load summary", load_window=[1.0, 3.0], rate=180.0)
        files = ev.save(out / "evidence" / slug(nodeid), out)
        run.results.append(
            CheckResult(
                nodeid=nodeid,
                title=f"Check {name.removeprefix('test_').replace('_', ' ')}",
                requirement=req.id,
                fr=str(req.fr),
                sl=req.sl_min,
                protocol="modbus_tcp",
                weakness=f"modbus.{name}",
                disruptive=name == "test_flood",
                verdict=verdict,
                reason=reason,
                started="2024-05-01T10:00:00.000+00:00",
                duration_s=1.5,
                evidence=files,
                observations=ev.observations(),
            )
        )
    return run


def make_run_folder(out: Path, **kwargs: Any) -> dict[str, Any]:
    """Write a complete run folder into ``out``; return its results document."""
    run = make_run(out, **kwargs)
    return write_run(run, complete=True)


def read_results(out: Path) -> dict[str, Any]:
    """The results.json of a run folder."""
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data
