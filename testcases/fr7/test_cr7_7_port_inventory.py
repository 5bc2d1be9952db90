"""CR 7.7 over the network: the device has no open port it does not declare."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.load.portscan import COMMON_OT_TCP, COMMON_OT_UDP
from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.profile import Profile

pytestmark = pytest.mark.requirement("CR 7.7")

#: Every TCP port.
ALL_TCP = range(1, 65536)


@pytest.mark.protocol("network")
@pytest.mark.weakness("net.extra_open_port")
@pytest.mark.disruptive(traffic="TCP connect attempts to all 65535 ports of each device address "
                                "at most {max_packet_rate:g}/s ({max_connections:g} in flight), "
                                "and one datagram to each of 18 common OT UDP ports")
def test_no_undeclared_open_ports(load: LoadKit, monitor: EssentialMonitor,
                                  device_profile: Profile, evidence: Evidence) -> None:
    """Every open TCP or UDP port of the device is one the profile declares.

    Requirement: CR 7.7 (least functionality): unnecessary ports and services are disabled. An
    open port the vendor does not document is either an unneeded service or an undocumented one;
    both fail the requirement. The profile's ``expectations.open_ports`` is the documentation.

    Why all 65535 TCP ports, and why a connect scan: an undeclared service can listen anywhere
    (the bundled simulator's debug service takes a random port), so a list of "usual" ports would
    miss exactly what this check is for. Each attempt is one SYN, so the scan is paced at the
    profile's ``max_packet_rate`` with at most ``max_connections`` attempts in flight: it is
    bounded by 65535 / ``max_packet_rate`` seconds (13 s at 5000/s, 66 s at the default 1000/s).
    A connect scan needs no privileges and sees what any client would; refused ports cost the
    device one RST each. The harness reads nothing from the device's own tables: only the wire.
    UDP cannot be swept the same way (silence means nothing), so the common OT UDP ports get one
    protocol-shaped request each (BACnet Who-Is, EtherNet/IP ListIdentity, SNMP, NTP...).

    Procedure: healthy baseline on the monitor; connect scan of every TCP port of each declared
    device address; a short banner read on each open port (evidence); UDP probes; the monitor
    must still be healthy at the end (otherwise the scan itself disturbed the device and the
    inventory cannot be trusted: ERROR).

    Pass: the open TCP ports are all in ``expectations.open_ports`` and the UDP ports that
    answered all in ``expectations.open_udp_ports``. Declared ports found closed are reported,
    not failed (an unused service switched off is what CR 7.7 asks for). Ports that neither
    answered nor refused (filtered) are reported.
    """
    declared = set(device_profile.expectations.open_ports)
    declared_udp = set(device_profile.expectations.open_udp_ports)
    hosts = device_profile.interfaces.hosts()
    undeclared: dict[str, list[str]] = {}
    monitor.wait_healthy()
    started = monitor.mark("scan")
    for host in hosts:
        scan = load.tcp_scan(host, ALL_TCP)
        if scan.not_scanned:
            raise TargetError(f"{host}: scan ended ({scan.stop_reason}) with {scan.not_scanned} "
                              "ports not scanned")
        udp = load.udp_probe(host, COMMON_OT_UDP)
        extra_tcp = [p for p in scan.open if p not in declared]
        extra_udp = [p for p, state in udp.items() if state == "open" and p not in declared_udp]
        closed_declared = sorted(p for p in declared if p not in scan.open)
        evidence.note("inventory", host=host, open_tcp=scan.open, declared=sorted(declared),
                      declared_udp=sorted(declared_udp), open_udp=sorted(
                          p for p, state in udp.items() if state == "open"),
                      undeclared_tcp=extra_tcp, undeclared_udp=extra_udp,
                      declared_but_closed=closed_declared,
                      common_ot_tcp_open=[p for p in scan.open if p in COMMON_OT_TCP],
                      filtered=len(scan.filtered))
        found = [f"tcp/{p}" + (f" ({scan.banners[p]!r})" if scan.banners.get(p) else "")
                 for p in extra_tcp] + [f"udp/{p}" for p in extra_udp]
        if found:
            undeclared[host] = found
    ended = monitor.mark("after-scan")
    verdict = monitor.judge(started, ended, label="port scan")
    if not verdict.ok:
        raise TargetError("the port scan itself disturbed the essential function, so the "
                          "inventory cannot be trusted: " + "; ".join(verdict.problems))
    if undeclared:
        fail("open ports the profile does not declare (expectations.open_ports = "
             f"{sorted(declared)}, open_udp_ports = {sorted(declared_udp)}): "
             + "; ".join(f"{h}: {', '.join(ports)}" for h, ports in undeclared.items()))
