"""CR 1.11 over SSH: after the declared number of failed logins the account locks (or slows)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.lockout import TRAFFIC, LoginOutcome, budget_s, run_lockout
from harness.safety import Deadline

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.ssh import Ssh

pytestmark = pytest.mark.requirement("CR 1.11")


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.no_lockout")
@pytest.mark.disruptive(traffic=TRAFFIC)
def test_ssh_locks_out_after_failed_logins(ssh: Ssh, evidence: Evidence) -> None:
    """After the declared number of wrong passwords the SSH login is locked (or delayed).

    Requirement: CR 1.11 (unsuccessful login attempts): the component enforces a limit of
    consecutive invalid attempts and then denies access for a period (or until an
    administrator unlocks it). The profile declares the policy (``expectations.lockout``:
    threshold, duration) and a dedicated account the check may lock (``accounts.lockout_test``).

    Procedure: a control login with the account's real password (if the account is still
    locked from earlier, the declared duration is waited out once first); then ``threshold``
    logins with wrong passwords, then one with the right password: while locked it must be
    refused. A device that delays instead of locking passes when that login takes at least
    max(2 s, 10x the control login). Then the lockout is waited out (the declared duration plus
    a margin) and the right password must work again, so later checks find the account usable;
    a duration of 0 means "until an administrator unlocks it" and is not waited for. Every
    attempt uses a fresh connection and the ``password`` method.

    Pass: the right password is refused (or delayed) after the threshold. Fail: it is accepted
    at once. An account still locked long after the declared duration is an ERROR (the device
    did not do what its profile says, and later checks would fail).
    """
    from harness.protocols.ssh import ProfileGap

    policy = ssh.expectations.lockout
    if policy is None:
        raise ProfileGap("profile gap: the check needs expectations.lockout (threshold, "
                         "duration_s)")
    account = ssh.account("lockout_test")
    if account.password is None:
        raise ProfileGap("profile gap: accounts.lockout_test needs a password")

    def try_login(password: str, label: str) -> LoginOutcome:
        result = ssh.attempt(account.username, "password", password=password, label=label)
        return LoginOutcome.of(result.accepted, result.elapsed_s, result.detail)

    result = run_lockout(try_login, policy, who=account.describe(), password=account.password,
                         evidence=evidence, deadline=Deadline(budget_s(policy, ssh.safety)))
    assert result.ok, (
        f"after {policy.threshold} wrong passwords for {account.describe()} the right password "
        f"was accepted at once ({result.probe.elapsed_s * 1000:.0f} ms): no lockout and no delay")
