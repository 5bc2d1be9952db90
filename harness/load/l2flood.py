"""Layer-2 load: ARP storms and Ethernet broadcast storms (packet sockets: root only).

Frames are crafted once with scapy and sent as prebuilt bytes through one Linux packet socket
(``AF_PACKET``, ``SOCK_RAW``) bound to the interface the profile declares for layer-2 checks
(``interfaces.ethernet.ifname``): the guard refuses any other interface before the socket
opens (:meth:`harness.safety.Guard.check_interface`), and the device's IP address must be in
the allow-list as everywhere. Every frame leaves on that interface only, and reaches every
host on its link: declare only a link that holds the device under test and nothing else.

Nothing is spoofed: the source MAC and IP are the harness interface's own.

- ARP storm: ARP requests from the harness for the device's address, interleaved with
  gratuitous ARP announcements of the harness's own address (both to the broadcast MAC).
- Broadcast storm: UDP datagrams (sizes 16 to 1472 bytes) to the limited broadcast address
  255.255.255.255, port 9 (discard), in Ethernet broadcast frames.

Bounds as for every load: :class:`~harness.load.Pacer` at ``rate`` frames per second,
``duration_s``, optional ``max_packets``, the stop flag.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from harness.errors import HarnessError
from harness.load import LoadResult, Stoppable, is_root
from harness.load.netflood import UDP_SIZES, SocketSender, paced_send, source_address

if TYPE_CHECKING:
    from harness.safety import Guard

#: The Ethernet broadcast address.
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
#: Distinct frames cycled through by a storm.
L2_VARIANTS = 64
#: UDP port the broadcast datagrams go to (discard).
BROADCAST_PORT = 9


def interface_mac(ifname: str) -> str:
    """The MAC address of the local interface ``ifname``.

    :raises HarnessError: no such interface.
    """
    try:
        return Path("/sys/class/net", ifname, "address").read_text().strip()
    except OSError:
        raise HarnessError(f"no network interface {ifname!r} on this machine") from None


def arp_frames(src_mac: str, src_ip: str, target_ip: str, *,
               count: int = L2_VARIANTS) -> list[bytes]:
    """``count`` broadcast ARP frames: requests from ``src_mac``/``src_ip`` for ``target_ip``,
    every other one a gratuitous ARP announcing ``src_ip`` (a request for itself)."""
    from scapy.layers.l2 import ARP, Ether

    out = []
    for i in range(count):
        asked = target_ip if i % 2 == 0 else src_ip
        out.append(bytes(Ether(src=src_mac, dst=BROADCAST_MAC)
                         / ARP(op=1, hwsrc=src_mac, psrc=src_ip, hwdst="00:00:00:00:00:00",
                               pdst=asked)))
    return out


def broadcast_frames(src_mac: str, src_ip: str, *, count: int = L2_VARIANTS,
                     seed: int | None = None) -> list[bytes]:
    """``count`` Ethernet broadcast frames carrying UDP to 255.255.255.255:9 (varying payload
    sizes, :data:`~harness.load.netflood.UDP_SIZES`)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    rng = random.Random(seed)  # noqa: S311 - payload variety, not secrecy
    return [bytes(Ether(src=src_mac, dst=BROADCAST_MAC)
                  / IP(src=src_ip, dst="255.255.255.255", id=rng.randrange(1, 65536), ttl=64)
                  / UDP(sport=rng.randrange(1024, 65536), dport=BROADCAST_PORT)
                  / Raw(rng.randbytes(UDP_SIZES[i % len(UDP_SIZES)])))
            for i in range(count)]


class L2Sender(SocketSender):
    """A packet socket bound to one declared interface, for prebuilt Ethernet frames.

    :param guard: the run's guard (it must allow ``ifname`` and ``host``).
    :param ifname: the harness-side interface.
    :param host: the device (its address must be allowed; IPv4).
    :raises SafetyViolation: the interface or the host is not allowed.
    :raises HarnessError: not root, or no such interface.
    """

    def __init__(self, guard: Guard, ifname: str, host: str) -> None:
        self.ifname = guard.check_interface(ifname)
        address = guard.check_destination(host)
        if ":" in address:
            raise HarnessError(f"layer-2 load supports IPv4 devices only; {host} is {address}")
        if not is_root():
            raise HarnessError("packet sockets need root (or CAP_NET_RAW)")
        self.host = host
        self.address = address
        self.mac = interface_mac(ifname)
        self.source_ip = source_address(address)
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # 0: receives nothing
        try:
            self.sock.bind((ifname, 0))
        except OSError:
            self.sock.close()
            raise

    def flood(self, frames: list[bytes], *, rate: float, duration_s: float,
              max_packets: int | None = None, stop: Stoppable | None = None,
              kind: str = "l2_flood") -> LoadResult:
        """Cycle through ``frames`` at most ``rate`` per second for ``duration_s``."""
        result = paced_send(self.sock.send, frames, rate=rate,  # bound to the interface
                            duration_s=duration_s, max_packets=max_packets, stop=stop,
                            kind=kind, target=f"{self.ifname} ({self.host})")
        result.details["interface"] = self.ifname
        return result


def arp_storm(ifname: str, host: str, *, guard: Guard, rate: float, duration_s: float,
              max_packets: int | None = None, stop: Stoppable | None = None) -> LoadResult:
    """ARP requests for ``host`` and gratuitous ARPs on ``ifname``, at most ``rate`` frames/s
    for ``duration_s`` (root)."""
    with L2Sender(guard, ifname, host) as sender:
        frames = arp_frames(sender.mac, sender.source_ip, sender.address)
        return sender.flood(frames, rate=rate, duration_s=duration_s, max_packets=max_packets,
                            stop=stop, kind="arp_storm")


def broadcast_storm(ifname: str, host: str, *, guard: Guard, rate: float, duration_s: float,
                    max_packets: int | None = None, stop: Stoppable | None = None,
                    ) -> LoadResult:
    """Ethernet broadcast frames (UDP to 255.255.255.255) on ``ifname``, at most ``rate``
    frames/s for ``duration_s`` (root). ``host`` is the device the link leads to."""
    with L2Sender(guard, ifname, host) as sender:
        frames = broadcast_frames(sender.mac, sender.source_ip)
        return sender.flood(frames, rate=rate, duration_s=duration_s, max_packets=max_packets,
                            stop=stop, kind="broadcast_storm")
