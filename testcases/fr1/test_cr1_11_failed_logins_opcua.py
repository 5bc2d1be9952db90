"""CR 1.11 over OPC UA: after the declared number of failed logins the account locks (or
slows)."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa
    from harness.protocols.opcua import Attempt, Identity

pytestmark = pytest.mark.requirement("CR 1.11")

#: A login after the threshold that takes at least this long counts as delayed, not accepted.
DELAY_MIN_S = 2.0
#: ... and at least this many times the control login's answer time.
DELAY_FACTOR = 10.0


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.no_lockout")
@pytest.mark.disruptive(traffic="on the lockout-test account only: the declared threshold of "
                                "wrong passwords, one right one, and up to three logins after "
                                "waiting out the declared lockout duration")
def test_opcua_locks_out_after_failed_logins(opcua: OpcUa, evidence: Evidence) -> None:
    """After the declared number of wrong passwords the OPC UA login is locked (or delayed).

    Requirement: CR 1.11 (unsuccessful login attempts): the component enforces a limit of
    consecutive invalid attempts and then denies access for a period (or until an
    administrator unlocks it). The profile declares the policy (``expectations.lockout``:
    threshold, duration) and a dedicated account the check may lock (``accounts.lockout_test``).

    Procedure: every attempt is a full session set-up on the session endpoint (a secured
    channel, so the password never travels in clear) with the profile's client certificate and
    the account's user name. A control login with the right password (if the account is still locked
    from earlier, the declared duration is waited out once first); then ``threshold`` logins
    with wrong passwords, then one with the right password: while locked it must be refused. A
    device that delays instead of locking passes when that login takes at least max(2 s, 10x the
    control login). Then the lockout is waited out (the declared duration plus a margin) and the
    right password must work again, so later checks find the account usable; a duration of 0
    means "until an administrator unlocks it" and is not waited for.

    Pass: the right password is refused (or delayed) after the threshold (its status is in the
    evidence, e.g. ``BadUserAccessDenied``). Fail: it is accepted at once. An account still
    locked long after the declared duration is an ERROR (the device did not do what its profile
    says, and later checks would fail).
    """
    from harness.protocols.opcua import Identity, ProfileGap

    policy = opcua.expectations.lockout
    if policy is None:
        raise ProfileGap("profile gap: the check needs expectations.lockout (threshold, "
                         "duration_s)")
    account = opcua.account("lockout_test")
    control = _right_password(opcua, account, "control")
    if not control.accepted:
        time.sleep(policy.duration_s + _margin(policy.duration_s))
        control = _right_password(opcua, account, "control (after waiting out a lockout)")
        if not control.accepted:
            raise TargetError(f"control login as {account.describe()} refused "
                              f"({control.status} at {control.stage}): cannot test the lockout")
    for i in range(policy.threshold):
        wrong = Identity("username", account.username, f"harness-wrong-{secrets.token_hex(6)}",
                         label="lockout_test account, wrong password")
        result = opcua.attempt(identity=wrong, label=f"wrong password {i + 1}")
        if result.accepted:
            raise TargetError(f"a wrong password was accepted for {account.describe()}")
    probe = _right_password(opcua, account, "right password after the threshold")
    bound = max(DELAY_MIN_S, DELAY_FACTOR * control.elapsed_s)
    locked = not probe.accepted
    delayed = probe.accepted and probe.elapsed_s >= bound
    recovery = _wait_out(opcua, evidence, account, policy.duration_s) if locked else None
    evidence.note("judgement", threshold=policy.threshold, duration_s=policy.duration_s,
                  locked=locked, delayed=delayed, status=probe.status, stage=probe.stage,
                  answer_s=probe.elapsed_s, control_answer_s=control.elapsed_s,
                  delay_bound_s=bound, usable_again_after_s=recovery, ok=locked or delayed)
    assert locked or delayed, (
        f"after {policy.threshold} wrong passwords for {account.describe()} the right password "
        f"was accepted at once ({probe.elapsed_s * 1000:.0f} ms): no lockout and no delay")


def _right_password(opcua: OpcUa, account: Identity, label: str) -> Attempt:
    return opcua.attempt(identity=account, label=label)


def _margin(duration_s: float) -> float:
    return max(0.5, 0.1 * duration_s)


def _wait_out(opcua: OpcUa, evidence: Evidence, account: Identity, duration_s: float
              ) -> float | None:
    """Wait out the lockout; return when the account worked again (None: not waited)."""
    if duration_s <= 0:
        evidence.note("lockout until an administrator unlocks it (duration 0): not waited out")
        return None
    started = time.monotonic()
    for wait in (duration_s + _margin(duration_s), max(1.0, duration_s / 2)):
        time.sleep(wait)
        if _right_password(opcua, account, "after the lockout").accepted:
            return round(time.monotonic() - started, 2)
    raise TargetError(f"{account.describe()} was still locked {time.monotonic() - started:.1f} s "
                      f"after the threshold (declared lockout {duration_s:g} s): later checks "
                      "would fail")
