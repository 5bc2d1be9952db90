"""The device profile: loading, every error path with file:line, secrets, derived views."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from harness.errors import ProfileError, SecretError
from harness.profile import Profile, SecretRef, load_profile

HERE = Path(__file__).parent
NEGATIVE = sorted((HERE / "profiles" / "negative").glob("*.yaml"))
TEMPLATE = HERE.parent / "device_profiles" / "template-plc.yaml"

MINIMAL = {
    "device": {"vendor": "A", "model": "B", "firmware": "1", "component_type": "embedded"},
    "claimed_sl": {"FR1": 2},
}


@pytest.mark.parametrize("path", NEGATIVE, ids=lambda p: p.stem)
def test_negative_fixture_reports_expected_message(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(path.parent)
    expected = path.with_suffix(".expected").read_text().strip()
    with pytest.raises(ProfileError) as info:
        load_profile(path.name)
    assert "\n".join(info.value.problems) == expected


def test_every_negative_fixture_has_an_expected_message() -> None:
    assert NEGATIVE, "no negative fixtures found"
    for path in NEGATIVE:
        assert path.with_suffix(".expected").exists(), path


def test_three_mistakes_are_all_reported_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "three.yaml"
    path.write_text(
        "device: {vendor: A, model: B, firmware: '1', component_type: embedded}\n"
        "claimed_sl:\n"
        "  FR2: 9\n"
        "interfaces:\n"
        "  modbus_tcp:\n"
        "    host: 999.1.1.1\n"
        "    unitid: 3\n"
    )
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    problems = info.value.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"{path}:3: claimed_sl.FR2: ")
    assert problems[1].startswith(f"{path}:6: interfaces.modbus_tcp.host: ")
    assert problems[2].startswith(f"{path}:7: interfaces.modbus_tcp.unitid: unknown key")


def test_missing_file_and_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "nope.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ProfileError, match="not a UTF-8 text file"):
        load_profile(binary)


def test_template_profile_is_valid() -> None:
    loaded = load_profile(TEMPLATE)
    assert loaded.profile.device.component_type.value == "embedded"
    assert loaded.profile.allow_list() == ["127.0.0.1/32"]
    assert len(loaded.sha256) == 64


def test_targets_must_cover_interface_hosts() -> None:
    data = {**MINIMAL, "interfaces": {"ssh": {"host": "127.0.0.5"}}, "targets": ["127.0.0.1"]}
    with pytest.raises(ValueError, match=r"interface host 127\.0\.0\.5 is not in the allow-list"):
        Profile.model_validate(data)


def test_allow_list_is_derived_from_interfaces() -> None:
    data = {
        **MINIMAL,
        "interfaces": {
            "ssh": {"host": "127.0.0.5"},
            "opcua": {"endpoint": "opc.tcp://127.0.0.6:4840/x"},
        },
    }
    prof = Profile.model_validate(data)
    assert prof.allow_list() == ["127.0.0.6", "127.0.0.5"]
    assert prof.interfaces.opcua is not None and prof.interfaces.opcua.port == 4840


def test_secret_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_TEST_PW", "s3cret-env")
    assert SecretRef("env:HARNESS_TEST_PW").resolve() == "s3cret-env"
    (tmp_path / "pw").write_text("s3cret-file\n")
    assert SecretRef("file:pw").resolve(tmp_path) == "s3cret-file"
    with pytest.raises(SecretError, match="HARNESS_MISSING_VAR is not set"):
        SecretRef("env:HARNESS_MISSING_VAR").resolve()
    with pytest.raises(SecretError, match="cannot read"):
        SecretRef("file:absent").resolve(tmp_path)


def test_inline_secret_never_printed_and_needs_the_flag() -> None:
    data = {**MINIMAL, "accounts": {"admin": {"username": "admin", "password": "hunter2!"}}}
    with pytest.raises(ValueError, match="inline secret refused"):
        Profile.model_validate(data)
    prof = Profile.model_validate({**data, "allow_insecure_inline_secrets": True})
    assert prof.inline_secret_warnings() == [
        "accounts.admin.password: inline secret (allowed by allow_insecure_inline_secrets)"
    ]
    admin = prof.accounts.admin
    assert admin is not None and admin.password is not None
    assert "hunter2!" not in repr(prof)
    assert "hunter2!" not in str(admin.password)
    assert "hunter2!" not in prof.model_dump_json()
    assert admin.password.resolve() == "hunter2!"


def test_waiver_expiry() -> None:
    data = {
        **MINIMAL,
        "waivers": [
            {"requirement": "CR 1.2", "justification": "firewall in front", "expires": "2026-01-31"}
        ],
    }
    waiver = Profile.model_validate(data).waivers[0]
    assert waiver.active(dt.date(2026, 1, 31))
    assert not waiver.active(dt.date(2026, 2, 1))


def test_profile_is_immutable() -> None:
    prof = Profile.model_validate(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        prof.targets = ["127.0.0.1"]  # type: ignore[misc]


def test_relative_files_resolve_against_the_profile(tmp_path: Path) -> None:
    shutil.copy(TEMPLATE, tmp_path / "p.yaml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "locktest.password").write_text("lock-pw\n")
    loaded = load_profile(tmp_path / "p.yaml")
    creds = loaded.profile.accounts.lockout_test
    assert creds is not None and creds.password is not None
    assert loaded.secret(creds.password) == "lock-pw"
