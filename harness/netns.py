"""Network-namespace labs: a device behind a veth pair, for tests that need a real link layer.

A loopback lab has no Ethernet: ARP, broadcasts and anything else below IP cannot be shown on
``lo``. A *netns lab* puts the simulated device into a network namespace of its own and wires it
to the harness with one veth pair:

- the namespace ``hlab-XXXXXX`` (six random hex digits, so concurrent labs never collide) holds
  the device side ``hlabXXXXXXd`` and its own ``lo``;
- the harness side ``hlabXXXXXXh`` stays in the root namespace and is connected to nothing else
  (no bridge, no route beyond its /30);
- addresses come from 198.18.0.0/15 (RFC 2544's benchmark range, never routed): a random /30
  not overlapping any address on this machine, ``.1`` the harness side, ``.2`` the device;
- IPv6 is switched off on both ends so that the link stays quiet (no router solicitations, no
  duplicate address detection): what crosses it is what the harness and the device send.

Creating and removing namespaces and links needs root (``CAP_NET_ADMIN``); everything is done
with iproute2's ``ip`` command. :func:`create` removes whatever it made when a step fails;
:func:`teardown` is idempotent and also stops, by pid, any process still inside the namespace
(only the lab's own simulators can be there: the namespace is the lab's). A program runs inside
with :meth:`NetnsLink.exec_prefix` (``ip netns exec NAME ...``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import LabError

#: RFC 2544 benchmark range: the only addresses a netns lab uses.
SUPERNET = ipaddress.IPv4Network("198.18.0.0/15")
#: Prefix length of each lab's link (two usable addresses).
PREFIXLEN = 30
#: Start of every namespace and interface name a netns lab creates.
NAME_PREFIX = "hlab"
#: Linux's limit on interface names (IFNAMSIZ - 1).
MAX_IFNAME = 15
#: Seconds an ``ip`` command may take.
IP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NetnsLink:
    """One netns lab's namespace and veth pair."""

    #: Network namespace name (``hlab-XXXXXX``).
    name: str
    #: Harness-side veth, in the root namespace.
    host_if: str
    #: Device-side veth, inside the namespace.
    device_if: str
    #: The harness side's address.
    host_address: str
    #: The device's address.
    device_address: str
    #: Prefix length of both addresses.
    prefixlen: int = PREFIXLEN
    #: The harness side's MAC address (``aa:bb:...``).
    host_mac: str = ""
    #: The device side's MAC address.
    device_mac: str = ""

    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return [ip_command(), "netns", "exec", self.name]

    def to_json(self) -> dict[str, Any]:
        """The link as plain data (for a lab's state file)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NetnsLink:
        """The link recorded by :meth:`to_json`."""
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)


def ip_command() -> str:
    """The full path of iproute2's ``ip``.

    :raises LabError: not installed.
    """
    found = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if Path(p).exists()), None)
    if found is None:
        raise LabError("network-namespace labs need iproute2's `ip` command")
    return found


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; :class:`LabError` with its message when ``check`` and it fails."""
    try:
        proc = subprocess.run([ip_command(), *args], capture_output=True, text=True,
                              timeout=IP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"`ip {' '.join(args)}` did not finish in {IP_TIMEOUT_S:g} s") from None
    if check and proc.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def namespace_exists(name: str) -> bool:
    """True if the network namespace ``name`` exists."""
    out = _ip("netns", "list").stdout
    return any(line.split()[0] == name for line in out.splitlines() if line.strip())


def link_exists(ifname: str, netns: str | None = None) -> bool:
    """True if the interface ``ifname`` exists (in ``netns``, else in the root namespace)."""
    where = ["-n", netns] if netns else []
    return _ip(*where, "link", "show", "dev", ifname, check=False).returncode == 0


def mac_address(ifname: str, netns: str | None = None) -> str:
    """The MAC address of ``ifname`` (in ``netns``, else in the root namespace)."""
    where = ["-n", netns] if netns else []
    data = json.loads(_ip(*where, "-j", "link", "show", "dev", ifname).stdout)
    return str(data[0]["address"])


def _used_networks() -> list[ipaddress.IPv4Network]:
    data = json.loads(_ip("-j", "-4", "addr", "show").stdout or "[]")
    return [ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False)
            for link in data for a in link.get("addr_info", []) if "local" in a]


def pick_subnet(used: list[ipaddress.IPv4Network] | None = None) -> ipaddress.IPv4Network:
    """A random /30 in :data:`SUPERNET` overlapping none of ``used`` (default: this machine's
    addresses)."""
    taken = _used_networks() if used is None else used
    blocks = SUPERNET.num_addresses >> (32 - PREFIXLEN)
    for _ in range(1000):
        index = 1 + secrets.randbelow(blocks - 1)  # not the block at the range's start
        net = ipaddress.IPv4Network(
            (int(SUPERNET.network_address) + (index << (32 - PREFIXLEN)), PREFIXLEN))
        if not any(net.overlaps(u) for u in taken):
            return net
    raise LabError(f"no free /{PREFIXLEN} left in {SUPERNET}")


def _quiet_ipv6(ifname: str, netns: str | None = None) -> None:
    """Switch IPv6 off on ``ifname`` (best effort: a kernel without IPv6 has nothing to say)."""
    key = f"net/ipv6/conf/{ifname}/disable_ipv6"
    if netns is None:
        with contextlib.suppress(OSError):
            Path("/proc/sys", key).write_text("1\n")
        return
    with contextlib.suppress(LabError):
        _ip("netns", "exec", netns, "sysctl", "-q", "-w", key.replace("/", ".") + "=1",
            check=False)


def create(prefix: str = NAME_PREFIX) -> NetnsLink:
    """Create a namespace and a veth pair, address both ends and bring them up.

    :param prefix: start of the names (letters and digits; the names stay within 15 chars).
    :raises LabError: not root, ``ip`` missing or a step failed (nothing is left behind).
    """
    if not prefix.isalnum() or len(prefix) + 7 > MAX_IFNAME:
        raise ValueError(f"prefix must be 1..{MAX_IFNAME - 7} letters or digits, got {prefix!r}")
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        raise LabError("network-namespace labs need root (CAP_NET_ADMIN)")
    suffix = secrets.token_hex(3)
    net = pick_subnet()
    host_addr, device_addr = (str(net.network_address + i) for i in (1, 2))
    link = NetnsLink(name=f"{prefix}-{suffix}", host_if=f"{prefix}{suffix}h",
                     device_if=f"{prefix}{suffix}d", host_address=host_addr,
                     device_address=device_addr, prefixlen=net.prefixlen)
    ns, cidr = link.name, f"/{net.prefixlen}"
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.device_if,
            "netns", ns)
        _quiet_ipv6(link.host_if)
        _quiet_ipv6(link.device_if, ns)
        _ip("addr", "add", host_addr + cidr, "dev", link.host_if)
        _ip("-n", ns, "addr", "add", device_addr + cidr, "dev", link.device_if)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "link", "set", link.device_if, "up")
        _ip("link", "set", link.host_if, "up")
        link = NetnsLink(**{**link.to_json(), "host_mac": mac_address(link.host_if),
                            "device_mac": mac_address(link.device_if, ns)})
        _wait_carrier(link)
    except BaseException:
        teardown(link)
        raise
    return link


def _wait_carrier(link: NetnsLink, timeout_s: float = 5.0) -> None:
    """Wait until the harness side reports the link up (veth carrier comes at once, mostly)."""
    end = time.monotonic() + timeout_s
    state = Path(f"/sys/class/net/{link.host_if}/operstate")
    while True:
        try:
            if state.read_text().strip() == "up":
                return
        except OSError:
            pass
        if time.monotonic() >= end:
            raise LabError(f"{link.host_if} did not come up within {timeout_s:g} s")
        time.sleep(0.02)


def namespace_pids(name: str) -> list[int]:
    """Pids of the processes inside the namespace ``name`` (none if it does not exist)."""
    proc = _ip("netns", "pids", name, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()] if proc.returncode == 0 else []


def _stop(pids: list[int], timeout_s: float = 3.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and any(Path(f"/proc/{p}").exists() for p in pids):
        for pid in pids:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)


def teardown(link: NetnsLink) -> list[str]:
    """Remove the namespace and the veth pair (idempotent); return what was removed.

    Processes still inside the namespace are stopped first (SIGTERM, then SIGKILL), by pid;
    then the veth pair goes, then the namespace.
    """
    removed: list[str] = []
    present = namespace_exists(link.name)
    if present:
        _stop(namespace_pids(link.name))
    # deleting one end deletes the pair at once (a namespace's devices go asynchronously)
    if link_exists(link.host_if):
        _ip("link", "del", link.host_if, check=False)
        removed.append(f"link {link.host_if}")
    if present:
        _ip("netns", "del", link.name, check=False)
        removed.append(f"netns {link.name}")
    return removed


@contextlib.contextmanager
def netns_link(prefix: str = NAME_PREFIX) -> Iterator[NetnsLink]:
    """A namespace and veth pair for the duration of a ``with`` block."""
    link = create(prefix)
    try:
        yield link
    finally:
        teardown(link)
