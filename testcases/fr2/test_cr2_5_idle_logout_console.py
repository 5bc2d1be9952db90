"""CR 2.5 on the serial console: an idle session is logged out (locked) after the timeout."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.protocols.console import LOGIN_PROMPT, PASSWORD_PROMPT, readable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.console import ConsoleKit

pytestmark = pytest.mark.requirement("CR 2.5")

#: Seconds beyond the declared timeout the device may take: at least this...
MIN_GRACE_S = 2.0
#: ... or this fraction of the declared timeout.
GRACE_FRACTION = 0.25
#: A logout before this fraction of the declared timeout was not for idleness.
EARLY_FRACTION = 0.5
#: The end of a session: a login or password prompt.
SESSION_OVER = re.compile(f"(?:{LOGIN_PROMPT.pattern})|(?:{PASSWORD_PROMPT.pattern})",
                          re.I)


@pytest.mark.protocol("console")
@pytest.mark.weakness("console.no_idle_logout")
def test_console_logs_out_idle_sessions(console: ConsoleKit, evidence: Evidence) -> None:
    """A console session left idle is logged out (or locked) within the declared timeout.

    Requirement: CR 2.5 (session lock): after a configurable time of inactivity the component
    locks the session (re-authentication needed); a logout does that too. Also CR 2.6 for a
    console reached remotely through a terminal server. The period is the profile's
    ``expectations.idle_timeout_s``.

    Procedure: log in (operator account first), then type nothing and read until a login or
    password prompt appears, at most the declared timeout plus max(2 s, 25 %). If nothing came,
    one newline shows where the console is: a shell prompt means the session is still open.

    Pass: the console is back at a login or password prompt within the bound. Fail: still at
    the shell. A logout before half the declared timeout is an ERROR (not an idle logout). A
    console without login cannot lock: ERROR (the CR 1.1 check reports it).
    """
    from harness.fixtures.console import ConsoleProfileGap

    timeout = console.expectations.idle_timeout_s
    if timeout is None:
        raise ConsoleProfileGap("profile gap: the check needs expectations.idle_timeout_s")
    client = console.client
    console.login(console.session_account())
    started = time.monotonic()
    grace = max(MIN_GRACE_S, GRACE_FRACTION * timeout)
    result = client.read(timeout + grace, prompt=False, until=SESSION_OVER)
    idle_for = time.monotonic() - started
    ended = result.prompt in ("login", "password")
    silent = False
    if not ended:
        client.send("\r")
        after = client.read(client.request_s)
        ended = after.prompt in ("login", "password")
        silent = ended
    if ended:
        client.logged_in = False
    evidence.note("judgement", declared_timeout_s=timeout, waited_up_to_s=timeout + grace,
                  logged_out=ended, silently=silent, idle_for_s=round(idle_for, 2),
                  said=readable(result.text.strip()[-200:]), ok=ended)
    if ended and not silent and idle_for < EARLY_FRACTION * timeout:
        raise TargetError(f"the console logged out after {idle_for:.1f} s, long before the "
                          f"declared idle timeout of {timeout:g} s: not an idle logout")
    assert ended, (
        f"the console session was still logged in after {idle_for:.1f} s without input "
        f"(declared idle timeout {timeout:g} s, grace {grace:g} s)")
