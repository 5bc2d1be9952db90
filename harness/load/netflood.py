"""Network-layer load: SYN flood, malformed IP/TCP packets, ICMP echo and UDP storms.

Packets are crafted once with scapy and sent as prebuilt bytes through one raw IPv4 socket
(``IPPROTO_RAW``, so ``IP_HDRINCL``): scapy's own ``send()`` manages about 2k packets/s, and its
default L3 socket silently sends nothing on loopback, while a plain ``sendto`` of ready bytes
runs at the kernel's pace. Linux fills in the IP checksum and total length of every packet sent
this way, so a bad *IP* checksum cannot be sent from here (it would need a link-layer socket);
bad *TCP* checksums, flag sets, offsets, options and fragments can.

The source address is the one the kernel would use to reach the device (on loopback,
127.0.0.1): the device's answers (SYN-ACKs) come back to us and our kernel resets them, as it
would for any scanner. Spoofed, unreachable sources are deliberately not offered.

The ICMP echo storm goes out the same way (raw socket, root). The UDP storm needs no privilege:
prebuilt payloads through one plain, unconnected UDP socket (unconnected so that the device's
ICMP port-unreachable answers do not turn into send errors).

IPv4 only. Bounds as everywhere: :class:`~harness.load.Pacer` at ``rate`` packets per second,
``duration_s``, optional ``max_packets``, the stop flag; every destination passes
``guard.check_destination`` before a socket opens.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from harness.errors import HarnessError, SafetyViolation
from harness.load import (
    Batches,
    LoadResult,
    NeverStop,
    Pacer,
    Series,
    Stoppable,
    is_root,
    merge_series,
    run_senders,
    senders_for,
)

if TYPE_CHECKING:
    from harness.safety import Guard

#: Distinct SYN packets cycled through by the flood (source port and sequence vary).
SYN_VARIANTS = 1024
#: Distinct ICMP echo requests cycled through by the storm (identifier and sequence vary).
ICMP_VARIANTS = 256
#: Bytes of data in each echo request (the size of a default ``ping``).
ICMP_PAYLOAD = 56
#: Distinct UDP payloads cycled through by the storm.
UDP_VARIANTS = 64
#: Sizes (bytes) the UDP payloads take in turn: small, typical and one that fills an Ethernet
#: frame without fragmenting (1500 - 20 - 8).
UDP_SIZES = (16, 64, 512, 1472)
#: Packets granted by the pacer per batch at most.
_BATCH = 256


def source_address(dst: str) -> str:
    """The local address the kernel would use to reach ``dst`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((dst, 9))
        return str(s.getsockname()[0])


def _ipv4(guard: Guard, host: str) -> str:
    address = guard.check_destination(host)
    if ":" in address:
        raise HarnessError(f"network-layer load supports IPv4 only; {host} is {address}")
    return address


def syn_packets(dst: str, dport: int, *, count: int = SYN_VARIANTS, src: str | None = None,
                seed: int | None = None) -> list[bytes]:
    """``count`` TCP SYNs to ``dst:dport`` with varying source ports and sequence numbers."""
    from scapy.layers.inet import IP, TCP

    rng = random.Random(seed)  # noqa: S311 - packet variety, not secrecy
    src = src or source_address(dst)
    out = []
    for _ in range(count):
        pkt = IP(src=src, dst=dst, id=rng.randrange(1, 65536), ttl=64) / TCP(
            sport=rng.randrange(1024, 65536), dport=dport, seq=rng.randrange(1 << 32),
            flags="S", window=1024, options=[("MSS", 1460)])
        out.append(bytes(pkt))
    return out


def malformed_packets(dst: str, dport: int, *, src: str | None = None) -> list[tuple[str, bytes]]:
    """Malformed or abnormal IPv4/TCP packets to ``dst:dport``, each with a name.

    Bad TCP checksum; invalid flag sets (SYN+FIN, SYN+RST, none, XMAS, all); LAND (source =
    destination, same port); TCP data offset past the packet; truncated and zero-length TCP
    options; URG with an urgent pointer past the data; overlapping IP fragments; a tiny first
    fragment that splits the TCP header; a fragment whose reassembly would pass 65535 bytes;
    garbage IP options; an unassigned IP protocol.
    """
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    src = src or source_address(dst)
    rng = random.Random(7)  # noqa: S311 - reproducible packets, not secrecy

    def ip(**kw: Any) -> IP:
        return IP(src=src, dst=dst, id=rng.randrange(1, 65536), ttl=64, **kw)

    def tcp(**kw: Any) -> TCP:
        fields: dict[str, Any] = {"sport": rng.randrange(1024, 65536), "dport": dport,
                                     "seq": rng.randrange(1 << 32), "window": 1024}
        fields.update(kw)
        return TCP(**fields)

    out: list[tuple[str, bytes]] = [
        ("bad_tcp_checksum", bytes(ip() / tcp(flags="S", chksum=0xDEAD))),
        ("syn_fin", bytes(ip() / tcp(flags="SF"))),
        ("syn_rst", bytes(ip() / tcp(flags="SR"))),
        ("null_flags", bytes(ip() / tcp(flags=0))),
        ("xmas", bytes(ip() / tcp(flags="FPU", urgptr=1))),
        ("all_flags", bytes(ip() / tcp(flags="FSRPAUEC"))),
        ("land", bytes(IP(src=dst, dst=dst, id=rng.randrange(1, 65536))
                       / TCP(sport=dport, dport=dport, flags="S", seq=rng.randrange(1 << 32)))),
        ("data_offset_past_end", bytes(ip() / tcp(flags="S", dataofs=15))),
        ("data_offset_too_small", bytes(ip() / tcp(flags="S", dataofs=2))),
        ("truncated_tcp_option", bytes(ip() / tcp(flags="S", dataofs=6,
                                                   options=[]) / Raw(b"\x02\x08\x05"))),
        ("zero_length_tcp_option", bytes(ip() / tcp(flags="S", dataofs=6)
                                         / Raw(b"\x03\x00\x00\x00"))),
        ("urgent_pointer_past_data", bytes(ip() / tcp(flags="SU", urgptr=0xFFFF))),
        ("garbage_ip_options", bytes(ip(ihl=7, options=[]) / Raw(b"\xff" * 8)
                                     / tcp(flags="S"))),
        ("unassigned_ip_protocol", bytes(ip(proto=253) / Raw(b"\x00" * 20))),
    ]
    # Fragments: a 40-byte TCP SYN segment with a payload, cut and overlapped.
    seg = bytes(tcp(flags="S") / Raw(b"A" * 20))
    frag_id = rng.randrange(1, 65536)
    out.append(("overlapping_fragment_1", bytes(IP(src=src, dst=dst, id=frag_id, proto=6,
                                                   flags="MF", frag=0) / Raw(seg[:24]))))
    out.append(("overlapping_fragment_2", bytes(IP(src=src, dst=dst, id=frag_id, proto=6, frag=2)
                                                / Raw(b"B" * 8 + seg[24:]))))
    tiny_id = rng.randrange(1, 65536)
    out.append(("tiny_fragment_1", bytes(IP(src=src, dst=dst, id=tiny_id, proto=6, flags="MF",
                                            frag=0) / Raw(seg[:8]))))
    out.append(("tiny_fragment_2", bytes(IP(src=src, dst=dst, id=tiny_id, proto=6, frag=1)
                                         / Raw(seg[8:]))))
    out.append(("fragment_past_65535", bytes(IP(src=src, dst=dst, id=rng.randrange(1, 65536),
                                                proto=6, frag=8189) / Raw(b"C" * 64))))
    return out


class SocketSender:
    """One socket for prebuilt packets (:attr:`sock`, set by the subclass), closed on exit:
    the base of :class:`RawSender` and :class:`~harness.load.l2flood.L2Sender`."""

    sock: socket.socket

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawSender(SocketSender):
    """A raw IPv4 socket for prebuilt packets (``IP_HDRINCL``), guarded.

    The socket is *connected* to the device's address: the connect passes the guard (and its
    process-wide hook) once, and every packet then goes out with a plain ``send``, which the
    hook does not see, so a flood pays no Python call per packet. In exchange each packet's own
    IPv4 destination is checked against that address before anything is sent: a prebuilt
    packet for any other address is refused.

    :raises HarnessError: not root.
    """

    def __init__(self, guard: Guard, host: str) -> None:
        if not is_root():
            raise HarnessError("raw sockets need root (or CAP_NET_RAW)")
        self.host = host
        self.address = _ipv4(guard, host)
        self._packed = socket.inet_aton(self.address)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self.sock.connect((self.address, 0))
        except BaseException:
            self.sock.close()
            raise

    def _check(self, packets: list[bytes]) -> None:
        for packet in packets:
            if len(packet) < 20 or packet[16:20] != self._packed:
                shown = socket.inet_ntoa(packet[16:20]) if len(packet) >= 20 else "none"
                raise SafetyViolation(
                    f"safety guard: refused a raw packet for {shown}: this sender is for "
                    f"{self.address} only"
                )

    def send_one(self, packet: bytes) -> None:
        """Send one packet."""
        self._check([packet])
        self.sock.send(packet)

    def flood(self, packets: list[bytes], *, rate: float, duration_s: float,
              max_packets: int | None = None, stop: Stoppable | None = None,
              kind: str = "raw_flood", port: int = 0, senders: int | None = None
              ) -> LoadResult:
        """Cycle through ``packets`` at most ``rate`` per second for ``duration_s``
        (:func:`paced_send`)."""
        self._check(packets)
        return paced_send(self.sock.send, packets, rate=rate, duration_s=duration_s,
                          max_packets=max_packets, stop=stop, kind=kind,
                          target=f"{self.host}:{port}", senders=senders)


def paced_send(send: Callable[[bytes], object], packets: list[bytes], *, rate: float,
               duration_s: float, max_packets: int | None = None, stop: Stoppable | None = None,
               kind: str = "raw_flood", target: str = "", senders: int | None = None
               ) -> LoadResult:
    """Send ``packets`` in turn through ``send`` (a connected or bound socket's ``send``, or
    a function that sends one packet), at most ``rate`` per second, until ``duration_s``,
    ``max_packets`` or the stop flag.

    ``senders`` threads share the socket and one :class:`~harness.load.Pacer` (default:
    :func:`~harness.load.senders_for` the rate). A send is all kernel work, done with the GIL
    released (on loopback the receiving stack runs in the sender's context too), so threads
    scale with the cores here.

    A send error (``ENOBUFS``: the local queue is full; ``ECONNREFUSED`` and the like) is
    counted in ``errors`` and the rest of that batch is dropped.
    """
    if not packets:
        raise ValueError("no packets to send")
    count = senders if senders is not None else senders_for(rate)
    pacer = Pacer(rate, senders=count)
    start = time.monotonic()
    deadline = start + duration_s
    result = LoadResult(kind, target, rate, started=start)
    n_packets = len(packets)

    def sender(index: int, halt: Stoppable) -> tuple[int, int, str, list[list[float]]]:
        series = Series(start)
        at = index * n_packets // count  # each sender starts at its own place in the cycle
        sent = errors = 0
        batches = Batches(pacer, halt, deadline, _BATCH, max_packets)
        for now, n in batches:
            done = 0
            try:
                for _ in range(n):
                    send(packets[at])
                    at += 1
                    if at == n_packets:
                        at = 0
                    done += 1
            except OSError:
                errors += 1
            sent += done
            series.add(now, done, 0)
        return sent, errors, batches.reason, series.rows

    parts = run_senders(count, stop or NeverStop(), sender)
    result.ended = time.monotonic()
    result.sent = sum(part[0] for part in parts)
    result.errors = sum(part[1] for part in parts)
    result.stop_reason = parts[0][2]
    result.series = merge_series([part[3] for part in parts])
    result.details.update({"variants": n_packets, "senders": count})
    return result


def syn_flood(host: str, port: int, *, guard: Guard, rate: float, duration_s: float,
              max_packets: int | None = None, stop: Stoppable | None = None,
              senders: int | None = None) -> LoadResult:
    """SYNs to ``host:port`` at most ``rate`` per second for ``duration_s`` (root)."""
    with RawSender(guard, host) as sender:
        packets = syn_packets(sender.address, port)
        return sender.flood(packets, rate=rate, duration_s=duration_s, max_packets=max_packets,
                            stop=stop, kind="syn_flood", port=port, senders=senders)


def icmp_echo_packets(dst: str, *, count: int = ICMP_VARIANTS, src: str | None = None,
                      seed: int | None = None) -> list[bytes]:
    """``count`` ICMP echo requests to ``dst`` (identifier and sequence vary, 56 data bytes)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.packet import Raw

    rng = random.Random(seed)  # noqa: S311 - packet variety, not secrecy
    src = src or source_address(dst)
    ident = rng.randrange(1, 65536)
    data = bytes(rng.randrange(256) for _ in range(ICMP_PAYLOAD))
    return [bytes(IP(src=src, dst=dst, id=rng.randrange(1, 65536), ttl=64)
                  / ICMP(type=8, code=0, id=ident, seq=i + 1) / Raw(data))
            for i in range(count)]


def icmp_storm(host: str, *, guard: Guard, rate: float, duration_s: float,
               max_packets: int | None = None, stop: Stoppable | None = None,
               senders: int | None = None) -> LoadResult:
    """ICMP echo requests to ``host`` at most ``rate`` per second for ``duration_s`` (root).

    The device's echo replies come back to our own address and are not read.
    """
    with RawSender(guard, host) as sender:
        packets = icmp_echo_packets(sender.address)
        result = sender.flood(packets, rate=rate, duration_s=duration_s,
                              max_packets=max_packets, stop=stop, kind="icmp_storm",
                              senders=senders)
        result.details["payload_bytes"] = ICMP_PAYLOAD
        return result


def udp_payloads(*, count: int = UDP_VARIANTS, seed: int | None = None) -> list[bytes]:
    """``count`` random payloads cycling through :data:`UDP_SIZES`."""
    rng = random.Random(seed)  # noqa: S311 - payload variety, not secrecy
    return [rng.randbytes(UDP_SIZES[i % len(UDP_SIZES)]) for i in range(count)]


def udp_storm(host: str, port: int, *, guard: Guard, rate: float, duration_s: float,
              max_packets: int | None = None, stop: Stoppable | None = None,
              payloads: list[bytes] | None = None, senders: int | None = None) -> LoadResult:
    """UDP datagrams to ``host:port`` at most ``rate`` per second for ``duration_s``.

    Plain UDP socket (no privilege), unconnected, bound to an ephemeral port; ``payloads``
    default to :func:`udp_payloads`.
    """
    address = _ipv4(guard, host)
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    data = payloads if payloads is not None else udp_payloads()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("", 0))
        dest = (address, port)
        sendto = sock.sendto
        result = paced_send(lambda payload: sendto(payload, dest), data, rate=rate,
                            duration_s=duration_s, max_packets=max_packets, stop=stop,
                            kind="udp_storm", target=f"{host}:{port}", senders=senders)
    result.details["payload_sizes"] = sorted({len(d) for d in data})
    return result
