"""CR 1.11 on the serial console: after the declared number of failed logins the account locks."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.console import ConsoleAccount, ConsoleKit
    from harness.protocols.console import LoginResult

pytestmark = pytest.mark.requirement("CR 1.11")

#: A login after the threshold that takes at least this long counts as delayed, not accepted.
DELAY_MIN_S = 2.0
#: ... and at least this many times the control login's answer time.
DELAY_FACTOR = 10.0


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
    control = _right(console, account)
    if not control.accepted:
        time.sleep(policy.duration_s + _margin(policy.duration_s))
        control = _right(console, account)
        if not control.accepted:
            raise TargetError(f"control login as {account.describe()} refused: cannot test the "
                              "lockout")
    for _ in range(policy.threshold):
        if console.attempt(account.username, f"harness-wrong-{secrets.token_hex(6)}").accepted:
            raise TargetError(f"a wrong password was accepted for {account.describe()}")
    probe = _right(console, account)
    bound = max(DELAY_MIN_S, DELAY_FACTOR * control.elapsed_s)
    locked = not probe.accepted
    delayed = probe.accepted and probe.elapsed_s >= bound
    recovery = _wait_out(console, evidence, account, policy.duration_s) if locked else None
    evidence.note("judgement", threshold=policy.threshold, duration_s=policy.duration_s,
                  locked=locked, delayed=delayed, answer_s=probe.elapsed_s,
                  control_answer_s=control.elapsed_s, delay_bound_s=bound,
                  usable_again_after_s=recovery, ok=locked or delayed)
    assert locked or delayed, (
        f"after {policy.threshold} wrong passwords for {account.describe()} the console "
        f"accepted the right password at once ({probe.elapsed_s * 1000:.0f} ms): no lockout "
        "and no delay")


def _right(console: ConsoleKit, account: ConsoleAccount) -> LoginResult:
    return console.attempt(account.username, account.password)


def _margin(duration_s: float) -> float:
    return max(0.5, 0.1 * duration_s)


def _wait_out(console: ConsoleKit, evidence: Evidence, account: ConsoleAccount,
              duration_s: float) -> float | None:
    if duration_s <= 0:
        evidence.note("lockout until an administrator unlocks it (duration 0): not waited out")
        return None
    started = time.monotonic()
    for wait in (duration_s + _margin(duration_s), max(1.0, duration_s / 2)):
        time.sleep(wait)
        if _right(console, account).accepted:
            return round(time.monotonic() - started, 2)
    raise TargetError(f"{account.describe()} was still locked {time.monotonic() - started:.1f} s "
                      f"after the threshold (declared lockout {duration_s:g} s): later checks "
                      "would fail")
