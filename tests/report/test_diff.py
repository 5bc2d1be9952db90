"""``harness diff OLD NEW``: two runs of the same device, firmware A against firmware B."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from reportdocs import CHECKS, PROFILE, make_run_folder

from harness.cli import main
from harness.report.diff import diff_results, format_diff
from harness.verdict import Verdict

pytestmark = pytest.mark.timeout(60)


def firmware(version: str, model: str = "Fake PLC") -> dict[str, Any]:
    prof = copy.deepcopy(PROFILE)
    prof["device"]["firmware"] = version
    prof["device"]["model"] = model
    return prof


def changed(checks: list[Any], **verdicts: tuple[Verdict, str]) -> list[Any]:
    return [
        (name, req, *verdicts[name]) if name in verdicts else (name, req, v, r)
        for name, req, v, r in checks
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("diff")
    make_run_folder(tmp / "a", profile=firmware("1.0"))
    # firmware 2.0: unique users fixed, privileges now broken, the malformed-input ERROR is
    # now a PASS, the flood check is gone and a new one appeared
    new = changed(
        CHECKS,
        test_unique_users=(Verdict.PASS, ""),
        test_privileges=(Verdict.FAIL, "operator may write the setpoint"),
        test_malformed=(Verdict.PASS, ""),
    )
    new = [c for c in new if c[0] != "test_flood"]
    new.append(("test_session_lock", "CR 2.5", Verdict.ERROR, "TargetError: timeout"))
    make_run_folder(tmp / "b", profile=firmware("2.0"), checks=new)
    make_run_folder(tmp / "other", profile=firmware("1.0", model="Other RTU"))
    return tmp / "a", tmp / "b"


def names(changes: list[Any]) -> list[str]:
    return sorted(c.nodeid.rsplit("::", 1)[1] for c in changes)


def test_diff_lists_failures_fixes_and_sl_changes(runs: Any) -> None:
    a, b = runs
    d = diff_results(
        json.loads((a / "results.json").read_text()), json.loads((b / "results.json").read_text())
    )
    assert d.same_device and d.profile_changed
    assert d.old_device["firmware"] == "1.0" and d.new_device["firmware"] == "2.0"
    assert names(d.new_failures) == ["test_privileges", "test_session_lock"]
    assert names(d.fixed) == ["test_malformed", "test_unique_users"]
    assert names(d.removed) == ["test_flood"]
    assert d.changed == [] and d.added == []
    sl = {s.fr: s for s in d.sl}
    assert (sl["FR1"].old_achieved, sl["FR1"].new_achieved) == (1, 2)
    assert (sl["FR2"].old_achieved, sl["FR2"].new_achieved) == (1, 0) and sl["FR2"].lowered
    assert (sl["FR3"].old_achieved, sl["FR3"].new_achieved) == (0, 1)
    assert not sl["FR7"].changed  # the SL 1 check is gone; the SL 2 one is still NOT RUN
    assert not sl["FR4"].changed
    assert d.regressed
    text = format_diff(d)
    assert "new failures: 2" in text and "operator may write the setpoint" in text
    assert "FR2  claimed 1 -> 1   achieved 1 -> 0  LOWER" in text


def test_no_change_is_not_a_regression(runs: Any, capsys: Any) -> None:
    a, _ = runs
    assert main(["diff", str(a), str(a / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "new failures: 0" in out and "fixed: 0" in out


def test_cli_exit_codes_and_json(runs: Any, capsys: Any) -> None:
    a, b = runs
    assert main(["diff", str(a), str(b)]) == 1
    capsys.readouterr()
    assert main(["diff", str(b), str(a), "--json"]) == 1  # going back re-breaks two checks
    doc = json.loads(capsys.readouterr().out)
    assert {c["nodeid"].rsplit("::", 1)[1] for c in doc["new_failures"]} == {
        "test_unique_users",
        "test_malformed",
    }
    assert {c["nodeid"].rsplit("::", 1)[1] for c in doc["fixed"]} == {"test_privileges"}
    assert [c["new"] for c in doc["added"]] == ["PASS"]  # test_flood is back, passing


def test_different_device_needs_force(runs: Any, capsys: Any) -> None:
    a, _ = runs
    other = a.parent / "other"
    assert main(["diff", str(a), str(other)]) == 2
    assert "not the same device" in capsys.readouterr().err
    assert main(["diff", str(a), str(other), "--force"]) == 0
    assert "WARNING: not the same device" in capsys.readouterr().out


def test_not_a_report(tmp_path: Path, runs: Any, capsys: Any) -> None:
    a, _ = runs
    (tmp_path / "results.json").write_text('{"some": "json"}')
    assert main(["diff", str(a), str(tmp_path)]) == 2
    assert main(["diff", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert "not a harness results document" in err and "not a report" in err
