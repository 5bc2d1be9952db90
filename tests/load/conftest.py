"""A scriptable Modbus/TCP test server for the load and monitor tests.

``fake_plc(**options) -> FakePlc`` starts a server thread on 127.0.0.1 (port 0) that answers
FC 3 reads of HR 0 with a heartbeat counting every 10 ms, records the monotonic time of every
request and every accepted connection (what the device *received*, for cap checks), and can be
told to stall the heartbeat, go mute, drop its connections, refuse pipelining or limit
connections. Every server is stopped at teardown.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

_HEADER = struct.Struct(">HHHB")


class FakePlc:
    """A small Modbus/TCP server in a thread.

    :param pipelining: answer every request of a read (False: only the first, like pymodbus).
    :param connection_limit: close connections beyond this many at once.
    """

    def __init__(self, *, pipelining: bool = True, connection_limit: int | None = None) -> None:
        self.pipelining = pipelining
        self.connection_limit = connection_limit
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(512)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.requests: list[float] = []
        self.accepts: list[float] = []
        self.stalled = False
        self.muted = False
        self._frozen = 0
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._drop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._clients: dict[socket.socket, bytearray] = {}
        self._thread = threading.Thread(target=self._run, name="fake-plc", daemon=True)
        self._thread.start()

    def heartbeat(self) -> int:
        """The counter: +1 every 10 ms unless stalled."""
        if self.stalled:
            return self._frozen
        return int((time.monotonic() - self._t0) / 0.01) & 0xFFFF

    def stall(self, on: bool = True) -> None:
        """Freeze (or release) the heartbeat."""
        if on and not self.stalled:
            self._frozen = self.heartbeat()
        elif not on:
            self._t0 = time.monotonic() - self._frozen * 0.01
        self.stalled = on

    def drop_connections(self) -> None:
        """Close every client connection (on the server thread)."""
        self._drop.set()

    def _close(self, sock: socket.socket) -> None:
        self._sel.unregister(sock)
        self._clients.pop(sock, None)
        sock.close()

    def _run(self) -> None:
        self._sel.register(self.listener, selectors.EVENT_READ)
        while not self._stop.is_set():
            if self._drop.is_set():
                for sock in list(self._clients):
                    self._close(sock)
                self._drop.clear()
            for key, _mask in self._sel.select(0.02):
                if key.fileobj is self.listener:
                    self._accept()
                else:
                    self._serve(key.fileobj)  # type: ignore[arg-type]
        for sock in list(self._clients):
            self._close(sock)
        self._sel.close()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            self.accepts.append(time.monotonic())
            if self.connection_limit is not None and len(self._clients) >= self.connection_limit:
                sock.close()
                continue
            sock.setblocking(False)
            self._clients[sock] = bytearray()
            self._sel.register(sock, selectors.EVENT_READ)

    def _serve(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        buf = self._clients[sock]
        buf += data
        out = []
        now = time.monotonic()
        while len(buf) >= 7:
            tid, _proto, length, unit = _HEADER.unpack_from(buf)
            end = 6 + length
            if len(buf) < end:
                break
            pdu = bytes(buf[7:end])
            del buf[:end]
            self.requests.append(now)
            if self.muted or (out and not self.pipelining):
                continue
            if pdu[:1] == b"\x03":
                reply = struct.pack(">BBH", 3, 2, self.heartbeat())
            else:
                reply = bytes([pdu[0] | 0x80, 1])
            out.append(_HEADER.pack(tid, 0, len(reply) + 1, unit) + reply)
        if out:
            try:
                sock.sendall(b"".join(out))
            except OSError:
                self._close(sock)

    def stop(self) -> None:
        """Stop the thread and close everything."""
        self._stop.set()
        self._thread.join(timeout=5)


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most events in any ``window``-second interval."""
    best = 0
    j = 0
    ordered = sorted(times)
    for i, t in enumerate(ordered):
        while ordered[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@pytest.fixture
def fake_plc() -> Iterator[Callable[..., FakePlc]]:
    """``fake_plc(pipelining=True, connection_limit=None) -> FakePlc``; all stopped at teardown."""
    servers: list[FakePlc] = []

    def start(**options: Any) -> FakePlc:
        server = FakePlc(**options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
