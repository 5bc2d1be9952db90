"""Modbus/TCP PLC simulator: the load-test target of the bundled lab.

``python -m simulators.modbus_tcp [--host H] [--port P] [--unit N] [--posture hardened|weak]
[--weakness NAME]... [--config FILE.json] [--scan-period-ms N] [--state-dir D]``

Ready line endpoints: ``{"modbus": {"host", "port", "unit"}}``, plus
``"extra": {"host", "port"}`` with ``net.extra_open_port``.

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
  and closed at once.

Weaknesses: ``modbus.unauthenticated_writes`` (writes accepted outside the protected ranges),
``modbus.unprotected_writes`` (protected ranges writable), ``modbus.crash_on_malformed`` (after
a malformed MBAP header the device answers nothing on any connection until restarted, but the
listening socket stays open), ``modbus.no_input_validation`` (illegal quantities, lengths and
addresses are answered as if valid), ``modbus.extra_function_codes`` (FC 8, 43/14, 65, 90),
``modbus.no_connection_limit``, ``modbus.any_unit_id`` (every unit id 0..255 is answered),
``net.extra_open_port`` (a second listener, a "debug service" that sends a banner line and
closes), ``load.fragile`` (the scan cycle starves past ``fragile_threshold_rps``).
"""

from __future__ import annotations

import argparse
import asyncio
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
    "modbus.any_unit_id",
    "net.extra_open_port",
    "load.fragile",
)

#: Unit id the Modbus/TCP specification reserves for addressing a TCP device directly.
TCP_DIRECT_UNIT = 255
#: Largest MBAP length field: unit id + a 253-byte PDU (ADU of 260 bytes).
MAX_MBAP_LENGTH = 254
#: What the ``net.extra_open_port`` debug service sends before it closes.
DEBUG_BANNER = b"HSIM-PLC debug service 0.9 ready (no login required)\r\n"

_MBAP = Struct(">HHHB")


def plc_for(args: common.SimArgs) -> PLC:
    """The PLC of a simulator: fragile only with the ``load.fragile`` weakness."""
    fragile = None
    if args.has("load.fragile"):
        fragile = FragileConfig(args.config.fragile_threshold_rps, args.config.fragile_recovery_s)
    return PLC(args.scan_period_s, fragile=fragile)


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
    ) -> None:
        self.plc = plc
        self.engine = engine
        self.units = units
        self.connection_limit = connection_limit
        self.crash_on_malformed = crash_on_malformed
        self.write_permission = write_permission
        #: Transports currently served (within the limit).
        self.connections: set[asyncio.Transport] = set()
        #: True once ``crash_on_malformed`` has fired: nothing is answered any more.
        self.muted = False

    def protocol(self) -> MbapProtocol:
        """Protocol factory for ``loop.create_server``."""
        return MbapProtocol(self)

    def close_all(self) -> None:
        """Abort every open connection (at shutdown)."""
        for transport in list(self.connections):
            transport.abort()
        self.connections.clear()


class MbapProtocol(asyncio.Protocol):
    """One Modbus/TCP connection: MBAP framing with pipelining."""

    __slots__ = ("_buf", "_can_write", "_served", "_server", "_transport")

    def __init__(self, server: ModbusTcpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._can_write = False
        self._served = False

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

    def connection_lost(self, exc: Exception | None) -> None:
        if self._served:
            if self._transport is not None:
                self._server.connections.discard(self._transport)
            self._served = False

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
        ),
    )
    writes = args.has("modbus.unauthenticated_writes")
    server = ModbusTcpServer(
        plc,
        engine,
        units=None if args.has("modbus.any_unit_id") else frozenset({unit, TCP_DIRECT_UNIT}),
        connection_limit=None
        if args.has("modbus.no_connection_limit")
        else args.config.connection_limit,
        crash_on_malformed=args.has("modbus.crash_on_malformed"),
        write_permission=lambda _transport: writes,
    )
    listeners: list[asyncio.Server] = []
    try:
        listener = await loop.create_server(server.protocol, args.host, args.port, backlog=128)
        listeners.append(listener)
        port = listener.sockets[0].getsockname()[1]
        endpoints: dict[str, dict[str, object]] = {
            "modbus": {"host": args.host, "port": port, "unit": unit}
        }
        if args.has("net.extra_open_port"):
            extra = await asyncio.start_server(lambda r, w: _debug_service(plc, r, w), args.host, 0)
            listeners.append(extra)
            endpoints["extra"] = {"host": args.host, "port": extra.sockets[0].getsockname()[1]}
    except OSError as exc:
        for listener in listeners:
            listener.close()
        return f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
    plc.start()
    common.ready(NAME, endpoints, args.weaknesses)
    try:
        await stop.wait()
    finally:
        for listener in listeners:
            listener.close()
        server.close_all()
        for listener in listeners:
            await listener.wait_closed()
        plc.stop()
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m simulators.modbus_tcp``."""
    args = common.parse_args(NAME, WEAKNESSES, argv, add_arguments=add_unit_argument)
    check_unit(NAME, int(args.extra["unit"]))
    error = asyncio.run(_serve(args))
    if error is not None:
        common.fail(NAME, error)


if __name__ == "__main__":
    main()
