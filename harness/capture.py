"""Packet capture for the evidence: only the target's traffic, bounded, written as pcap.

A disruptive check (load, flood, malformed input) run as root gets a capture of every IPv4
packet to or from the profile's target addresses while it runs, saved as ``capture.pcap`` in its
evidence folder, so that what was sent is provable byte for byte (and opens in Wireshark or
tshark). It reads an ``AF_PACKET`` socket on the interface that routes to the target, keeps
only frames whose IPv4 source or destination is a target, and stops at a byte cap: a flood must
not turn the evidence into gigabytes. Without root the check runs without a capture and its
evidence says so.

The target filter runs in the kernel (a classic BPF program on the socket), so traffic to
other hosts (on loopback: everything else this machine does) never fills the socket's queue,
and the frames the kernel still had to drop are counted (:attr:`Capture.dropped`): a capture
that lost frames says so in the evidence rather than passing for complete.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import threading
import time
from pathlib import Path

#: Frames larger than this are cut (pcap snaplen).
SNAPLEN = 2048
#: Bytes of packet data kept in one capture.
MAX_BYTES = 32 * 1024 * 1024
#: Packets kept in one capture. Past either cap the capture stops reading, so that a flood's
#: capture costs the harness neither memory nor the CPU its load generator needs.
MAX_PACKETS = 20000
_ETH_P_ALL = 0x0003
_LINKTYPE_ETHERNET = 1
_SO_ATTACH_FILTER = 26
_SOL_PACKET = 263
_PACKET_STATISTICS = 6
#: Socket receive buffer asked for (the kernel caps it at net.core.rmem_max unless root).
_RCVBUF = 8 * 1024 * 1024
#: Most targets the kernel filter compares (its jumps are 8-bit); beyond, Python filters alone.
_MAX_FILTER_TARGETS = 60


def bpf_program(targets: list[bytes]) -> list[tuple[int, int, int, int]]:
    """A classic BPF program accepting IPv4-over-Ethernet frames from or to ``targets``.

    Each instruction is ``(code, jt, jf, k)``; jumps count instructions skipped.
    """
    n = len(targets)
    values = [int.from_bytes(t, "big") for t in targets]
    drop, accept = 4 + 2 * n, 5 + 2 * n
    prog = [(0x28, 0, 0, 12),  # ldh [12]: ethertype
            (0x15, 0, drop - 2, 0x0800)]  # jeq IPv4, else drop
    for offset, first in ((26, 2), (30, 3 + n)):  # source, then destination address
        prog.append((0x20, 0, 0, offset))  # ld [offset]
        for i, value in enumerate(values):
            here = first + 1 + i
            prog.append((0x15, accept - here - 1, 0, value))  # jeq target: accept
    prog += [(0x06, 0, 0, 0), (0x06, 0, 0, 0x40000)]  # drop; accept (whole frame)
    return prog


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    import ctypes

    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)  # the kernel copies it


def _interface_for(address: str) -> str:
    """The interface the kernel routes ``address`` through (``lo`` for loopback)."""
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return "lo"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))  # no packet leaves: UDP connect only picks a route
            local = probe.getsockname()[0]
    except OSError:
        return "any"
    for _, name in socket.if_nameindex():
        try:
            import fcntl

            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            if socket.inet_ntoa(packed[20:24]) == local:
                return name
        except OSError:
            continue
    return "any"


class Capture:
    """A background capture of one check's traffic with the targets.

    :param targets: IPv4 addresses whose packets are kept (either direction).
    """

    def __init__(self, targets: list[str]) -> None:
        self.targets = {
            socket.inet_aton(t) for t in targets if ipaddress.ip_address(t).version == 4
        }
        self.frames: list[tuple[float, bytes, int]] = []
        self.kept_bytes = 0
        self.seen = 0
        #: Frames to or from a target the kernel dropped (the socket's queue was full).
        self.dropped = 0
        #: True when a cap stopped the capture before the check ended.
        self.truncated = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.interface = _interface_for(targets[0]) if targets else "lo"

    @staticmethod
    def available() -> bool:
        """True when raw packet sockets can be opened (root or CAP_NET_RAW)."""
        return hasattr(socket, "AF_PACKET") and hasattr(os, "geteuid") and os.geteuid() == 0

    def start(self) -> None:
        """Open the socket and start reading."""
        # protocol 0 receives nothing until bound: the filter is in place before any frame
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            if self.targets and len(self.targets) <= _MAX_FILTER_TARGETS:
                _attach_filter(sock, bpf_program(sorted(self.targets)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            # (Python converts the address's protocol to network order itself)
            sock.bind((self.interface if self.interface != "any" else "", _ETH_P_ALL))
            sock.settimeout(0.1)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._run, name="harness-capture", daemon=True)
        self._thread.start()

    def _keep(self, frame: bytes) -> bool:
        # Ethernet (lo has a zero MAC header too), IPv4 only, source or destination a target.
        if len(frame) < 34 or frame[12:14] != b"\x08\x00":
            return False
        return frame[26:30] in self.targets or frame[30:34] in self.targets

    def _run(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                frame, addr = self._sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == socket.PACKET_OUTGOING and self.interface == "lo":
                continue  # on loopback every packet is seen twice: keep the incoming copy
            if not self._keep(frame):
                continue
            self.seen += 1
            data = frame[:SNAPLEN]
            self.frames.append((time.time(), data, len(frame)))
            self.kept_bytes += len(data)
            if self.kept_bytes >= MAX_BYTES or len(self.frames) >= MAX_PACKETS:
                self.truncated = True
                return

    def stop(self) -> None:
        """Stop reading and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            try:  # (packets, drops) since the socket opened; reading resets them
                stats = self._sock.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)
                self.dropped += struct.unpack("II", stats)[1]
            except OSError:
                pass
            self._sock.close()

    def pcap(self) -> bytes:
        """The capture as a classic pcap file."""
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, _LINKTYPE_ETHERNET)]
        for ts, data, length in self.frames:
            sec = int(ts)
            out.append(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(data), length))
            out.append(data)
        return b"".join(out)

    def save(self, path: Path) -> None:
        """Write the pcap file."""
        path.write_bytes(self.pcap())
