"""Network-namespace labs: namespace and veth pair made, device reachable over it, all gone after.

Everything that creates a namespace needs root (``CAP_NET_ADMIN``) and is skipped otherwise.
Traffic goes only to the namespaces these tests create (addresses in 198.18.0.0/15).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from harness import netns
from harness.errors import LabError
from harness.lab import LabDefinition, lab_down, lab_up
from harness.profile import load_profile

pytestmark = pytest.mark.timeout(60)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
root_only = pytest.mark.skipif(not IS_ROOT, reason="network namespaces need root (CAP_NET_ADMIN)")


def ip_json(*args: str) -> list[dict[str, Any]]:
    """``ip -j ARGS`` parsed."""
    out = subprocess.run([netns.ip_command(), "-j", *args], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    data: list[dict[str, Any]] = json.loads(out or "[]")
    return data


def namespaces() -> set[str]:
    """The names ``ip netns list`` shows."""
    out = subprocess.run([netns.ip_command(), "netns", "list"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links(namespace: str | None = None) -> set[str]:
    """Interface names ``ip link`` shows (in ``namespace``, else the root namespace)."""
    where = ["-n", namespace] if namespace else []
    return {entry["ifname"] for entry in ip_json(*where, "link", "show")}


def lab_links() -> set[str]:
    """Root-namespace interfaces named like a netns lab's."""
    return {name for name in links() if name.startswith(netns.NAME_PREFIX)}


def lab_namespaces() -> set[str]:
    return {name for name in namespaces() if name.startswith(netns.NAME_PREFIX + "-")}


@pytest.fixture
def link() -> Iterator[netns.NetnsLink]:
    made = netns.create()
    try:
        yield made
    finally:
        netns.teardown(made)


def modbus_read(host: str, port: int, address: int) -> int:
    """One FC 3 read of one holding register over a fresh connection."""
    with socket.create_connection((host, port), timeout=3) as conn:
        conn.sendall(struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, address, 1))
        reply = b""
        while len(reply) < 11:
            chunk = conn.recv(260)
            assert chunk, "the simulator closed the connection"
            reply += chunk
    assert reply[7] == 3, f"exception reply {reply!r}"
    return int.from_bytes(reply[9:11], "big")


# --------------------------------------------------------------------------- no root needed
def test_subnet_is_a_free_slash30_of_the_benchmark_range() -> None:
    used = [ipaddress.IPv4Network("198.18.0.0/16")]
    for _ in range(50):
        net = netns.pick_subnet(used)
        assert net.prefixlen == netns.PREFIXLEN
        assert net.subnet_of(netns.SUPERNET)
        assert not net.overlaps(used[0])


def test_netns_lab_takes_its_address_from_the_namespace() -> None:
    lab = LabDefinition.model_validate({"name": "n", "network": {"kind": "netns"}})
    assert lab.network.kind == "netns" and lab.host == "auto"
    assert LabDefinition.model_validate({"name": "d"}).network.kind == "loopback"
    with pytest.raises(ValidationError, match="host must be auto"):
        LabDefinition.model_validate({"name": "n", "network": {"kind": "netns"},
                                      "host": "127.0.0.5"})
    with pytest.raises(ValidationError):
        LabDefinition.model_validate({"name": "n", "network": {"kind": "bridge"}})


@pytest.mark.skipif(IS_ROOT, reason="checks the refusal without root")
def test_without_root_creation_is_refused() -> None:
    with pytest.raises(LabError, match="need root"):
        netns.create()


# --------------------------------------------------------------------------- root
@root_only
def test_namespace_and_veth_pair_are_made_and_removed(link: netns.NetnsLink) -> None:
    assert link.name in namespaces()
    assert all(len(n) <= netns.MAX_IFNAME for n in (link.host_if, link.device_if))
    # the harness side in the root namespace, the device side only inside the namespace
    assert link.host_if in links() and link.device_if not in links()
    assert link.device_if in links(link.name) and "lo" in links(link.name)
    host_addrs = {(a["local"], a["prefixlen"]) for e in ip_json("addr", "show", link.host_if)
                  for a in e["addr_info"] if a["family"] == "inet"}
    dev_addrs = {(a["local"], a["prefixlen"])
                 for e in ip_json("-n", link.name, "addr", "show", link.device_if)
                 for a in e["addr_info"] if a["family"] == "inet"}
    assert host_addrs == {(link.host_address, netns.PREFIXLEN)}
    assert dev_addrs == {(link.device_address, netns.PREFIXLEN)}
    for address in (link.host_address, link.device_address):
        assert ipaddress.ip_address(address) in netns.SUPERNET
    assert link.device_mac and link.device_mac == netns.mac_address(link.device_if, link.name)
    # the device's address is reached over the harness-side veth, nothing else
    (route,) = ip_json("route", "get", link.device_address)
    assert route["dev"] == link.host_if
    removed = netns.teardown(link)
    assert removed == [f"link {link.host_if}", f"netns {link.name}"]
    assert link.name not in namespaces()
    assert link.host_if not in links()
    assert netns.teardown(link) == []  # idempotent


@root_only
def test_teardown_removes_a_pair_whose_namespace_is_gone() -> None:
    made = netns.create()
    try:
        # the device end moved back to the root namespace, the namespace removed
        subprocess.run([netns.ip_command(), "-n", made.name, "link", "set", made.device_if,
                        "netns", "1"], check=True, timeout=10)
        subprocess.run([netns.ip_command(), "netns", "del", made.name], check=True, timeout=10)
        assert {made.host_if, made.device_if} <= links()
    finally:
        removed = netns.teardown(made)
    assert removed == [f"link {made.host_if}"]
    assert not {made.host_if, made.device_if} & links()


@root_only
def test_simulator_in_a_netns_lab_is_reachable_and_all_is_gone_after(
        tmp_path: Path) -> None:
    before = (lab_namespaces(), lab_links())
    lab = LabDefinition.model_validate({"name": "t", "simulators": ["modbus_tcp"],
                                        "network": {"kind": "netns"}})
    state_dir = tmp_path / "state"
    state = lab_up(lab, state_dir)
    try:
        recorded = netns.NetnsLink.from_json(state["network"])
        assert state["network"]["kind"] == "netns"
        assert recorded.name in namespaces() and recorded.host_if in links()
        ep = state["simulators"]["modbus_tcp"]["endpoints"]["modbus"]
        assert ep["host"] == recorded.device_address == state["host"]
        # the simulator runs inside the namespace
        pid = int(state["simulators"]["modbus_tcp"]["pid"])
        assert pid in netns.namespace_pids(recorded.name)
        # reachable from the root namespace over the veth: the heartbeat counts
        first = modbus_read(ep["host"], int(ep["port"]), 0)
        for _ in range(200):
            time.sleep(0.01)
            if modbus_read(ep["host"], int(ep["port"]), 0) != first:
                break
        else:
            pytest.fail("the heartbeat did not count")
        # the generated profile points at the device address only, and declares no listener
        # of this machine (a namespace shares none)
        profile = load_profile(state_dir / "profile.yaml").profile
        assert [ipaddress.ip_network(str(t)) for t in profile.targets] == [
            ipaddress.ip_network(recorded.device_address)]
        assert profile.expectations.open_ports == [int(ep["port"])]
        assert profile.expectations.open_udp_ports == []
    finally:
        stopped = lab_down(state_dir)
    assert stopped == ["modbus_tcp"]
    assert recorded.name not in namespaces()
    assert recorded.host_if not in links()
    assert (lab_namespaces(), lab_links()) == before
    assert not Path(f"/proc/{pid}").exists() or b"simulators." not in Path(
        f"/proc/{pid}/cmdline").read_bytes()


@root_only
def test_failed_netns_lab_leaves_nothing(tmp_path: Path) -> None:
    before = (lab_namespaces(), lab_links())
    # two simulators asked for the same port in one namespace: the second cannot listen
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lab = LabDefinition.model_validate({
        "name": "t", "simulators": ["modbus_tcp", "ssh"], "network": {"kind": "netns"},
        "ports": {"modbus_tcp": port, "ssh": port}})
    with pytest.raises(LabError):
        lab_up(lab, tmp_path / "state")
    assert not (tmp_path / "state").exists()
    assert (lab_namespaces(), lab_links()) == before


@root_only
def test_conftest_lab_factory_runs_a_netns_lab(lab: Callable[..., Any]) -> None:
    running = lab(["modbus_tcp"], network={"kind": "netns"})
    ep = running.endpoints("modbus_tcp")["modbus"]
    assert ipaddress.ip_address(ep["host"]) in netns.SUPERNET
    assert modbus_read(ep["host"], int(ep["port"]), 0) >= 0
    lab_down(running.state_dir)
    assert running.state["network"]["name"] not in namespaces()


# --------------------------------------------------------------------------- layer-2 checks
L2_CHECKS = ("test_arp_storm", "test_broadcast_storm")


def test_fragile_l2_model_counts_arp_and_broadcast_frames_per_second() -> None:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether

    from simulators.modbus_tcp import FragileL2
    from simulators.plc import PLC

    now = [1000.0]
    model = FragileL2(PLC(), threshold_rps=10, recovery_s=60, clock=lambda: now[0])
    mac = "02:00:00:00:00:01"
    arp = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="198.18.0.1",
                                                             pdst="198.18.0.2"))
    cast = bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(dst="255.255.255.255")
                 / UDP(dport=9))
    unicast = bytes(Ether(src=mac, dst="02:00:00:00:00:02") / IP(dst="198.18.0.2") / UDP())
    for _ in range(100):
        assert model.feed(unicast) is None  # unicast never counts
    for _ in range(10):
        assert model.feed(arp) is None
        assert model.feed(cast) is None
    now[0] += 1.5  # the window moved on: the count starts again
    for _ in range(10):
        assert model.feed(arp) is None
    assert not model.plc.starved
    reason = model.feed(arp)
    assert reason is not None and reason.startswith("ARP storm: 11 ARP frames")
    assert model.plc.starved
    for _ in range(11):  # the broadcasts of the old window no longer count
        model.feed(cast)
    assert str(model.last_reason).startswith("broadcast storm: 11 broadcast frames")
    assert model.feed(b"\xff" * 13) is None  # too short to be a frame


def _l2_run(lab: Callable[..., Any], run_harness: Callable[..., Any],
            write_profile: Callable[..., Path], weaknesses: list[str]) -> dict[str, Any]:
    """The layer-2 checks against a netns lab (load duration cut to 1.5 s); name -> check."""
    running = lab(["modbus_tcp"], weaknesses=weaknesses, network={"kind": "netns"})
    data = running.profile()
    link = running.state["network"]
    assert data["interfaces"]["ethernet"] == {"ifname": link["host_if"],
                                              "device_mac": link["device_mac"]}
    data["safety"]["max_load_duration_s"] = 1.5
    run = run_harness(write_profile(data), k=" or ".join(L2_CHECKS))
    found = {c["nodeid"].rsplit("::", 1)[-1]: c for c in run.checks("network_robustness")}
    assert sorted(found) == sorted(L2_CHECKS), f"{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    return found


@root_only
def test_l2_checks_pass_on_a_hardened_netns_lab(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    found = _l2_run(lab, run_harness, write_profile, [])
    assert {n: c["verdict"] for n, c in found.items()} == dict.fromkeys(L2_CHECKS, "PASS"), \
        {n: c["reason"] for n, c in found.items()}
    # the storms were sent, on the lab's veth, within the cap
    for name, check in found.items():
        results = [o["data"] for o in check["observations"]
                   if str(o.get("summary", "")).startswith("load result:")]
        assert results and results[0]["sent"] > 0, name
        assert results[0]["achieved_rate"] <= 5000  # the lab profile's max_packet_rate


@root_only
def test_l2_checks_fail_on_a_fragile_l2_netns_lab(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    found = _l2_run(lab, run_harness, write_profile, ["net.fragile_l2"])
    assert {n: c["verdict"] for n, c in found.items()} == dict.fromkeys(L2_CHECKS, "FAIL"), \
        {n: c["reason"] for n, c in found.items()}
    # the heartbeat stalled: the monitor, not a send error, made the verdict
    assert all("stalled" in str(c["reason"]) for c in found.values()), found
