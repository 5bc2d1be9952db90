"""CR 1.11 over OPC UA: after the declared number of failed logins the account locks (or
slows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.lockout import TRAFFIC, LoginOutcome, budget_s, run_lockout
from harness.safety import Deadline

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 1.11")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.no_lockout")
@pytest.mark.disruptive(traffic=TRAFFIC)
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
    right = account.password or ""  # the fixture refuses an account without a password

    def try_login(password: str, label: str) -> LoginOutcome:
        identity = account if password == right else Identity(
            "username", account.username, password, label="lockout_test account, wrong password")
        result = opcua.attempt(identity=identity, label=label)
        return LoginOutcome.of(result.accepted, result.elapsed_s,
                               f"{result.status} at {result.stage}", status=result.status,
                               stage=result.stage)

    result = run_lockout(try_login, policy, who=account.describe(), password=right,
                         evidence=evidence, deadline=Deadline(budget_s(policy, opcua.safety)))
    assert result.ok, (
        f"after {policy.threshold} wrong passwords for {account.describe()} the right password "
        f"was accepted at once ({result.probe.elapsed_s * 1000:.0f} ms): no lockout and no delay")
