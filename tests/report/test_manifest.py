"""manifest.json and ``harness report [verify] DIR``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from reportdocs import make_run_folder

from harness.cli import main
from harness.report.manifest import MANIFEST, NotAReport, verify

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifest") / "run"
    make_run_folder(out)
    return out


@pytest.fixture
def run_dir(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy, symlinks=True)
    return copy


def test_manifest_lists_every_file_with_run_facts(run_dir: Path) -> None:
    manifest = json.loads((run_dir / MANIFEST).read_text())
    results = json.loads((run_dir / "results.json").read_text())
    on_disk = sorted(
        p.relative_to(run_dir).as_posix()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )
    assert sorted(manifest["files"]) == on_disk
    assert {"results.json", "junit.xml", "report.html"} <= set(manifest["files"])
    assert any(p.startswith("evidence/") for p in manifest["files"])
    assert manifest["profile"]["sha256"] == results["profile"]["sha256"]
    assert manifest["run"]["started"] == results["started"]
    assert manifest["run"]["finished"] == results["finished"]
    assert manifest["run"]["host"] == results["host"]
    assert not list(run_dir.rglob(".*.tmp"))  # atomic writes leave nothing behind
    assert verify(run_dir) == []


def test_verify_names_changed_missing_and_extra_files(run_dir: Path) -> None:
    evidence = sorted((run_dir / "evidence").rglob("exchanges.jsonl"))[0]
    rel = evidence.relative_to(run_dir).as_posix()
    with (run_dir / "junit.xml").open("a") as fh:
        fh.write("<!-- edited -->\n")
    os.remove(evidence)
    (run_dir / "evidence" / "notes.txt").write_text("added later\n")
    assert sorted(verify(run_dir)) == [
        "changed: junit.xml",
        "extra: evidence/notes.txt",
        f"missing: {rel}",
    ]


def test_same_size_edit_and_symlink_are_caught(run_dir: Path) -> None:
    results = run_dir / "results.json"
    text = results.read_text()
    results.write_text(text.replace('"FAIL"', '"PASS"', 1))  # same length, different hash
    (run_dir / "link").symlink_to("/etc/hostname")
    problems = verify(run_dir)
    assert "changed: results.json" in problems
    assert "extra: link" in problems


def test_cli_verify_exit_codes(run_dir: Path, tmp_path: Path, capsys: Any) -> None:
    assert main(["report", "verify", str(run_dir)]) == 0
    assert "intact" in capsys.readouterr().out
    (run_dir / "report.html").write_text("<p>replaced</p>")
    assert main(["report", "verify", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert "changed: report.html" in captured.out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "verify", str(empty)]) == 2
    assert main(["report", "verify", str(tmp_path / "nope")]) == 2
    with pytest.raises(NotAReport):
        verify(empty)


def test_missing_or_garbled_manifest(run_dir: Path) -> None:
    (run_dir / MANIFEST).write_text("{not json")
    assert verify(run_dir)[0].startswith(f"changed: {MANIFEST}")
    os.remove(run_dir / MANIFEST)
    assert verify(run_dir) == [f"missing: {MANIFEST} (the run folder has no manifest)"]


def test_report_rerenders_from_results_and_rewrites_the_manifest(
    run_dir: Path, capsys: Any
) -> None:
    os.remove(run_dir / "report.html")
    (run_dir / "junit.xml").write_text("stale")
    results = json.loads((run_dir / "results.json").read_text())
    results["checks"][0]["reason"] = "re-assessed by the lab: see ticket 42"
    (run_dir / "results.json").write_text(json.dumps(results))
    assert main(["report", str(run_dir)]) == 0
    assert "re-assessed by the lab: see ticket 42" in (run_dir / "report.html").read_text()
    junit = (run_dir / "junit.xml").read_text()
    assert junit.startswith("<?xml") and "<testsuites" in junit
    assert verify(run_dir) == []
    capsys.readouterr()


def test_report_of_a_folder_without_results(tmp_path: Path) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert main(["report", "verify", "a", "b"]) == 2
