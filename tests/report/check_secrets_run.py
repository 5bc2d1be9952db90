"""Fake checks that handle secrets every way a check can (run by test_secrets.py, not collected).

Each one resolves the profile's secrets and then puts them everywhere it can: exchanges, notes,
attachments, a timeline, last inputs, the failure message, an error message.
"""

from __future__ import annotations

import pytest

from harness.errors import TargetError
from harness.evidence import Evidence
from harness.profile import LoadedProfile, Profile
from harness.replay import LastInputs

pytestmark = [pytest.mark.requirement("CR 1.1"), pytest.mark.protocol("modbus_tcp")]


def secrets(loaded: LoadedProfile, prof: Profile) -> tuple[str, str]:
    admin, operator = prof.accounts.admin, prof.accounts.operator
    assert admin is not None and admin.password is not None
    assert operator is not None and operator.password is not None
    return loaded.secret(admin.password), loaded.secret(operator.password)


def spill(evidence: Evidence, value: str) -> None:
    evidence.sent("ssh://127.0.0.1:22", f"USER admin PASS {value}\r\n".encode(), f"login {value}")
    evidence.received("ssh://127.0.0.1:22", f"hello {value}".encode(), f"echo {value}")
    evidence.note(f"tried {value}", password=value, nested={"list": [value]})
    evidence.attach("transcript.txt", f"$ login\nPassword: {value}\nWelcome\n")
    evidence.timeline(
        "monitor", [{"t": 0.0, "ok": 1, "latency_ms": 3.0, "phase": "load", "note": value}]
    )
    recorder = LastInputs("modbus_tcp", "127.0.0.1:502")
    recorder.add(f"PASS {value}".encode(), note="the frame with the password")
    evidence.attach("last_inputs.json", recorder.to_json(monitor={"detail": value}))


def test_fail_with_secret(
    evidence: Evidence, loaded_profile: LoadedProfile, device_profile: Profile
) -> None:
    """Fails with the password in the message."""
    first, second = secrets(loaded_profile, device_profile)
    spill(evidence, first)
    spill(evidence, second)
    assert first == "", f"device accepted the password {first} and {second}"


def test_error_with_secret(
    evidence: Evidence, loaded_profile: LoadedProfile, device_profile: Profile
) -> None:
    """Cannot decide, and says the password."""
    first, second = secrets(loaded_profile, device_profile)
    spill(evidence, second)
    raise TargetError(f"login with {first} timed out")


def test_pass_with_secret(
    evidence: Evidence, loaded_profile: LoadedProfile, device_profile: Profile
) -> None:
    """Passes after handling the passwords."""
    first, _ = secrets(loaded_profile, device_profile)
    spill(evidence, first)
