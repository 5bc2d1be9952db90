"""A hostile device: one process that serves Modbus/TCP, SSH, OPC UA, a console and Modbus RTU,
and misbehaves on every one of them.

``python -m simulators.hostile [--host H] [--port P] [--posture hardened|weak]
[--weakness NAME]... [--config FILE.json] [--state-dir D] [--scan-period-ms N]``

A device under test is untrusted. This simulator is the proof that the harness stays within
bounded time and memory, reports ERROR or FAIL (never PASS) and never crashes, whatever the device
sends. It speaks just enough of each protocol to get past the first exchange and then lies.

Ready line endpoints (the same keys as the real simulators, so the lab writes a normal profile)::

    {"modbus": {"host": H, "port": P, "unit": 1},
     "ssh": {"host": H, "port": P},
     "opcua": {"url": "opc.tcp://H:P/harness/plc"},
     "console": {"path": "/dev/pts/N", "baud": 115200},
     "rtu": {"path": "/dev/pts/M", "unit": 1, "baud": 19200}}

``--port`` is the Modbus/TCP port (default 0); every other listener binds port 0. The ready
line's ``weaknesses`` lists the behaviours in effect. ``--config`` and ``--scan-period-ms`` are
accepted (the common command line) and unused: there is no process image to be honest about.

Behaviours (weaknesses; ``--posture weak`` switches on all of them; a hostile device has no
hardened behaviour, so with none given it is ``hostile.garbage``). With several switched on,
each new TCP connection, and each pty input, takes the next one in sorted order. "By
connection" below counts the connections a protocol served with that behaviour, from 0.

``hostile.garbage``
    Modbus: random bytes (1..300) after every request. SSH: the non-SSH line
    ``HTTP/1.1 400 Bad Request`` and 4 KiB of random bytes, then random bytes after anything the
    client sends. OPC UA: random bytes (64..1024) after the Hello and every later message.
    Console and RTU: random bytes (16..256) after every input.
``hostile.lying_length``
    Modbus, by the request's transaction id modulo 6: (0) an MBAP length 100 bytes longer than
    what follows, then silence; (1) an MBAP length of 2 followed by the whole reply PDU (bytes
    beyond the announced length); (2) a correct reply followed by 16 trailing bytes; (3) an MBAP
    length of 0xFFFF; (4) an MBAP length of 0; (5) a true MBAP length around a read reply whose
    byte count says 250 (for any other request, its reply PDU with 8 extra bytes inside the
    announced length). OPC UA, by connection (alternating): (even) an
    ``ACKF`` declaring a message size of 2^31-1 bytes, 20 bytes of it, then silence; (odd) an
    ACK whose buffer and message sizes are 2^31-1, and after the next message an ``OPNF``
    declaring 2^31-1 bytes, 16 of them, then silence. SSH, by connection: a version line, then a
    binary packet whose length field says (even) 2^31-1 or (odd) 32768 bytes, 12 bytes of it,
    then silence. RTU, by request: an FC 3 reply whose byte count says (0) more or (1) less than
    the data sent (CRC correct over what is sent), or (2) a correct reply plus 8 trailing bytes.
    Console: no length fields; answers like ``hostile.garbage``.
``hostile.huge``
    SSH, by connection modulo 3: (0) 1 MiB of pre-version lines (1022 characters each), then
    silence; (1) one 1 MiB line with no line end, then silence; (2) a line that never ends (bytes
    without a line feed, without end). Modbus, by transaction id modulo 2: (0) an MBAP header
    announcing 254 bytes, then random bytes without end; (1) well-formed replies with wrong
    transaction ids without end. OPC UA, by connection: (even) an ``ACKF`` declaring 2^31-16
    bytes followed by bytes without end; (odd) a correct ACK, then after the next message an
    ``OPNF`` declaring 2^31-16 bytes followed by bytes without end. Console and RTU: output
    without end after the first input.
``hostile.slow_drip``
    Every reply (a well-formed Modbus reply, the SSH version line and then random bytes, a
    correct OPC UA ACK, a console login prompt, a correct RTU reply) leaves one byte at a time,
    one every 0.5 to 1 s.

Bounds of the simulator itself: at most :data:`MAX_HANDLERS` connections are served at once
(more are closed at once); a connection is served for at most :data:`MAX_CONNECTION_S`
seconds; "without end" is paced at :data:`STREAM_RATE` bytes/s at most and stops when the
client closes, stops reading (the sender waits for the socket or pty buffer to drain), or the
connection's time is up; what is read is bounded per call and a request buffer never grows past
:data:`MAX_BUFFER` bytes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import select
import socket
import struct
import threading
import time
import tty
from collections.abc import Callable
from typing import Any

from simulators import common

NAME = "hostile"

WEAKNESSES = (
    "hostile.garbage",
    "hostile.lying_length",
    "hostile.huge",
    "hostile.slow_drip",
)
#: What a hostile device does when no behaviour is named.
DEFAULT_BEHAVIOUR = "hostile.garbage"

#: Connections served at once (all protocols together); more are closed at once.
MAX_HANDLERS = 32
#: Seconds one connection (or a pty's endless output) is served at most.
MAX_CONNECTION_S = 120.0
#: Bytes read per call, and the most a request buffer keeps.
READ_CHUNK = 4096
MAX_BUFFER = 4096
#: Seconds between two dripped bytes (uniform in this range).
DRIP_DELAY_S = (0.5, 1.0)
#: Seconds one blocking socket call waits before the handler looks at the stop flag again.
POLL_S = 0.25
#: A length field no sane message has (2^31-1).
ABSURD_SIZE = 2**31 - 1
#: Size of the SSH pre-version banner and of the line without end that follows it.
HUGE_BANNER_BYTES = 1 << 20
#: Length of one SSH pre-version line, line end included.
BANNER_LINE_BYTES = 1024
#: The Modbus unit id and RTU baud rate reported.
UNIT = 1
RTU_BAUD = 19200
CONSOLE_BAUD = 115200
#: The line a ``hostile.garbage`` SSH server greets with instead of an SSH version.
NOT_SSH_LINE = b"HTTP/1.1 400 Bad Request\r\n"
SSH_VERSION = b"SSH-2.0-OpenSSH_9.6p1 HostileSim\r\n"
OPCUA_PATH = "/harness/plc"

#: Most bytes per second an endless stream sends (kind to a shared machine, and still far more
#: than any sane reply: a client that reads without bound grows by this much every second).
STREAM_RATE = 16 << 20

#: Random bytes sent over and over by the endless streams (made once: no per-chunk cost).
_BLOCK = os.urandom(64 * 1024)
#: The same without line feeds: a line that does not end.
_NO_LF_BLOCK = _BLOCK.replace(b"\n", b"-")


def random_bytes(low: int, high: int) -> bytes:
    """Between ``low`` and ``high`` random bytes."""
    return os.urandom(random.randint(low, high))


# --------------------------------------------------------------------------- Modbus frames
def crc16(data: bytes) -> int:
    """CRC-16/Modbus of ``data``."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    """``frame`` followed by its CRC (little-endian), as on an RTU line."""
    return frame + struct.pack("<H", crc16(frame))


def plausible_pdu(request: bytes) -> bytes:
    """A reply PDU of the right shape for the request PDU ``request`` (values all zero).

    Reads get as many registers or bits as asked (bounded), single writes their echo, multiple
    writes their address and quantity, anything else exception 01.
    """
    if not request:
        return b"\x81\x01"
    fc = request[0]
    if fc in (3, 4) and len(request) >= 5:
        count = max(1, min(125, struct.unpack(">H", request[3:5])[0]))
        return bytes((fc, 2 * count)) + bytes(2 * count)
    if fc in (1, 2) and len(request) >= 5:
        count = max(1, min(2000, struct.unpack(">H", request[3:5])[0]))
        size = (count + 7) // 8
        return bytes((fc, size)) + bytes(size)
    if fc in (5, 6) and len(request) >= 5:
        return request[:5]
    if fc in (15, 16) and len(request) >= 5:
        return request[:5]
    return bytes((fc | 0x80, 1))


def mbap(tid: int, length: int, unit: int) -> bytes:
    """An MBAP header with the given (possibly lying) length field."""
    return struct.pack(">HHHB", tid & 0xFFFF, 0, length & 0xFFFF, unit & 0xFF)


def split_requests(buf: bytes) -> tuple[list[tuple[int, int, bytes]], bytes]:
    """Cut complete MBAP requests off ``buf``: ``([(tid, unit, pdu)], rest)``.

    A header whose length cannot be a request takes the whole buffer as its PDU (a hostile
    device does not care, but it must not wait for bytes that will never come).
    """
    out: list[tuple[int, int, bytes]] = []
    while len(buf) >= 7:
        tid, _proto, length, unit = struct.unpack_from(">HHHB", buf)
        if length < 2 or length > 254:
            out.append((tid, unit, buf[7:]))
            return out, b""
        end = 6 + length
        if end > len(buf):
            break
        out.append((tid, unit, buf[7:end]))
        buf = buf[end:]
    return out, buf


# --------------------------------------------------------------------------- connection I/O
class Conn:
    """One accepted TCP connection with bounded, stop-aware I/O.

    :param sock: the connected socket (it is closed by :meth:`close`).
    :param stop: set when the simulator stops.
    :param index: the connection's number among those of its protocol and behaviour (from 0).
    """

    def __init__(self, sock: socket.socket, stop: threading.Event, index: int) -> None:
        self.sock = sock
        self.stop = stop
        self.index = index
        self.deadline = time.monotonic() + MAX_CONNECTION_S
        #: True once the peer has closed or reset, or the connection's time is up.
        self.gone = False
        sock.settimeout(POLL_S)

    def alive(self) -> bool:
        """True while the peer is there and the connection may still be served."""
        if self.gone or self.stop.is_set() or time.monotonic() >= self.deadline:
            self.gone = True
        return not self.gone

    def recv(self) -> bytes:
        """The next bytes from the peer (at most :data:`READ_CHUNK`); empty once it is gone."""
        while self.alive():
            try:
                data = self.sock.recv(READ_CHUNK)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.gone = True
                return b""
            return data
        return b""

    def send(self, data: bytes) -> bool:
        """Send all of ``data`` unless the peer goes; False when it did."""
        view = memoryview(data)
        while view and self.alive():
            try:
                n = self.sock.send(view)
            except TimeoutError:
                continue  # the peer is not reading: wait (bounded by the deadline)
            except OSError:
                self.gone = True
                break
            view = view[n:]
        return not view

    def drip(self, data: bytes) -> bool:
        """Send ``data`` one byte at a time, one every 0.5 to 1 s."""
        for i in range(len(data)):
            if not self.send(data[i : i + 1]):
                return False
            if self.stop.wait(random.uniform(*DRIP_DELAY_S)):
                return False
        return True

    def stream(self, make: Callable[[], bytes] | None = None, block: bytes = _BLOCK) -> None:
        """Send bytes without end (``make()`` each time, else ``block``) until the peer goes or
        the connection's time is up, at most :data:`STREAM_RATE` bytes/s."""
        start = time.monotonic()
        sent = 0
        while self.alive():
            data = make() if make is not None else block
            self.send(data)
            sent += len(data)
            ahead = sent / STREAM_RATE - (time.monotonic() - start)
            if ahead > 0 and self.stop.wait(ahead):
                return

    def stall(self) -> None:
        """Send nothing more; read and drop what comes until the peer goes."""
        while self.recv():
            pass

    def close(self) -> None:
        """Close the socket."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()


# --------------------------------------------------------------------------- Modbus/TCP
def serve_modbus(conn: Conn, behaviour: str) -> None:
    """Answer Modbus/TCP requests according to ``behaviour``."""
    buf = b""
    while conn.alive():
        data = conn.recv()
        if not data:
            return
        if behaviour == "hostile.garbage":
            conn.send(random_bytes(1, 300))
            continue
        buf = (buf + data)[-MAX_BUFFER:]
        requests, buf = split_requests(buf)
        for tid, unit, pdu in requests:
            reply = plausible_pdu(pdu)
            if behaviour == "hostile.slow_drip":
                conn.drip(mbap(tid, len(reply) + 1, unit) + reply)
            elif behaviour == "hostile.huge":
                _modbus_endless(conn, tid, unit, reply)
                return
            else:
                _modbus_lie(conn, tid, unit, reply)
            if not conn.alive():
                return


def _modbus_lie(conn: Conn, tid: int, unit: int, reply: bytes) -> None:
    variant = tid % 6
    if variant == 0:  # announces 100 bytes more than it sends, then nothing
        conn.send(mbap(tid, min(254, len(reply) + 101), unit) + reply)
    elif variant == 1:  # announces 2 (unit + FC) and sends the whole PDU
        conn.send(mbap(tid, 2, unit) + reply)
    elif variant == 2:  # a correct reply and then 16 bytes beyond it
        conn.send(mbap(tid, len(reply) + 1, unit) + reply + os.urandom(16))
    elif variant == 3:
        conn.send(mbap(tid, 0xFFFF, unit) + reply)
    elif variant == 4:
        conn.send(mbap(tid, 0, unit) + reply)
    else:  # the MBAP length is true; the PDU's own byte count lies
        lie = bytes((reply[0], 250)) + reply[2:] if reply[0] < 5 else reply + bytes(8)
        conn.send(mbap(tid, len(lie) + 1, unit) + lie)


def _modbus_endless(conn: Conn, tid: int, unit: int, reply: bytes) -> None:
    if tid % 2 == 0:
        if conn.send(mbap(tid, 254, unit) + b"\x03\xfa"):
            conn.stream()
        return
    counter = itertools.count(tid + 1)

    def frame() -> bytes:
        other = next(counter) & 0xFFFF
        if other == tid:
            other = (other + 1) & 0xFFFF
        return mbap(other, len(reply) + 1, unit) + reply

    conn.stream(lambda: b"".join(frame() for _ in range(64)))


# --------------------------------------------------------------------------- SSH
def serve_ssh(conn: Conn, behaviour: str) -> None:
    """Greet an SSH client according to ``behaviour``."""
    if behaviour == "hostile.garbage":
        if not conn.send(NOT_SSH_LINE + os.urandom(4096)):
            return
        while conn.recv():
            conn.send(random_bytes(64, 512))
    elif behaviour == "hostile.lying_length":
        if not conn.send(SSH_VERSION) or not conn.recv():
            return
        length = ABSURD_SIZE if conn.index % 2 == 0 else 32768
        # packet_length, padding_length, SSH_MSG_KEXINIT, 10 bytes of the cookie
        conn.send(struct.pack(">IBB", length, 4, 20) + os.urandom(10))
        conn.stall()
    elif behaviour == "hostile.huge":
        variant = conn.index % 3
        if variant == 0:
            line = b"x" * (BANNER_LINE_BYTES - 2) + b"\r\n"
            block = line * (len(_BLOCK) // BANNER_LINE_BYTES)
        else:
            block = _NO_LF_BLOCK
        if variant == 2:
            conn.stream(block=block)
            return
        for _ in range(HUGE_BANNER_BYTES // len(block)):
            if not conn.send(block):
                return
        conn.stall()
    elif conn.drip(SSH_VERSION):
        conn.drip(os.urandom(4096))


# --------------------------------------------------------------------------- OPC UA
def opcua_ack(buffer_size: int = 65535, max_message: int = 0) -> bytes:
    """An OPC UA ``ACKF`` message: protocol version 0, buffer sizes, message and chunk limits."""
    body = struct.pack("<IIIII", 0, buffer_size, buffer_size, max_message, 0)
    return b"ACKF" + struct.pack("<I", 8 + len(body)) + body


def serve_opcua(conn: Conn, behaviour: str) -> None:
    """Answer an OPC UA client's Hello (and what follows) according to ``behaviour``."""
    if not conn.recv():  # the Hello (or whatever came first)
        return
    odd = conn.index % 2 == 1
    if behaviour == "hostile.garbage":
        if conn.send(random_bytes(64, 1024)):
            while conn.recv():
                conn.send(random_bytes(64, 1024))
    elif behaviour == "hostile.lying_length":
        if not odd:
            conn.send(b"ACKF" + struct.pack("<I", ABSURD_SIZE) + os.urandom(20))
        elif conn.send(opcua_ack(ABSURD_SIZE, ABSURD_SIZE)) and conn.recv():
            conn.send(b"OPNF" + struct.pack("<I", ABSURD_SIZE) + os.urandom(16))
        conn.stall()
    elif behaviour == "hostile.huge":
        header = struct.pack("<I", ABSURD_SIZE - 15)
        if not odd:
            if conn.send(b"ACKF" + header):
                conn.stream()
        elif conn.send(opcua_ack()) and conn.recv() and conn.send(b"OPNF" + header):
            conn.stream()
    else:
        conn.drip(opcua_ack())
        conn.stall()


# --------------------------------------------------------------------------- ptys
class PtyDevice:
    """A misbehaving serial device (console or RTU) on the master side of a pty it makes.

    The slave stays open in this process (as on a real line, nothing is lost between clients and
    the master never reports a hang-up), so output without end stops when the pty's buffer is
    full (no client reading) or :data:`MAX_CONNECTION_S` after the last input.

    :param kind: ``console`` or ``rtu``.
    :param behaviours: the behaviours in effect (taken in turn, one per input).
    :param stop: set when the simulator stops.
    """

    def __init__(self, kind: str, behaviours: tuple[str, ...], stop: threading.Event) -> None:
        self.kind = kind
        self.behaviours = behaviours
        self.stop = stop
        master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        self.master = master
        self.slave = slave
        self.path = os.ttyname(slave)
        self._inputs = itertools.count()
        self._requests = itertools.count()
        #: Bytes waiting to be dripped, and when the next one leaves.
        self._drip = bytearray()
        self._next_drip = 0.0
        #: Until when output without end is produced (0: not at all), since when, how much.
        self._endless_until = 0.0
        self._endless_since = 0.0
        self._endless_sent = 0
        self.thread = threading.Thread(target=self._run, name=f"hostile-{kind}", daemon=True)

    def _write(self, data: bytes | memoryview) -> int:
        """Write what the pty takes now; the number of bytes written."""
        try:
            return os.write(self.master, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return 0

    def _write_all(self, data: bytes) -> None:
        """Write ``data`` within about a second; drop what a client that does not read leaves."""
        view = memoryview(data)
        deadline = time.monotonic() + 1.0
        while view and time.monotonic() < deadline and not self.stop.is_set():
            n = self._write(view)
            view = view[n:]
            if view and not n:
                self.stop.wait(0.01)

    def _answer(self, data: bytes) -> None:
        behaviour = self.behaviours[next(self._inputs) % len(self.behaviours)]
        if behaviour == "hostile.huge":
            now = time.monotonic()
            if now >= self._endless_until:
                self._endless_since, self._endless_sent = now, 0
            self._endless_until = now + MAX_CONNECTION_S
        elif behaviour == "hostile.slow_drip":
            reply = b"\r\nlogin: " if self.kind == "console" else self._rtu_reply(data)
            self._drip += reply[: MAX_BUFFER - len(self._drip)]
            if not self._next_drip:
                self._next_drip = time.monotonic()
        elif behaviour == "hostile.lying_length" and self.kind == "rtu":
            self._write_all(self._rtu_lie(data))
        else:
            self._write_all(random_bytes(16, 256))

    def _rtu_reply(self, data: bytes) -> bytes:
        unit = data[0] if data else UNIT
        return with_crc(bytes((unit,)) + plausible_pdu(data[1:-2] if len(data) > 3 else b""))

    def _rtu_lie(self, data: bytes) -> bytes:
        unit = data[0] if data else UNIT
        values = bytes(4)
        variant = next(self._requests) % 3
        if variant == 0:
            return with_crc(bytes((unit, 3, 250)) + values)
        if variant == 1:
            return with_crc(bytes((unit, 3, 2)) + values)
        return with_crc(bytes((unit, 3, len(values))) + values) + os.urandom(8)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        while not self.stop.is_set():
            now = time.monotonic()
            wait_s = 0.1
            if self._drip:
                wait_s = max(0.0, min(wait_s, self._next_drip - now))
            endless = now < self._endless_until
            if endless and self._endless_sent >= STREAM_RATE * (now - self._endless_since):
                wait_s = min(wait_s, 0.01)  # ahead of the pace: wait, do not spin on POLLOUT
                poller.modify(self.master, select.POLLIN)
            elif endless:
                poller.modify(self.master, select.POLLIN | select.POLLOUT)
            else:
                poller.modify(self.master, select.POLLIN)
            try:
                events = poller.poll(int(wait_s * 1000))
            except InterruptedError:
                continue
            mask = 0
            for _fd, ev in events:
                mask |= ev
            if mask & select.POLLIN:
                try:
                    data = os.read(self.master, READ_CHUNK)
                except (BlockingIOError, InterruptedError):
                    data = b""
                except OSError:
                    self.stop.wait(0.05)
                    data = b""
                if data:
                    self._answer(data)
            paced = self._endless_sent < STREAM_RATE * (time.monotonic() - self._endless_since)
            if endless and mask & select.POLLOUT and paced:
                self._endless_sent += self._write(_BLOCK[:4096])
            if self._drip and time.monotonic() >= self._next_drip:
                if self._write(bytes(self._drip[:1])):
                    del self._drip[:1]
                self._next_drip = time.monotonic() + random.uniform(*DRIP_DELAY_S)
                if not self._drip:
                    self._next_drip = 0.0

    def close(self) -> None:
        """Stop serving (after :attr:`stop` is set) and close both ends."""
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- the device
class HostileDevice:
    """Every listener and pty of the hostile device.

    :param args: the parsed command line.
    :param behaviours: the behaviours in effect, sorted.
    """

    def __init__(self, args: common.SimArgs, behaviours: tuple[str, ...]) -> None:
        self.args = args
        self.behaviours = behaviours
        self.stop = threading.Event()
        self.slots = threading.BoundedSemaphore(MAX_HANDLERS)
        self.listeners: dict[str, socket.socket] = {}
        self.ptys: dict[str, PtyDevice] = {}
        self._counters: dict[str, itertools.count[int]] = {}
        #: Connections served per (protocol, behaviour): the variant counter of a connection.
        self._variants: dict[tuple[str, str], itertools.count[int]] = {}
        self._lock = threading.Lock()
        self._conns: set[Conn] = set()
        self._threads: list[threading.Thread] = []
        self._serve: dict[str, Callable[[Conn, str], None]] = {
            "modbus": serve_modbus,
            "ssh": serve_ssh,
            "opcua": serve_opcua,
        }

    def start(self) -> dict[str, Any]:
        """Bind every listener and open both ptys; return the ready line's endpoints.

        :raises OSError: a taken port, no pty.
        """
        host = self.args.host
        for name in ("modbus", "ssh", "opcua"):
            wanted = self.args.port if name == "modbus" else 0
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.listeners[name] = socket.create_server((host, wanted), family=family,
                                                        backlog=64)
            self.listeners[name].setblocking(False)
            self._counters[name] = itertools.count()
        for kind in ("console", "rtu"):
            self.ptys[kind] = PtyDevice(kind, self.behaviours, self.stop)
        for pty in self.ptys.values():
            pty.thread.start()

        def port(name: str) -> int:
            return int(self.listeners[name].getsockname()[1])

        url_host = f"[{host}]" if ":" in host else host
        return {
            "modbus": {"host": host, "port": port("modbus"), "unit": UNIT},
            "ssh": {"host": host, "port": port("ssh")},
            "opcua": {"url": f"opc.tcp://{url_host}:{port('opcua')}{OPCUA_PATH}"},
            "console": {"path": self.ptys["console"].path, "baud": CONSOLE_BAUD},
            "rtu": {"path": self.ptys["rtu"].path, "unit": UNIT, "baud": RTU_BAUD},
        }

    def serve_forever(self) -> None:
        """Accept connections until :meth:`request_stop` (runs on the main thread)."""
        by_fd = {sock.fileno(): name for name, sock in self.listeners.items()}
        while not self.stop.is_set():
            try:
                readable, _, _ = select.select(list(self.listeners.values()), [], [], POLL_S)
            except (OSError, ValueError):
                break
            for sock in readable:
                try:
                    client, _addr = sock.accept()
                except (BlockingIOError, InterruptedError, ConnectionError):
                    continue
                except OSError:
                    return
                self._accept(by_fd[sock.fileno()], client)

    def _accept(self, name: str, client: socket.socket) -> None:
        if self.stop.is_set() or not self.slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                client.close()
            return
        index = next(self._counters[name])
        behaviour = self.behaviours[index % len(self.behaviours)]
        variant = next(self._variants.setdefault((name, behaviour), itertools.count()))
        conn = Conn(client, self.stop, variant)
        with self._lock:
            self._conns.add(conn)
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(
                target=self._handle, args=(name, conn, behaviour),
                name=f"hostile-{name}-{index}", daemon=True,
            )
            self._threads.append(thread)
        thread.start()

    def _handle(self, name: str, conn: Conn, behaviour: str) -> None:
        try:
            self._serve[name](conn, behaviour)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self._conns.discard(conn)
            self.slots.release()

    def request_stop(self) -> None:
        """Ask everything to end (safe from a signal handler)."""
        self.stop.set()

    def close(self) -> None:
        """Close every listener, connection and pty; wait briefly for the threads."""
        self.stop.set()
        for sock in self.listeners.values():
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for conn in conns:
            conn.close()
        deadline = time.monotonic() + 2
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for pty in self.ptys.values():
            pty.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m simulators.hostile``."""
    args = common.parse_args(NAME, WEAKNESSES, argv)
    behaviours = tuple(sorted(args.weaknesses)) or (DEFAULT_BEHAVIOUR,)
    device = HostileDevice(args, behaviours)
    try:
        endpoints = device.start()
    except OSError as exc:
        device.close()
        common.fail(NAME, f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    common.install_stop_handler(device.request_stop)
    try:
        common.ready(NAME, endpoints, behaviours)
        device.serve_forever()
    finally:
        device.close()


if __name__ == "__main__":
    main()
