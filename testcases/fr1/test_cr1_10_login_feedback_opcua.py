"""CR 1.10 over OPC UA: a failed login does not tell whether the user exists."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 1.10")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.user_enumeration")
@pytest.mark.disruptive(traffic="on the lockout-test account only: one wrong password and up to "
                                "three logins with the right one; one login as an unknown user")
def test_opcua_login_failure_hides_user_existence(opcua: OpcUa, evidence: Evidence) -> None:
    """A wrong password and an unknown user are refused with the same answer.

    Requirement: CR 1.10 (authenticator feedback): the feedback during authentication must not
    help an attacker. A server that answers a wrong password for an existing user differently
    from a login as a user that does not exist lets anyone enumerate valid user names.

    Where this differs from the issue: the issue lists this under "User tokens" with CR 1.1,
    CR 1.2 and CR 1.5; the requirement about what login feedback may reveal is CR 1.10. It
    counts one failed login, so it is disruptive and uses the lockout-test account.

    Procedure: on the session endpoint with the profile's client certificate: a control login
    with the lockout-test account (the one account the harness may count failed logins
    against; if it is still locked from earlier, the declared lockout is waited out once), then
    one ActivateSession with that user name and a random wrong password, then one with a random
    user name (``harness-nouser-<hex>``) and a random password. The stage and status name of
    both refusals are compared (their answer times are in the evidence, not judged). Finally
    the right password clears the failed attempt (waiting out a lockout when the declared
    threshold is one).

    Pass: both refused with the same status at the same stage. Fail: they differ (e.g.
    ``BadUserAccessDenied`` for the wrong password, ``BadIdentityTokenInvalid`` for the unknown
    user). A wrong password or an unknown user that is *accepted* is an ERROR here (it is not
    what this check can judge).
    """
    from harness.protocols.opcua import Identity, right_password_login

    account = opcua.account("lockout_test")
    right_password_login(opcua, account, "control")
    wrong = opcua.attempt(identity=Identity("username", account.username,
                                            f"harness-wrong-{secrets.token_hex(6)}",
                                            label="lockout_test account, wrong password"),
                          label="existing user, wrong password")
    ghost = f"harness-nouser-{secrets.token_hex(4)}"
    unknown = opcua.attempt(identity=Identity("username", ghost,
                                              f"harness-wrong-{secrets.token_hex(6)}",
                                              label="unknown user"),
                            label="unknown user")
    if wrong.accepted:
        raise TargetError(f"a wrong password was accepted for {account.describe()}")
    if unknown.accepted:
        raise TargetError(f"a login as the unknown user {ghost!r} was accepted")
    right_password_login(opcua, account, "clear the failed attempt")
    same = (wrong.stage, wrong.status) == (unknown.stage, unknown.status)
    evidence.note("judgement", wrong_password={"stage": wrong.stage, "status": wrong.status,
                                               "elapsed_s": wrong.elapsed_s},
                  unknown_user={"stage": unknown.stage, "status": unknown.status,
                                "elapsed_s": unknown.elapsed_s}, ok=same)
    assert same, (
        f"the answer reveals whether a user exists: a wrong password for {account.username!r} "
        f"got {wrong.status} at {wrong.stage}, the unknown user {ghost!r} got {unknown.status} "
        f"at {unknown.stage}")
