"""CR 1.5 over SSH: factory-default credentials are refused on every declared account."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from harness.default_credentials import Candidate, batch_size, plan, run
from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.ssh import Ssh, SshAccount

pytestmark = pytest.mark.requirement("CR 1.5")


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.default_credentials")
@pytest.mark.disruptive(traffic="at most 25 default passwords per declared SSH account, in "
                                "batches below the declared lockout threshold, each batch "
                                "followed by one login with the account's real password")
def test_ssh_refuses_default_credentials(ssh: Ssh, evidence: Evidence) -> None:
    """No declared SSH account accepts a factory-default or trivial password.

    Requirement: CR 1.5 (authenticator management): the component supports changing default
    authenticators at installation; a device still accepting a factory default (admin/admin)
    has an authenticator every attacker knows.

    Procedure (:mod:`harness.default_credentials`): the candidates per declared user name are
    the profile's vendor defaults (``expectations.default_credentials``), a bounded built-in
    list of common OT defaults whose user name is declared, and the user name as password.
    Only declared user names are tried: built-in names the profile does not declare (``root``
    and others) are listed in the evidence as *not tried*, because on a bench an undeclared
    account may be a real one a lockout would take from its owners. To stay under the lockout
    rules, at most ``threshold - 1`` wrong passwords go to one account in a row (one when the
    profile declares no lockout policy); one login with the account's real password clears the
    failure count before the first batch (failures left by earlier checks; a lockout left by
    them is waited out once), between batches and at the end. Every attempt
    uses a fresh connection and the ``password`` method (``keyboard-interactive`` when the
    server offers only that).

    Pass: every candidate is refused, or the server offers no password-based method at all
    (noted). Fail: any candidate is accepted (user name and source in the reason; vendor
    passwords from the profile are never printed).
    """
    from harness.protocols.ssh import throwaway_key

    lockout = ssh.expectations.lockout
    size = batch_size(lockout.threshold if lockout else None)
    accounts: dict[str, SshAccount] = {}
    for account in ssh.accounts():
        accounts.setdefault(account.username, account)
    vendor = [(user, ssh.loaded.secret(ref)) for user, ref in ssh.expectations.default_credentials]
    todo = plan(list(accounts), vendor)
    evidence.note("plan", batch=size,
                  candidates={u: [c.describe() for c in cs] for u, cs in todo.per_user.items()},
                  not_tried_undeclared_users=todo.undeclared,
                  not_tried_vendor_users=todo.undeclared_vendor)
    first = next(iter(accounts), "harness-probe")
    methods = ssh.attempt(first, "none", label="method list")
    if methods.accepted:
        methods = ssh.attempt(first, "publickey", key=throwaway_key(), label="method list")
    allowed = methods.allowed or ()
    method = ("password" if "password" in allowed
              else "keyboard-interactive" if "keyboard-interactive" in allowed else None)
    if method is None:
        evidence.note("judgement", offered=list(allowed), ok=True,
                      detail="no password-based authentication method is offered")
        return
    wait_s = lockout.duration_s if lockout is not None else 0.0

    def attempt(cand: Candidate) -> bool:
        result = ssh.attempt(cand.username, method, password=cand.password,
                             label=f"default {cand.username}")
        evidence.note("default credential", candidate=cand.describe(), accepted=result.accepted)
        return result.accepted

    def reset(user: str, first: bool) -> None:
        _reset(ssh, accounts[user], method, wait_s if first else 0.0)

    outcome = run(todo, size=size, can_reset=lambda u: accounts[u].password is not None,
                  attempt=attempt, reset=reset)
    accepted = outcome.accepted
    not_tried = [c.describe() for c in outcome.not_tried]
    evidence.note("judgement", method=method, accepted=[c.describe() for c in accepted],
                  not_tried=not_tried, ok=not accepted)
    assert not accepted, (
        "the device accepted default credentials over SSH: "
        + ", ".join(c.describe() for c in accepted))


def _reset(ssh: Ssh, account: SshAccount, method: str, wait_s: float = 0.0) -> None:
    """Log in with the real password so the failure count starts again from zero.

    :param wait_s: when refused, wait this long (a lockout left by an earlier check) and retry
        once.
    """
    result = ssh.attempt(account.username, method, password=account.password,
                         label=f"reset {account.role}")
    if not result.accepted and wait_s > 0:
        time.sleep(wait_s + max(0.5, 0.1 * wait_s))
        result = ssh.attempt(account.username, method, password=account.password,
                             label=f"reset {account.role} (after waiting out a lockout)")
    if not result.accepted:
        raise TargetError(f"the login with the real password of {account.describe()} was "
                          f"refused after a batch of default passwords ({result.detail}): the "
                          "account may be locked; the declared lockout threshold may be wrong")
