"""Serial-console simulator: hardened behaviour and each weakness, seen through pyserial."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import serial

pytestmark = pytest.mark.timeout(90)

#: Seconds anything that must answer has to answer.
TIMEOUT_S = 5.0

ADMIN = ("admin", "Adm1n-Sim-Pass!")
OPERATOR = ("operator", "Op3rator-Sim-Pass!")
LOCKTEST = ("locktest", "L0ckTest-Sim-Pass!")
BANNER = "Authorized use only. Activity on this device is monitored and logged."

ALL_WEAKNESSES = sorted([
    "console.no_login", "console.default_credentials", "console.no_lockout",
    "console.no_banner", "console.no_idle_logout", "console.debug_menu_unauthenticated",
])


class Console:
    """A pyserial client on the simulator's pty, with expect-style reads."""

    def __init__(self, endpoint: dict[str, Any]) -> None:
        self.endpoint = endpoint
        self.port = serial.Serial(endpoint["path"], endpoint["baud"], timeout=0.05)
        self.buf = b""

    def close(self) -> None:
        self.port.close()

    def send(self, text: str) -> None:
        self.port.write(text.encode())
        self.port.flush()

    def read_until(self, *markers: str, timeout: float = TIMEOUT_S) -> str:
        """Read until one of ``markers`` appears; return everything up to and including it."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [(self.buf.find(m.encode()), m) for m in markers if m.encode() in self.buf]
            if hits:
                pos, marker = min(hits)
                end = pos + len(marker)
                text, self.buf = self.buf[:end], self.buf[end:]
                return text.decode()
            assert time.monotonic() < deadline, f"none of {markers!r} in {self.buf!r}"
            self.buf += self.port.read(self.port.in_waiting or 1)

    def quiet_for(self, seconds: float) -> str:
        """Everything that arrives within ``seconds`` (for "nothing must happen" checks)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.buf += self.port.read(self.port.in_waiting or 1)
        text, self.buf = self.buf.decode(), b""
        return text

    def login(self, user: str, password: str) -> str:
        """Run a whole login dialogue; return what followed the password."""
        self.send("\r")
        self.read_until("login: ")
        self.send(user + "\r")
        self.read_until("Password: ")
        self.send(password + "\r")
        return self.read_until("plc> ", "login: ")

    def command(self, line: str) -> str:
        """Type ``line`` at the shell prompt; return the output up to the next prompt."""
        self.send(line + "\r")
        return self.read_until("plc> ", "login: ", "factory> ")


@pytest.fixture
def console(start_simulator: Any, tmp_path: Path) -> Iterator[Callable[..., Console]]:
    """``console(*weaknesses, **config) -> Console`` on a fresh simulator (all closed after)."""
    opened: list[Console] = []

    def start(*weaknesses: str, **config: Any) -> Console:
        args: list[str] = []
        for w in weaknesses:
            args += ["--weakness", w]
        if config:
            path = tmp_path / f"config{len(opened)}.json"
            path.write_text(json.dumps(config))
            args += ["--config", str(path)]
        event = start_simulator("console", *args)
        con = Console(event["endpoints"]["console"])
        opened.append(con)
        return con

    yield start
    for con in opened:
        con.close()


# -- process contract -----------------------------------------------------------------------
def test_ready_line_names_a_pty_and_sigterm_removes_it(start_simulator: Any) -> None:
    event = start_simulator("console")
    ep = event["endpoints"]["console"]
    assert ep["baud"] == 115200
    assert ep["path"].startswith("/dev/pts/")
    assert os.path.exists(ep["path"])
    con = Console(ep)
    con.port.timeout = TIMEOUT_S
    try:
        assert start_simulator.stop(event) == 0  # even with a client holding the port
        with pytest.raises(serial.SerialException):  # the master side is gone: hang-up
            con.port.read(1)
    finally:
        con.close()


# -- login -----------------------------------------------------------------------------------
def test_hardened_login_banner_shell_and_logout(console: Callable[..., Console]) -> None:
    con = console()
    con.send("\r")
    greeting = con.read_until("login: ")
    assert BANNER in greeting
    assert "plc> " not in greeting
    con.send("admin\r")
    assert "admin" in con.read_until("Password: ")  # the user name is echoed
    con.send(ADMIN[1] + "\r")
    after = con.read_until("plc> ")
    assert ADMIN[1] not in after  # the password is not
    assert "admin logged in (role admin)" in after
    assert "admin (role admin)" in con.command("whoami")
    assert "state: running" in con.command("status")
    assert "HR 100 = 77" in con.command("write hr 100 77")
    assert "refused: HR 200 is protected" in con.command("write hr 200 1")
    out = con.command("logout")
    assert "logged out" in out
    assert out.endswith("login: ")
    assert "unknown command" not in con.login(*OPERATOR)


def test_wrong_password_and_unknown_user_get_the_same_answer(
        console: Callable[..., Console]) -> None:
    con = console()
    wrong_password = con.login("admin", "not-the-password")
    unknown_user = con.login("no-such-user", "whatever")
    assert "Login incorrect" in wrong_password
    assert wrong_password == unknown_user
    assert "plc> " not in wrong_password


def test_login_is_required_before_any_command(console: Callable[..., Console]) -> None:
    con = console()
    con.send("\r")
    con.read_until("login: ")
    con.send("status\r")  # taken as a user name
    assert con.read_until("Password: ", "plc> ").endswith("Password: ")


def test_no_login_gives_a_shell_at_once(console: Callable[..., Console]) -> None:
    con = console("console.no_login")
    con.send("\r")
    greeting = con.read_until("plc> ", "login: ")
    assert greeting.endswith("plc> ")
    assert "anonymous (role operator)" in con.command("whoami")
    assert "state: running" in con.command("status")


def test_default_credentials(console: Callable[..., Console]) -> None:
    hardened = console(lockout_threshold=10)
    assert "Login incorrect" in hardened.login("admin", "admin")
    assert "Login incorrect" in hardened.login("root", "root")
    weak = console("console.default_credentials", lockout_threshold=10)
    assert weak.login("admin", "admin").endswith("plc> ")
    assert "admin (role admin)" in weak.command("whoami")
    weak.command("logout")
    assert weak.login("root", "root").endswith("plc> ")


def test_no_banner(console: Callable[..., Console]) -> None:
    con = console("console.no_banner")
    con.send("\r")
    greeting = con.read_until("login: ")
    assert BANNER not in greeting
    assert greeting.strip() == "login:"


# -- lockout -----------------------------------------------------------------------------------
def test_failed_logins_lock_the_account_then_it_unlocks(console: Callable[..., Console]) -> None:
    con = console(lockout_threshold=2, lockout_duration_s=2.0)
    assert "Login incorrect" in con.login("locktest", "wrong-1")
    assert "Login incorrect" in con.login("locktest", "wrong-2")
    locked = con.login(*LOCKTEST)
    assert "Login incorrect" in locked, "a locked account accepted the right password"
    assert con.login(*OPERATOR).endswith("plc> "), "only the attacked account may lock"
    con.command("logout")
    deadline = time.monotonic() + TIMEOUT_S
    while not con.login(*LOCKTEST).endswith("plc> "):
        assert time.monotonic() < deadline, "the account never unlocked"
        time.sleep(0.2)


def test_no_lockout(console: Callable[..., Console]) -> None:
    con = console("console.no_lockout", lockout_threshold=2, lockout_duration_s=60.0)
    for attempt in range(4):
        assert "Login incorrect" in con.login("locktest", f"wrong-{attempt}")
    assert con.login(*LOCKTEST).endswith("plc> ")


# -- idle logout -----------------------------------------------------------------------------------
def test_idle_session_is_logged_out(console: Callable[..., Console]) -> None:
    con = console(idle_timeout_s=1.0)
    assert con.login(*OPERATOR).endswith("plc> ")
    out = con.read_until("login: ")
    assert "idle timeout, logged out" in out
    con.send("whoami\r")  # now a user name, not a command
    assert con.read_until("Password: ", "plc> ").endswith("Password: ")


def test_no_idle_logout_keeps_the_session(console: Callable[..., Console]) -> None:
    con = console("console.no_idle_logout", idle_timeout_s=1.0)
    assert con.login(*OPERATOR).endswith("plc> ")
    assert "idle timeout" not in con.quiet_for(2.0)  # twice the idle timeout
    assert "operator (role operator)" in con.command("whoami")


# -- factory menu ---------------------------------------------------------------------------
def test_factory_menu_needs_an_admin_login(console: Callable[..., Console]) -> None:
    con = console(lockout_threshold=10)
    for word in ("debug", "!factory"):
        con.send("\r")
        con.read_until("login: ")
        con.send(word + "\r")
        answer = con.read_until("Password: ", "factory> ")
        assert "FACTORY MENU" not in answer
        con.send("\r")
        assert "Login incorrect" in con.read_until("login: ")
    assert con.login(*OPERATOR).endswith("plc> ")
    assert "permission denied" in con.command("debug")
    con.command("logout")
    assert con.login(*ADMIN).endswith("plc> ")
    menu = con.command("debug")
    assert "FACTORY MENU" in menu
    assert "HR 200 = 4000" in con.command("2")
    assert con.command("0").endswith("plc> ")


def test_debug_menu_unauthenticated(console: Callable[..., Console]) -> None:
    con = console("console.debug_menu_unauthenticated")
    for word in ("debug", "!factory"):
        con.send("\r")
        con.read_until("login: ")
        con.send(word + "\r")
        assert "FACTORY MENU" in con.read_until("factory> ", "Password: ")
        assert con.command("0").endswith("login: ")  # leaving it returns to the login prompt


# -- hang-up ---------------------------------------------------------------------------------------
def test_closing_the_port_logs_out_and_the_next_client_gets_a_login(
        console: Callable[..., Console]) -> None:
    con = console()
    assert con.login(*OPERATOR).endswith("plc> ")
    endpoint = con.endpoint
    for _ in range(3):  # close and reopen at once, several times
        con.close()
        con = Console(endpoint)
        try:
            con.send("\r")
            assert con.read_until("login: ", "plc> ").endswith("login: ")
            assert con.login(*OPERATOR).endswith("plc> ")
        finally:
            con.close()


# -- each weakness changes only its own behaviour -----------------------------------------
def observe(con: Console) -> dict[str, Any]:
    """The quickly observable behaviours of a console (a fingerprint to compare)."""
    con.send("\r")
    greeting = con.read_until("login: ", "plc> ")
    seen: dict[str, Any] = {"banner": BANNER in greeting,
                            "login_required": greeting.endswith("login: ")}
    if not seen["login_required"]:
        return seen
    con.send("debug\r")
    seen["debug_at_login"] = "FACTORY MENU" in con.read_until("Password: ", "factory> ")
    con.send("0\r" if seen["debug_at_login"] else "\r")
    con.read_until("login: ")
    seen["factory_login"] = con.login("admin", "admin").endswith("plc> ")
    if seen["factory_login"]:
        con.command("logout")
    return seen


EXPECTED_DIFFERENCES = {
    "console.no_login": {"login_required"},
    "console.default_credentials": {"factory_login"},
    "console.no_banner": {"banner"},
    "console.debug_menu_unauthenticated": {"debug_at_login"},
    "console.no_lockout": set(),
    "console.no_idle_logout": set(),
}


@pytest.mark.parametrize("weakness", sorted(EXPECTED_DIFFERENCES))
def test_each_weakness_changes_only_its_own_behaviour(
        weakness: str, console: Callable[..., Console]) -> None:
    base = observe(console(lockout_threshold=10))
    seen = observe(console(weakness, lockout_threshold=10))
    changed = {name for name in base if base[name] != seen.get(name)}
    if weakness == "console.no_login":  # nothing behind a login to compare
        changed &= {"banner", "login_required"}
    assert changed == EXPECTED_DIFFERENCES[weakness], (base, seen)


def test_weak_posture_switches_every_weakness_on(start_simulator: Any) -> None:
    event = start_simulator("console", "--posture", "weak")
    assert event["weaknesses"] == ALL_WEAKNESSES
    con = Console(event["endpoints"]["console"])
    try:
        con.send("\r")
        greeting = con.read_until("plc> ", "login: ")
        assert greeting.endswith("plc> ")
        assert BANNER not in greeting
    finally:
        con.close()
