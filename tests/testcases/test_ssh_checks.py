"""Proof of the SSH checks: each FAILS on an SSH-only lab with exactly its single weakness, all
PASS on the hardened lab, and missing profile items give ERROR (or NOT APPLICABLE), never PASS.

Labs use a fast device policy (lockout 2 failures / 1 s, idle 1.5 s, 2 sessions) and profiles
with short load caps, so the whole module stays around a minute.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

FAST = {"lockout_threshold": 2, "lockout_duration_s": 1, "idle_timeout_s": 1.5,
        "session_limit": 2}

#: weakness -> (check, text the failure reason must contain: what was offered or accepted)
CHECKS: dict[str, tuple[str, str]] = {
    "ssh.weak_algorithms": ("test_ssh_offers_only_accepted_algorithms",
                            "kex diffie-hellman-group1-sha1"),
    "ssh.weak_host_key": ("test_ssh_host_keys_are_strong", "ssh-rsa 1024 bits"),
    "ssh.none_auth": ("test_ssh_refuses_none_authentication", "accepted authentication method "
                                                              "'none'"),
    "ssh.extra_auth_methods": ("test_ssh_offers_only_declared_auth_methods",
                               "['keyboard-interactive']"),
    "ssh.default_credentials": ("test_ssh_refuses_default_credentials", "admin/admin (built-in)"),
    "ssh.no_lockout": ("test_ssh_locks_out_after_failed_logins",
                       "after 2 wrong passwords for lockout_test"),
    "ssh.no_banner": ("test_ssh_shows_banner_before_login", "no SSH_MSG_USERAUTH_BANNER"),
    "ssh.no_session_limit": ("test_ssh_limits_concurrent_sessions",
                             "3 SSH sessions were usable at once (declared limit 2)"),
    "ssh.no_idle_timeout": ("test_ssh_ends_idle_sessions", "was still open after"),
    "load.fragile": ("test_ssh_survives_connection_storm", "'state: stalled'"),
}
NAMES = [name for name, _ in CHECKS.values()]


def fast_profile(running: Any, write_profile: Callable[[dict[str, Any], str], Path],
                 name: str = "fast.yaml", **changes: Any) -> tuple[Path, dict[str, Any]]:
    profile = running.profile()
    profile["safety"].update(max_load_duration_s=1, recovery_wait_s=1)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = profile
        for key in path:
            target = target[key]
        if value is None:
            target.pop(last, None)
        else:
            target[last] = value
    return write_profile(profile, name), profile


def test_hardened_passes_and_profile_gaps_never_pass(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    running = lab(["ssh"], policy=FAST)
    path, _ = fast_profile(running, write_profile)
    run = run_harness(path, k=" or ".join(NAMES))
    got = run.protocol_verdicts("ssh")
    assert got == dict.fromkeys(NAMES, "PASS"), {n: run.reason(n) for n in got}
    assert run.code == 0
    algorithms = next(run.out.glob("evidence/*accepted_algorithms*/algorithms.json"))
    data = json.loads(algorithms.read_text())
    assert data["policy"] == "harness-ssh-v1"
    judged = {a["name"]: a["judgement"] for a in data["assessments"]}
    assert judged["mlkem768x25519-sha256"] == "pass" and judged["aes256-ctr"] == "pass"
    exchanges = next(run.out.glob("evidence/*refuses_default_credentials*/exchanges.jsonl"))
    plan = next(e for e in map(json.loads, exchanges.read_text().splitlines())
                if e["summary"] == "plan")
    assert "root" in plan["data"]["not_tried_undeclared_users"]  # never sent: not declared
    assert "admin/admin (built-in)" in plan["data"]["candidates"]["admin"]

    # profile gaps: no lockout policy, no idle timeout, no session limit -> ERROR naming the
    # gap; no banner required -> NOT APPLICABLE
    gaps = {"test_ssh_locks_out_after_failed_logins": "expectations.lockout",
            "test_ssh_ends_idle_sessions": "expectations.idle_timeout_s",
            "test_ssh_limits_concurrent_sessions": "expectations.session_limit"}
    path, _ = fast_profile(running, write_profile, "gaps.yaml", expectations__lockout=None,
                           expectations__idle_timeout_s=None,
                           expectations__session_limit=None,
                           expectations__banner_required=False)
    names = [*gaps, "test_ssh_shows_banner_before_login"]
    run = run_harness(path, k=" or ".join(names))
    got = run.protocol_verdicts("ssh")
    assert got == {**dict.fromkeys(gaps, "ERROR"),
                   "test_ssh_shows_banner_before_login": "NOT APPLICABLE"}, got
    for name, field in gaps.items():
        assert f"profile gap: the check needs {field}" in run.reason(name)


@pytest.mark.parametrize("weakness", list(CHECKS))
def test_each_weakness_fails_its_check(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path], weakness: str) -> None:
    name, evidence_text = CHECKS[weakness]
    running = lab(["ssh"], weaknesses=[weakness], policy=FAST)
    path, _ = fast_profile(running, write_profile)
    run = run_harness(path, k=name)
    assert run.protocol_verdicts("ssh") == {name: "FAIL"}, run.reason(name)
    assert evidence_text in run.reason(name)
    assert run.code == 1


def test_ssh1_server_fails_the_algorithm_check(
        run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    """No simulator speaks SSH 1: a fake server announcing ``SSH-1.99`` stands in."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError), conn:
                conn.sendall(b"SSH-1.99-OldDevice_1.0\r\n")
                conn.settimeout(2)
                conn.recv(256)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        profile = {
            "schema_version": 1,
            "device": {"vendor": "test", "model": "old", "firmware": "1",
                       "component_type": "embedded"},
            "claimed_sl": {"FR4": 1},
            "interfaces": {"ssh": {"host": "127.0.0.1", "port": listener.getsockname()[1]}},
            "targets": ["127.0.0.1"],
        }
        run = run_harness(write_profile(profile, "ssh1.yaml"),
                          k="test_ssh_offers_only_accepted_algorithms")
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)
    assert run.protocol_verdicts("ssh") == {"test_ssh_offers_only_accepted_algorithms": "FAIL"}
    assert "offers SSH protocol 1 (identification 'SSH-1.99-OldDevice_1.0')" in run.reason(
        "test_ssh_offers_only_accepted_algorithms")
