"""CR 1.11 on the serial console: after the declared number of failed logins the account locks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.lockout import LoginOutcome, budget_s, run_lockout
from harness.safety import Deadline

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.console import ConsoleKit

pytestmark = pytest.mark.requirement("CR 1.11")


@pytest.mark.protocol("console")
@pytest.mark.weakness("console.no_lockout")
@pytest.mark.disruptive(traffic="on the lockout-test account only: the declared threshold of "
                                "wrong passwords on the console, one right one, and up to three "
                                "logins after waiting out the declared lockout duration")
def test_console_locks_out_after_failed_logins(console: ConsoleKit, evidence: Evidence) -> None:
    """After the declared number of wrong passwords the console login is locked (or delayed).

    Requirement: CR 1.11 (unsuccessful login attempts), on the local console: the limit must
    hold for someone with a cable and time, too. Policy and account come from the profile
    (``expectations.lockout``, ``accounts.lockout_test``).

    Procedure: as the SSH check (``test_ssh_locks_out_after_failed_logins``), each attempt a
    whole login dialogue: a control login with the real password (a leftover lockout is waited
    out once), ``threshold`` wrong passwords, then the right one, which must be refused while
    locked (a console says ``Login incorrect`` for both, which is as it should be: nothing is
    disclosed) or take at least max(2 s, 10x the control login) to be answered. Then the
    declared duration is waited out and the right password must work again (duration 0 = until
    an administrator unlocks: not waited).

    Pass: refused (or delayed) after the threshold. Fail: accepted at once. Still locked long
    after the declared duration: ERROR.
    """
    from harness.fixtures.console import ConsoleProfileGap

    policy = console.expectations.lockout
    if policy is None:
        raise ConsoleProfileGap("profile gap: the check needs expectations.lockout "
                                "(threshold, duration_s)")
    account = console.account("lockout_test")

    def try_login(password: str, _label: str) -> LoginOutcome:  # the console has no labels
        result = console.attempt(account.username, password)
        return LoginOutcome.of(result.accepted, result.elapsed_s)

    result = run_lockout(try_login, policy, who=account.describe(), password=account.password,
                         evidence=evidence, deadline=Deadline(budget_s(policy, console.safety)))
    assert result.ok, (
        f"after {policy.threshold} wrong passwords for {account.describe()} the console "
        f"accepted the right password at once ({result.probe.elapsed_s * 1000:.0f} ms): no "
        "lockout and no delay")
