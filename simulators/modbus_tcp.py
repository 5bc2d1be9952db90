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

Both sniffers and their models live in :mod:`simulators.fragile_net` (``FragileStack``,
``FragileL2``, ``bpf_program`` and ``tcp_checksum_ok`` stay importable from here).
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Callable
from struct import Struct

from simulators import common
from simulators.fragile_net import (  # noqa: F401 - the models stay importable from here
    FragileL2,
    FragileStack,
    bpf_program,
    start_sniffers,
    tcp_checksum_ok,
)
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
