"""CR 1.5 on the serial console: factory-default credentials are refused."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from harness.default_credentials import Candidate, batch_size, plan, run
from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.console import ConsoleAccount, ConsoleKit

pytestmark = pytest.mark.requirement("CR 1.5")


@pytest.mark.protocol("console")
@pytest.mark.weakness("console.default_credentials")
@pytest.mark.disruptive(traffic="at most 25 default passwords per declared account on the "
                                "console, in batches below the declared lockout threshold, each "
                                "batch followed by one login with the account's real password")
def test_console_refuses_default_credentials(console: ConsoleKit, evidence: Evidence) -> None:
    """No declared account accepts a factory-default or trivial password on the console.

    Requirement: CR 1.5 (authenticator management): default authenticators are changed at
    installation; a console that still takes admin/admin gives the plant to whoever has a cable.

    Procedure: as the SSH check (``test_ssh_refuses_default_credentials``, see
    :mod:`harness.default_credentials`): vendor defaults from the profile, the built-in OT list
    and the user name as password, only for declared user names (the others are listed as not
    tried), at most ``threshold - 1`` wrong passwords in a row per account, the real password
    before the first batch, between batches and at the end. Each attempt is a whole login
    dialogue; an accepted one is logged out at once.

    Pass: every candidate refused. Fail: any accepted (user and source in the reason). A
    console without login cannot be tested: ERROR (the CR 1.1 check reports it).
    """
    lockout = console.expectations.lockout
    size = batch_size(lockout.threshold if lockout else None)
    wait_s = lockout.duration_s if lockout is not None else 0.0
    accounts: dict[str, ConsoleAccount] = {}
    for account in console.accounts():
        accounts.setdefault(account.username, account)
    declared = list(dict.fromkeys(c.username for _r, c in console.profile.iter_accounts()))
    vendor = [(user, console.loaded.secret(ref))
              for user, ref in console.expectations.default_credentials]
    todo = plan(declared, vendor)
    evidence.note("plan", batch=size,
                  candidates={u: [c.describe() for c in cs] for u, cs in todo.per_user.items()},
                  not_tried_undeclared_users=todo.undeclared,
                  not_tried_vendor_users=todo.undeclared_vendor)
    console.client.to_login_prompt()  # a console without login is an ERROR here, not a PASS

    def attempt(cand: Candidate) -> bool:
        result = console.attempt(cand.username, cand.password)
        evidence.note("default credential", candidate=cand.describe(), accepted=result.accepted)
        return result.accepted

    def reset(user: str, first: bool) -> None:
        account = accounts[user]
        if console.attempt(account.username, account.password).accepted:
            return
        if first and wait_s > 0:
            time.sleep(wait_s + max(0.5, 0.1 * wait_s))
            if console.attempt(account.username, account.password).accepted:
                return
        raise TargetError(f"the console login with the real password of {account.describe()} "
                          "was refused: the account may be locked; the declared lockout "
                          "threshold may be wrong")

    outcome = run(todo, size=size, can_reset=lambda u: u in accounts, attempt=attempt,
                  reset=reset)
    evidence.note("judgement", accepted=[c.describe() for c in outcome.accepted],
                  not_tried=[c.describe() for c in outcome.not_tried],
                  attempts=outcome.attempts, ok=not outcome.accepted)
    assert not outcome.accepted, (
        "the console accepted default credentials: "
        + ", ".join(c.describe() for c in outcome.accepted))
