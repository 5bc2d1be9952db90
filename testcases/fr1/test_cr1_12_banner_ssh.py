"""CR 1.12 over SSH: a system-use notification before authentication."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.verdict import not_applicable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.ssh import Ssh

pytestmark = pytest.mark.requirement("CR 1.12")


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.no_banner")
def test_ssh_shows_banner_before_login(ssh: Ssh, evidence: Evidence) -> None:
    """The SSH server shows a system-use notification before authentication.

    Requirement: CR 1.12 (system use notification): the component can display a notification
    message before authenticating a user. For SSH that message is SSH_MSG_USERAUTH_BANNER
    (RFC 4252 section 5.4), which clients show before the password prompt. Lines a server sends
    before its version line are not shown by clients and do not count (they are in the
    evidence).

    Procedure: applies only where ``expectations.banner_required`` is true (otherwise NOT
    APPLICABLE). Connect, send one ``none`` authentication request for the first declared user
    name (it carries no secret) and record any banner message that arrives before the answer.

    Pass: a banner with visible text arrived. Fail: none, or only blanks.
    """
    if not ssh.expectations.banner_required:
        not_applicable("the profile does not require a banner (expectations.banner_required)")
    names = [c.username for _r, c in ssh.profile.iter_accounts()] or ["harness-probe"]
    session = ssh.connect(label="banner")
    result = session.authenticate("none", names[0])
    banner = session.banner
    session.close()
    pre = list(session.identification.pre_version_lines)
    evidence.note("judgement", banner=banner, pre_version_lines=pre,
                  none_accepted=result.accepted, ok=bool(banner and banner.strip()))
    assert banner is not None and banner.strip(), (
        "no system-use notification before authentication: the server sent "
        + ("an empty SSH_MSG_USERAUTH_BANNER" if banner is not None
           else "no SSH_MSG_USERAUTH_BANNER")
        + (f" (it sent {len(pre)} line(s) before its version line, which clients do not show)"
           if pre else ""))
