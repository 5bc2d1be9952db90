"""Proof of the OPC UA audit check (CR 2.8): PASS on the hardened lab, FAIL on ``opcua.no_audit``
(with what was observed in the reason and the evidence), NOT APPLICABLE on a server without
auditing.

The lab cannot pass simulator options, and a server without auditing is not a weakness, so the
not-applicable proof starts a second OPC UA simulator next to a hardened lab, with the lab's own
accounts and ``--auditing off``, and points a copy of the lab's profile at it. Every run is
``harness run`` as a subprocess; verdicts and evidence are read from results.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECK = "test_opcua_failed_login_is_audited"
#: The lab's device policy: small numbers, one wrong password never locks.
POLICY = {"lockout_threshold": 2, "lockout_duration_s": 1.5, "idle_timeout_s": 2.0,
          "session_limit": 2}
#: Seconds the extra simulator has to print its ready line.
READY_S = 30.0


def _check(run: Any) -> dict[str, Any]:
    (found,) = run.checks(f"::{CHECK}")
    return dict(found)


def _notes(check: dict[str, Any], summary: str) -> list[dict[str, Any]]:
    return [o.get("data", {}) for o in check["observations"] if o["summary"] == summary]


def _judgement(check: dict[str, Any]) -> dict[str, Any]:
    notes = _notes(check, "judgement")
    assert notes, f"{CHECK} recorded no judgement: {check['reason']}"
    return notes[-1]


def _lockout_user(profile: dict[str, Any]) -> str:
    return str(profile["accounts"]["lockout_test"]["username"])


def _secrets(state_dir: Path) -> list[str]:
    found = [p.read_text().strip() for p in (state_dir / "secrets").glob("*.password")]
    assert found
    return found


def _written(out: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in out.rglob("*") if p.is_file())


def test_hardened_passes_on_the_audit_event_of_the_refused_login(
        lab: Callable[..., Any], run_harness: Callable[..., Any]) -> None:
    running = lab(["opcua"], policy=POLICY)
    run = run_harness(running.profile_path, k=CHECK)
    check = _check(run)
    assert check["verdict"] == "PASS", f"{check['reason']}\n{run.stdout[-3000:]}"
    assert run.code == 0
    assert check["requirement"] == "CR 2.8" and check["disruptive"]
    user = _lockout_user(running.profile())
    judged = _judgement(check)
    assert judged["auditing"] is True and judged["ok"] is True
    assert judged["subscriber"] == "admin"
    assert judged["attempt"] == {"user": user, "accepted": False, "stage": "ActivateSession",
                                 "status": "BadUserAccessDenied"}
    matched = judged["matched"]
    assert matched["event_type"] == "AuditActivateSessionEventType"
    assert matched["Status"] is False
    assert matched["ClientUserId"] == user
    assert matched["StatusCodeId"] == "BadUserAccessDenied"
    assert matched["UserIdentityToken"] == {"token": "UserNameIdentityToken", "user": user}
    (auditing,) = _notes(check, "Server.Auditing")
    assert auditing["value"] is True
    (subscription,) = _notes(check, "audit subscription")
    assert subscription["node"] == "i=2253" and subscription["subscription_id"]
    attempts = _notes(check, "session attempt")
    assert [a["accepted"] for a in attempts] == [False, True]  # the audited one, then the clear
    assert not [s for s in _secrets(running.state_dir) if s in _written(run.out)]


def test_no_audit_fails_and_says_what_was_observed(
        lab: Callable[..., Any], run_harness: Callable[..., Any]) -> None:
    running = lab(["opcua"], weaknesses=["opcua.no_audit"], policy=POLICY)
    run = run_harness(running.profile_path, k=CHECK)
    check = _check(run)
    assert check["verdict"] == "FAIL", f"{check['reason']}\n{run.stdout[-3000:]}"
    assert run.code == 1
    user = _lockout_user(running.profile())
    reason = check["reason"]
    for part in ("Server.Auditing is True", f"refused login of {user!r}",
                 "BadUserAccessDenied at ActivateSession", "no audit event arrived at all"):
        assert part in reason, reason
    judged = _judgement(check)
    assert judged["auditing"] is True and judged["ok"] is False
    assert judged["matched"] is None and judged["events_after_attempt"] == 0
    assert judged["subscription_alive"] is True  # keep-alives came: the silence is the device's
    assert judged["waited_s"] >= judged["wait_bound_s"]
    assert judged["attempt"]["status"] == "BadUserAccessDenied"


@contextlib.contextmanager
def _extra_opcua(running: Any, state: Path, *args: str) -> Iterator[dict[str, Any]]:
    """A second OPC UA simulator on the lab's address, with the lab's accounts and ``args``;
    yields its ready-line endpoints and stops it (SIGTERM, then SIGKILL) afterwards."""
    cmd = [sys.executable, "-m", "simulators.opcua", "--config",
           str(running.state_dir / "secrets" / "sim-config.json"), "--host",
           running.state["host"], "--port", "0", "--state-dir", str(state), *args]
    err = (state.parent / "extra-opcua.stderr").open("wb")
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=err, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err.close()
    try:
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + READY_S
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in line and time.monotonic() < deadline:
                if sel.select(deadline - time.monotonic()):
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    line += chunk
        assert b"\n" in line, f"extra simulator not ready: {line!r}"
        event = json.loads(line.split(b"\n", 1)[0])
        assert event["event"] == "ready", event
        assert event["weaknesses"] == []
        yield dict(event["endpoints"]["opcua"])
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_server_without_auditing_is_not_applicable(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path], tmp_path: Path) -> None:
    running = lab(["opcua"], policy=POLICY)
    state = tmp_path / "no-auditing"
    state.mkdir()
    with _extra_opcua(running, state, "--auditing", "off") as ep:
        profile = running.profile()
        iface = profile["interfaces"]["opcua"]
        iface.update(endpoint=ep["url"], client_cert=ep["client_cert"],
                     client_key=ep["client_key"], application_uri=ep["client_application_uri"],
                     ca_cert=ep["ca_cert"], ca_key=ep["ca_key"])
        run = run_harness(write_profile(profile, "no-auditing.yaml"), k=CHECK)
    check = _check(run)
    assert check["verdict"] == "NOT APPLICABLE", f"{check['reason']}\n{run.stdout[-3000:]}"
    assert run.code == 0
    assert "Server.Auditing (i=2994) reads False" in check["reason"]
    assert _judgement(check)["auditing"] is False
    (auditing,) = _notes(check, "Server.Auditing")
    assert auditing["value"] is False and auditing["status"] == "Good"
    assert not _notes(check, "session attempt")  # no wrong password was sent
    dialled = {o["channel"] for o in check["observations"] if o.get("channel")}
    assert dialled == {ep["url"]}  # the auditing-off server, not the lab's


def test_event_fields_keep_no_password_and_name_the_user() -> None:
    """What the check records of an event: an identity token keeps its type and user name only
    (a device that echoes the password in its audit event must not put it in our evidence)."""
    from asyncua import ua

    from harness.protocols.opcua import UaEvent, event_value

    token = ua.UserNameIdentityToken(PolicyId="username", UserName="locktest",
                                     Password=b"echoed-secret", EncryptionAlgorithm="rsa")
    assert event_value(token) == {"token": "UserNameIdentityToken", "user": "locktest"}
    assert "echoed-secret" not in json.dumps(event_value([token, token]))
    assert event_value(ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)) == "BadUserAccessDenied"
    assert event_value(ua.LocalizedText("refused")) == "refused"
    assert event_value(ua.NodeId(ua.ObjectIds.Server)) == "i=2253"
    by_token = UaEvent("AuditActivateSessionEventType",
                       {"Status": False, "UserIdentityToken": event_value(token)}, 0.0)
    by_message = UaEvent("AuditEventType", {"Message": "login of locktest refused"}, 0.0)
    other = UaEvent("AuditEventType", {"ClientUserId": "admin", "Status": True}, 0.0)
    assert by_token.mentions("locktest") and by_token.status is False
    assert by_message.mentions("locktest") and by_message.status is None
    assert not other.mentions("locktest") and not other.mentions("")
