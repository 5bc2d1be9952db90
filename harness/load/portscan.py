"""Port inventory over the wire: a bounded-rate TCP connect scan and UDP probes.

TCP: non-blocking connects, at most ``window`` attempts in flight and at most ``rate`` new
attempts per second (:class:`~harness.load.Pacer`); each port ends *open* (the handshake
completed: we close it at once), *closed* (refused) or *filtered* (no answer within
``timeout_s``, or an ICMP error). A connect scan needs no privileges and every probe is a real
handshake attempt, so what it reports is what any client on the network could reach.

UDP: one datagram per port, carrying a small request of the protocol usually found there
(BACnet Who-Is, EtherNet/IP ListIdentity, SNMP get, NTP...), so that a service that ignores
junk still answers. A reply is *open*; an ICMP port-unreachable (seen as a refused ``recv`` on
a connected socket) is *closed*; silence is *open|filtered* (UDP cannot tell these apart).

Open ports get a short banner read (bounded bytes and time) for the evidence.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.load import NeverStop, Pacer, Stoppable

if TYPE_CHECKING:
    from collections.abc import Iterable

    from harness.safety import Guard

#: TCP ports of common OT and management services (always part of an inventory).
COMMON_OT_TCP = (20, 21, 22, 23, 25, 53, 80, 102, 110, 111, 135, 139, 161, 443, 445, 502, 503,
                 623, 789, 802, 1089, 1090, 1091, 1911, 1962, 2222, 2404, 2455, 3389, 4000, 4840,
                 4843, 5006, 5007, 5020, 5094, 5900, 8000, 8080, 8443, 9600, 10001, 18245, 20000,
                 20547, 34962, 34963, 34964, 44818, 46823, 47808, 50000)
#: UDP ports probed, each with a request its usual service answers.
COMMON_OT_UDP = (53, 67, 69, 123, 161, 162, 500, 502, 623, 1900, 2222, 4840, 5353, 5683,
                 20000, 34964, 44818, 47808)

_ENIP_LIST_IDENTITY = struct.pack("<HHII8sI", 0x0063, 0, 0, 0, b"\0" * 8, 0)
UDP_PAYLOADS: dict[int, bytes] = {
    47808: bytes.fromhex("810b000c0120ffff00ff1008"),  # BACnet/IP Who-Is (broadcast NPDU)
    44818: _ENIP_LIST_IDENTITY,  # EtherNet/IP ListIdentity
    2222: _ENIP_LIST_IDENTITY,
    161: bytes.fromhex("302602010004067075626c6963a01902046e6f7477020100020100300b30090605"
                       "2b06010201050500"),  # SNMPv1 get-request sysName.0, community public
    123: b"\x1b" + b"\0" * 47,  # NTP v3 client request
    502: bytes.fromhex("000100000006010300000001"),  # Modbus read of one register
    69: b"\x00\x01harness\x00octet\x00",  # TFTP read request
    623: bytes.fromhex("0600ff0600000011be80000000"),  # RMCP/ASF presence ping
    1900: b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\n"
          b"MX: 1\r\nST: ssdp:all\r\n\r\n",
    5683: bytes.fromhex("40010001"),  # CoAP CON GET /
    53: bytes.fromhex("12340100000100000000000007686172"
                      "6e657373056c6f63616c0000010001"),  # DNS query
}
#: Most bytes read from an open port's banner.
BANNER_MAX = 256


@dataclass
class TcpScan:
    """Outcome of a TCP connect scan."""

    host: str
    ports_scanned: int = 0
    open: list[int] = field(default_factory=list)
    filtered: list[int] = field(default_factory=list)
    closed: int = 0
    #: Ports not attempted (stopped by the deadline or the stop flag).
    not_scanned: int = 0
    duration_s: float = 0.0
    rate_cap: float = 0.0
    #: ``deadline``, ``abort`` or ``complete``.
    stop_reason: str = "complete"
    banners: dict[int, str] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """JSON-ready."""
        return {"host": self.host, "ports_scanned": self.ports_scanned, "open": self.open,
                "filtered": self.filtered[:100], "filtered_count": len(self.filtered),
                "closed": self.closed, "not_scanned": self.not_scanned,
                "duration_s": round(self.duration_s, 3), "rate_cap": self.rate_cap,
                "achieved_rate": round(self.ports_scanned / self.duration_s, 1)
                if self.duration_s else 0.0, "stop_reason": self.stop_reason,
                "banners": self.banners}


def _finish(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _self_connected(sock: socket.socket) -> bool:
    try:
        return bool(sock.getsockname() == sock.getpeername())
    except OSError:
        return False


def tcp_connect_scan(host: str, ports: Iterable[int], *, guard: Guard, rate: float,
                     window: int = 64, timeout_s: float = 1.0, max_duration_s: float = 120.0,
                     stop: Stoppable | None = None) -> TcpScan:
    """Connect-scan ``ports`` of ``host``: at most ``rate`` attempts/s, ``window`` in flight.

    Ends after ``max_duration_s`` whatever is left (counted in ``not_scanned``).
    """
    address = guard.check_destination(host)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    stop = stop or NeverStop()
    todo = sorted(set(ports))
    scan = TcpScan(host, rate_cap=rate)
    pacer = Pacer(rate)
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, tuple[int, float]] = {}
    start = time.monotonic()
    deadline = start + max_duration_s
    i = 0

    retried: set[int] = set()

    def settle(sock: socket.socket, port: int, err: int) -> None:
        if err == 0 and _self_connected(sock):
            # TCP simultaneous open: the kernel picked our source port equal to the port we
            # scan (a loopback artifact); that is not a listener. Try the port once more.
            _finish(sock)
            if port not in retried:
                retried.add(port)
                todo.append(port)
                return
            err = errno.ECONNREFUSED
        if err == 0:
            scan.open.append(port)
        elif err == errno.ECONNREFUSED:
            scan.closed += 1
        else:
            scan.filtered.append(port)
        scan.ports_scanned += 1
        _finish(sock)

    try:
        while i < len(todo) or pending:
            now = time.monotonic()
            if stop.is_set():
                scan.stop_reason = "abort"
                break
            if now >= deadline:
                scan.stop_reason = "deadline"
                break
            room = window - len(pending)
            n = pacer.take(min(room, len(todo) - i)) if room > 0 and i < len(todo) else 0
            for _ in range(n):
                port = todo[i]
                i += 1
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                err = sock.connect_ex((address, port))
                if err == errno.EINPROGRESS:
                    pending[sock] = (port, now)
                    sel.register(sock, selectors.EVENT_WRITE)
                else:
                    settle(sock, port, err)
            if pending:
                wait = 0.0 if n and i < len(todo) else min(0.02, pacer.wait_s() or 0.02)
                for key, _mask in sel.select(wait):
                    sock = key.fileobj  # type: ignore[assignment]
                    port, _t = pending.pop(sock)
                    sel.unregister(sock)
                    settle(sock, port, sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
                for sock, (port, t) in list(pending.items()):
                    if now - t > timeout_s:
                        pending.pop(sock)
                        sel.unregister(sock)
                        settle(sock, port, errno.ETIMEDOUT)
            elif n == 0 and i < len(todo):
                time.sleep(min(pacer.wait_s(), 0.02))
    finally:
        for sock in pending:
            _finish(sock)
        sel.close()
    scan.not_scanned = len(set(todo)) - scan.ports_scanned
    scan.open.sort()
    scan.filtered.sort()
    scan.duration_s = time.monotonic() - start
    return scan


def grab_banner(host: str, port: int, *, guard: Guard, timeout_s: float = 0.5) -> str:
    """Connect and read what the service says first (at most :data:`BANNER_MAX` bytes)."""
    address = guard.check_destination(host, port)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect((address, port))
            data = sock.recv(BANNER_MAX)
        except (TimeoutError, OSError):
            return ""
    return data.decode("latin-1").strip()[:BANNER_MAX]


def udp_probe(host: str, ports: Iterable[int], *, guard: Guard, rate: float,
              timeout_s: float = 1.0, stop: Stoppable | None = None) -> dict[int, str]:
    """Probe each UDP port once; ``open``, ``closed`` or ``open|filtered`` per port."""
    address = guard.check_destination(host)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    stop = stop or NeverStop()
    pacer = Pacer(rate)
    states: dict[int, str] = {}
    socks: dict[socket.socket, int] = {}
    sel = selectors.DefaultSelector()
    try:
        for port in sorted(set(ports)):
            while not pacer.take(1):
                if stop.is_set():
                    return states
                time.sleep(pacer.wait_s())
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect((address, port))
                sock.send(UDP_PAYLOADS.get(port, b"\r\n"))
            except ConnectionRefusedError:
                states[port] = "closed"
                sock.close()
                continue
            except OSError:
                states[port] = "open|filtered"
                sock.close()
                continue
            socks[sock] = port
            sel.register(sock, selectors.EVENT_READ)
        end = time.monotonic() + timeout_s
        while socks and not stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                break
            for key, _mask in sel.select(left):
                sock = key.fileobj  # type: ignore[assignment]
                port = socks.pop(sock)
                sel.unregister(sock)
                try:
                    sock.recv(2048)
                    states[port] = "open"
                except ConnectionRefusedError:
                    states[port] = "closed"
                except OSError:
                    states[port] = "open|filtered"
                sock.close()
        for port in socks.values():
            states[port] = "open|filtered"
    finally:
        for sock in socks:
            sock.close()
        sel.close()
    return dict(sorted(states.items()))
