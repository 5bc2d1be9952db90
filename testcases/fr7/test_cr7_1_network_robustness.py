"""CR 7.1 at the network layer: a SYN flood and malformed IP/TCP packets (raw sockets, root)."""

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
