"""The small device shell the SSH and serial-console simulators share.

After login both front ends hand each typed line to :class:`DeviceShell` and print what it
answers. Commands (one per line, words separated by blanks):

=======================  ==================================================================
``help`` / ``?``         list the commands
``status``               ``state: running|stalled|stopped``, heartbeat, scan count, values
``read T N [COUNT]``     read table ``T`` (``hr``, ``ir``, ``coil``, ``di``) from address ``N``
``write hr N V``         write holding register ``N`` (scratch ``HR 100..109`` only)
``write coil N 0|1``     write coil ``N`` (scratch ``C 100..107`` only)
``whoami``               the logged-in user and role
``exit`` / ``logout``    end the session
=======================  ==================================================================

Writes need the ``admin`` or ``operator`` role; protected addresses (``HR 200..209``,
``C 200..207``) are always refused, and every other non-scratch address is refused too.

:class:`LineEditor` turns raw terminal bytes into lines the way a device console does: it
echoes printable characters (not in password mode), handles backspace, CR, LF and CR LF,
Ctrl-C (drop the line) and Ctrl-D (end of input on an empty line), skips ANSI escape
sequences, and bounds the line length.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulators.plc import (
    HEARTBEAT,
    OUTPUT,
    PROCESS_VALUE,
    PROTECTED_COILS,
    PROTECTED_REGISTERS,
    SCRATCH_COILS,
    SCRATCH_REGISTERS,
    SETPOINT,
    TABLE_SIZE,
)

if TYPE_CHECKING:
    from simulators.common import Account
    from simulators.plc import PLC

#: The prompt both front ends print after login.
PROMPT = "plc> "

#: Most values one ``read`` returns.
MAX_READ_COUNT = 16

_HELP = """\
commands:
  help                  this list
  status                run state, heartbeat, scan count, process values
  read hr|ir|coil|di N [COUNT]
                        read COUNT (1..16, default 1) points from address N
  write hr N VALUE      write a scratch holding register (HR 100..109)
  write coil N 0|1      write a scratch coil (C 100..107)
  whoami                who is logged in, and the role
  exit | logout         end the session
"""


@dataclass(frozen=True)
class ShellReply:
    """What the shell answers to one line."""

    #: Text to print, lines separated by ``\\n`` (front ends translate line ends).
    text: str
    #: True when the command failed (SSH ``exec`` maps this to exit status 1).
    error: bool = False
    #: True when the session should end (``exit``, ``logout``).
    logout: bool = False


class DeviceShell:
    """Executes shell command lines for one logged-in session.

    :param plc: the PLC whose process image the commands read and write.
    :param account: who is logged in; its role decides whether writes are allowed.
    """

    def __init__(self, plc: PLC, account: Account) -> None:
        self.plc = plc
        self.account = account

    def execute(self, line: str) -> ShellReply:
        """Run one command line and return what to print."""
        words = line.split()
        if not words:
            return ShellReply("")
        cmd, args = words[0].lower(), words[1:]
        if cmd in ("help", "?"):
            return ShellReply(_HELP)
        if cmd == "status":
            return ShellReply(self._status())
        if cmd == "whoami":
            return ShellReply(f"{self.account.user} (role {self.account.role})\n")
        if cmd in ("exit", "logout", "quit"):
            return ShellReply("logged out\n", logout=True)
        if cmd == "read":
            return self._read(args)
        if cmd == "write":
            return self._write(args)
        return ShellReply(f"unknown command {words[0]!r}; type 'help'\n", error=True)

    def _status(self) -> str:
        plc = self.plc
        img = plc.image
        with img.lock:
            running = img.discrete_inputs[0]
            values = (img.holding[HEARTBEAT], plc.scans, img.holding[SETPOINT],
                      img.holding[PROCESS_VALUE], img.holding[OUTPUT])
        state = "stalled" if plc.starved else ("running" if running else "stopped")
        heartbeat, scans, setpoint, pv, output = values
        return (f"state: {state}\n"
                f"heartbeat: {heartbeat}\n"
                f"scan count: {scans}\n"
                f"scan period ms: {plc.scan_period_s * 1000:g}\n"
                f"setpoint: {setpoint}\n"
                f"process value: {pv}\n"
                f"output: {output}\n")

    def _read(self, args: list[str]) -> ShellReply:
        usage = "error: usage: read hr|ir|coil|di ADDRESS [COUNT]\n"
        if len(args) not in (2, 3):
            return ShellReply(usage, error=True)
        table = args[0].lower()
        address = _parse_int(args[1])
        count = _parse_int(args[2]) if len(args) == 3 else 1
        if table not in ("hr", "ir", "coil", "di") or address is None or count is None:
            return ShellReply(usage, error=True)
        if not 1 <= count <= MAX_READ_COUNT:
            return ShellReply(f"error: COUNT must be 1..{MAX_READ_COUNT}\n", error=True)
        if address < 0 or address + count > TABLE_SIZE:
            return ShellReply(f"error: address out of range 0..{TABLE_SIZE - 1}\n", error=True)
        img = self.plc.image
        with img.lock:
            window = slice(address, address + count)
            if table in ("hr", "ir"):
                registers = img.holding if table == "hr" else img.input_registers
                values = list(registers[window])
            else:
                bits = img.coils if table == "coil" else img.discrete_inputs
                values = [int(b) for b in bits[window]]
        label = _LABELS[table]
        return ShellReply("".join(f"{label} {address + i} = {v}\n" for i, v in enumerate(values)))

    def _write(self, args: list[str]) -> ShellReply:
        usage = "error: usage: write hr ADDRESS VALUE | write coil ADDRESS 0|1\n"
        if len(args) != 3 or args[0].lower() not in ("hr", "coil"):
            return ShellReply(usage, error=True)
        table = args[0].lower()
        address, value = _parse_int(args[1]), _parse_int(args[2])
        if address is None or value is None:
            return ShellReply(usage, error=True)
        if not self.account.can_write:
            return ShellReply(f"permission denied: role {self.account.role} may not write\n",
                              error=True)
        scratch, protected = ((SCRATCH_REGISTERS, PROTECTED_REGISTERS) if table == "hr"
                              else (SCRATCH_COILS, PROTECTED_COILS))
        label = _LABELS[table]
        if address in protected:
            return ShellReply(f"refused: {label} {address} is protected\n", error=True)
        if address not in scratch:
            return ShellReply(f"refused: {label} {address} is not a scratch address "
                              f"({label} {scratch.start}..{scratch.stop - 1})\n", error=True)
        limit = 65535 if table == "hr" else 1
        if not 0 <= value <= limit:
            return ShellReply(f"error: VALUE must be 0..{limit}\n", error=True)
        img = self.plc.image
        with img.lock:
            if table == "hr":
                img.holding[address] = value
            else:
                img.coils[address] = bool(value)
        return ShellReply(f"{label} {address} = {value}\n")


_LABELS = {"hr": "HR", "ir": "IR", "coil": "C", "di": "DI"}


def _parse_int(text: str) -> int | None:
    """Decimal or ``0x`` hex integer, or None."""
    try:
        return int(text, 0)
    except ValueError:
        return None


class Control(enum.Enum):
    """Control keys a :class:`LineEditor` reports besides completed lines."""

    #: Ctrl-C: the current line was dropped.
    INTERRUPT = "interrupt"
    #: Ctrl-D on an empty line: end of input.
    EOF = "eof"


class LineEditor:
    """Assembles typed bytes into lines, producing the echo a device terminal sends back.

    :param max_line: characters kept per line; more are dropped (and not echoed).
    """

    def __init__(self, max_line: int = 256) -> None:
        self.max_line = max_line
        #: Echo typed characters (switched off while a password is typed).
        self.echo = True
        self._buf: list[str] = []
        self._after_cr = False
        self._escape = 0  # 0: normal, 1: saw ESC, 2: inside an ESC [ sequence

    def reset(self) -> None:
        """Forget a partly typed line."""
        self._buf.clear()
        self._after_cr = False
        self._escape = 0

    def feed(self, data: bytes) -> tuple[bytes, list[str | Control]]:
        """Process typed bytes; return the echo to send and the completed lines or controls."""
        echo = bytearray()
        events: list[str | Control] = []
        for byte in data:
            after_cr, self._after_cr = self._after_cr, False
            if self._escape == 1:
                self._escape = 2 if byte in (0x5B, 0x4F) else 0  # ESC [ or ESC O
                continue
            if self._escape == 2:
                if 0x40 <= byte <= 0x7E:
                    self._escape = 0
                continue
            if byte == 0x1B:
                self._escape = 1
            elif byte in (0x0D, 0x0A):
                if byte == 0x0A and after_cr:
                    continue  # the LF of a CR LF pair
                self._after_cr = byte == 0x0D
                echo += b"\r\n"
                events.append("".join(self._buf))
                self._buf.clear()
            elif byte in (0x08, 0x7F):
                if self._buf:
                    self._buf.pop()
                    if self.echo:
                        echo += b"\b \b"
            elif byte == 0x03:
                self._buf.clear()
                echo += b"^C\r\n"
                events.append(Control.INTERRUPT)
            elif byte == 0x04:
                if not self._buf:
                    events.append(Control.EOF)
            elif 0x20 <= byte < 0x7F and len(self._buf) < self.max_line:
                self._buf.append(chr(byte))
                if self.echo:
                    echo.append(byte)
        return bytes(echo), events


def crlf(text: str) -> bytes:
    """Text with ``\\n`` line ends as terminal bytes with CR LF line ends."""
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8", "replace")
