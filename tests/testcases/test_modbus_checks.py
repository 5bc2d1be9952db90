"""Proof of the Modbus/TCP and Modbus RTU checks: each FAILS on the lab with its single weakness
and PASSES on the hardened lab, and a failure's results.json carries the frames (hex).

One hardened lab (Modbus/TCP and RTU simulators) runs every check at once; then one lab per
weakness, with only the simulator it needs, runs only the checks that must FAIL there (that
no *other* check fails on a weakness is the job of ``tests/test_detection_matrix.py``).
The profiles' request timeout is cut to 1 s: the checks that wait for silence then take a second
per case instead of three.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(240)

UNAUTH = "test_plain_modbus_tcp_refuses_unauthenticated_writes"
PROT_TCP = "test_modbus_tcp_protected_points_refuse_writes"
PROT_RTU = "test_modbus_rtu_protected_points_refuse_writes"
INVALID = "test_modbus_tcp_rejects_invalid_requests"
MALFORMED = "test_modbus_tcp_survives_malformed_mbap"
UNITS = "test_modbus_tcp_ignores_unknown_unit_ids"
FUNCTION_CODES = "test_modbus_tcp_serves_only_declared_function_codes"
CONNECTIONS = "test_modbus_tcp_limits_connections"
CRC = "test_rtu_frame_with_bad_crc_gets_no_reply"
RTU_UNIT = "test_rtu_frame_for_another_unit_gets_no_reply"
BROADCAST = "test_rtu_broadcast_write_follows_declared_policy"
RTU_MALFORMED = "test_rtu_survives_malformed_frames"
ALL_CHECKS = (UNAUTH, PROT_TCP, PROT_RTU, INVALID, MALFORMED, UNITS, FUNCTION_CODES,
              CONNECTIONS, CRC, RTU_UNIT, BROADCAST, RTU_MALFORMED)
#: Checks that write, and so must leave a "restored" note after changing a value.
WRITERS = (UNAUTH, PROT_TCP, PROT_RTU, BROADCAST)
#: Checks whose failure is a missing reply: only the request that preceded it is in the reason.
NO_REPLY = (MALFORMED, RTU_MALFORMED, BROADCAST)


def fast_profile(running: Any, write_profile: Callable[[dict[str, Any], str], Path]) -> Path:
    """The lab's profile with a 1 s request timeout."""
    data = running.profile()
    data["safety"]["request_timeout_s"] = 1.0
    return write_profile(data, "profile.yaml")


def by_name(run: Any) -> dict[str, dict[str, Any]]:
    """Check function name -> its results.json entry, for the Modbus checks that ran."""
    return {c["nodeid"].split("::")[-1]: c for c in run.results.get("checks", [])
            if c["nodeid"].split("::")[-1] in ALL_CHECKS}


def explain(run: Any) -> str:
    return f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-2000:]}"


def assert_frames_in_results(name: str, check: dict[str, Any]) -> None:
    """The request (and reply) named in the FAIL reason are recorded in the observations."""
    reason = check["reason"]
    observed = json.dumps(check["observations"])
    if name == CONNECTIONS:  # the finding is a count; the reads on each connection are there
        kinds = {(o["kind"], "hex" in o) for o in check["observations"]}
        assert ("sent", True) in kinds and ("received", True) in kinds, observed
        return
    requests = re.findall(r"(?:request|last frame sent) ([0-9a-f]{8,})", reason)
    assert requests, f"{name}: no request frame in the reason: {reason}"
    for frame in requests:
        assert frame in observed, f"{name}: request {frame} not in the observations"
    if name not in NO_REPLY:
        replies = re.findall(r"reply ([0-9a-f]{8,})", reason)
        assert replies, f"{name}: no reply frame in the reason: {reason}"
        for frame in replies:
            assert frame in observed, f"{name}: reply {frame} not in the observations"
    if name in WRITERS:
        assert any(o["summary"] == "restored" for o in check["observations"]), observed
        assert "could not restore" not in reason


def test_hardened_lab_passes_every_modbus_check(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    running = lab(["modbus_tcp", "modbus_rtu"])
    run = run_harness(fast_profile(running, write_profile), k=" or ".join(ALL_CHECKS))
    checks = by_name(run)
    assert sorted(checks) == sorted(ALL_CHECKS), explain(run)
    verdicts = {name: c["verdict"] for name, c in checks.items()}
    assert verdicts == dict.fromkeys(ALL_CHECKS, "PASS"), {
        name: c["reason"] for name, c in checks.items() if c["verdict"] != "PASS"}
    assert run.code == 0


@pytest.mark.parametrize("case", [
    ("modbus.unauthenticated_writes", ["modbus_tcp"], (UNAUTH,)),
    ("modbus.unprotected_writes", ["modbus_rtu"], (PROT_RTU,)),
    ("modbus.no_input_validation", ["modbus_tcp"], (INVALID,)),
    ("modbus.crash_on_malformed", ["modbus_tcp"], (MALFORMED,)),
    ("modbus.any_unit_id", ["modbus_tcp"], (UNITS,)),
    ("modbus.extra_function_codes", ["modbus_tcp"], (FUNCTION_CODES,)),
    ("modbus.no_connection_limit", ["modbus_tcp"], (CONNECTIONS,)),
    ("rtu.ignores_crc", ["modbus_rtu"], (CRC,)),
    ("rtu.any_unit_id", ["modbus_rtu"], (RTU_UNIT,)),
    ("rtu.accepts_broadcast", ["modbus_rtu"], (BROADCAST,)),
    ("rtu.crash_on_malformed", ["modbus_rtu"], (RTU_MALFORMED,)),
], ids=lambda case: case[0])
def test_single_weakness_fails_its_check(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path],
        case: tuple[str, list[str], tuple[str, ...]]) -> None:
    weakness, simulators, failing = case
    running = lab(simulators, weaknesses=[weakness])
    run = run_harness(fast_profile(running, write_profile), k=" or ".join(failing))
    checks = by_name(run)
    assert sorted(checks) == sorted(failing), explain(run)
    for name in failing:
        assert checks[name]["verdict"] == "FAIL", f"{name}: {checks[name]['reason']}"
        assert checks[name]["weakness"] == weakness
        assert_frames_in_results(name, checks[name])
    assert run.code == 1


def test_tcp_protected_points_fail_when_plain_tcp_writes_reach_open_ranges(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    """The Modbus/TCP variant of the protected-points check, on the only lab where it can fail.

    ``modbus.unprotected_writes`` alone cannot be seen over plain Modbus/TCP: the hardened
    simulator refuses every plain-TCP write with exception 01 before it looks at the range.
    With plain-TCP writes allowed as well, the open ranges show, and the check FAILS.
    """
    running = lab(["modbus_tcp"],
                  weaknesses=["modbus.unauthenticated_writes", "modbus.unprotected_writes"])
    run = run_harness(fast_profile(running, write_profile), k=PROT_TCP)
    checks = by_name(run)
    assert checks[PROT_TCP]["verdict"] == "FAIL", checks[PROT_TCP]["reason"]
    for fc in ("FC 6", "FC 16", "FC 22", "FC 23", "FC 5", "FC 15"):
        assert f"{fc} " in checks[PROT_TCP]["reason"], fc
    assert_frames_in_results(PROT_TCP, checks[PROT_TCP])
