"""The command line: exit codes, messages without tracebacks, plan and catalog output, start-up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "device_profiles" / "template-plc.yaml"
PROTOCOL_LIBS = ("pymodbus", "asyncua", "scapy", "paramiko", "serial", "cryptography")


def harness(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_validate_ok() -> None:
    proc = harness("validate", str(TEMPLATE))
    assert proc.returncode == 0, proc.stderr
    assert "valid profile for ExampleCorp XC-200" in proc.stdout


def test_validate_reports_three_mistakes_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "device: {vendor: A, model: B, firmware: '1', component_type: embedded}\n"
        "claimed_sl: {FR1: 5}\n"
        "colour: blue\n"
        "interfaces:\n"
        "  ssh: {host: 'bad host!'}\n"
    )
    proc = harness("validate", str(bad))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"{bad}:2: claimed_sl.FR1: ")
    assert lines[1].startswith(f"{bad}:5: interfaces.ssh.host: 'bad host!' is not a valid")
    assert (
        lines[2]
        == f"{bad}:3: colour: unknown key (not part of the profile schema; check the spelling)"
    )
    assert lines[3] == f"harness: 3 problem(s) in {bad}"
    assert "Traceback" not in proc.stderr


def test_validate_non_yaml_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("this: is: not: yaml: [\n")
    proc = harness("validate", str(bad))
    assert proc.returncode == 2
    assert "not valid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_with_bad_profile_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: 3\n")
    out = tmp_path / "report"
    proc = harness("run", str(bad), "--out", str(out))
    assert proc.returncode == 2
    assert "device" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_usage_errors_exit_2() -> None:
    assert harness().returncode == 2
    assert harness("frobnicate").returncode == 2
    proc = harness("catalog", "--sl", "9")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_plan_lists_every_requirement_with_a_reason() -> None:
    proc = harness("plan", str(TEMPLATE))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Nothing has been sent to the device." in out
    assert "Disruptive checks: not allowed" in out
    plan = json.loads(harness("plan", str(TEMPLATE), "--json").stdout)
    for req in plan["requirements"]:
        assert req["note"] or req["checks"], f"{req['id']} has no reason"
        for check in req["checks"]:
            assert check["runs"] or check["reason"], check
            if check["traffic"]:
                assert "{" not in check["traffic"], check  # caps filled in
    ids = {r["id"] for r in plan["requirements"]}
    assert {"CR 1.1", "CR 7.1", "EDR 2.13"} <= ids
    assert not {"NDR 1.6", "HDR 3.2"} & ids  # other component types are not listed


def test_catalog_table_filters() -> None:
    proc = harness("catalog", "--fr", "FR7", "--sl", "1", "--component", "embedded")
    assert proc.returncode == 0, proc.stderr
    assert "CR 7.1 " in proc.stdout
    assert "CR 7.1 RE(1)" not in proc.stdout  # SL 2
    assert "CR 1.1" not in proc.stdout


def test_schema_is_json_schema() -> None:
    schema = json.loads(harness("schema").stdout)
    assert schema["title"] == "harness device profile"
    assert "claimed_sl" in schema["properties"]
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize("args", [["--help"], ["plan", str(TEMPLATE)]])
def test_help_and_plan_import_no_protocol_library(args: list[str]) -> None:
    code = (
        "import sys, contextlib, io\n"
        "from harness.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({PROTOCOL_LIBS!r})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_run_options_after_the_profile_and_pytest_passthrough(tmp_path: Path) -> None:
    """`harness run PROFILE --out DIR -k EXPR -- -x` parses (options may follow the profile)."""
    from harness.cli import build_parser, main

    parser = build_parser()
    args = parser.parse_args(["run", "p.yaml", "--out", "o", "-k", "x", "--allow-disruptive"])
    assert (args.profile, args.out, args.k, args.allow_disruptive) == ("p.yaml", "o", "x", True)
    with pytest.raises(SystemExit) as info:  # only run passes arguments on
        main(["validate", str(TEMPLATE), "--", "-x"])
    assert info.value.code == 2


def test_a_dead_port_is_one_error_line_without_code_frames(tmp_path: Path) -> None:
    profile = tmp_path / "dead.yaml"
    profile.write_text(
        "device: {vendor: A, model: B, firmware: '1', component_type: embedded}\n"
        "claimed_sl: {FR1: 1, FR2: 1, FR3: 1, FR4: 1, FR5: 1, FR6: 1, FR7: 1}\n"
        "interfaces:\n  modbus_tcp: {host: 127.0.0.1, port: 1}\n"
    )
    proc = harness("run", str(profile), "--out", str(tmp_path / "out"), "-k", "unit_ids")
    assert proc.returncode == 3, proc.stdout[-2000:]
    assert "ConnectFailed" in proc.stdout and "Connection refused" in proc.stdout
    for frame_marker in ("Traceback", "def connect", "^^^^", "socket.py"):
        assert frame_marker not in proc.stdout + proc.stderr, proc.stdout[-2000:]
