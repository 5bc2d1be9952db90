"""The packet-level weaknesses of the Modbus/TCP simulator: ``net.fragile_stack`` and
``net.fragile_l2`` (their contract is in :mod:`simulators.modbus_tcp`'s docstring).

Each weakness is a model that judges raw packets or frames and starves the PLC's scan cycle
(:class:`FragileStack`, :class:`FragileL2`: plain objects fed bytes, so tests run them without
a socket) and a sniffer thread that reads a Linux packet socket through a classic-BPF filter
and feeds the model (:class:`StackSniffer`, :class:`L2Sniffer`, on one small base:
:class:`PacketSniffer`). :func:`start_sniffers` starts those a simulator's weaknesses ask for.
Linux only; the sockets need root or ``CAP_NET_RAW``.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import socket
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from struct import Struct

from simulators import common
from simulators.plc import PLC, Worker

#: Name the "starved" lines on stderr begin with (the simulator that runs these weaknesses).
LOG_NAME = "modbus_tcp"

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


class _ScanStarver:
    """What both fragile models share: per-second counts of what arrives, and starving the
    PLC's scan cycle (with a rate-limited line on stderr) when a count passes the threshold.

    :param weakness: the weakness's name, for the log line.
    """

    weakness = ""

    def __init__(self, plc: PLC, threshold_rps: float, recovery_s: float,
                 clock: Callable[[], float]) -> None:
        self.plc = plc
        self.threshold_rps = threshold_rps
        self.recovery_s = recovery_s
        self.clock = clock
        #: Offending packets or frames seen so far (each one starved, or prolonged a
        #: starvation).
        self.offences = 0
        #: Why the scan cycle last starved.
        self.last_reason: str | None = None
        self._logged_at = -STARVE_LOG_GAP_S

    def _tick(self, times: deque[float]) -> int:
        """Add an arrival now to ``times``; return how many fall in the last window."""
        now = self.clock()
        times.append(now)
        horizon = now - SYN_WINDOW_S
        while times and times[0] <= horizon:
            times.popleft()
        return len(times)

    def _starve(self, reason: str, origin: str) -> str:
        """Starve the scan cycle for ``reason``; ``origin`` ends the log line."""
        self.offences += 1
        self.last_reason = reason
        self.plc.starve(self.recovery_s)
        now = self.clock()
        if now - self._logged_at >= STARVE_LOG_GAP_S:
            self._logged_at = now
            sys.stderr.write(
                f"{LOG_NAME}: {self.weakness}: scan cycle starved for "
                f"{self.recovery_s:g} s: {reason} {origin}\n"
            )
            sys.stderr.flush()
        return reason


class FragileStack(_ScanStarver):
    """The ``net.fragile_stack`` model: judges each IPv4 packet seen on the wire and starves the
    PLC's scan cycle on a SYN flood, an abnormal TCP packet, a UDP storm or an ICMP echo storm
    (see :mod:`simulators.modbus_tcp`).

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

    weakness = "net.fragile_stack"

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
        super().__init__(plc, threshold_rps, recovery_s, clock)
        self.address = address
        self.port = port
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
        count = self._tick(times)
        if count > self.threshold_rps:
            kind = "ICMP echo storm" if proto == _IPPROTO_ICMP else "UDP storm"
            return self._offence(
                f"{kind}: {count} {what} in the last {SYN_WINDOW_S:g} s "
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
        origin = socket.inet_ntoa(src) + ("" if sport is None else f":{sport}")
        return self._starve(reason, f"from {origin}")


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
    return filtered_socket(
        socket.SOCK_DGRAM, bpf_program(address, port), SNIFF_INTERFACE, _ETH_P_IP, auxdata=True
    )


def filtered_socket(
    kind: int,
    insns: list[tuple[int, int, int, int]],
    ifname: str,
    protocol: int,
    *,
    auxdata: bool = False,
) -> socket.socket:
    """A packet socket (``kind``: ``SOCK_DGRAM`` or ``SOCK_RAW``) on ``ifname`` that reads the
    ``protocol`` frames the classic-BPF program ``insns`` keeps, with a read timeout of
    :data:`SNIFF_POLL_S`; ``auxdata`` asks for ``PACKET_AUXDATA`` (checksum status).

    :raises OSError: no root or ``CAP_NET_RAW`` (``PermissionError``), or no such interface.
    """
    # protocol 0: nothing is queued before the filter is attached and bind names the protocol
    sock = socket.socket(socket.AF_PACKET, kind, 0)
    try:
        if auxdata:
            sock.setsockopt(_SOL_PACKET, _PACKET_AUXDATA, 1)
        code = ctypes.create_string_buffer(b"".join(_BPF_INSN.pack(*i) for i in insns))
        sock.setsockopt(
            socket.SOL_SOCKET,
            _SO_ATTACH_FILTER,
            Struct("HP").pack(len(insns), ctypes.addressof(code)),
        )
        sock.bind((ifname, protocol))
        sock.settimeout(SNIFF_POLL_S)
    except BaseException:
        sock.close()
        raise
    return sock


class PacketSniffer(Worker):
    """A thread that reads one packet socket (with a read timeout of :data:`SNIFF_POLL_S`)
    until stopped, and closes it then; a subclass reads and judges one packet in
    :meth:`_read_one`. A read error other than the timeout is retried after
    :data:`SNIFF_POLL_S`.

    :param sock: the open packet socket (closed by :meth:`stop`).
    :param name: the thread's name.
    """

    def __init__(self, sock: socket.socket, name: str) -> None:
        super().__init__(name)
        self._sock = sock

    def stop(self) -> None:
        """Stop the thread (within about :data:`SNIFF_POLL_S`) and close the socket."""
        super().stop()
        self._sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._read_one()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.wait(SNIFF_POLL_S):
                    break

    def _read_one(self) -> None:
        """Read one packet (blocking at most :data:`SNIFF_POLL_S`) and feed it to the model."""
        raise NotImplementedError


class StackSniffer(PacketSniffer):
    """The ``net.fragile_stack`` sniffer thread: reads :data:`SNIFF_INTERFACE` and feeds a
    :class:`FragileStack`. Opens its socket at construction.

    :param stack: the model the packets go to.
    :raises OSError: the packet socket cannot be opened (see :func:`open_packet_socket`).
    """

    def __init__(self, stack: FragileStack) -> None:
        super().__init__(open_packet_socket(stack.address, stack.port), "fragile-stack")
        self.stack = stack
        self._buf = bytearray(SNIFF_BUFFER)
        self._view = memoryview(self._buf)
        self._ancillary = socket.CMSG_SPACE(_AUXDATA.size)

    def _read_one(self) -> None:
        size, anc, msg_flags, address = self._sock.recvmsg_into([self._buf], self._ancillary)
        if address[2] == socket.PACKET_OUTGOING:
            return
        checksum_ready = False
        truncated = bool(msg_flags & socket.MSG_TRUNC)
        for level, kind, data in anc:
            if level == _SOL_PACKET and kind == _PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                status, length = _AUXDATA.unpack_from(data)[:2]
                checksum_ready = not status & _TP_STATUS_CSUMNOTREADY
                truncated = truncated or length > size
        self.stack.feed(self._view[:size], checksum_ready=checksum_ready, truncated=truncated)


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


class FragileL2(_ScanStarver):
    """The ``net.fragile_l2`` model: counts received ARP and broadcast frames and starves the
    PLC's scan cycle when either passes ``threshold_rps`` in the last second (see
    :mod:`simulators.modbus_tcp`). Sniffer thread only; :meth:`feed` takes raw frames, so it
    runs without a socket.

    :param plc: the PLC whose scan cycle starves.
    :param threshold_rps: ARP (or broadcast) frames per second above which it starves.
    :param recovery_s: seconds each starvation lasts after the last offending frame.
    :param clock: the monotonic clock (for tests).
    """

    weakness = "net.fragile_l2"

    def __init__(
        self,
        plc: PLC,
        *,
        threshold_rps: float,
        recovery_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(plc, threshold_rps, recovery_s, clock)
        #: Arrival times of ARP frames in the last :data:`SYN_WINDOW_S`.
        self._arp: deque[float] = deque()
        #: Arrival times of other broadcast frames in the last :data:`SYN_WINDOW_S`.
        self._broadcast: deque[float] = deque()

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
        count = self._tick(times)
        if count <= self.threshold_rps:
            return None
        reason = (
            kind.format(n=count)
            + f" in the last {SYN_WINDOW_S:g} s (threshold {self.threshold_rps:g})"
        )
        source = ":".join(f"{b:02x}" for b in bytes(frame[6:12]))
        return self._starve(reason, f"(last from {source})")


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


class L2Sniffer(PacketSniffer):
    """The ``net.fragile_l2`` sniffer thread: reads ``ifname`` and feeds a :class:`FragileL2`.
    Opens its socket at construction.

    :raises OSError: the packet socket cannot be opened (no root, no such interface).
    """

    def __init__(self, model: FragileL2, ifname: str) -> None:
        sock = filtered_socket(socket.SOCK_RAW, l2_bpf_program(), ifname, _ETH_P_ALL)
        super().__init__(sock, "fragile-l2")
        self.model = model
        self.ifname = ifname
        self._buf = bytearray(L2_SNAPLEN)
        self._view = memoryview(self._buf)

    def _read_one(self) -> None:
        size, address = self._sock.recvfrom_into(self._buf)
        if address[2] != socket.PACKET_OUTGOING:
            self.model.feed(self._view[:size])


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
