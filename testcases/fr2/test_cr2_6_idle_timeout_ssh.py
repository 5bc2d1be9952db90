"""CR 2.6 over SSH: an idle remote session is ended after the declared timeout."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.ssh import Ssh

pytestmark = pytest.mark.requirement("CR 2.6")

#: A prompt at the end of what a shell printed.
PROMPT_END = r"[>#$%:]\s*$"
#: Seconds beyond the declared timeout the device may take: at least this...
MIN_GRACE_S = 2.0
#: ... or this fraction of the declared timeout (devices check idleness periodically).
GRACE_FRACTION = 0.25
#: A session ending before this fraction of the declared timeout was not ended for idleness.
EARLY_FRACTION = 0.5


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.no_idle_timeout")
def test_ssh_ends_idle_sessions(ssh: Ssh, evidence: Evidence) -> None:
    """An SSH session left idle is ended by the device within its declared idle timeout.

    Requirement: CR 2.6 (remote session termination): the component terminates a remote
    session after a configurable period of inactivity. The period is the profile's
    ``expectations.idle_timeout_s``.

    Procedure: log in (public key when the account has one), open a shell with a pty, read
    its greeting, then send nothing and read until the device closes the channel or the
    connection, at most the declared timeout plus a grace of max(2 s, 25 %). Whatever the
    device prints on the way out (``idle timeout, logged out``) is in the evidence.

    Pass: the session ended within the bound. Fail: it was still open. A session that ends
    before half the declared timeout was not ended for idleness: ERROR.
    """
    from harness.protocols.ssh import ProfileGap

    timeout = ssh.expectations.idle_timeout_s
    if timeout is None:
        raise ProfileGap("profile gap: the check needs expectations.idle_timeout_s")
    session = ssh.login(ssh.session_account(), label="idle session")
    shell = session.shell()
    greeting = shell.read_until(PROMPT_END, ssh.timeouts.request_s)
    if greeting.closed:
        raise TargetError("the shell closed right after login: cannot test the idle timeout")
    started = time.monotonic()
    grace = max(MIN_GRACE_S, GRACE_FRACTION * timeout)
    result = shell.read_until(None, timeout + grace)
    idle_for = time.monotonic() - started
    ended = result.closed or shell.closed
    evidence.note("judgement", declared_timeout_s=timeout, waited_up_to_s=timeout + grace,
                  ended=ended, idle_for_s=round(idle_for, 2), output=result.text[-200:],
                  ok=ended)
    if ended and idle_for < EARLY_FRACTION * timeout:
        raise TargetError(f"the session ended after {idle_for:.1f} s, long before the declared "
                          f"idle timeout of {timeout:g} s: not an idle timeout")
    assert ended, (
        f"the SSH session was still open after {idle_for:.1f} s without input (declared idle "
        f"timeout {timeout:g} s, grace {grace:g} s)")
