"""The lab launcher: up, status, down; nothing left behind; clear errors; the simulator manifest."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import LabError
from harness.lab import LabDefinition, lab_down, lab_status, lab_up, load_lab
from harness.profile import load_profile

ROOT = Path(__file__).resolve().parents[1]
SERIAL_AND_TCP = ["modbus_tcp", "modbus_rtu", "console", "ssh"]


def sim_pids() -> set[int]:
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"simulators." in cmd and b"harness-test-lab" in cmd:
                pids.add(int(entry))
    return pids


def test_manifest_matches_the_simulators() -> None:
    from simulators.manifest import PATH, render

    assert PATH.read_text() == render(), "stale: run python -m simulators.manifest"


def test_up_status_down_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "harness-test-lab"
    sim_tmp = tmp_path / "tmp"
    sim_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(sim_tmp))  # the simulators' temporary files land here
    lab = LabDefinition.model_validate({"name": "t", "simulators": SERIAL_AND_TCP})
    up = lab_up(lab, state)
    status = lab_status(state)
    assert set(status) == set(SERIAL_AND_TCP)
    assert all(s["alive"] for s in status.values())
    loaded = load_profile(state / "profile.yaml")
    assert loaded.profile.interfaces.present() == ["modbus_tcp", "ssh", "modbus_rtu", "console"]
    assert (state / "secrets" / "admin.password").stat().st_mode & 0o077 == 0
    pids = {int(s["pid"]) for s in up["simulators"].values()}
    assert pids <= sim_pids()
    stopped = lab_down(state)
    assert sorted(stopped) == sorted(SERIAL_AND_TCP)
    assert not state.exists()
    assert not (pids & sim_pids())
    # the lab's own pseudo-terminals are gone (a number may be reused by another process
    # meanwhile: then it is a new pty, created after the lab went down)
    ptys = [
        up["simulators"][n]["endpoints"][k]["path"]
        for n, k in (("modbus_rtu", "rtu"), ("console", "console"))
    ]
    downed = time.time()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        os.path.exists(p) and os.stat(p).st_ctime <= downed for p in ptys
    ):
        time.sleep(0.05)
    for p in ptys:
        assert not os.path.exists(p) or os.stat(p).st_ctime > downed, f"{p} was left open"
    assert not list(sim_tmp.iterdir()), "a temporary file was left behind"


def test_taken_port_is_a_clear_error_and_nothing_is_left(tmp_path: Path) -> None:
    state = tmp_path / "harness-test-lab"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        lab = LabDefinition.model_validate(
            {
                "name": "t",
                "simulators": ["modbus_tcp", "console"],
                "ports": {"modbus_tcp": port},
                "host": "127.0.0.1",
            }
        )
        with pytest.raises(LabError, match="simulator modbus_tcp failed to start"):
            lab_up(lab, state)
    assert not state.exists()
    assert not sim_pids()


def test_second_lab_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "harness-test-lab"
    lab = LabDefinition.model_validate({"name": "t", "simulators": ["modbus_tcp"]})
    lab_up(lab, state)
    try:
        with pytest.raises(LabError, match="already running"):
            lab_up(lab, state)
    finally:
        lab_down(state)


def test_down_without_a_lab_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no lab is running"):
        lab_down(tmp_path)


def test_unknown_lab_and_weakness(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="no lab 'nope'"):
        load_lab("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nweaknesses: [modbus.flying_pigs]\n")
    with pytest.raises(LabError, match=r"unknown weaknesses \['modbus.flying_pigs'\]"):
        load_lab(str(bad))


def test_bundled_labs_load() -> None:
    assert load_lab("hardened").posture == "hardened"
    weak = load_lab("weak")
    assert weak.posture == "weak"


def test_cli_lab_round_trip(tmp_path: Path) -> None:
    state = tmp_path / "harness-test-lab"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "harness.cli", "lab", *args, "--state", str(state)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )

    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "lab",
            "up",
            "hardened",
            "--state",
            str(state),
            "--weakness",
            "modbus.any_unit_id",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    try:
        assert up.returncode == 0, up.stderr
        assert "weaknesses: modbus.any_unit_id" in up.stdout
        state_json = json.loads((state / "state.json").read_text())
        assert state_json["simulators"]["modbus_tcp"]["weaknesses"] == ["modbus.any_unit_id"]
        status = cli("status")
        assert status.returncode == 0
        assert "modbus_tcp" in status.stdout and "DOWN" not in status.stdout
    finally:
        down = cli("down")
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    again = cli("down")
    assert again.returncode == 3
    assert "no lab is running" in again.stderr


def test_each_lab_gets_its_own_loopback_address(tmp_path: Path) -> None:
    lab = LabDefinition.model_validate({"name": "t", "simulators": ["modbus_tcp"]})
    first = lab_up(lab, tmp_path / "a" / "harness-test-lab")
    second = lab_up(lab, tmp_path / "b" / "harness-test-lab")
    try:
        hosts = {first["host"], second["host"]}
        assert len(hosts) == 2
        for state in (first, second):
            ep = state["simulators"]["modbus_tcp"]["endpoints"]["modbus"]
            assert ep["host"] == state["host"]
            profile = load_profile(Path(state["state_dir"]) / "profile.yaml").profile
            assert profile.allow_list() == [f"{state['host']}/32"]
    finally:
        lab_down(tmp_path / "a" / "harness-test-lab")
        lab_down(tmp_path / "b" / "harness-test-lab")


def test_lab_host_must_be_loopback() -> None:
    with pytest.raises(ValueError, match="not a loopback address"):
        LabDefinition.model_validate({"name": "t", "host": "192.0.2.1"})
