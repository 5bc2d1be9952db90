"""A selector-driven pool of non-blocking connections to one device.

The engine shared by :class:`~harness.load.modbus_flood.ModbusFlood` and
:class:`~harness.load.opcua_flood.UaTcpFlood`: the device's address (checked by the guard at
construction), the connection pacer, the stop signal, one selector over the open connections,
and the bookkeeping every such flood repeats (flush what a socket did not take, drop a
connection, close them all, use as a context manager). What a connection carries beyond its
socket and its unsent bytes, and how it is opened and read, is the flood's own.
"""

from __future__ import annotations

import contextlib
import selectors
from typing import TYPE_CHECKING, Generic, Protocol, Self, TypeVar

from harness.load import NeverStop, Pacer, Stoppable

if TYPE_CHECKING:
    import socket

    from harness.safety import Guard


class PooledConn(Protocol):
    """What the pool needs of a connection: its socket and the bytes it did not take yet."""

    #: The non-blocking socket (registered with the pool's selector, its data the connection).
    sock: socket.socket
    #: Bytes to send that the socket did not take yet.
    out: bytearray


ConnT = TypeVar("ConnT", bound=PooledConn)


class ConnectionPool(Generic[ConnT]):
    """Connections to ``host:port`` driven by one selector (see the module docstring).

    :param host: the device (checked by ``guard`` here; a flood checks again before every
        connect).
    :param port: its port.
    :param guard: the run's safety guard.
    :param connection_rate: cap on new connections per second (:attr:`conn_pacer`).
    :param timeout_s: the flood's connect and answer timeout.
    :param stop: polled by the flood; set means stop at once.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        guard: Guard,
        connection_rate: float,
        timeout_s: float,
        stop: Stoppable | None,
    ) -> None:
        self.host = host
        self.port = port
        self.guard = guard
        self.address = guard.check_destination(host, port)
        self.timeout_s = timeout_s
        self.stop: Stoppable = stop or NeverStop()
        self.conn_pacer = Pacer(connection_rate)
        self._sel = selectors.DefaultSelector()
        self._conns: list[ConnT] = []

    @property
    def target(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"

    def _flush(self, conn: ConnT) -> bool:
        """Send what ``conn`` holds (as much as the socket takes) and watch it for writing while
        something is left; False when the connection failed."""
        if conn.out:
            try:
                n = conn.sock.send(conn.out)
            except BlockingIOError:
                n = 0
            except OSError:
                return False
            del conn.out[:n]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        try:  # noqa: SIM105 - a hot path: contextlib.suppress costs 10 times more
            self._sel.modify(conn.sock, events, conn)
        except (KeyError, ValueError):
            pass  # no longer registered: dropped meanwhile
        return True

    def _drop(self, conn: ConnT) -> None:
        """Unregister and close ``conn`` (no goodbye) and forget it."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        if conn in self._conns:
            self._conns.remove(conn)

    def close(self) -> None:
        """Close every connection (no goodbye) and the selector."""
        for conn in list(self._conns):
            self._drop(conn)
        self._sel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
