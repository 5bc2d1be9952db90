"""Serial-console simulator: a PLC's maintenance console on a pseudo-terminal.

``python -m simulators.console [--posture hardened|weak] [--weakness NAME]... [--config F]
[--state-dir D] [--scan-period-ms N]``

The simulator makes a pty pair itself and serves the master side; clients open the slave path
with pyserial (any baud rate; a pty ignores it). Ready line endpoints::

    {"console": {"path": "/dev/pts/N", "baud": 115200}}

Like a real UART console it prints nothing until it is spoken to: **send a newline (CR) to get
the banner and the login prompt**. It echoes typed characters (not the password), takes CR, LF
or CR LF as the end of a line, and writes CR LF line ends. Closing the port is a hang-up: the
session is logged out and the next client that opens the port gets a fresh login prompt on its
first newline. Output is never queued while no client has the port open.

Hardened dialogue::

    <CR>                           ->  (echo) blank line, <banner>, blank line, 'login: '
    admin<CR>                      ->  'Password: '            (password not echoed)
    <password><CR>                 ->  admin logged in (role admin). Type 'help' for commands.
                                       'plc> '
    wrong password or user         ->  Login incorrect  then banner and 'login: ' again
    locked account (any password)  ->  Login incorrect  (the same message; nothing is disclosed)
    no input for idle_timeout_s    ->  idle timeout, logged out  then banner and 'login: '
    debug (admin only)             ->  FACTORY MENU ... 'factory> '   (others: permission denied)

At the ``plc> `` prompt the commands of :mod:`simulators.shell` run, plus ``debug``.
``config.lockout_threshold`` failed logins lock an account for ``config.lockout_duration_s``;
``idle_timeout_s`` 0 disables the idle logout.

Weaknesses
----------
``console.no_login``
    no login at all: the first newline prints the banner and ``plc> ``; commands run as
    ``anonymous`` with role ``operator`` (``debug`` stays admin-only).
``console.default_credentials``
    factory defaults ``admin/admin`` and ``root/root`` are accepted.
``console.no_lockout``, ``console.no_banner``, ``console.no_idle_logout``
    switch off lockout, the banner, the idle logout.
``console.debug_menu_unauthenticated``
    ``debug`` or ``!factory`` typed at the ``login:`` prompt opens the factory menu without
    authentication.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import os
import select
import struct
import threading
import time
import tty
from typing import Any

from simulators import common
from simulators.common import Account, SimArgs
from simulators.login import IDLE_MESSAGE, PASSWORD_PROMPT, LoginPolicy, welcome
from simulators.plc import PLC, PROTECTED_REGISTERS
from simulators.shell import PROMPT, Control, DeviceShell, LineEditor, crlf

NAME = "console"

WEAKNESSES = (
    "console.no_login",
    "console.default_credentials",
    "console.no_lockout",
    "console.no_banner",
    "console.no_idle_logout",
    "console.debug_menu_unauthenticated",
)

#: The baud rate reported (and what a real device's console would run at).
BAUD = 115200

LOGIN_PROMPT = "login: "
LOGIN_INCORRECT = "Login incorrect"
FACTORY_PROMPT = "factory> "
#: Words that open the factory menu at the login prompt on a weak device.
DEBUG_WORDS = ("debug", "!factory")
#: The identity of a session on a console without login.
ANONYMOUS = Account("anonymous", "", "operator")

_FACTORY_MENU = """\
FACTORY MENU (service use only)
  1) show calibration
  2) dump configuration registers
  3) reset to factory defaults
  0) exit
"""


class State(enum.Enum):
    """Where the console dialogue is."""

    LOGIN = "login"
    PASSWORD = "password"  # noqa: S105 (a state name)
    SHELL = "shell"
    FACTORY = "factory"


class ConsoleSession:
    """The console's dialogue, independent of the pty: bytes in, bytes out.

    :param args: the parsed command line (weaknesses, config).
    :param plc: the PLC the shell reads and writes.
    :param policy: the login rules (lockout, factory defaults, banner, idle logout).
    """

    def __init__(self, args: SimArgs, plc: PLC, policy: LoginPolicy) -> None:
        self.args = args
        self.plc = plc
        self.policy = policy
        self.editor = LineEditor()
        self.state = State.LOGIN
        self.account: Account | None = None
        self.shell: DeviceShell | None = None
        self.greeted = False
        self.user = ""
        self.last_input = time.monotonic()
        self.reset()

    # -- state changes --------------------------------------------------------------
    def reset(self) -> None:
        """Back to the start: logged out, nothing typed (a hang-up or a new client)."""
        self.editor.reset()
        self.editor.echo = True
        self.user = ""
        self.greeted = False
        if self.args.has("console.no_login"):
            self._login(ANONYMOUS)
        else:
            self.account = None
            self.shell = None
            self.state = State.LOGIN

    def _login(self, account: Account) -> None:
        self.account = account
        self.shell = DeviceShell(self.plc, account)
        self.state = State.SHELL

    def _greeting(self, prompt: str) -> str:
        banner = self.policy.banner
        if not banner:
            return f"\n{prompt}"
        return f"\n{banner}\n\n{prompt}"

    def _to_login(self) -> str:
        self.reset()
        return self._greeting(LOGIN_PROMPT if self.state is State.LOGIN else PROMPT)

    @property
    def idle_logout_enabled(self) -> bool:
        """True when an idle session is logged out (and it is a session worth logging out)."""
        if self.policy.idle_timeout_s <= 0:
            return False
        if self.args.has("console.no_login"):
            return self.greeted
        return self.state in (State.SHELL, State.FACTORY)

    # -- input and timers -------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Process typed bytes; return what the device prints back."""
        self.last_input = time.monotonic()
        echo, events = self.editor.feed(data)
        out = bytearray(echo)
        for event in events:
            out += crlf(self._handle(event))
        return bytes(out)

    def tick(self) -> bytes:
        """Called periodically; logs an idle session out."""
        idle_s = self.policy.idle_timeout_s
        if self.idle_logout_enabled and time.monotonic() - self.last_input > idle_s:
            self.last_input = time.monotonic()
            return crlf(f"\n{IDLE_MESSAGE}\n" + self._to_login())
        return b""

    # -- dialogue -----------------------------------------------------------------------
    def _handle(self, event: str | Control) -> str:
        if event is Control.INTERRUPT:
            if self.state is State.PASSWORD:
                return self._to_login()
            return self._current_prompt()
        if event is Control.EOF:
            if self.state is State.SHELL and not self.args.has("console.no_login"):
                return "logged out\n" + self._to_login()
            return ""
        line = event
        if self.state is State.LOGIN:
            return self._on_login(line)
        if self.state is State.PASSWORD:
            return self._on_password(line)
        if self.state is State.FACTORY:
            return self._on_factory(line)
        return self._on_shell(line)

    def _current_prompt(self) -> str:
        return {State.LOGIN: LOGIN_PROMPT, State.PASSWORD: PASSWORD_PROMPT,
                State.SHELL: PROMPT, State.FACTORY: FACTORY_PROMPT}[self.state]

    def _on_login(self, line: str) -> str:
        user = line.strip()
        if not user:
            return self._greeting(LOGIN_PROMPT)
        if (self.args.has("console.debug_menu_unauthenticated")
                and user.lower() in DEBUG_WORDS):
            self.state = State.FACTORY
            return _FACTORY_MENU + FACTORY_PROMPT
        self.user = user
        self.state = State.PASSWORD
        self.editor.echo = False
        return PASSWORD_PROMPT

    def _on_password(self, password: str) -> str:
        self.editor.echo = True
        account = self.policy.authenticate(self.user, password)
        self.user = ""
        if account is None:
            self.state = State.LOGIN
            return f"{LOGIN_INCORRECT}\n" + self._greeting(LOGIN_PROMPT)
        self._login(account)
        self.greeted = True
        return welcome(account) + PROMPT

    def _on_shell(self, line: str) -> str:
        assert self.shell is not None
        assert self.account is not None
        if not self.greeted:
            self.greeted = True
            if not line.strip():
                return self._greeting(PROMPT)
        word = line.strip().lower()
        if word == "debug":
            if self.account.role != "admin":
                return "permission denied: the factory menu needs role admin\n" + PROMPT
            self.state = State.FACTORY
            return _FACTORY_MENU + FACTORY_PROMPT
        if word in ("help", "?"):
            reply = self.shell.execute(line)
            return reply.text + "  debug                 factory menu (admin)\n" + PROMPT
        reply = self.shell.execute(line)
        if reply.logout:
            return reply.text + self._to_login()
        return reply.text + PROMPT

    def _on_factory(self, line: str) -> str:
        choice = line.strip().lower()
        if choice in ("0", "exit", "quit"):
            if self.account is None:
                self.state = State.LOGIN
                return self._greeting(LOGIN_PROMPT)
            self.state = State.SHELL
            return PROMPT
        if choice == "1":
            text = "calibration: level sensor gain 1.000 offset 0.000; valve span 0..1000\n"
        elif choice == "2":
            img = self.plc.image
            with img.lock:
                values = [img.holding[a] for a in PROTECTED_REGISTERS]
            text = "".join(f"HR {a} = {v}\n" for a, v in zip(PROTECTED_REGISTERS, values,
                                                               strict=True))
        elif choice == "3":
            text = "factory reset is disabled on this simulator\n"
        elif not choice:
            text = _FACTORY_MENU
        else:
            text = f"unknown choice {choice!r}\n"
        return text + FACTORY_PROMPT


class OpenWatch:
    """Reports opens and closes of one file by any process (Linux inotify, through libc).

    Polling the pty master for a hang-up misses a client that closes and reopens the port
    between two polls; inotify queues every open and close in order.

    :param path: the file to watch.
    :raises OSError: when inotify is not available.
    """

    _IN_OPEN = 0x20
    _IN_CLOSE = 0x08 | 0x10  # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
    _EVENT = struct.Struct("iIII")

    def __init__(self, path: str) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError) as exc:
            raise OSError(errno.ENOSYS, f"inotify not available: {exc}") from exc
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if add_watch(fd, os.fsencode(path), self._IN_OPEN | self._IN_CLOSE) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"inotify_add_watch {path} failed")
        self.fd: int = fd

    def events(self) -> list[str]:
        """The queued events, oldest first: ``"open"`` or ``"close"``."""
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return []
        found = []
        offset = 0
        while offset + self._EVENT.size <= len(data):
            _wd, mask, _cookie, length = self._EVENT.unpack_from(data, offset)
            offset += self._EVENT.size + length
            if mask & self._IN_OPEN:
                found.append("open")
            if mask & self._IN_CLOSE:
                found.append("close")
        return found

    def close(self) -> None:
        """Stop watching."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


class ConsoleSimulator:
    """Serves a :class:`ConsoleSession` on the master side of a pty it creates."""

    def __init__(self, args: SimArgs, plc: PLC) -> None:
        self.args = args
        self.plc = plc
        self.policy = LoginPolicy.from_args(args, "console", known=WEAKNESSES)
        self.session = ConsoleSession(args, plc, self.policy)
        self.stopping = threading.Event()
        master, slave = os.openpty()
        self.master = master
        self.path = os.ttyname(slave)
        # A console does no line processing of its own; pyserial sets raw mode again on open.
        tty.setraw(slave)
        # Hold no slave descriptor: then a client closing the port shows up as a hang-up.
        os.close(slave)
        flags = fcntl.fcntl(master, fcntl.F_GETFL)
        fcntl.fcntl(master, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        self.connected = False
        #: Processes that have the port open (counted from inotify events).
        self.openers = 0
        self.watch: OpenWatch | None
        try:
            self.watch = OpenWatch(self.path)
        except OSError:
            self.watch = None  # fall back to noticing hang-ups by polling

    def endpoints(self) -> dict[str, Any]:
        """The ``endpoints`` of the ready line."""
        return {"console": {"path": self.path, "baud": BAUD}}

    def _write(self, data: bytes) -> None:
        """Write to the client; drop what a client that does not read cannot take."""
        if not self.connected:
            return
        view = memoryview(data)
        deadline = time.monotonic() + 1.0
        while view and time.monotonic() < deadline:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                if self.stopping.wait(0.01):
                    return
                continue
            except OSError:
                return
            view = view[n:]

    def serve_forever(self) -> None:
        """Serve until :meth:`request_stop` (runs on the main thread)."""
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        if self.watch is not None:
            poller.register(self.watch.fd, select.POLLIN)
        while not self.stopping.is_set():
            try:
                events = poller.poll(100)
            except InterruptedError:
                continue
            mask = 0
            for fd, ev in events:
                if fd == self.master:
                    mask |= ev
            self._track_opens()
            hangup = bool(mask & (select.POLLHUP | select.POLLERR))
            if mask & select.POLLIN and not hangup:
                try:
                    data = os.read(self.master, 1024)
                except BlockingIOError:
                    data = b""
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data, hangup = b"", True
                if data:
                    self.connected = True
                    self._write(self.session.feed(data))
            if hangup:
                if self.connected:  # the client closed the port: hang up, log out
                    self.connected = False
                    self.session.reset()
                self.stopping.wait(0.1)  # poll reports HUP at once while nobody has it open
                continue
            self.connected = True
            self._write(self.session.tick())

    def _track_opens(self) -> None:
        """A new client after nobody, or the last client closing, starts a fresh session."""
        if self.watch is None:
            return
        for event in self.watch.events():
            if event == "open":
                if self.openers == 0:
                    self.session.reset()
                self.openers += 1
            else:
                self.openers = max(0, self.openers - 1)
                if self.openers == 0:
                    self.session.reset()

    def request_stop(self) -> None:
        """Ask the loop to end (safe from a signal handler)."""
        self.stopping.set()

    def close(self) -> None:
        """Close the pty (the slave path disappears)."""
        self.stopping.set()
        if self.watch is not None:
            self.watch.close()
        with contextlib.suppress(OSError):
            os.close(self.master)


def main(argv: list[str] | None = None) -> None:
    """Run the console simulator until SIGTERM or SIGINT."""
    args = common.parse_args(NAME, WEAKNESSES, argv)
    plc = PLC(args.scan_period_s)
    try:
        sim = ConsoleSimulator(args, plc)
    except OSError as exc:
        common.fail(NAME, f"cannot create a pseudo-terminal: {exc}")
    common.serve_until_stopped(NAME, sim, args.weaknesses, plc)


if __name__ == "__main__":
    main()
