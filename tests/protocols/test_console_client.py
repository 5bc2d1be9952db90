"""Tests of the serial-console client: prompt recognition, login dialogues, bounded reads and the
guard, against a scripted device on a pseudo-terminal (and pyserial's ``loop://``).
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import tty
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.errors import SafetyViolation, TargetError
from harness.evidence import Evidence
from harness.protocols import console as c
from harness.safety import Guard

pytestmark = pytest.mark.timeout(60)

REQUEST_S = 0.6
Reply = Callable[[bytes], bytes]


@pytest.mark.parametrize(("text", "kind"), [
    ("\r\nWelcome\r\n\r\nlogin: ", "login"),
    ("Username:", "login"),
    ("admin\r\nPassword: ", "password"),
    ("ok\r\nplc> ", "shell"),
    ("root@dev:~# ", "shell"),
    ("factory> ", "shell"),
    ("Authorized use only.\r\n", None),
    ("WARNING: monitored", None),
    ("", None),
])
def test_prompt_kind(text: str, kind: str | None) -> None:
    assert c.prompt_kind(text) == kind


def test_banner_lines_and_readable() -> None:
    assert c.banner_lines("\r\n\r\nAuthorized use only.\r\n  second  \r\n\r\nlogin: ") == [
        "Authorized use only.", "second"]
    assert c.banner_lines("\r\nlogin: ") == []
    assert c.readable("a\r\n\x03\x7f") == "a<CR><LF><Ctrl-C><0x7f>"


class FakeConsole:
    """A scripted device on the master side of a pty: ``reply(line_bytes) -> output``."""

    def __init__(self, reply: Reply, *, endless: bytes = b"") -> None:
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        tty.setraw(slave)
        os.close(slave)
        os.set_blocking(self.master, False)  # a full pty buffer must not block the writer
        self.reply = reply
        self.endless = endless
        self.inputs: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 1024)
            except OSError:  # nobody has the port open yet (or any more)
                self._stop.wait(0.05)
                continue
            buf += data
            while buf:
                cut = min((i for i in (buf.find(b"\r"), buf.find(b"\x03")) if i >= 0),
                          default=-1)
                if cut < 0:
                    break
                line, buf = buf[:cut + 1], buf[cut + 1:]
                self.inputs.append(line)
                self._write(self.reply(line))
                if self.endless:
                    while not self._stop.is_set():
                        self._write(self.endless)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            if select.select([], [self.master], [], 0.05)[1]:
                os.write(self.master, data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        os.close(self.master)
        assert not self._thread.is_alive()


def plc_like(password: str = "secret-pw") -> Reply:  # noqa: S107 (a test device)
    """A console with a banner and a login: admin/<password> gets ``plc> ``."""
    state: dict[str, Any] = {"user": None, "shell": False}

    def reply(line: bytes) -> bytes:
        text = line.decode().strip("\r")
        if state["shell"]:
            if text == "exit":
                state["shell"] = False
                return b"exit\r\nlogged out\r\n\r\nNotice\r\n\r\nlogin: "
            return text.encode() + b"\r\nplc> "
        if state["user"] is None:
            if line == b"\x03":
                return b"^C\r\nlogin: "
            if not text:
                return b"\r\n\r\nNotice\r\n\r\nlogin: "
            state["user"] = text
            return text.encode() + b"\r\nPassword: "
        user, state["user"] = state["user"], None
        if line == b"\x03":
            return b"^C\r\n\r\nNotice\r\n\r\nlogin: "
        if (user, text) == ("admin", password):
            state["shell"] = True
            return b"\r\nadmin logged in\r\nplc> "
        return b"\r\nLogin incorrect\r\n\r\nNotice\r\n\r\nlogin: "

    return reply


@pytest.fixture
def device() -> Iterator[Callable[..., tuple[c.ConsoleClient, FakeConsole, Evidence]]]:
    made: list[tuple[c.ConsoleClient, FakeConsole]] = []

    def make(reply: Reply, **kwargs: bytes) -> tuple[c.ConsoleClient, FakeConsole, Evidence]:
        fake = FakeConsole(reply, **kwargs)
        ev = Evidence("console")
        guard = Guard([], serial_devices=[fake.path])
        client = c.ConsoleClient.open(guard, ev, c.ConsolePort(fake.path, 115200), REQUEST_S)
        made.append((client, fake))
        return client, fake, ev

    yield make
    for client, fake in made:
        client.close()
        fake.close()


def test_login_dialogue(device: Callable[..., tuple[c.ConsoleClient, FakeConsole, Evidence]]
                        ) -> None:
    client, fake, ev = device(plc_like())
    first = client.wake()
    assert first.prompt == "login"
    assert client.banner_lines == ["Notice"]
    refused = client.login("admin", "wrong-pw")
    assert not refused.accepted and "Login incorrect" in refused.text
    assert not client.logged_in
    assert client.to_login_prompt().prompt == "login"  # already there: nothing sent
    accepted = client.login("admin", "secret-pw")
    assert accepted.accepted and client.logged_in
    client.logout()
    assert not client.logged_in
    assert fake.inputs == [b"\r", b"admin\r", b"wrong-pw\r", b"admin\r", b"secret-pw\r",
                           b"exit\r"]
    summaries = [e["summary"] for e in ev.entries]
    assert summaries.count("typed <password><CR>") == 2
    typed = [e for e in ev.entries if e["summary"] == "typed <password><CR>"]
    assert all("hex" not in e for e in typed)


def test_password_prompt_is_aborted_on_the_way_to_login(
        device: Callable[..., tuple[c.ConsoleClient, FakeConsole, Evidence]]) -> None:
    client, fake, _ = device(plc_like())
    client.wake()
    client.send("someone\r")
    assert client.read(REQUEST_S).prompt == "password"
    assert client.to_login_prompt().prompt == "login"
    assert b"\x03" in fake.inputs


def test_console_without_login_has_no_login_prompt(
        device: Callable[..., tuple[c.ConsoleClient, FakeConsole, Evidence]]) -> None:
    client, _, _ = device(lambda line: b"\r\nplc> ")
    with pytest.raises(TargetError, match="no login prompt: the console shows 'plc> '"):
        client.to_login_prompt()


def test_silence_is_a_target_error(
        device: Callable[..., tuple[c.ConsoleClient, FakeConsole, Evidence]]) -> None:
    client, _, ev = device(lambda line: b"")
    with pytest.raises(TargetError, match=r"no prompt within 0\.6 s"):
        client.wake()
    assert ev.entries[-1]["summary"].startswith("nothing for")


def test_endless_output_is_capped(
        device: Callable[..., tuple[c.ConsoleClient, FakeConsole, Evidence]]) -> None:
    client, _, _ = device(lambda line: b"", endless=b"z" * 4096)
    with pytest.raises(TargetError, match=f"more than {c.MAX_READ_BYTES} bytes without a prompt"):
        client.wake()


def test_guard_refuses_an_undeclared_port(tmp_path: object) -> None:
    with pytest.raises(SafetyViolation, match="not declared"):
        c.ConsoleClient.open(Guard([], serial_devices=["/dev/ttyS9"]), Evidence("x"),
                             c.ConsolePort("/dev/ttyUSB0"), REQUEST_S)


def test_pyserial_urls_work() -> None:
    ev = Evidence("loop")
    client = c.ConsoleClient.open(Guard([], serial_devices=["loop://"]), ev,
                                  c.ConsolePort("loop://", 9600), REQUEST_S)
    try:
        client.send("Banner\r\nlogin: ")  # a loop port reads back what it is sent
        result = client.expect_prompt()
        assert result.prompt == "login" and c.banner_lines(result.text) == ["Banner"]
        assert ev.entries[0]["channel"] == "serial://loop://?baud=9600"
    finally:
        client.close()
    with pytest.raises(TargetError, match="cannot open console"):
        c.ConsoleClient.open(Guard([], serial_devices=["/nonexistent/tty"]), Evidence("x"),
                             c.ConsolePort("/nonexistent/tty"), REQUEST_S)
