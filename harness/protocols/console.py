"""Guarded serial-console client for the conformance checks: expect-style dialogue over pyserial.

The device is a maintenance console on a UART (a device path such as ``/dev/ttyUSB0``) or a
pyserial URL (``socket://``, ``rfc2217://``, ``loop://``): :meth:`ConsoleClient.open` asks the
guard (:meth:`~harness.safety.Guard.check_serial`) before the port is opened.

Every read is bounded twice, by a deadline and by a byte cap (:data:`MAX_READ_BYTES`), and
waits for the text to *settle* (no new byte for :data:`SETTLE_S`) after a prompt appears, so a
banner that happens to contain ``:`` is not mistaken for a prompt. Prompts are recognised at
the end of what arrived (:func:`prompt_kind`): ``login``, ``password`` or ``shell`` (any line
ending in ``>``, ``#``, ``$`` or ``%``).

Evidence (channel ``serial://DEVICE?baud=N``): every line typed (passwords as
``<password>``, and registered secrets are scrubbed anyway) and everything received, as text
and hex. A port that cannot be opened, a device that answers nothing, or one that answers
without end raises :class:`~harness.errors.TargetError` from the helpers that need an answer.

pyserial is imported only when a port is opened.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import TargetError
from harness.safety import Deadline

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.safety import Guard

#: Most bytes one read keeps.
MAX_READ_BYTES = 64 * 1024
#: Seconds without a new byte after which text ending in a prompt counts as complete.
SETTLE_S = 0.1
#: Characters of received text in an evidence summary.
SUMMARY_CHARS = 240

PromptKind = Literal["login", "password", "shell"]

LOGIN_PROMPT = re.compile(r"(login|user ?name|user ?id|user)\s*:\s*$", re.I)
PASSWORD_PROMPT = re.compile(r"(password|passcode|pin)\s*:\s*$", re.I)
SHELL_PROMPT = re.compile(r"[>#$%]\s*$")
#: What devices say when they refuse a login.
REFUSAL = re.compile(r"login incorrect|incorrect|denied|invalid|failed|locked", re.I)
#: Control characters shown readably in evidence summaries.
_CONTROL_NAMES = {"\r": "<CR>", "\n": "<LF>", "\x03": "<Ctrl-C>", "\x02": "<Ctrl-B>",
                  "\x04": "<Ctrl-D>", "\x1b": "<Esc>", "\x18": "<Ctrl-X>", "\x1a": "<Ctrl-Z>"}


def last_line(text: str) -> str:
    """The last line of ``text`` (carriage returns ignored), where a prompt sits."""
    return text.replace("\r", "").rsplit("\n", 1)[-1]


def prompt_kind(text: str) -> PromptKind | None:
    """What the end of ``text`` asks for: ``login``, ``password``, ``shell``, or None."""
    line = last_line(text)
    if PASSWORD_PROMPT.search(line):
        return "password"
    if LOGIN_PROMPT.search(line):
        return "login"
    if SHELL_PROMPT.search(line):
        return "shell"
    return None


def readable(text: str) -> str:
    """``text`` with control characters named, for evidence summaries."""
    return "".join(_CONTROL_NAMES.get(ch, ch if ch.isprintable() else f"<0x{ord(ch):02x}>")
                   for ch in text)


@dataclass(frozen=True)
class ConsolePort:
    """Where the console is."""

    #: Device path or pyserial URL.
    device: str
    baud: int = 115200

    @property
    def url(self) -> str:
        """``serial://DEVICE?baud=N`` (the evidence channel)."""
        return f"serial://{self.device}?baud={self.baud}"


@dataclass(frozen=True)
class ReadResult:
    """What a bounded read got."""

    #: Text received (UTF-8, undecodable bytes replaced).
    text: str
    #: The prompt at its end, if any.
    prompt: PromptKind | None
    #: True when the byte cap stopped the read.
    capped: bool
    #: Seconds the read took.
    elapsed_s: float


@dataclass(frozen=True)
class LoginResult:
    """The outcome of one login dialogue."""

    username: str
    #: True when the device gave a shell prompt after the password.
    accepted: bool
    #: What the device printed after the password.
    text: str
    #: Seconds from sending the password to the settled answer.
    elapsed_s: float

    def describe(self) -> str:
        """One line for evidence and messages."""
        tail = readable(self.text.strip()[-80:])
        return f"login as {self.username!r}: {'accepted' if self.accepted else 'refused'} ({tail})"


class ConsoleClient:
    """One open console port.

    :param port: the pyserial port object (already open).
    :param where: the device description.
    :param evidence: the check's evidence log.
    :param request_s: the profile's ``request_timeout_s``.
    """

    def __init__(self, port: Any, where: ConsolePort, evidence: Evidence,
                 request_s: float) -> None:
        self.port = port
        self.where = where
        self.evidence = evidence
        self.request_s = request_s
        #: True after a login the client has not logged out of.
        self.logged_in = False
        #: The banner lines seen on the first wake-up (to tell them from other output).
        self.banner_lines: list[str] = []
        #: The prompt the last read ended in.
        self.last_prompt: PromptKind | None = None

    @classmethod
    def open(cls, guard: Guard, evidence: Evidence, where: ConsolePort,
             request_s: float) -> ConsoleClient:
        """Ask the guard, open the port.

        :raises harness.errors.SafetyViolation: the device is not declared in the profile.
        :raises TargetError: the port cannot be opened.
        """
        guard.check_serial(where.device)
        import serial

        try:
            port = serial.serial_for_url(where.device, baudrate=where.baud, timeout=0.02,
                                         write_timeout=request_s)
        except (serial.SerialException, ValueError, OSError) as exc:
            evidence.received(where.url, None, f"open failed: {exc}")
            raise TargetError(f"cannot open console {where.device}: {exc}") from exc
        evidence.sent(where.url, None, f"open {where.device} at {where.baud} baud")
        return cls(port, where, evidence, request_s)

    @property
    def channel(self) -> str:
        """The evidence channel."""
        return self.where.url

    # -- raw I/O --------------------------------------------------------------------------
    def send(self, text: str, *, secret: bool = False) -> None:
        """Type ``text`` (``secret``: recorded as ``<password>``, no bytes kept)."""
        import serial

        data = text.encode("utf-8")
        try:
            self.port.write(data)
            self.port.flush()
        except (serial.SerialException, OSError) as exc:
            raise TargetError(f"{self.where.device}: write failed: {exc}") from exc
        if secret:
            self.evidence.sent(self.channel, None, "typed <password><CR>")
        else:
            self.evidence.sent(self.channel, data, f"typed {readable(text)}")

    def send_break(self, duration_s: float = 0.25) -> bool:
        """Send a serial BREAK; False when the port cannot (a pty, some URLs)."""
        import serial

        try:
            self.port.send_break(duration_s)
        except (serial.SerialException, OSError, ValueError) as exc:
            self.evidence.note("BREAK not supported by this port", detail=str(exc))
            return False
        self.evidence.sent(self.channel, None, f"BREAK ({duration_s:g} s)")
        return True

    def _read_some(self, limit: int) -> bytes:
        import serial

        try:
            waiting = self.port.in_waiting
            data: bytes = self.port.read(max(1, min(limit, waiting or 1)))
        except (serial.SerialException, OSError) as exc:
            raise TargetError(f"{self.where.device}: read failed (hang-up?): {exc}") from exc
        return data

    def read(self, timeout_s: float, *, until: re.Pattern[str] | None = None,
             prompt: bool = True, quiet_s: float | None = None,
             max_bytes: int = MAX_READ_BYTES) -> ReadResult:
        """Read until a prompt (``prompt``) or ``until`` ends the settled text, until
        ``quiet_s`` passes without a byte (when given), the deadline, or the byte cap."""
        deadline = Deadline(timeout_s)
        started = time.monotonic()
        data = bytearray()
        last_byte = started
        capped = False
        while True:
            chunk = self._read_some(max_bytes - len(data))
            now = time.monotonic()
            if chunk:
                data += chunk
                last_byte = now
                if len(data) >= max_bytes:
                    capped = True
                    break
                if deadline.expired:
                    break
                continue
            text = data.decode("utf-8", "replace")
            settled = now - last_byte >= SETTLE_S
            if settled and data and ((prompt and prompt_kind(text) is not None)
                                     or (until is not None and until.search(text))):
                break
            if quiet_s is not None and now - last_byte >= quiet_s:
                break
            if deadline.expired:
                break
        text = data.decode("utf-8", "replace")
        elapsed = time.monotonic() - started
        self.last_prompt = prompt_kind(text) if data else None
        if data:
            self.evidence.received(self.channel, bytes(data),
                                   readable(text)[-SUMMARY_CHARS:])
        else:
            self.evidence.received(self.channel, None, f"nothing for {elapsed:.2f} s")
        return ReadResult(text, prompt_kind(text) if data else None, capped, round(elapsed, 3))

    # -- dialogue -------------------------------------------------------------------------
    def expect_prompt(self, timeout_s: float | None = None) -> ReadResult:
        """Read until a prompt; TargetError when none comes (silence, or output without end)."""
        result = self.read(timeout_s if timeout_s is not None else self.request_s)
        if result.capped:
            raise TargetError(f"{self.where.device}: more than {MAX_READ_BYTES} bytes without "
                              "a prompt")
        if result.prompt is None:
            raise TargetError(f"{self.where.device}: no prompt within "
                              f"{timeout_s if timeout_s is not None else self.request_s:g} s "
                              f"(got {readable(result.text[-80:])!r})")
        return result

    def wake(self) -> ReadResult:
        """Send a newline (a UART console prints nothing until spoken to) and read the prompt.

        The banner lines (everything between the echo and the prompt) are remembered in
        :attr:`banner_lines` the first time.
        """
        self.send("\r")
        result = self.expect_prompt()
        if not self.banner_lines:
            self.banner_lines = banner_lines(result.text)
        return result

    def to_login_prompt(self) -> ReadResult:
        """Get to a login prompt: nothing to do when the last read ended at one; a password
        prompt is aborted (Ctrl-C, else an empty password: one refused login); otherwise wake.

        :raises TargetError: the console shows a shell prompt (no login, or still logged in)
            and does not leave it, or shows no prompt at all.
        """
        if self.last_prompt == "login":
            return ReadResult("", "login", False, 0.0)
        result = self.abort_password() if self.last_prompt == "password" else self.wake()
        for _ in range(3):
            if result.prompt == "login":
                return result
            if result.prompt == "password":
                result = self.abort_password()
                continue
            if result.prompt == "shell" and self.logged_in:
                self.logout()
                result = self.wake()
                continue
            break
        raise TargetError(f"{self.where.device}: no login prompt: the console shows "
                          f"{readable(last_line(result.text))!r} (without a login, see the CR "
                          "1.1 check)")

    def abort_password(self) -> ReadResult:
        """Leave a password prompt: Ctrl-C, and when that is ignored an empty password."""
        self.send("\x03")
        result = self.read(self.request_s)
        if result.prompt in (None, "password"):
            self.send("\r")
            result = self.expect_prompt(2 * self.request_s)
        return result

    def login(self, username: str, password: str) -> LoginResult:
        """Run one login dialogue from a login prompt the caller has reached.

        Accepted: the answer to the password ends in a shell prompt. Refused: it ends in a
        login or password prompt. Anything else is a TargetError.
        """
        self.send(username + "\r")
        asked = self.expect_prompt()
        if asked.prompt == "shell":
            self.logged_in = True
            return LoginResult(username, True, asked.text, asked.elapsed_s)
        if asked.prompt == "login":  # refused at the user name
            return LoginResult(username, False, asked.text, asked.elapsed_s)
        self.send(password + "\r", secret=True)
        # devices delay a refused login (login(1) waits ~3 s): allow twice the request timeout
        answer = self.expect_prompt(2 * self.request_s)
        accepted = answer.prompt == "shell"
        if accepted:
            self.logged_in = True
        result = LoginResult(username, accepted, answer.text, answer.elapsed_s)
        self.evidence.note("console login", username=username, accepted=accepted,
                           answer_s=answer.elapsed_s, said=readable(answer.text.strip()[-120:]))
        return result

    def logout(self) -> None:
        """Leave a shell (``exit``) and expect the login prompt again (best effort, bounded)."""
        for word in ("exit", "logout"):
            self.send(word + "\r")
            result = self.read(self.request_s)
            if result.prompt in ("login", "password") or not result.text:
                break
        self.logged_in = False

    def close(self) -> None:
        """Log out when logged in, then close the port (a hang-up on most consoles)."""
        if self.logged_in:
            with contextlib.suppress(TargetError):
                self.logout()
        with contextlib.suppress(Exception):
            self.port.close()
        self.evidence.sent(self.channel, None, "close")


def banner_lines(text: str) -> list[str]:
    """The non-blank lines before the final prompt line (the echo of a CR is blank)."""
    lines = text.replace("\r", "").split("\n")
    return [ln.strip() for ln in lines[:-1] if ln.strip()]
