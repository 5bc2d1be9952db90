"""CR 1.1 over SSH: no login without credentials (authentication method ``none`` refused)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.ssh import Ssh

pytestmark = pytest.mark.requirement("CR 1.1")

#: Declared user names tried at most (plus one unknown name).
MAX_NAMES = 4


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.none_auth")
def test_ssh_refuses_none_authentication(ssh: Ssh, evidence: Evidence) -> None:
    """The SSH server refuses the authentication method ``none`` for every user name.

    Requirement: CR 1.1 (human user identification and authentication): every human user is
    identified and authenticated on every interface. An SSH server that accepts ``none``
    (RFC 4252 section 5.2) lets anyone in who can name a user, or any user name at all.

    Procedure: on a fresh connection per name, send ``SSH_MSG_USERAUTH_REQUEST`` with method
    ``none`` for each declared account's user name (at most four) and for one random name no
    device has (``harness-probe-<hex>``). A ``none`` request carries no secret and is what every
    OpenSSH client sends first, so it is not a failed login and the check is not disruptive.

    Pass: every request is answered with SSH_MSG_USERAUTH_FAILURE. Fail: any is answered with
    SSH_MSG_USERAUTH_SUCCESS (the user names are in the reason).
    """
    names = [c.username for _role, c in ssh.profile.iter_accounts()]
    names = [*list(dict.fromkeys(names))[:MAX_NAMES], f"harness-probe-{secrets.token_hex(4)}"]
    accepted = []
    for name in names:
        result = ssh.attempt(name, "none", label=f"none as {name}")
        evidence.note("userauth none", username=name, accepted=result.accepted,
                      allowed=result.allowed)
        if result.accepted:
            accepted.append(name)
    evidence.note("judgement", tried=names, accepted=accepted, ok=not accepted)
    assert not accepted, (
        f"the server accepted authentication method 'none' (no credentials at all) for user "
        f"name(s) {accepted}")
