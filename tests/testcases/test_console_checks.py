"""Proof of the serial-console checks: each FAILS on a console-only lab with exactly its single
weakness, all PASS on the hardened lab; a console without login makes the checks that need a
login ERROR (never PASS), and missing profile items give ERROR or NOT APPLICABLE.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

FAST = {"lockout_threshold": 2, "lockout_duration_s": 1, "idle_timeout_s": 1.5}

#: weakness -> (check, text the failure reason must contain)
CHECKS: dict[str, tuple[str, str]] = {
    "console.no_login": ("test_console_requires_login", "command prompt without any login"),
    "console.default_credentials": ("test_console_refuses_default_credentials",
                                    "admin/admin (built-in)"),
    "console.no_lockout": ("test_console_locks_out_after_failed_logins",
                           "accepted the right password at once"),
    "console.no_banner": ("test_console_shows_banner_before_login",
                          "no system-use notification before the login prompt"),
    "console.no_idle_logout": ("test_console_logs_out_idle_sessions", "still logged in after"),
    "console.debug_menu_unauthenticated": ("test_console_has_no_unauthenticated_debug_menu",
                                           "debug -> FACTORY MENU"),
}
NAMES = [name for name, _ in CHECKS.values()]
#: Checks that need a login prompt to test from.
NEED_LOGIN = ("test_console_refuses_default_credentials",
              "test_console_locks_out_after_failed_logins",
              "test_console_logs_out_idle_sessions",
              "test_console_has_no_unauthenticated_debug_menu")


def test_hardened_passes_and_profile_gaps_never_pass(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    running = lab(["console"], policy=FAST)
    run = run_harness(running.profile_path, k=" or ".join(NAMES))
    got = run.protocol_verdicts("console")
    assert got == dict.fromkeys(NAMES, "PASS"), {n: run.reason(n) for n in got}
    assert run.code == 0

    profile = running.profile()
    del profile["accounts"]["lockout_test"]
    profile["expectations"].pop("idle_timeout_s")
    profile["expectations"]["banner_required"] = False
    names = ["test_console_locks_out_after_failed_logins", "test_console_logs_out_idle_sessions",
             "test_console_shows_banner_before_login"]
    run = run_harness(write_profile(profile, "gaps.yaml"), k=" or ".join(names))
    assert run.protocol_verdicts("console") == {
        "test_console_locks_out_after_failed_logins": "ERROR",
        "test_console_logs_out_idle_sessions": "ERROR",
        "test_console_shows_banner_before_login": "NOT APPLICABLE"}
    assert "no accounts.lockout_test" in run.reason("test_console_locks_out_after_failed_logins")
    assert "expectations.idle_timeout_s" in run.reason("test_console_logs_out_idle_sessions")


@pytest.mark.parametrize("weakness", list(CHECKS))
def test_each_weakness_fails_its_check(
        lab: Callable[..., Any], run_harness: Callable[..., Any], weakness: str) -> None:
    name, text = CHECKS[weakness]
    running = lab(["console"], weaknesses=[weakness], policy=FAST)
    if weakness != "console.no_login":
        run = run_harness(running.profile_path, k=name)
        assert run.protocol_verdicts("console") == {name: "FAIL"}, run.reason(name)
        assert text in run.reason(name)
        return
    # without a login the checks that need one cannot decide: ERROR, never PASS
    run = run_harness(running.profile_path, k=" or ".join(NAMES))
    got = run.protocol_verdicts("console")
    assert got == {**dict.fromkeys(NAMES, "ERROR"), name: "FAIL",
                   "test_console_shows_banner_before_login": "PASS"}, {
        n: run.reason(n) for n in got}
    assert text in run.reason(name) and "'help' answered" in run.reason(name)
    for other in NEED_LOGIN:
        assert "no login prompt" in run.reason(other)
