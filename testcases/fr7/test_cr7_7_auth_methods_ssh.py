"""CR 7.7 over SSH: the server offers no authentication method beyond those the profile declares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.ssh import Ssh

pytestmark = pytest.mark.requirement("CR 7.7")

#: Declared user names asked at most.
MAX_NAMES = 4


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.extra_auth_methods")
def test_ssh_offers_only_declared_auth_methods(ssh: Ssh, evidence: Evidence) -> None:
    """The SSH server offers only the authentication methods the profile declares.

    Requirement: CR 7.7 (least functionality): the component restricts functions, ports,
    protocols and services to those it needs. An authentication method the device is not
    documented to offer (``keyboard-interactive`` beside ``password``, ``password`` on a
    device declared key-only) is an unneeded, usually unreviewed, way in.

    Where this differs from the issue: the issue suggests CR 1.1 or CR 1.7. ``none`` accepted is
    CR 1.1 (``test_ssh_refuses_none_authentication``); an *extra* method does not make a login
    unauthenticated, and CR 1.7 is about password strength, so the requirement this finding
    breaks is least functionality. ssh-audit cannot list methods; the server's own failure
    message does.

    Procedure: for each declared account's user name (at most four), on a fresh connection,
    send method ``none``; the SSH_MSG_USERAUTH_FAILURE lists the methods that "can continue"
    (RFC 4252 section 5.1). If ``none`` is accepted (judged by the CR 1.1 check), a
    public-key request with a throwaway key nobody knows is sent instead to get the list; no
    password is ever sent. The union of the lists is compared with
    ``expectations.ssh_auth_methods``.

    Pass: every listed method is declared. Fail: the extra methods are in the reason. Methods
    declared but not offered are noted, not failed.
    """
    from harness.protocols.ssh import throwaway_key

    expected = list(ssh.expectations.ssh_auth_methods)
    names = list(dict.fromkeys(c.username for _r, c in ssh.profile.iter_accounts()))[:MAX_NAMES]
    names = names or ["harness-probe"]
    offered: list[str] = []
    for name in names:
        result = ssh.attempt(name, "none", label=f"methods for {name}")
        if result.accepted:
            evidence.note("'none' accepted; asking with a throwaway public key instead",
                          username=name)
            result = ssh.attempt(name, "publickey", key=throwaway_key(),
                                 label=f"methods for {name} (throwaway key)")
        if result.allowed is None:
            raise TargetError(f"the server listed no authentication methods for {name!r} "
                              f"({result.describe()})")
        evidence.note("methods offered", username=name, methods=list(result.allowed))
        offered.extend(m for m in result.allowed if m not in offered)
    extra = [m for m in offered if m not in expected]
    missing = [m for m in expected if m not in offered]
    evidence.note("judgement", offered=offered, declared=expected, extra=extra,
                  declared_not_offered=missing, ok=not extra)
    assert not extra, (
        f"the server offers authentication method(s) {extra} beyond the declared "
        f"expectations.ssh_auth_methods {expected} (offered: {offered})")
