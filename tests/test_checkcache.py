"""The check-spec cache behind ``harness plan``: current while nothing changed, never stale."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import checkcache
from harness.selection import CheckSpec

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "device_profiles" / "template-plc.yaml"

SPECS = [
    CheckSpec("testcases/a.py::test_a", "A", "CR 1.1", "ssh"),
    CheckSpec("testcases/b.py::test_b", "B", "CR 7.1", "modbus_tcp", disruptive=True,
              weakness="load.fragile", traffic="at most {max_rate:g} req/s"),
]


@pytest.fixture
def checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of two 'check modules' and a private cache folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HARNESS_NO_CACHE", raising=False)
    folder = tmp_path / "testcases"
    (folder / "fr1").mkdir(parents=True)
    (folder / "fr1" / "test_a.py").write_text("def test_a(): pass\n")
    (folder / "test_b.py").write_text("def test_b(): pass\n")
    return folder


class Collector:
    """Stands in for pytest collection; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[CheckSpec]:
        self.calls += 1
        return list(SPECS)


def test_second_plan_reads_the_cache_and_gets_the_same_specs(checks: Path) -> None:
    collect = Collector()
    first = checkcache.cached_specs(checks, [], collect)
    second = checkcache.cached_specs(checks, [], collect)
    assert first == second == SPECS
    assert collect.calls == 1
    assert all(isinstance(s, CheckSpec) for s in second)


@pytest.mark.parametrize("change", ["edit", "add", "remove", "code"])
def test_any_change_to_a_check_or_the_code_collects_again(
        checks: Path, tmp_path: Path, change: str) -> None:
    code = tmp_path / "plugin.py"
    code.write_text("# plugin\n")
    collect = Collector()
    checkcache.cached_specs(checks, [code], collect)
    target = checks / "fr1" / "test_a.py"
    if change == "edit":
        st = target.stat()
        target.write_text("def test_a(): assert 1\n")
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    elif change == "add":
        (checks / "fr1" / "test_c.py").write_text("def test_c(): pass\n")
    elif change == "remove":
        target.unlink()
    else:
        code.write_text("# plugin, changed\n")
    checkcache.cached_specs(checks, [code], collect)
    assert collect.calls == 2


def test_a_corrupt_cache_file_means_collecting_again(checks: Path) -> None:
    collect = Collector()
    checkcache.cached_specs(checks, [], collect)
    directory = checkcache.slot(checks)
    assert directory is not None
    (directory / "checks.json").write_text('{"key": "x", "checks": [{"nodeid": 1')
    assert checkcache.cached_specs(checks, [], collect) == SPECS
    assert collect.calls == 2
    # a record of the right key but the wrong shape is no better
    key = checkcache.fingerprint(checks, [])
    (directory / "checks.json").write_text(json.dumps({"key": key, "checks": [{"title": "x"}]}))
    assert checkcache.cached_specs(checks, [], collect) == SPECS
    assert collect.calls == 3


def test_harness_no_cache_bypasses_it(checks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_NO_CACHE", "1")
    collect = Collector()
    checkcache.cached_specs(checks, [], collect)
    checkcache.cached_specs(checks, [], collect)
    assert collect.calls == 2
    assert not (checks.parent / "cache").exists()


def test_two_installations_keep_their_own_entries(checks: Path, tmp_path: Path) -> None:
    other = tmp_path / "venv" / "testcases"
    other.mkdir(parents=True)
    (other / "test_a.py").write_text("def test_a(): pass\n")
    mine, theirs = Collector(), Collector()
    for _ in range(2):  # alternate, as a checkout and a venv on one machine do
        checkcache.cached_specs(checks, [], mine)
        checkcache.cached_specs(other, [], theirs)
    assert (mine.calls, theirs.calls) == (1, 1)
    assert checkcache.slot(checks) != checkcache.slot(other)


def test_an_unwritable_cache_folder_still_plans(checks: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert checkcache.cached_specs(checks, [], Collector()) == SPECS


def _plan(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "harness.cli", "plan", str(TEMPLATE), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120, env=env, check=False)


def test_a_cached_plan_equals_a_collected_one_and_does_not_start_pytest(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("HARNESS_NO_CACHE", None)
    collected = _plan({**env, "HARNESS_NO_CACHE": "1"})
    filling = _plan(env)
    cached = _plan(env)
    for proc in (collected, filling, cached):
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert collected.stdout == filling.stdout == cached.stdout
    imported = {line.split("|")[-1].strip() for line in cached.stderr.splitlines()
                if line.startswith("import time:")}
    assert "pytest" in {line.split("|")[-1].strip() for line in collected.stderr.splitlines()
                        if line.startswith("import time:")}
    assert "pytest" not in imported and "_pytest" not in imported


def test_spec_fields_round_trip_through_the_cache(checks: Path) -> None:
    directory = checkcache.cache_dir()
    assert directory is not None
    checkcache.store(directory, "k", SPECS)
    loaded = checkcache.load(directory, "k")
    assert loaded is not None
    assert [dataclasses.asdict(s) for s in loaded] == [dataclasses.asdict(s) for s in SPECS]
    assert checkcache.load(directory, "another key") is None
