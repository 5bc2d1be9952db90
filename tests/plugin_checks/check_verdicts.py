"""Fake checks that end in every way a check can end (used by test_plugin.py, not collected)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.errors import TargetError
from harness.evidence import Evidence
from harness.verdict import fail, not_applicable, not_run

pytestmark = pytest.mark.requirement("CR 1.1")
OUTCOME = os.environ.get("HARNESS_FAKE_OUTCOMES", "all")


def _want(name: str) -> None:
    if OUTCOME != "all" and name not in OUTCOME.split(","):
        not_applicable(f"outcome {name} not selected")


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("fake.none")
def test_pass(evidence: Evidence) -> None:
    """Passes after observing something."""
    _want("pass")
    evidence.sent("modbus://127.0.0.1:502", b"\x00\x01", "request")
    evidence.received("modbus://127.0.0.1:502", b"\x00\x02", "reply")


@pytest.mark.protocol("modbus_tcp")
def test_assert_fail() -> None:
    """Fails on an assert in the check body."""
    _want("fail")
    observed = 3
    assert observed == 4, f"device answered {observed}"


@pytest.mark.protocol("modbus_tcp")
def test_violation() -> None:
    """Fails through fail()."""
    _want("fail")
    fail("write accepted")


@pytest.mark.protocol("modbus_tcp")
def test_target_error() -> None:
    """Cannot decide: the device did not answer."""
    _want("error")
    raise TargetError("no reply within 3 s")


@pytest.mark.protocol("modbus_tcp")
def test_library_assert_is_error() -> None:
    """An assert inside library code is a harness fault, not a device failure."""
    _want("error")
    import json

    json.loads("{", object_hook=lambda d: d)


@pytest.fixture
def broken_restore() -> Iterator[None]:
    yield None
    if OUTCOME == "all" or "error" in OUTCOME.split(","):
        raise RuntimeError("could not restore scratch register 100")


@pytest.mark.protocol("modbus_tcp")
def test_teardown_error(broken_restore: None) -> None:
    """Passes, but its restore fails: ERROR."""
    _want("error")


@pytest.mark.protocol("opcua")
def test_interface_absent() -> None:
    """No OPC UA interface."""


@pytest.mark.requirement("CR 1.1 RE(2)")
@pytest.mark.protocol("modbus_tcp")
def test_above_claim() -> None:
    """SL 3 requirement."""


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.disruptive(traffic="at most {max_request_rate:g} requests/s")
def test_disruptive() -> None:
    """Disruptive."""
    _want("pass")


@pytest.mark.protocol("modbus_tcp")
def test_runtime_not_applicable() -> None:
    """Decides at run time that it does not apply."""
    not_applicable("server exposes no audit events")


@pytest.mark.protocol("modbus_tcp")
def test_runtime_not_run() -> None:
    """Decides at run time that it must not run."""
    not_run("no lockout-test account declared")


@pytest.mark.protocol("modbus_tcp")
def test_bare_skip() -> None:
    """A bare skip is not a verdict."""
    _want("error")
    pytest.skip("undecided")
