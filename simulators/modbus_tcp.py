"""Modbus/TCP PLC simulator: the load-test target of the bundled lab.

``python -m simulators.modbus_tcp [--host H] [--port P] [--unit N] [--posture hardened|weak]
[--weakness NAME]... [--config FILE.json] [--scan-period-ms N] [--state-dir D]
[--frame-timeout-s S] [--idle-timeout-s S]``

Ready line endpoints: ``{"modbus": {"host", "port", "unit", "frame_timeout_s",
"idle_timeout_s"}}``, plus ``"extra": {"host", "port"}`` with ``net.extra_open_port``.

Framing is our own (MBAP over asyncio): every complete ADU in the receive buffer is answered,
in order, and the answers of one read go out in one write, so pipelined requests work as on a
real device (the pymodbus 3.16 server answers only the first request of each TCP read).

Hardened behaviour:

- unit ids: serves ``--unit`` (default 1) and 255 (the value the Modbus/TCP specification
  gives for addressing a TCP device directly); requests for any other unit id, including the
  serial broadcast address 0, are dropped without a reply;
- plain Modbus/TCP is unauthenticated, so every write function code (5, 6, 15, 16, 22, 23)
  is refused with exception 01; reads always work (see :mod:`simulators.modbus_pdu` for the
  exception codes);
- a malformed MBAP header (protocol id not 0, length field < 2 or > 254, so an ADU over 260
  bytes) closes that connection; other connections keep being served;
- at most ``connection_limit`` concurrent connections; a connection beyond it is accepted
  and closed at once;
- a request must arrive whole within ``--frame-timeout-s`` (default :data:`FRAME_TIMEOUT_S`,
  2 s) of its first byte, or the connection is closed: the timer starts with the first byte of
  an incomplete MBAP frame and later bytes of the same frame do not restart it, so trickling a
  byte a second (slowloris) buys nothing; it stops when the frame is complete (a partial frame
  left behind a complete one starts its own timer);
- a connection on which no request completes for ``--idle-timeout-s`` (default
  :data:`IDLE_TIMEOUT_S`, 10 s), counted from the connect or from its last complete request,
  is closed (one that connects and sends nothing is the other way to hold a slot).

Both timeouts are in the ready line, under ``endpoints.modbus``: ``frame_timeout_s`` and
``idle_timeout_s`` (``null`` where a weakness switches them off). A device that crashed
(``modbus.crash_on_malformed``) times nothing out any more.

Weaknesses: ``modbus.unauthenticated_writes`` (writes accepted outside the protected ranges),
``modbus.unprotected_writes`` (protected ranges writable), ``modbus.crash_on_malformed`` (after
a malformed MBAP header the device answers nothing on any connection until restarted, but the
listening socket stays open), ``modbus.no_input_validation`` (illegal quantities, lengths and
addresses are answered as if valid), ``modbus.extra_function_codes`` (FC 8, 43/14, 65, 90),
``modbus.no_connection_limit``, ``modbus.no_frame_timeout`` (neither timeout above: a connection
holding an incomplete request, trickled or not, or sending nothing at all, is kept forever, so a
few of them fill ``connection_limit`` and lock every other client out),
``modbus.any_unit_id`` (every unit id 0..255 is answered),
``net.extra_open_port`` (a second listener, a "debug service" that sends a banner line and
closes), ``load.fragile`` (the scan cycle starves past ``fragile_threshold_rps``),
``modbus.torn_reads`` (the 32-bit scan clock in HR 5..6 is published a word at a time, so a
read of both words can be torn: see :mod:`simulators.plc`), ``net.fragile_stack`` and
``net.fragile_l2`` (see below).

``net.fragile_stack`` models a controller whose IP stack shares the CPU with the scan cycle and
chokes on abnormal traffic. A SYN flood or a malformed segment never reaches a userspace
program (the kernel deals with it), so this weakness watches the wire instead: a sniffer thread
reads the loopback interface (``lo``) through a Linux packet socket (``AF_PACKET``, so root or
``CAP_NET_RAW``; without it the simulator fails at start with exit 2) and parses the IPv4, TCP,
UDP and ICMP headers itself. Only TCP packets to the listener's own address and port count
(every TCP fragment to that address counts: a later fragment carries no port), and UDP
datagrams and ICMP echo requests to its address. The scan cycle stalls for
``fragile_recovery_s`` (measured from the last offending packet) on:

- a SYN flood: more than ``fragile_threshold_rps`` SYNs in the last second whose handshake did
  not complete (SYNs minus final handshake ACKs), so a storm of complete connections at the
  same rate does not count: the ``load.fragile`` weakness is the one that chokes on those;
- one packet with an invalid flag set (SYN+FIN, SYN+RST, no flag, FIN+PSH+URG "XMAS", and so
  all flags), a LAND packet (source address and port = destination address and port), a bad
  TCP checksum (judged only where the kernel did not leave the checksum to be filled in later,
  as it does for its own loopback traffic), a TCP data offset below 5 or past the segment, a
  TCP header shorter than 20 bytes, or an IP fragment of TCP;
- a UDP storm: more than ``fragile_threshold_rps`` UDP datagrams in the last second to the
  listener's address, whatever their port (first fragments and whole datagrams; later
  fragments are not counted);
- an ICMP echo storm: more than ``fragile_threshold_rps`` ICMP echo requests (type 8) in the
  last second to the listener's address.

A wildcard listener (``0.0.0.0``) counts UDP datagrams and echo requests to any address on
``lo``. Anything else (valid TCP carrying malformed Modbus frames included) leaves the scan cycle
alone. A starvation is reported on stderr (one line a second at most). Without the weakness
there is no sniffer at all; ``--posture weak`` switches it on too, so it needs root as well.

``net.fragile_l2`` is the same controller one layer down: its Ethernet driver hands every ARP
frame and every broadcast frame to the CPU that runs the scan cycle. A second sniffer reads
the interface that holds the listener's address (``lo`` for a loopback address; a lab's veth
inside its network namespace: only there do ARP and broadcasts exist) through a packet socket
(root or ``CAP_NET_RAW``, else exit 2 at start; a wildcard listener has no interface: exit 2)
and stalls the scan cycle for ``fragile_recovery_s`` on:

- an ARP storm: more than ``fragile_threshold_rps`` ARP frames received in the last second;
- a broadcast storm: more than ``fragile_threshold_rps`` other frames to the Ethernet broadcast
  address (ff:ff:ff:ff:ff:ff) in the last second.

Unicast frames and the device's own frames never count.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import fcntl
import math
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from struct import Struct

from simulators import common
from simulators.modbus_pdu import PduEngine, PduPolicy
from simulators.plc import PLC, FragileConfig

NAME = "modbus_tcp"

WEAKNESSES = (
    "modbus.unauthenticated_writes",
    "modbus.unprotected_writes",
    "modbus.crash_on_malformed",
    "modbus.no_input_validation",
    "modbus.extra_function_codes",
    "modbus.no_connection_limit",
    "modbus.no_frame_timeout",
    "modbus.any_unit_id",
    "net.extra_open_port",
    "load.fragile",
    "net.fragile_stack",
    "modbus.torn_reads",
    "net.fragile_l2",
)

#: Unit id the Modbus/TCP specification reserves for addressing a TCP device directly.
TCP_DIRECT_UNIT = 255
#: Largest MBAP length field: unit id + a 253-byte PDU (ADU of 260 bytes).
MAX_MBAP_LENGTH = 254
#: Seconds a hardened device waits for a started request to arrive whole (from its first byte).
FRAME_TIMEOUT_S = 2.0
#: Seconds a hardened device keeps a connection on which no request completes.
IDLE_TIMEOUT_S = 10.0
#: A timer firing this close before its deadline counts as on time (clock resolution).
_TIMER_SLACK_S = 1e-3
#: What the ``net.extra_open_port`` debug service sends before it closes.
DEBUG_BANNER = b"HSIM-PLC debug service 0.9 ready (no login required)\r\n"

_MBAP = Struct(">HHHB")

# -- net.fragile_stack ----------------------------------------------------------------------
#: Interface the ``net.fragile_stack`` sniffer reads (the labs serve on loopback addresses).
SNIFF_INTERFACE = "lo"
#: Bytes read per frame at most (an IPv4 packet is at most 65535 bytes; a longer frame is read
#: truncated, and neither its checksum nor its data offset is judged).
SNIFF_BUFFER = 65536
#: Seconds a blocked read of the sniffer waits before it looks at its stop flag again.
SNIFF_POLL_S = 0.1
#: Window (seconds) over which the half-open SYN, UDP and ICMP echo rates are counted.
SYN_WINDOW_S = 1.0
#: Handshakes remembered at most while their final ACK is awaited (oldest forgotten first).
MAX_PENDING_HANDSHAKES = 8192
#: Least seconds between two "starved" lines on stderr.
STARVE_LOG_GAP_S = 1.0

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10
TCP_URG = 0x20
_XMAS = TCP_FIN | TCP_PSH | TCP_URG
_IPPROTO_TCP = 6
_IPPROTO_UDP = 17
_IPPROTO_ICMP = 1
_ICMP_ECHO_REQUEST = 8

# Linux packet-socket and classic-BPF values the socket module does not name.
_SOL_PACKET = 263
_PACKET_AUXDATA = 8
_ETH_P_IP = 0x0800
_TP_STATUS_CSUMNOTREADY = 0x8
_SO_ATTACH_FILTER = 26
_AUXDATA = Struct("IIIHHHH")  # struct tpacket_auxdata: tp_status, tp_len, ...
_BPF_INSN = Struct("HBBI")  # struct sock_filter: code, jt, jf, k
_SKF_AD_PKTTYPE = 0xFFFFF000 + 4  # SKF_AD_OFF + SKF_AD_PKTTYPE

# -- net.fragile_l2 -------------------------------------------------------------------------
#: Bytes of each frame the ``net.fragile_l2`` sniffer reads (the Ethernet header is enough).
L2_SNAPLEN = 64
_ETH_P_ALL = 0x0003
_ETH_P_ARP = 0x0806
_ETH_BROADCAST = b"\xff" * 6
_SIOCGIFADDR = 0x8915


def plc_for(args: common.SimArgs) -> PLC:
    """The PLC of a simulator: fragile only with the ``load.fragile`` weakness."""
    fragile = None
    if args.has("load.fragile"):
        fragile = FragileConfig(args.config.fragile_threshold_rps, args.config.fragile_recovery_s)
    return PLC(args.scan_period_s, fragile=fragile, torn_reads=args.has("modbus.torn_reads"))


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (call from inside the running loop)."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()

    def on_stop() -> None:
        loop.call_soon_threadsafe(event.set)

    common.install_stop_handler(on_stop)
    return event


def add_unit_argument(parser: argparse.ArgumentParser) -> None:
    """``--unit N``: the unit id (slave address) the device answers to."""
    parser.add_argument("--unit", type=int, default=1, help="unit id served (1..247)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--unit N``, ``--frame-timeout-s S`` and ``--idle-timeout-s S``."""
    add_unit_argument(parser)
    parser.add_argument(
        "--frame-timeout-s",
        type=float,
        default=FRAME_TIMEOUT_S,
        help="seconds a started request has to arrive whole (hardened)",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=IDLE_TIMEOUT_S,
        help="seconds without a complete request before a connection is closed (hardened)",
    )


def check_timeouts(name: str, args: common.SimArgs) -> tuple[float | None, float | None]:
    """(frame timeout, idle timeout) of the posture (None where a weakness removes it); the
    error line and exit 2 on a value <= 0."""
    frame = float(args.extra["frame_timeout_s"])
    idle = float(args.extra["idle_timeout_s"])
    for option, value in (("--frame-timeout-s", frame), ("--idle-timeout-s", idle)):
        if not (value > 0 and math.isfinite(value)):
            common.fail(name, f"{option} must be a finite number > 0, got {value:g}")
    if args.has("modbus.no_frame_timeout"):
        return None, None
    return frame, idle


def check_unit(name: str, unit: int) -> int:
    """``unit`` if it is a valid unit id; otherwise the error line and exit 2."""
    if not 1 <= unit <= 247:
        common.fail(name, f"--unit must be 1..247, got {unit}")
    return unit


class ModbusTcpServer:
    """State shared by every connection of one MBAP listener (plain or TLS).

    :param plc: the PLC (for load accounting).
    :param engine: answers the PDUs.
    :param units: unit ids answered; None answers every unit id.
    :param connection_limit: concurrent connections allowed; None for no limit.
    :param crash_on_malformed: a malformed MBAP header mutes the whole device.
    :param write_permission: decides once per connection whether it may write.
    :param frame_timeout_s: seconds a started request has to arrive whole (from its first
        byte) before the connection is closed; None waits forever.
    :param idle_timeout_s: seconds without a complete request (from the connect or the last
        one) before the connection is closed; None waits forever.
    """

    def __init__(
        self,
        plc: PLC,
        engine: PduEngine,
        *,
        units: frozenset[int] | None,
        connection_limit: int | None,
        crash_on_malformed: bool,
        write_permission: Callable[[asyncio.BaseTransport], bool],
        frame_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
    ) -> None:
        for name, value in (("frame_timeout_s", frame_timeout_s),
                            ("idle_timeout_s", idle_timeout_s)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        self.plc = plc
        self.engine = engine
        self.units = units
        self.connection_limit = connection_limit
        self.crash_on_malformed = crash_on_malformed
        self.write_permission = write_permission
        self.frame_timeout_s = frame_timeout_s
        self.idle_timeout_s = idle_timeout_s
        #: Transports currently served (within the limit).
        self.connections: set[asyncio.Transport] = set()
        #: True once ``crash_on_malformed`` has fired: nothing is answered any more.
        self.muted = False
        #: Connections closed so far because a request did not arrive whole in time.
        self.frame_timeouts = 0
        #: Connections closed so far because no request completed in time.
        self.idle_timeouts = 0

    @property
    def timed(self) -> bool:
        """True when connections are timed out at all."""
        return self.frame_timeout_s is not None or self.idle_timeout_s is not None

    def protocol(self) -> MbapProtocol:
        """Protocol factory for ``loop.create_server``."""
        return MbapProtocol(self)

    def close_all(self) -> None:
        """Abort every open connection (at shutdown)."""
        for transport in list(self.connections):
            transport.abort()
        self.connections.clear()


class MbapProtocol(asyncio.Protocol):
    """One Modbus/TCP connection: MBAP framing with pipelining, and the frame and idle timers.

    The timers are lazy: a data event only stores times (:attr:`_frame_since`,
    :attr:`_active_at`); one timer handle per connection fires at the earliest deadline it
    knew of, and on firing looks again, closing the connection or re-arming for the new
    deadline. A request flood so costs no timer work per request.
    """

    __slots__ = ("_active_at", "_buf", "_can_write", "_frame_since", "_served", "_server",
                 "_timer", "_transport")

    def __init__(self, server: ModbusTcpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._can_write = False
        self._served = False
        #: Loop time of the first byte of the incomplete frame in the buffer (None: none).
        self._frame_since: float | None = None
        #: Loop time of the connect or of the last complete request.
        self._active_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self._server
        server.plc.note_request()
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        limit = server.connection_limit
        if limit is not None and len(server.connections) >= limit:
            transport.close()
            return
        server.connections.add(transport)
        self._served = True
        self._can_write = server.write_permission(transport)
        if server.timed:
            self._active_at = asyncio.get_running_loop().time()
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._served:
            if self._transport is not None:
                self._server.connections.discard(self._transport)
            self._served = False

    # -- frame and idle timers ----------------------------------------------------------------
    def _deadline(self) -> tuple[float, str] | None:
        """The earliest loop time at which this connection is closed, and why."""
        server = self._server
        out: tuple[float, str] | None = None
        if server.idle_timeout_s is not None:
            out = (self._active_at + server.idle_timeout_s, "idle")
        if server.frame_timeout_s is not None and self._frame_since is not None:
            frame = self._frame_since + server.frame_timeout_s
            if out is None or frame < out[0]:
                out = (frame, "frame")
        return out

    def _arm(self) -> None:
        """Make sure the timer fires no later than the current deadline."""
        due = self._deadline()
        timer = self._timer
        if due is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if timer.when() <= due[0]:
                return  # fires first and looks again
            timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(due[0], self._expire)

    def _expire(self) -> None:
        """The timer fired: close the connection if its deadline passed, else re-arm."""
        self._timer = None
        transport = self._transport
        server = self._server
        if not self._served or transport is None or transport.is_closing() or server.muted:
            return  # a crashed device times nothing out
        due = self._deadline()
        if due is None:
            return
        if asyncio.get_running_loop().time() < due[0] - _TIMER_SLACK_S:
            self._arm()
            return
        if due[1] == "frame":
            server.frame_timeouts += 1
        else:
            server.idle_timeouts += 1
        self._buf = b""
        if transport.get_write_buffer_size():
            transport.abort()  # the peer does not read either: do not wait for it
        else:
            transport.close()

    def pause_writing(self) -> None:
        # the peer does not read its answers: stop reading its requests (bounded memory)
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        server = self._server
        if server.muted or not self._served:
            return
        buf = self._buf + data if self._buf else data
        size = len(buf)
        pos = 0
        out: list[bytes] = []
        units = server.units
        handle = server.engine.handle
        note = server.plc.note_request
        can_write = self._can_write
        unpack_from = _MBAP.unpack_from
        pack = _MBAP.pack
        malformed = False
        while size - pos >= 7:
            tid, proto, length, unit = unpack_from(buf, pos)
            if proto != 0 or length < 2 or length > MAX_MBAP_LENGTH:
                malformed = True
                break
            end = pos + 6 + length
            if end > size:
                break
            note()
            if units is None or unit in units:
                reply = handle(buf[pos + 7 : end], can_write)
                if reply is not None:
                    out.append(pack(tid, 0, len(reply) + 1, unit))
                    out.append(reply)
            pos = end
        transport = self._transport
        assert transport is not None
        if out and not transport.is_closing():
            transport.write(b"".join(out))
        if malformed:
            self._buf = b""
            if server.crash_on_malformed:
                server.muted = True
            else:
                transport.close()
            return
        self._buf = buf[pos:] if pos < size else b""
        if server.timed:
            self._track(completed=pos > 0, pending=pos < size)

    def _track(self, *, completed: bool, pending: bool) -> None:
        """Update the timer times after a read.

        :param completed: at least one request completed in this read.
        :param pending: an incomplete frame is left in the buffer.
        """
        now = asyncio.get_running_loop().time()
        if completed:
            self._active_at = now
        if not pending:
            self._frame_since = None
        elif completed or self._frame_since is None:
            # a frame started in this read: its first byte came now (bytes added to a frame
            # already started leave its time alone: trickling does not extend the deadline)
            started = self._frame_since is None
            self._frame_since = now
            if started:
                self._arm()


async def _debug_service(
    plc: PLC, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """The ``net.extra_open_port`` listener: a banner line, then close."""
    plc.note_request()
    try:
        writer.write(DEBUG_BANNER)
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


# --------------------------------------------------------------------------- net.fragile_stack
def tcp_checksum_ok(src: bytes, dst: bytes, segment: bytes | memoryview) -> bool:
    """True if the TCP checksum of ``segment`` (header and data) from ``src`` to ``dst`` holds.

    The one's-complement sum of the pseudo header and the segment, checksum included, must be
    0xFFFF; as 2**16 = 1 (mod 0xFFFF), that is the whole byte string read as one big number
    being a multiple of 0xFFFF (a TCP pseudo header is never all zeros).
    """
    data = b"".join(
        (
            src,
            dst,
            bytes((0, _IPPROTO_TCP)),
            len(segment).to_bytes(2, "big"),
            segment,
            b"\0" if len(segment) % 2 else b"",
        )
    )
    return int.from_bytes(data, "big") % 0xFFFF == 0


def _invalid_flags(flags: int) -> str | None:
    """The name of an invalid TCP flag set, or None."""
    if flags & (TCP_SYN | TCP_FIN) == TCP_SYN | TCP_FIN:
        return "SYN+FIN"
    if flags & (TCP_SYN | TCP_RST) == TCP_SYN | TCP_RST:
        return "SYN+RST"
    if flags & 0x3F == 0:
        return "no flag"
    if flags & _XMAS == _XMAS:
        return "FIN+PSH+URG (XMAS)"
    return None


class FragileStack:
    """The ``net.fragile_stack`` model: judges each IPv4 packet seen on the wire and starves the
    PLC's scan cycle on a SYN flood, an abnormal TCP packet, a UDP storm or an ICMP echo storm
    (see the module docstring).

    Used from the sniffer thread only (not thread-safe); :meth:`feed` takes raw bytes, so it
    runs without a socket too.

    :param plc: the PLC whose scan cycle starves.
    :param address: the listener's IPv4 address (4 bytes); None for a wildcard listener.
    :param port: the listener's TCP port.
    :param threshold_rps: half-open SYNs, UDP datagrams or ICMP echo requests per second above
        which the scan cycle starves.
    :param recovery_s: seconds each starvation lasts after the last offending packet.
    :param clock: the monotonic clock (for tests).
    """

    def __init__(
        self,
        plc: PLC,
        address: bytes | None,
        port: int,
        *,
        threshold_rps: float,
        recovery_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if address is not None and len(address) != 4:
            raise ValueError(f"address must be 4 bytes (IPv4), got {address!r}")
        self.plc = plc
        self.address = address
        self.port = port
        self.threshold_rps = threshold_rps
        self.recovery_s = recovery_s
        self.clock = clock
        #: Arrival times of SYNs in the last :data:`SYN_WINDOW_S`.
        self._syns: deque[float] = deque()
        #: Arrival times of final handshake ACKs in the last :data:`SYN_WINDOW_S`.
        self._completed: deque[float] = deque()
        #: Arrival times of UDP datagrams to the address in the last :data:`SYN_WINDOW_S`.
        self._datagrams: deque[float] = deque()
        #: Arrival times of ICMP echo requests to the address in the last :data:`SYN_WINDOW_S`.
        self._echoes: deque[float] = deque()
        #: (source address, source port) of SYNs whose final ACK is awaited -> SYN time.
        self._pending: OrderedDict[tuple[bytes, int], float] = OrderedDict()
        #: Offending packets seen so far (each one starved, or prolonged a starvation).
        self.offences = 0
        #: Why the scan cycle last starved.
        self.last_reason: str | None = None
        self._logged_at = -STARVE_LOG_GAP_S

    def half_open(self) -> int:
        """SYNs in the last window whose handshake did not complete in it."""
        return len(self._syns) - len(self._completed)

    def feed(
        self, packet: bytes | memoryview, *, checksum_ready: bool = True, truncated: bool = False
    ) -> str | None:
        """Account one IPv4 packet; return why it starved the scan cycle, or None.

        :param packet: the packet from its IP header on.
        :param checksum_ready: False when the kernel left the TCP checksum to be filled in
            later (its own loopback traffic): the checksum is then not judged.
        :param truncated: the packet was read cut short.
        """
        n = len(packet)
        if n < 20 or packet[0] >> 4 != 4:
            return None
        proto = packet[9]
        if proto not in (_IPPROTO_TCP, _IPPROTO_UDP, _IPPROTO_ICMP):
            return None
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or ihl > n:
            return None
        dst = bytes(packet[16:20])
        if self.address is not None and dst != self.address:
            return None
        src = bytes(packet[12:16])
        if proto != _IPPROTO_TCP:
            return self._count_datagram(packet, proto, ihl, src)
        total = (packet[2] << 8) | packet[3]
        # an IP total length of 0 (segmentation offload) or past the capture: judge what is there
        complete = not truncated and ihl <= total <= n
        segment = packet[ihl:total] if complete else packet[ihl:]
        fragment = (packet[6] << 8) | packet[7]
        if fragment & 0x3FFF:  # more-fragments flag or a fragment offset
            if fragment & 0x1FFF == 0 and len(segment) >= 4 and self._dport(segment) != self.port:
                return None
            return self._offence("IP fragment of TCP", src)
        if len(segment) < 4 or self._dport(segment) != self.port:
            return None
        sport = (segment[0] << 8) | segment[1]
        if len(segment) < 20:
            return self._offence(f"TCP header of {len(segment)} bytes", src, sport)
        offset = segment[12] >> 4
        flags = segment[13]
        if src == dst and sport == self.port:
            return self._offence("LAND packet (source = destination)", src, sport)
        if offset < 5:
            return self._offence(f"TCP data offset {offset} (< 5)", src, sport)
        if complete and offset * 4 > len(segment):
            return self._offence(f"TCP data offset {offset} past the segment", src, sport)
        bad = _invalid_flags(flags)
        if bad is not None:
            return self._offence(f"invalid TCP flags {bad}", src, sport)
        if checksum_ready and complete and not tcp_checksum_ok(src, dst, segment):
            return self._offence("bad TCP checksum", src, sport)
        return self._count_handshake(src, sport, flags)

    def _count_datagram(
        self, packet: bytes | memoryview, proto: int, ihl: int, src: bytes
    ) -> str | None:
        """Count a UDP datagram or an ICMP echo request (first fragment or whole packet)."""
        if ((packet[6] << 8) | packet[7]) & 0x1FFF:
            return None  # a later fragment: its datagram was counted by the first one
        if proto == _IPPROTO_ICMP:
            if len(packet) <= ihl or packet[ihl] != _ICMP_ECHO_REQUEST:
                return None
            times, what = self._echoes, "ICMP echo requests"
        else:
            times, what = self._datagrams, "UDP datagrams"
        now = self.clock()
        times.append(now)
        horizon = now - SYN_WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) > self.threshold_rps:
            kind = "ICMP echo storm" if proto == _IPPROTO_ICMP else "UDP storm"
            return self._offence(
                f"{kind}: {len(times)} {what} in the last {SYN_WINDOW_S:g} s "
                f"(threshold {self.threshold_rps:g})",
                src,
            )
        return None

    @staticmethod
    def _dport(segment: bytes | memoryview) -> int:
        return (segment[2] << 8) | segment[3]

    def _count_handshake(self, src: bytes, sport: int, flags: int) -> str | None:
        now = self.clock()
        horizon = now - SYN_WINDOW_S
        syns, completed, pending = self._syns, self._completed, self._pending
        kind = flags & (TCP_SYN | TCP_ACK | TCP_RST)
        key = (src, sport)
        if kind == TCP_SYN:
            syns.append(now)
            pending[key] = now
            pending.move_to_end(key)
            if len(pending) > MAX_PENDING_HANDSHAKES:
                pending.popitem(last=False)
        elif kind == TCP_ACK and pending.pop(key, None) is not None:
            completed.append(now)
        while syns and syns[0] <= horizon:
            syns.popleft()
        while completed and completed[0] <= horizon:
            completed.popleft()
        while pending:
            oldest = next(iter(pending.values()))
            if oldest > horizon:
                break
            pending.popitem(last=False)
        if kind == TCP_SYN and self.half_open() > self.threshold_rps:
            return self._offence(
                f"SYN flood: {self.half_open()} half-open SYNs in the last "
                f"{SYN_WINDOW_S:g} s (threshold {self.threshold_rps:g})",
                src,
            )
        return None

    def _offence(self, reason: str, src: bytes, sport: int | None = None) -> str:
        self.offences += 1
        self.last_reason = reason
        self.plc.starve(self.recovery_s)
        now = self.clock()
        if now - self._logged_at >= STARVE_LOG_GAP_S:
            self._logged_at = now
            origin = socket.inet_ntoa(src) + ("" if sport is None else f":{sport}")
            sys.stderr.write(
                f"{NAME}: net.fragile_stack: scan cycle starved for "
                f"{self.recovery_s:g} s: {reason} from {origin}\n"
            )
            sys.stderr.flush()
        return reason


def bpf_program(address: bytes | None, port: int) -> list[tuple[int, int, int, int]]:
    """A classic BPF filter for the sniffer (offsets from the IP header): keep received IPv4 TCP
    packets to ``address`` (any address if None) and ``port``, every TCP fragment to
    ``address`` whose port is unknown, UDP datagrams to ``address`` (first fragments and whole
    ones) and ICMP echo requests to ``address``. :class:`FragileStack` judges the rest again;
    the filter only keeps other traffic on ``lo`` out of the interpreter."""
    # jump targets are labels (str) resolved below; classic BPF jumps forward only
    program: list[tuple[int, int | str, int | str, int] | str] = [
        (0x20, 0, 0, _SKF_AD_PKTTYPE),  # ld pkttype
        (0x15, "drop", 0, socket.PACKET_OUTGOING),  # jeq OUTGOING -> drop
    ]
    if address is not None:
        program += [
            (0x20, 0, 0, 16),  # ld [16]: destination address
            (0x15, 0, "drop", int.from_bytes(address, "big")),
        ]
    program += [
        (0x30, 0, 0, 9),  # ldb [9]: protocol
        (0x15, "tcp", 0, _IPPROTO_TCP),
        (0x15, "udp", 0, _IPPROTO_UDP),
        (0x15, 0, "drop", _IPPROTO_ICMP),
        (0x28, 0, 0, 6),  # ldh [6]: flags and fragment offset
        (0x45, "drop", 0, 0x1FFF),  # jset offset -> a later ICMP fragment: drop
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): IP header length
        (0x50, 0, 0, 0),  # ldb [x+0]: ICMP type
        (0x15, "accept", "drop", _ICMP_ECHO_REQUEST),
        "udp",
        (0x28, 0, 0, 6),  # ldh [6]
        (0x45, "drop", "accept", 0x1FFF),  # a later UDP fragment: drop
        "tcp",
        (0x28, 0, 0, 6),  # ldh [6]: flags and fragment offset
        (0x45, "accept", 0, 0x1FFF),  # jset offset -> a later fragment: accept
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): IP header length
        (0x48, 0, 0, 2),  # ldh [x+2]: TCP destination port
        (0x15, "accept", "drop", port),
        "accept",
        (0x06, 0, 0, SNIFF_BUFFER),
        "drop",
        (0x06, 0, 0, 0),
    ]
    labels: dict[str, int] = {}
    insns: list[tuple[int, int | str, int | str, int]] = []
    for item in program:
        if isinstance(item, str):
            labels[item] = len(insns)
        else:
            insns.append(item)

    def resolve(jump: int | str, at: int) -> int:
        return labels[jump] - at - 1 if isinstance(jump, str) else jump

    return [(code, resolve(jt, i), resolve(jf, i), k) for i, (code, jt, jf, k) in enumerate(insns)]


def open_packet_socket(address: bytes | None, port: int) -> socket.socket:
    """A packet socket on :data:`SNIFF_INTERFACE` that reads received IPv4 frames (without
    their link header) to ``address``/``port``, with checksum status (``PACKET_AUXDATA``) and a
    read timeout of :data:`SNIFF_POLL_S`.

    :raises OSError: no root or ``CAP_NET_RAW`` (``PermissionError``), or no such interface.
    """
    # protocol 0: nothing is queued before the filter is attached and bind names ETH_P_IP
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    try:
        sock.setsockopt(_SOL_PACKET, _PACKET_AUXDATA, 1)
        insns = bpf_program(address, port)
        code = ctypes.create_string_buffer(b"".join(_BPF_INSN.pack(*i) for i in insns))
        sock.setsockopt(
            socket.SOL_SOCKET,
            _SO_ATTACH_FILTER,
            Struct("HP").pack(len(insns), ctypes.addressof(code)),
        )
        sock.bind((SNIFF_INTERFACE, _ETH_P_IP))
        sock.settimeout(SNIFF_POLL_S)
    except BaseException:
        sock.close()
        raise
    return sock


class StackSniffer:
    """The ``net.fragile_stack`` sniffer thread: reads :data:`SNIFF_INTERFACE` and feeds a
    :class:`FragileStack`. Opens its socket at construction.

    :param stack: the model the packets go to.
    :raises OSError: the packet socket cannot be opened (see :func:`open_packet_socket`).
    """

    def __init__(self, stack: FragileStack) -> None:
        self.stack = stack
        self._sock = open_packet_socket(stack.address, stack.port)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fragile-stack", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (within about :data:`SNIFF_POLL_S`) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self._sock.close()

    def _run(self) -> None:
        buf = bytearray(SNIFF_BUFFER)
        view = memoryview(buf)
        ancillary = socket.CMSG_SPACE(_AUXDATA.size)
        recv = self._sock.recvmsg_into
        feed = self.stack.feed
        while not self._stop.is_set():
            try:
                size, anc, msg_flags, address = recv([buf], ancillary)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.wait(SNIFF_POLL_S):
                    break
                continue
            if address[2] == socket.PACKET_OUTGOING:
                continue
            checksum_ready = False
            truncated = bool(msg_flags & socket.MSG_TRUNC)
            for level, kind, data in anc:
                if level == _SOL_PACKET and kind == _PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                    status, length = _AUXDATA.unpack_from(data)[:2]
                    checksum_ready = not status & _TP_STATUS_CSUMNOTREADY
                    truncated = truncated or length > size
            feed(view[:size], checksum_ready=checksum_ready, truncated=truncated)


def start_fragile_stack(
    args: common.SimArgs, plc: PLC, listener: asyncio.Server
) -> StackSniffer | str:
    """Start the ``net.fragile_stack`` sniffer for ``listener``; an error message if it cannot."""
    bound = next((s.getsockname() for s in listener.sockets if s.family == socket.AF_INET), None)
    if bound is None:
        return f"net.fragile_stack models an IPv4 stack; {args.host} has no IPv4 listener"
    host, port = str(bound[0]), int(bound[1])
    address = None if host == "0.0.0.0" else socket.inet_aton(host)  # noqa: S104
    stack = FragileStack(
        plc,
        address,
        port,
        threshold_rps=args.config.fragile_threshold_rps,
        recovery_s=args.config.fragile_recovery_s,
    )
    try:
        sniffer = StackSniffer(stack)
    except OSError as exc:
        return (
            f"net.fragile_stack needs a packet socket on {SNIFF_INTERFACE} "
            f"(root or CAP_NET_RAW): {exc.strerror or exc}"
        )
    sniffer.start()
    return sniffer


# --------------------------------------------------------------------------- net.fragile_l2
def interface_of(address: bytes) -> str | None:
    """The name of the local interface whose (primary) IPv4 address is ``address``; ``lo`` for
    any loopback address; None if no interface has it."""
    if address[0] == 127:
        return "lo"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _index, name in socket.if_nameindex():
            request = Struct("16s24x").pack(name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on this one
            if reply[20:24] == address:  # struct ifreq: name, then sockaddr_in (addr at +4)
                return name
    return None


class FragileL2:
    """The ``net.fragile_l2`` model: counts received ARP and broadcast frames and starves the
    PLC's scan cycle when either passes ``threshold_rps`` in the last second (see the module
    docstring). Sniffer thread only; :meth:`feed` takes raw frames, so it runs without a socket.

    :param plc: the PLC whose scan cycle starves.
    :param threshold_rps: ARP (or broadcast) frames per second above which it starves.
    :param recovery_s: seconds each starvation lasts after the last offending frame.
    :param clock: the monotonic clock (for tests).
    """

    def __init__(
        self,
        plc: PLC,
        *,
        threshold_rps: float,
        recovery_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plc = plc
        self.threshold_rps = threshold_rps
        self.recovery_s = recovery_s
        self.clock = clock
        #: Arrival times of ARP frames in the last :data:`SYN_WINDOW_S`.
        self._arp: deque[float] = deque()
        #: Arrival times of other broadcast frames in the last :data:`SYN_WINDOW_S`.
        self._broadcast: deque[float] = deque()
        #: Offending frames so far.
        self.offences = 0
        #: Why the scan cycle last starved.
        self.last_reason: str | None = None
        self._logged_at = -STARVE_LOG_GAP_S

    def feed(self, frame: bytes | memoryview) -> str | None:
        """Account one received Ethernet frame; return why it starved the scan cycle, or None."""
        if len(frame) < 14:
            return None
        if ((frame[12] << 8) | frame[13]) == _ETH_P_ARP:
            times, kind = self._arp, "ARP storm: {n} ARP frames"
        elif bytes(frame[:6]) == _ETH_BROADCAST:
            times, kind = self._broadcast, "broadcast storm: {n} broadcast frames"
        else:
            return None
        now = self.clock()
        times.append(now)
        horizon = now - SYN_WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        if len(times) <= self.threshold_rps:
            return None
        reason = (
            kind.format(n=len(times))
            + f" in the last {SYN_WINDOW_S:g} s (threshold {self.threshold_rps:g})"
        )
        self.offences += 1
        self.last_reason = reason
        self.plc.starve(self.recovery_s)
        if now - self._logged_at >= STARVE_LOG_GAP_S:
            self._logged_at = now
            source = ":".join(f"{b:02x}" for b in bytes(frame[6:12]))
            sys.stderr.write(
                f"{NAME}: net.fragile_l2: scan cycle starved for {self.recovery_s:g} s: "
                f"{reason} (last from {source})\n"
            )
            sys.stderr.flush()
        return reason


def l2_bpf_program() -> list[tuple[int, int, int, int]]:
    """A classic BPF filter for the ``net.fragile_l2`` sniffer (offsets from the Ethernet
    header): keep received broadcast frames and ARP frames, the first :data:`L2_SNAPLEN`
    bytes of each."""
    return [
        (0x20, 0, 0, _SKF_AD_PKTTYPE),  # ld pkttype
        (0x15, 4, 0, socket.PACKET_OUTGOING),  # jeq OUTGOING -> drop
        (0x15, 2, 0, socket.PACKET_BROADCAST),  # jeq BROADCAST -> accept
        (0x28, 0, 0, 12),  # ldh [12]: ethertype
        (0x15, 0, 1, _ETH_P_ARP),  # jeq ARP -> accept, else drop
        (0x06, 0, 0, L2_SNAPLEN),  # accept
        (0x06, 0, 0, 0),  # drop
    ]


class L2Sniffer:
    """The ``net.fragile_l2`` sniffer thread: reads ``ifname`` and feeds a :class:`FragileL2`.
    Opens its socket at construction.

    :raises OSError: the packet socket cannot be opened (no root, no such interface).
    """

    def __init__(self, model: FragileL2, ifname: str) -> None:
        self.model = model
        self.ifname = ifname
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # nothing queued yet
        try:
            insns = l2_bpf_program()
            code = ctypes.create_string_buffer(b"".join(_BPF_INSN.pack(*i) for i in insns))
            sock.setsockopt(
                socket.SOL_SOCKET,
                _SO_ATTACH_FILTER,
                Struct("HP").pack(len(insns), ctypes.addressof(code)),
            )
            sock.bind((ifname, _ETH_P_ALL))
            sock.settimeout(SNIFF_POLL_S)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start reading (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fragile-l2", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the thread (within about :data:`SNIFF_POLL_S`) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self._sock.close()

    def _run(self) -> None:
        buf = bytearray(L2_SNAPLEN)
        view = memoryview(buf)
        feed = self.model.feed
        while not self._stop.is_set():
            try:
                size, address = self._sock.recvfrom_into(buf)
            except TimeoutError:
                continue
            except OSError:
                if self._stop.wait(SNIFF_POLL_S):
                    break
                continue
            if address[2] != socket.PACKET_OUTGOING:
                feed(view[:size])


def start_fragile_l2(args: common.SimArgs, plc: PLC, listener: asyncio.Server) -> L2Sniffer | str:
    """Start the ``net.fragile_l2`` sniffer on the interface of ``listener``'s address; an
    error message if it cannot."""
    bound = next((s.getsockname() for s in listener.sockets if s.family == socket.AF_INET), None)
    if bound is None or bound[0] == "0.0.0.0":  # noqa: S104
        return f"net.fragile_l2 needs a listener on one interface's IPv4 address, not {args.host}"
    ifname = interface_of(socket.inet_aton(str(bound[0])))
    if ifname is None:
        return f"net.fragile_l2: no interface holds {bound[0]}"
    model = FragileL2(
        plc,
        threshold_rps=args.config.fragile_threshold_rps,
        recovery_s=args.config.fragile_recovery_s,
    )
    try:
        sniffer = L2Sniffer(model, ifname)
    except OSError as exc:
        return (
            f"net.fragile_l2 needs a packet socket on {ifname} "
            f"(root or CAP_NET_RAW): {exc.strerror or exc}"
        )
    sniffer.start()
    return sniffer


def start_sniffers(
    args: common.SimArgs, plc: PLC, listener: asyncio.Server
) -> list[StackSniffer | L2Sniffer] | str:
    """Start the sniffers of the ``net.fragile_stack`` and ``net.fragile_l2`` weaknesses that
    are on; an error message (and nothing left running) if one cannot start."""
    started: list[StackSniffer | L2Sniffer] = []
    for weakness, start in (
        ("net.fragile_stack", start_fragile_stack),
        ("net.fragile_l2", start_fragile_l2),
    ):
        if not args.has(weakness):
            continue
        sniffer = start(args, plc, listener)
        if isinstance(sniffer, str):
            for other in started:
                other.stop()
            return sniffer
        started.append(sniffer)
    return started


async def _serve(args: common.SimArgs) -> str | None:
    """Run until SIGTERM; return an error message if the listeners cannot start."""
    stop = stop_event()
    loop = asyncio.get_running_loop()
    unit = int(args.extra["unit"])
    plc = plc_for(args)
    engine = PduEngine(
        plc,
        PduPolicy(
            protect_ranges=not args.has("modbus.unprotected_writes"),
            validate=not args.has("modbus.no_input_validation"),
            extra_function_codes=args.has("modbus.extra_function_codes"),
            open_ranges_on_readonly_channel=args.has("modbus.unprotected_writes"),
        ),
    )
    writes = args.has("modbus.unauthenticated_writes")
    frame_timeout, idle_timeout = check_timeouts(NAME, args)
    server = ModbusTcpServer(
        plc,
        engine,
        units=None if args.has("modbus.any_unit_id") else frozenset({unit, TCP_DIRECT_UNIT}),
        connection_limit=None
        if args.has("modbus.no_connection_limit")
        else args.config.connection_limit,
        crash_on_malformed=args.has("modbus.crash_on_malformed"),
        write_permission=lambda _transport: writes,
        frame_timeout_s=frame_timeout,
        idle_timeout_s=idle_timeout,
    )
    listeners: list[asyncio.Server] = []
    try:
        listener = await loop.create_server(server.protocol, args.host, args.port, backlog=128)
        listeners.append(listener)
        port = listener.sockets[0].getsockname()[1]
        endpoints: dict[str, dict[str, object]] = {
            "modbus": {
                "host": args.host,
                "port": port,
                "unit": unit,
                "frame_timeout_s": frame_timeout,
                "idle_timeout_s": idle_timeout,
            }
        }
        if args.has("net.extra_open_port"):
            extra = await asyncio.start_server(lambda r, w: _debug_service(plc, r, w), args.host, 0)
            listeners.append(extra)
            endpoints["extra"] = {"host": args.host, "port": extra.sockets[0].getsockname()[1]}
    except OSError as exc:
        for listener in listeners:
            listener.close()
        return f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
    sniffers = start_sniffers(args, plc, listeners[0])
    if isinstance(sniffers, str):
        for listener in listeners:
            listener.close()
        return sniffers
    plc.start()
    common.ready(NAME, endpoints, args.weaknesses)
    try:
        await stop.wait()
    finally:
        for sniffer in sniffers:
            sniffer.stop()
        for listener in listeners:
            listener.close()
        server.close_all()
        for listener in listeners:
            await listener.wait_closed()
        plc.stop()
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m simulators.modbus_tcp``."""
    args = common.parse_args(NAME, WEAKNESSES, argv, add_arguments=add_arguments)
    check_unit(NAME, int(args.extra["unit"]))
    check_timeouts(NAME, args)
    error = asyncio.run(_serve(args))
    if error is not None:
        common.fail(NAME, error)


if __name__ == "__main__":
    main()
