"""EDR 2.13 on the serial console: no diagnostic or factory menu without authentication."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.protocols.console import REFUSAL, last_line, prompt_kind, readable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.console import ConsoleKit
    from harness.protocols.console import ConsoleClient

pytestmark = pytest.mark.requirement("EDR 2.13")

#: The usual ways into a service menu, typed at the login prompt (None: a serial BREAK).
MAGIC_INPUTS: tuple[tuple[str, str | None], ...] = (
    ("debug", "debug\r"),
    ("!factory", "!factory\r"),
    ("factory", "factory\r"),
    ("diag", "diag\r"),
    ("service", "service\r"),
    ("test", "test\r"),
    ("Ctrl-C", "\x03"),
    ("Ctrl-B", "\x02"),
    ("Ctrl-X", "\x18"),
    ("Esc", "\x1b"),
    ("BREAK", None),
)
#: A login or password prompt at the start of a line.
PROMPT_PREFIX = re.compile(r"^(?:login|user ?name|user ?id|user|password|passcode|pin)\s*:\s*",
                           re.I)
#: Seconds of silence after which an input counts as ignored.
QUIET_S = 0.5
#: Menu exits tried when an input opened something (bounded).
EXITS = ("0\r", "exit\r", "quit\r", "\x03", "\x04")


@pytest.mark.protocol("console")
@pytest.mark.weakness("console.debug_menu_unauthenticated")
def test_console_has_no_unauthenticated_debug_menu(console: ConsoleKit,
                                                   evidence: Evidence) -> None:
    """No diagnostic, debug or factory menu opens on the console before authentication.

    Requirement: EDR 2.13 (use of physical diagnostic and test interfaces): an embedded device
    protects its diagnostic and test interfaces against unauthorised use. A service menu one
    magic word away from the login prompt is such an interface left open.

    Procedure: get to the login prompt, then send each of a bounded list of the usual magic
    inputs (``debug``, ``!factory``, ``factory``, ``diag``, ``service``, ``test``, Ctrl-C,
    Ctrl-B, Ctrl-X, Esc, a serial BREAK where the port can send one), one at a time, and read
    the answer until a prompt or 0.5 s of silence. A word the device takes as a user name leads
    to its password prompt, which is aborted (Ctrl-C, else an empty password: one refused login
    for a user name that does not exist). An answer is expected when it holds nothing but the
    echo, the banner seen at the first prompt, login and password prompts, ``^C`` and a refusal
    (``Login incorrect``); anything else, or a prompt that is neither login nor password, is
    judged a menu, recorded, and left (``0``, ``exit``, ``quit``, Ctrl-C, Ctrl-D) back to the
    login prompt.

    Pass: every input got an expected answer (or none). Fail: the inputs that opened something,
    with what the device printed. A console without login is an ERROR here (the CR 1.1 check
    reports it).
    """
    client = console.client
    client.to_login_prompt()
    banner = set(client.banner_lines)
    opened: list[str] = []
    for name, data in MAGIC_INPUTS:
        if data is None:
            if not client.send_break():
                continue
            typed = ""
        else:
            client.send(data)
            typed = data
        answer = client.read(client.request_s, quiet_s=QUIET_S)
        text = answer.text
        if answer.prompt == "password":  # taken as a user name: abort the login
            text += client.abort_password().text
        unexpected = _unexpected_lines(text, typed, banner)
        at = prompt_kind(text) if text.strip() else None
        bad = bool(unexpected) or at == "shell"
        evidence.note("magic input", input=name, prompt_after=at, unexpected=unexpected[:12],
                      opened=bad)
        if bad:
            opened.append(f"{name} -> {readable(' | '.join(unexpected)[:160])} "
                          f"(prompt {readable(last_line(text))!r})")
            _leave(client)
        elif at is None:
            _back_at_prompt(client)
    client.to_login_prompt()  # the console is left where it was found
    evidence.note("judgement", tried=[n for n, _ in MAGIC_INPUTS], opened=opened,
                  ok=not opened)
    assert not opened, ("the console opened something before authentication: "
                        + "; ".join(opened))


def _unexpected_lines(text: str, typed: str, banner: set[str]) -> list[str]:
    """Lines that are neither echo, banner, login/password prompt, ^C nor a refusal."""
    echo = typed.strip()
    out = []
    for raw in text.replace("\r", "").split("\n"):
        line = raw.strip()
        # a prompt and what was echoed after it share a line ("Password: ^C")
        line = PROMPT_PREFIX.sub("", line, count=1).strip()
        if not line or line in banner or line == "^C" or (echo and line == echo):
            continue
        if prompt_kind(line) in ("login", "password") and len(line) <= 24:
            continue
        if REFUSAL.search(line) and len(line) <= 40:
            continue
        out.append(line)
    return out


def _back_at_prompt(client: ConsoleClient) -> None:
    """After an input that got no answer: newlines until a prompt (an Esc may eat one)."""
    for _ in range(3):
        client.send("\r")
        if client.read(client.request_s, quiet_s=QUIET_S).prompt is not None:
            return
    raise TargetError("the console answers no newline any more")


def _leave(client: ConsoleClient) -> None:
    """Leave whatever opened, back to a login prompt (bounded)."""
    for word in EXITS:
        client.send(word)
        if client.read(client.request_s, quiet_s=QUIET_S).prompt in ("login", "password"):
            return
    client.to_login_prompt()
