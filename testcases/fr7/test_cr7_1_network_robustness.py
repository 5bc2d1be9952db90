"""CR 7.1 at the network and link layers: SYN flood, malformed IP/TCP, UDP and ICMP echo
storms, ARP and broadcast storms.

The SYN flood, the malformed packets, the ICMP storm and the layer-2 storms need raw sockets
(root); the UDP storm goes through a plain UDP socket. The layer-2 storms need the Ethernet link
the profile declares (``interfaces.ethernet``) and are NOT APPLICABLE without one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.verdict import fail, not_applicable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.profile import Profile

pytestmark = pytest.mark.requirement("CR 7.1")

#: The simulator weakness these checks detect (``modbus_tcp``): a device whose IP stack starves
#: the scan cycle on SYN floods and malformed segments.
WEAKNESS = "net.fragile_stack"
#: The weakness the layer-2 checks detect (``modbus_tcp`` in a netns lab): a device whose
#: Ethernet driver hands every ARP and broadcast frame to the scan cycle's CPU.
L2_WEAKNESS = "net.fragile_l2"


def _target_port(profile: Profile) -> tuple[str, int]:
    """The service the packets go to: Modbus/TCP if declared, else the first declared one."""
    ifs = profile.interfaces
    for iface in (ifs.modbus_tcp, ifs.modbus_tls, ifs.ssh):
        if iface is not None:
            return iface.host, iface.port
    if ifs.opcua is not None:
        return ifs.opcua.host, ifs.opcua.port
    not_applicable("no TCP service declared in the profile")
    raise AssertionError("unreachable")


def _device_host(profile: Profile) -> str:
    """The device's address: the host of its first declared network interface."""
    hosts = profile.interfaces.hosts()
    if not hosts:
        not_applicable("no network interface declared in the profile")
    return hosts[0]


def _closed_udp_port(profile: Profile) -> int:
    """A UDP port the profile does not declare open: the discard port (9) unless declared, else
    the next free one. The storm tests the stack, not a UDP service: every datagram must be
    dropped (and, at the kernel's own pace, answered with ICMP port unreachable)."""
    declared = set(profile.expectations.open_udp_ports)
    return next(p for p in range(9, 65536) if p not in declared)


@pytest.mark.protocol("network")
@pytest.mark.raw_socket
@pytest.mark.weakness(WEAKNESS)
@pytest.mark.disruptive(traffic="TCP SYNs to one declared service port at most "
                                "{max_packet_rate:g} packets/s for at most "
                                "{max_load_duration_s:g} s")
def test_syn_flood(load: LoadKit, monitor: EssentialMonitor, device_profile: Profile,
                   evidence: Evidence) -> None:
    """The essential function stays within bounds during a SYN flood at the packet-rate cap.

    Requirement: CR 7.1 (denial-of-service protection) at the TCP layer: half-open connections
    are the oldest resource-exhaustion attack on an IP stack.

    Procedure: healthy baseline; SYNs (varying source port and sequence number, from the
    harness's own address, crafted once with scapy and sent as raw bytes) to the Modbus/TCP port
    (else the first declared service) at ``max_packet_rate`` for ``max_load_duration_s``, stopped
    at once by the monitor's abort; recovery watched for ``recovery_wait_s``. Our kernel resets
    the device's SYN-ACKs (the source is real); spoofed unreachable sources are not used.

    Pass: every monitor sample during the flood within bounds, recovered in time.
    """
    host, port = _target_port(device_profile)
    flood = load.syn_flood(port, host=host)
    verdict = monitor.judge_load(flood)
    evidence.note("judgement", achieved_pps=round(flood.achieved_rate, 1), ok=verdict.ok)
    monitor.require(verdict, f"under a SYN flood of {flood.sent} packets at "
                             f"{flood.achieved_rate:.0f} packets/s to {host}:{port}")


@pytest.mark.protocol("network")
@pytest.mark.raw_socket
@pytest.mark.weakness(WEAKNESS)
@pytest.mark.disruptive(traffic="20 copies of each of 17 kinds of malformed IP/TCP packet to "
                                "one declared service port, at most {max_packet_rate:g} "
                                "packets/s, at most {max_load_duration_s:g} s in all")
def test_malformed_ip_tcp(load: LoadKit, monitor: EssentialMonitor, device_profile: Profile,
                          evidence: Evidence) -> None:
    """Malformed IP/TCP packets do not disturb the essential function.

    Requirement: CR 7.1 for malformed traffic at the network layer (the transport-protocol
    counterpart of CR 3.5's input validation): an embedded IP stack must drop bad segments.

    Procedure: healthy baseline; then, one kind after the other, 20 copies each of: bad TCP
    checksum; SYN+FIN, SYN+RST, no flags, XMAS, all flags; LAND (source = destination, same
    port); TCP data offset past the packet and below the minimum; truncated and zero-length TCP
    options; an urgent pointer past the data; garbage IP options; an unassigned IP protocol;
    overlapping fragments; a tiny first fragment; a fragment past 65535 bytes. A bad IP
    checksum is not sent: the kernel fills it in on raw IPv4 sockets. After each kind the
    monitor's samples are looked at (per-kind table in the evidence); at the end the whole
    window and the recovery are judged.

    Pass: every monitor sample from the first packet to the last within bounds, recovered in
    time. A FAIL names the first kind after which samples failed.
    """
    host, port = _target_port(device_profile)
    monitor.wait_healthy()  # the judged window starts with the packets, not before the baseline
    started = monitor.mark("malformed")
    rows = load.malformed_packets(port, host=host)
    ended = monitor.mark("after-malformed")
    verdict = monitor.judge(started, ended, label="malformed packets")
    if verdict.ok:
        evidence.note("judgement", ok=True, kinds=len(rows))
        return
    culprit = next((r["kind"] for r in rows if r["failed_samples"]), "unknown")
    fail(f"malformed IP/TCP packets to {host}:{port} disturbed the essential function (first "
         f"failed samples after kind {culprit!r}): " + "; ".join(verdict.problems))


@pytest.mark.protocol("network")
@pytest.mark.weakness(WEAKNESS)
@pytest.mark.disruptive(traffic="UDP datagrams of 16 to 1472 bytes to one UDP port the profile "
                                "does not declare open, at most {max_packet_rate:g} packets/s "
                                "for at most {max_load_duration_s:g} s")
def test_udp_storm(load: LoadKit, monitor: EssentialMonitor, device_profile: Profile,
                   evidence: Evidence) -> None:
    """The essential function stays within bounds during a UDP storm at the packet-rate cap.

    Requirement: CR 7.1 (denial-of-service protection) at the transport layer: connectionless
    traffic needs no handshake, so a stack that handles each datagram on the control CPU can be
    starved by volume alone.

    Procedure: healthy baseline; UDP datagrams (random payloads of 16, 64, 512 and 1472 bytes,
    from an ordinary UDP socket) to a UDP port the profile does not declare open (the discard
    port 9 unless declared) on the device's address, at ``max_packet_rate`` for
    ``max_load_duration_s``, stopped at once by the monitor's abort; recovery watched for
    ``recovery_wait_s``.

    Pass: every monitor sample during the storm within bounds, recovered in time.
    """
    host = _device_host(device_profile)
    port = _closed_udp_port(device_profile)
    storm = load.udp_storm(port, host=host)
    verdict = monitor.judge_load(storm)
    evidence.note("judgement", achieved_pps=round(storm.achieved_rate, 1), errors=storm.errors,
                  ok=verdict.ok)
    monitor.require(verdict, f"under a UDP storm of {storm.sent} datagrams at "
                             f"{storm.achieved_rate:.0f} packets/s to {host}:{port}")


@pytest.mark.protocol("network")
@pytest.mark.raw_socket
@pytest.mark.weakness(WEAKNESS)
@pytest.mark.disruptive(traffic="ICMP echo requests (56 data bytes) to the device's address at "
                                "most {max_packet_rate:g} packets/s for at most "
                                "{max_load_duration_s:g} s")
def test_icmp_storm(load: LoadKit, monitor: EssentialMonitor, device_profile: Profile,
                    evidence: Evidence) -> None:
    """The essential function stays within bounds during an ICMP echo storm at the cap.

    Requirement: CR 7.1 (denial-of-service protection) at the network layer: a ping flood makes
    the stack answer every request.

    Procedure: healthy baseline; ICMP echo requests (varying sequence numbers, 56 data bytes,
    crafted once with scapy and sent as raw bytes from the harness's own address) to the
    device's address at ``max_packet_rate`` for ``max_load_duration_s``, stopped at once by the
    monitor's abort; recovery watched for ``recovery_wait_s``. The echo replies come back to the
    harness's kernel and are not read.

    Pass: every monitor sample during the storm within bounds, recovered in time.
    """
    host = _device_host(device_profile)
    storm = load.icmp_storm(host=host)
    verdict = monitor.judge_load(storm)
    evidence.note("judgement", achieved_pps=round(storm.achieved_rate, 1), ok=verdict.ok)
    monitor.require(verdict, f"under an ICMP echo storm of {storm.sent} packets at "
                             f"{storm.achieved_rate:.0f} packets/s to {host}")


@pytest.mark.protocol("ethernet")
@pytest.mark.raw_socket
@pytest.mark.weakness(L2_WEAKNESS)
@pytest.mark.disruptive(traffic="broadcast ARP requests for the device's address and "
                                "gratuitous ARPs of the harness's own, on the declared ethernet "
                                "interface only, at most {max_packet_rate:g} frames/s for at "
                                "most {max_load_duration_s:g} s")
def test_arp_storm(load: LoadKit, monitor: EssentialMonitor, evidence: Evidence) -> None:
    """The essential function stays within bounds during an ARP storm at the packet-rate cap.

    Requirement: CR 7.1 (denial-of-service protection) at the link layer: every ARP request is
    broadcast, so every host on the segment, the controller included, must look at each one.

    Procedure: NOT APPLICABLE without ``interfaces.ethernet``. Healthy baseline; broadcast ARP
    frames on the declared interface (requests from the harness's own MAC and address for the
    device's address, every other one a gratuitous ARP of the harness's own address; nothing
    spoofed), crafted once with scapy and sent through a packet socket at ``max_packet_rate``
    for ``max_load_duration_s``, stopped at once by the monitor's abort; recovery watched for
    ``recovery_wait_s``.

    Pass: every monitor sample during the storm within bounds, recovered in time.
    """
    storm = load.l2_storm("arp")
    verdict = monitor.judge_load(storm)
    evidence.note("judgement", achieved_fps=round(storm.achieved_rate, 1), ok=verdict.ok)
    monitor.require(verdict, f"under an ARP storm of {storm.sent} frames at "
                             f"{storm.achieved_rate:.0f} frames/s on {storm.details['interface']}")


@pytest.mark.protocol("ethernet")
@pytest.mark.raw_socket
@pytest.mark.weakness(L2_WEAKNESS)
@pytest.mark.disruptive(traffic="Ethernet broadcast frames (UDP to 255.255.255.255:9, 16 to "
                                "1472 bytes) on the declared ethernet interface only, at most "
                                "{max_packet_rate:g} frames/s for at most "
                                "{max_load_duration_s:g} s")
def test_broadcast_storm(load: LoadKit, monitor: EssentialMonitor, evidence: Evidence) -> None:
    """The essential function stays within bounds during a broadcast storm at the cap.

    Requirement: CR 7.1 (denial-of-service protection) at the link layer: a broadcast storm (a
    switching loop, a misconfigured host) reaches every device on the segment.

    Procedure: NOT APPLICABLE without ``interfaces.ethernet``. Healthy baseline; Ethernet
    broadcast frames carrying UDP datagrams to the limited broadcast address (port 9, random
    payloads of 16 to 1472 bytes, from the harness's own MAC and address) on the declared
    interface at ``max_packet_rate`` for ``max_load_duration_s``, stopped at once by the
    monitor's abort; recovery watched for ``recovery_wait_s``.

    Pass: every monitor sample during the storm within bounds, recovered in time.
    """
    storm = load.l2_storm("broadcast")
    verdict = monitor.judge_load(storm)
    evidence.note("judgement", achieved_fps=round(storm.achieved_rate, 1), ok=verdict.ok)
    monitor.require(verdict, f"under a broadcast storm of {storm.sent} frames at "
                             f"{storm.achieved_rate:.0f} frames/s on "
                             f"{storm.details['interface']}")
