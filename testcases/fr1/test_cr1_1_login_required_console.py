"""CR 1.1 on the serial console: a login is required before any command."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.protocols.console import last_line, readable
from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.console import ConsoleKit

pytestmark = pytest.mark.requirement("CR 1.1")


@pytest.mark.protocol("console")
@pytest.mark.weakness("console.no_login")
def test_console_requires_login(console: ConsoleKit, evidence: Evidence) -> None:
    """The serial console asks for a login before it accepts any command.

    Requirement: CR 1.1 (human user identification and authentication) on every interface,
    the local maintenance console included: whoever holds a cable must not get a command
    prompt without identifying and authenticating.

    Procedure: open the port and send one newline (a UART console prints nothing until spoken
    to); read up to the prompt. A login or password prompt passes. Any other prompt (a shell
    prompt ending in ``>``, ``#``, ``$`` or ``%``) is a console without login: the harmless
    command ``help`` is then typed once, so the evidence shows that commands run.

    Pass: the first prompt is a login (or password) prompt. Fail: a command prompt. No prompt
    at all is an ERROR.
    """
    client = console.client
    first = client.wake()
    evidence.note("first prompt", prompt=first.prompt, line=readable(last_line(first.text)))
    if first.prompt in ("login", "password"):
        evidence.note("judgement", ok=True, prompt=first.prompt)
        return
    client.send("help\r")
    answer = client.read(client.request_s)
    evidence.note("judgement", ok=False, prompt=first.prompt,
                  help_answer=readable(answer.text.strip()[:300]))
    fail(
        f"the console gave a command prompt without any login "
        f"({readable(last_line(first.text))!r}); 'help' answered "
        f"{readable(answer.text.strip()[:120])!r}")
