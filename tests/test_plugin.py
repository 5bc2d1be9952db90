"""The pytest plugin: verdict classification, exit codes, results.json and JUnit output."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
CHECKS = HERE / "plugin_checks" / "check_verdicts.py"
XSD = HERE.parent.parent / "shared" / "reference" / "junit-10.xsd"

PROFILE = """\
device: {{vendor: ACME, model: Fake PLC, firmware: '1.0', component_type: embedded}}
claimed_sl: {{FR1: 2}}
interfaces:
  modbus_tcp: {{host: 127.0.0.1, port: {port}}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_pytest(
    fake_checks: Callable[..., subprocess.CompletedProcess[str]],
    tmp_path: Path,
    outcomes: str = "all",
    *extra: str,
    port: int,
) -> tuple[int, dict[str, Any], str]:
    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE.format(port=port))
    out = tmp_path / "out"
    proc = fake_checks(
        CHECKS, profile=profile, out=out, extra=extra, env={"HARNESS_FAKE_OUTCOMES": outcomes}
    )
    results = (
        json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    )
    return proc.returncode, results, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def full_run(
    tmp_path_factory: pytest.TempPathFactory,
    fake_modbus_port: int,
    fake_checks: Callable[..., Any],
) -> tuple[int, dict[str, Any], str, Path]:
    tmp = tmp_path_factory.mktemp("plugin")
    code, results, output = run_pytest(
        fake_checks, tmp, "all", "--allow-disruptive", port=fake_modbus_port
    )
    return code, results, output, tmp / "out"


def verdicts(results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["nodeid"].rsplit("::", 1)[1]: (c["verdict"], c["reason"]) for c in results["checks"]}


def test_every_outcome_maps_to_its_verdict(full_run: Any) -> None:
    _, results, output, _ = full_run
    v = verdicts(results)
    assert v["test_pass"][0] == "PASS", output
    assert v["test_assert_fail"] == ("FAIL", "device answered 3")
    assert v["test_violation"] == ("FAIL", "write accepted")
    assert v["test_target_error"] == ("ERROR", "TargetError: no reply within 3 s")
    assert v["test_library_assert_is_error"][0] == "ERROR"
    assert v["test_teardown_error"][0] == "ERROR"
    assert "could not restore scratch register 100" in v["test_teardown_error"][1]
    assert v["test_interface_absent"] == (
        "NOT APPLICABLE",
        "no opcua interface declared in the profile",
    )
    assert v["test_above_claim"][0] == "NOT APPLICABLE"
    assert v["test_disruptive"][0] == "PASS"
    assert v["test_runtime_not_applicable"] == ("NOT APPLICABLE", "server exposes no audit events")
    assert v["test_runtime_not_run"] == ("NOT RUN", "no lockout-test account declared")
    assert v["test_bare_skip"][0] == "ERROR"
    assert "without a verdict" in v["test_bare_skip"][1]


def test_results_document(full_run: Any) -> None:
    code, results, _, out = full_run
    assert code == 1  # a FAIL wins over the ERRORs
    assert results["schema_version"] == "1.2"
    assert results["complete"] is True
    assert results["summary"] == {
        "PASS": 2,
        "FAIL": 2,
        "ERROR": 4,
        "NOT APPLICABLE": 3,
        "NOT RUN": 1,
    }
    fr1 = next(r for r in results["matrix"] if r["fr"] == "FR1")
    assert fr1["achieved"] == 0 and fr1["claimed"] == 2
    passed = next(c for c in results["checks"] if c["nodeid"].endswith("test_pass"))
    assert [o["hex"] for o in passed["observations"]] == ["0001", "0002"]
    assert passed["evidence"] and (out / passed["evidence"][0]).exists()
    assert passed["requirement"] == "CR 1.1" and passed["fr"] == "FR1" and passed["sl"] == 1


def test_disruptive_is_not_run_without_permission(
    tmp_path: Path, fake_modbus_port: int, fake_checks: Callable[..., Any]
) -> None:
    _, results, _ = run_pytest(fake_checks, tmp_path, "pass", port=fake_modbus_port)
    assert verdicts(results)["test_disruptive"][0] == "NOT RUN"


@pytest.mark.parametrize(
    ("outcomes", "code"), [("pass", 0), ("pass,error", 3), ("pass,error,fail", 1)]
)
def test_exit_codes(
    tmp_path: Path, outcomes: str, code: int, fake_modbus_port: int, fake_checks: Callable[..., Any]
) -> None:
    got, _, output = run_pytest(fake_checks, tmp_path, outcomes, port=fake_modbus_port)
    assert got == code, output


def test_bad_profile_is_a_usage_error(tmp_path: Path, fake_checks: Callable[..., Any]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: {}\n")
    proc = fake_checks(CHECKS, profile=bad, timeout=60)
    assert proc.returncode == 4  # pytest's usage error; `harness run` maps it to 2
    assert "bad.yaml:1: device.vendor: Field required" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_checks_without_profile_are_refused(fake_checks: Callable[..., Any]) -> None:
    proc = fake_checks(CHECKS, timeout=60)
    assert proc.returncode == 4
    assert "pass --profile PROFILE" in proc.stderr


def test_junit_validates_against_the_reference_schema(full_run: Any) -> None:
    xmlschema = pytest.importorskip("xmlschema")
    if not XSD.exists():
        pytest.skip(f"reference schema not found at {XSD}")
    _, _, _, out = full_run
    xmlschema.XMLSchema(str(XSD)).validate(str(out / "junit.xml"))


def test_junit_reads_back(full_run: Any) -> None:
    junitparser = pytest.importorskip("junitparser")
    _, results, _, out = full_run
    xml = junitparser.JUnitXml.fromfile(str(out / "junit.xml"))
    suites = {s.name: s for s in xml}
    assert len(suites) == 7
    fr1 = suites["FR1 Fake PLC"]
    props = {p.name: p.value for p in fr1.properties()}
    assert props["sl.claimed"] == "2" and props["sl.achieved"] == "0"
    assert props["device.firmware"] == "1.0"
    cases = {c.name: c for c in fr1}
    assert len(cases) == len(results["checks"])
    outcomes = {
        name: type(c.result[0]).__name__ if c.result else "passed" for name, c in cases.items()
    }
    assert outcomes["CR 1.1: Fails on an assert in the check body."] == "Failure"
    assert outcomes["CR 1.1: Cannot decide: the device did not answer."] == "Error"
    assert outcomes["CR 1.1: No OPC UA interface."] == "Skipped"
    assert outcomes["CR 1.1: Passes after observing something."] == "passed"
    assert all(name.startswith("CR 1.1") for name in cases)


def test_breaker_errors_later_checks_at_once_when_the_device_is_gone(
    tmp_path: Path, fake_checks: Callable[..., Any]
) -> None:
    code, results, output = run_pytest(fake_checks, tmp_path, "error,pass", port=free_port())
    assert code == 3, output
    v = verdicts(results)
    assert v["test_target_error"] == ("ERROR", "TargetError: no reply within 3 s")
    # every later check that needs the device is ERROR without being tried
    assert v["test_pass"][0] == "PASS"  # ran before the failure
    later = ["test_library_assert_is_error", "test_teardown_error", "test_bare_skip"]
    for name in later:
        assert v[name][0] == "ERROR"
        assert "device unavailable, not tried" in v[name][1], v[name]
        assert "127.0.0.1" in v[name][1]
