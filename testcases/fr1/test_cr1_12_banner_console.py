"""CR 1.12 on the serial console: a system-use notification before login."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.protocols.console import banner_lines, last_line, readable
from harness.verdict import not_applicable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.console import ConsoleKit

pytestmark = pytest.mark.requirement("CR 1.12")


@pytest.mark.protocol("console")
@pytest.mark.weakness("console.no_banner")
def test_console_shows_banner_before_login(console: ConsoleKit, evidence: Evidence) -> None:
    """The serial console shows a system-use notification before its first prompt.

    Requirement: CR 1.12 (system use notification): the component can display a notification
    message before authenticating a user, on the console as anywhere else.

    Procedure: applies only where ``expectations.banner_required`` is true (otherwise NOT
    APPLICABLE). Send one newline and read up to the prompt; the notice is every non-blank line
    between the echo and the prompt line.

    Pass: at least one non-blank line before the prompt. Fail: the prompt alone.
    """
    if not console.expectations.banner_required:
        not_applicable("the profile does not require a banner (expectations.banner_required)")
    first = console.client.wake()
    lines = banner_lines(first.text)
    evidence.note("judgement", banner=lines, prompt=first.prompt, ok=bool(lines))
    assert lines, (
        f"no system-use notification before the {first.prompt} prompt: the console printed "
        f"only {readable(first.text)!r} (prompt {readable(last_line(first.text))!r})")
