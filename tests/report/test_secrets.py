"""No file of a run folder holds a secret, in any encoding a reporter might use."""

from __future__ import annotations

import html
import json
import subprocess
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

HERE = Path(__file__).parent
CHECKS = HERE / "check_secrets_run.py"
ENV_SECRET = "Tr0ub4dor&3-<horse>"
FILE_SECRET = "correct-horse-battery-staple-42"

PROFILE = """\
device: {{vendor: ACME, model: Secret PLC, firmware: '1.0', component_type: embedded}}
claimed_sl: {{FR1: 2}}
interfaces:
  modbus_tcp: {{host: 127.0.0.1, port: {port}}}
accounts:
  admin: {{username: admin, password: 'env:HARNESS_TEST_SECRET_A'}}
  operator: {{username: op, password: 'file:operator.secret'}}
"""


@pytest.fixture(scope="module")
def device_port(fake_modbus_port: int) -> int:
    """The fake device (tests/conftest.py) answers the health probe's Modbus read."""
    return fake_modbus_port


def encodings(secret: str) -> dict[str, bytes]:
    """The forms a secret could take in a report file."""
    return {
        "raw": secret.encode(),
        "html": html.escape(secret).encode(),
        "json": json.dumps(secret)[1:-1].encode(),
        "xml-attr": html.escape(secret, quote=True).encode(),
        "url": urllib.parse.quote(secret).encode(),
        "hex": secret.encode().hex().encode(),
    }


@pytest.fixture(scope="module")
def run_folder(
    tmp_path_factory: pytest.TempPathFactory,
    device_port: int,
    fake_checks: Callable[..., subprocess.CompletedProcess[str]],
) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("secrets")
    (tmp / "operator.secret").write_text(FILE_SECRET + "\n")
    profile = tmp / "profile.yaml"
    profile.write_text(PROFILE.format(port=device_port))
    out = tmp / "out"
    proc = fake_checks(
        CHECKS,
        profile=profile,
        out=out,
        timeout=100,
        env={"HARNESS_TEST_SECRET_A": ENV_SECRET, "CI": "true"},
    )
    assert (out / "manifest.json").exists(), proc.stdout + proc.stderr
    return out, proc.stdout + proc.stderr


def test_the_run_did_handle_the_secrets(run_folder: tuple[Path, str]) -> None:
    out, output = run_folder
    results = json.loads((out / "results.json").read_text())
    verdicts = {c["nodeid"].rsplit("::", 1)[1]: c for c in results["checks"]}
    assert verdicts["test_fail_with_secret"]["verdict"] == "FAIL", output
    assert "<redacted>" in verdicts["test_fail_with_secret"]["reason"]
    assert verdicts["test_error_with_secret"]["verdict"] == "ERROR"
    assert "<redacted>" in verdicts["test_error_with_secret"]["reason"]
    assert verdicts["test_pass_with_secret"]["verdict"] == "PASS"
    names = {Path(p).name for c in results["checks"] for p in c["evidence"]}
    assert {"exchanges.jsonl", "transcript.txt", "monitor.csv", "last_inputs.json"} <= names


def test_no_file_holds_a_secret(run_folder: tuple[Path, str]) -> None:
    out, _ = run_folder
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 8
    found = []
    for path in files:
        data = path.read_bytes()
        for secret in (ENV_SECRET, FILE_SECRET):
            for form, needle in encodings(secret).items():
                if needle in data:
                    found.append(f"{path.relative_to(out)}: {form} form of {secret[:4]}...")
            assert secret not in path.name
    assert not found, "\n".join(found)


def test_the_folder_is_consistent(run_folder: tuple[Path, str]) -> None:
    from harness.report.manifest import verify

    out, _ = run_folder
    assert verify(out) == []
