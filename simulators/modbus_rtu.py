"""Modbus RTU PLC simulator on a pseudo-terminal pair it makes itself.

``python -m simulators.modbus_rtu [--unit N] [--baud B] [--posture hardened|weak]
[--weakness NAME]... [--config FILE.json] [--scan-period-ms N]``

Ready line endpoints: ``{"rtu": {"path": "/dev/pts/N", "unit", "baud"}}``; clients open the
path with pyserial (any baud: a pty ignores it). ``--host`` and ``--port`` are accepted (the
common command line) and unused.

Framing: unit id, PDU, CRC-16/Modbus (little-endian). A frame ends after an inter-character
silence of 3.5 character times at ``--baud`` (11 bits a character), at least 2 ms because
ptys deliver in bursts; a request whose length is known from its function code and whose CRC
checks is answered at once, without waiting for the silence.

Hardened behaviour: a bad CRC gets no reply; another unit id gets no reply; broadcast (unit 0)
is ignored (no effect, no reply); a frame over 256 bytes or under 4 bytes is discarded and the
device keeps answering. Writes are allowed (a serial line is local access) except to the
protected ranges (exception 02). Exception codes as in :mod:`simulators.modbus_pdu`.

Weaknesses: ``rtu.ignores_crc`` (frames with a bad CRC are answered), ``rtu.any_unit_id``
(every unit id 1..255 is answered), ``rtu.accepts_broadcast`` (broadcast writes are executed,
still without a reply), ``rtu.crash_on_malformed`` (an over-long frame makes the device mute
until restarted), ``modbus.unprotected_writes`` (protected ranges writable), ``load.fragile``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tty

from simulators import common
from simulators.modbus_pdu import WRITE_FUNCTION_CODES, PduEngine, PduPolicy
from simulators.modbus_tcp import add_unit_argument, check_unit, plc_for, stop_event

NAME = "modbus_rtu"

WEAKNESSES = (
    "rtu.ignores_crc",
    "rtu.any_unit_id",
    "rtu.accepts_broadcast",
    "rtu.crash_on_malformed",
    "modbus.unprotected_writes",
    "load.fragile",
)

#: Longest RTU frame the specification allows.
MAX_FRAME = 256
#: Shortest frame: unit id, function code, CRC.
MIN_FRAME = 4
#: Floor of the inter-frame silence (ptys deliver in bursts).
MIN_SILENCE_S = 0.002
BROADCAST = 0


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray) -> int:
    """CRC-16/Modbus of ``data`` (initial 0xFFFF, reflected polynomial 0xA001)."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """``frame`` followed by its CRC, low byte first."""
    return frame + crc16(frame).to_bytes(2, "little")


def expected_length(buf: bytes | bytearray) -> int | None:
    """The length of the request frame starting ``buf``, if its function code tells it."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6, 8):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    if fc == 22:
        return 10
    if fc == 23:
        return 13 + buf[10] if len(buf) >= 11 else None
    if fc == 43:
        return 7
    return None


def silence_s(baud: int) -> float:
    """Inter-frame silence at ``baud``: 3.5 characters of 11 bits, at least 2 ms."""
    return max(3.5 * 11 / baud, MIN_SILENCE_S)


class RtuDevice:
    """The serial side: reads the pty master, splits frames, answers them.

    :param fd: the pty master (non-blocking).
    :param engine: answers the PDUs.
    :param unit: the unit id served.
    :param silence: inter-frame silence in seconds.
    :param weaknesses: the switched-on weaknesses.
    """

    def __init__(
        self, fd: int, engine: PduEngine, unit: int, silence: float, weaknesses: frozenset[str]
    ) -> None:
        self.fd = fd
        self.engine = engine
        self.unit = unit
        self.silence = silence
        self.ignores_crc = "rtu.ignores_crc" in weaknesses
        self.any_unit = "rtu.any_unit_id" in weaknesses
        self.accepts_broadcast = "rtu.accepts_broadcast" in weaknesses
        self.crash_on_malformed = "rtu.crash_on_malformed" in weaknesses
        #: True once ``rtu.crash_on_malformed`` has fired.
        self.muted = False
        self._buf = bytearray()
        self._overlong = False
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    def on_readable(self) -> None:
        """Loop reader callback for the pty master."""
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # no slave open (cannot happen while we hold one): nothing to read
            return
        if not data or self.muted:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._overlong:
            self._buf += data
            if len(self._buf) > MAX_FRAME:
                self._overlong = True
                self._buf.clear()
            else:
                expected = expected_length(self._buf)
                if expected == len(self._buf) and crc16(self._buf) == 0:
                    frame = bytes(self._buf)
                    self._buf.clear()
                    self._process(frame)
                    return
        self._timer = self._loop.call_later(self.silence, self._end_of_frame)

    def _end_of_frame(self) -> None:
        self._timer = None
        if self._overlong:
            self._overlong = False
            if self.crash_on_malformed:
                self.muted = True
            return
        frame = bytes(self._buf)
        self._buf.clear()
        self._process(frame)

    def _process(self, frame: bytes) -> None:
        if len(frame) < MIN_FRAME:
            return
        self.engine.plc.note_request()
        if crc16(frame) != 0 and not self.ignores_crc:
            return
        unit = frame[0]
        pdu = frame[1:-2]
        if unit == BROADCAST:
            if self.accepts_broadcast and pdu[0] in WRITE_FUNCTION_CODES:
                self.engine.handle(pdu, True)  # broadcasts are never answered
            return
        if unit != self.unit and not self.any_unit:
            return
        reply = self.engine.handle(pdu, True)
        if reply is None:
            return
        with contextlib.suppress(BlockingIOError, InterruptedError, OSError):
            # nobody reading and the pty buffer full: the reply is lost, as on a real line
            os.write(self.fd, with_crc(bytes((unit,)) + reply))

    def close(self) -> None:
        """Cancel the pending frame timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_unit_argument(parser)
    parser.add_argument("--baud", type=int, default=19200, help="line speed for frame timing")


async def _serve(args: common.SimArgs, master: int, path: str) -> None:
    """Run until SIGTERM."""
    stop = stop_event()
    loop = asyncio.get_running_loop()
    unit = int(args.extra["unit"])
    baud = int(args.extra["baud"])
    plc = plc_for(args)
    engine = PduEngine(plc, PduPolicy(protect_ranges=not args.has("modbus.unprotected_writes")))
    device = RtuDevice(master, engine, unit, silence_s(baud), args.weaknesses)
    loop.add_reader(master, device.on_readable)
    plc.start()
    common.ready(NAME, {"rtu": {"path": path, "unit": unit, "baud": baud}}, args.weaknesses)
    try:
        await stop.wait()
    finally:
        loop.remove_reader(master)
        device.close()
        plc.stop()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m simulators.modbus_rtu``."""
    args = common.parse_args(NAME, WEAKNESSES, argv, add_arguments=_add_arguments)
    check_unit(NAME, int(args.extra["unit"]))
    if int(args.extra["baud"]) <= 0:
        common.fail(NAME, f"--baud must be > 0, got {args.extra['baud']}")
    try:
        master, slave = os.openpty()
    except OSError as exc:
        common.fail(NAME, f"cannot open a pseudo-terminal: {exc}")
    try:
        # raw on both ends before any traffic: no echo, no line editing, no CR/LF mapping.
        # We keep the slave open so the master never sees EIO between two clients.
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        path = os.ttyname(slave)
        asyncio.run(_serve(args, master, path))
    finally:
        os.close(master)
        os.close(slave)


if __name__ == "__main__":
    main()
