"""The safety guard every outgoing connection and packet passes (DESIGN.md section 4).

Two layers:

1. Protocol clients ask :meth:`Guard.check_destination` before they open anything; it resolves
   the host and refuses any address outside the profile's allow-list.
2. Defence in depth: while a guard is *armed*, a CPython audit hook refuses ``connect``,
   ``sendto`` and ``sendmsg`` to any IP address outside the allow-list, whoever calls it (a
   protocol library's reconnect logic, a DNS lookup of a name that resolves elsewhere, a bug).

Rates are capped by :class:`RateLimiter` (a token bucket that never exceeds its rate), durations by
:class:`Deadline`.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from harness.errors import SafetyViolation

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_armed: Guard | None = None
_hook_installed = False
_hook_lock = threading.Lock()
#: Most allowed address strings a guard remembers (the hook's fast path).
_ALLOWED_CACHE = 4096


def _audit(event: str, args: tuple[Any, ...]) -> None:
    guard = _armed
    if guard is None or event not in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        return
    address = args[1] if len(args) > 1 else None
    if event == "socket.sendmsg":
        address = args[-1] if args else None
    if isinstance(address, tuple) and address and isinstance(address[0], str):
        host = address[0]
        if guard.allowed_hosts.get(host):
            return  # seen and allowed: a flood's connect or send pays one dict lookup
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return  # not an IP socket address (AF_UNIX etc.)
        if guard.allows_ip(ip):
            if len(guard.allowed_hosts) < _ALLOWED_CACHE:
                guard.allowed_hosts[host] = True
            return
        raise SafetyViolation(
            f"safety guard: refused {event.removeprefix('socket.')} to {host}: "
            f"not in the profile's targets {guard.describe()}"
        )


class Guard:
    """The allow-list and the disruptive-action gate of one run.

    :param targets: IP addresses or CIDR networks the harness may contact.
    :param allow_disruptive: whether disruptive checks may run.
    :param serial_devices: serial device paths/URLs the profile declares.
    :param interfaces: network interfaces (of this machine) the profile lets the harness send
        raw layer-2 frames on (``interfaces.ethernet.ifname``).
    """

    def __init__(
        self,
        targets: Iterable[str],
        *,
        allow_disruptive: bool = False,
        serial_devices: Iterable[str] = (),
        interfaces: Iterable[str] = (),
    ) -> None:
        nets: list[_IPNetwork] = []
        for t in targets:
            try:
                nets.append(ipaddress.ip_network(t, strict=False))
            except ValueError:
                # A host name in the targets: allow whatever it resolves to now.
                for ip in _resolve(t):
                    nets.append(ipaddress.ip_network(ip))
        self.networks = nets
        #: Address strings the hook has already found inside :attr:`networks` (never a refused
        #: one: a refusal is decided afresh every time).
        self.allowed_hosts: dict[str, bool] = {}
        self.allow_disruptive = allow_disruptive
        self.serial_devices = frozenset(serial_devices)
        self.interfaces = frozenset(interfaces)

    def describe(self) -> str:
        """The allow-list as text."""
        return "[" + ", ".join(str(n) for n in self.networks) + "]"

    def allows_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True if ``ip`` is inside the allow-list."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.networks)

    def check_destination(self, host: str, port: int | None = None) -> str:
        """Resolve ``host`` and return its address if every resolution is allowed.

        :raises SafetyViolation: the host resolves to nothing, or to an address not allowed.
        """
        addrs = _resolve(host)
        if not addrs:
            raise SafetyViolation(f"safety guard: {host} does not resolve to any address")
        for a in addrs:
            if not self.allows_ip(ipaddress.ip_address(a)):
                where = f"{host}:{port}" if port is not None else host
                raise SafetyViolation(
                    f"safety guard: refused {where} ({a}): not in the profile's targets "
                    f"{self.describe()}"
                )
        return addrs[0]

    def check_serial(self, device: str) -> str:
        """Allow only serial devices the profile declares."""
        if device not in self.serial_devices:
            raise SafetyViolation(
                f"safety guard: serial device {device} is not declared in the profile"
            )
        return device

    def check_interface(self, ifname: str) -> str:
        """Allow raw layer-2 sends only on interfaces the profile declares.

        :raises SafetyViolation: ``ifname`` is not declared.
        """
        if ifname not in self.interfaces:
            declared = ", ".join(sorted(self.interfaces)) or "none"
            raise SafetyViolation(
                f"safety guard: refused layer-2 frames on interface {ifname!r}: not declared "
                f"in the profile (interfaces.ethernet; declared: {declared})"
            )
        return ifname

    def with_interfaces(self, interfaces: Iterable[str]) -> Guard:
        """A guard like this one (same targets, serial devices and disruptive gate) that also
        allows layer-2 sends on ``interfaces`` (those the profile declares)."""
        copy = Guard((), allow_disruptive=self.allow_disruptive,
                     serial_devices=self.serial_devices,
                     interfaces=self.interfaces | frozenset(interfaces))
        copy.networks = list(self.networks)
        return copy

    def require_disruptive(self, what: str) -> None:
        """Refuse a disruptive action unless disruptive checks are allowed."""
        if not self.allow_disruptive:
            raise SafetyViolation(
                f"safety guard: {what} is disruptive and disruptive checks are not allowed"
            )

    # -- arming the process-wide audit hook ----------------------------------------
    def arm(self) -> None:
        """Enforce this guard on every socket of the process until :meth:`disarm`."""
        global _armed, _hook_installed
        with _hook_lock:
            if not _hook_installed:
                sys.addaudithook(_audit)
                _hook_installed = True
            _armed = self

    def disarm(self) -> None:
        """Stop enforcing (the hook stays installed but inert)."""
        global _armed
        with _hook_lock:
            if _armed is self:
                _armed = None


def _resolve(host: str) -> list[str]:
    try:
        return [ipaddress.ip_address(host.strip("[]")).compressed]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


class RateLimiter:
    """A token bucket that never lets more than ``rate`` events per second through.

    The bucket holds at most ``burst`` tokens (default 1: strictly paced).
    Thread-safe; :meth:`acquire` sleeps until a token is available.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self, n: int = 1) -> float:
        """Take ``n`` tokens and return how long to wait before using them."""
        with self._lock:
            now = time.monotonic()
            self._refill(now)
            self._tokens -= n
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self, n: int = 1) -> None:
        """Block until ``n`` events may happen."""
        delay = self.reserve(n)
        if delay > 0:
            time.sleep(delay)


class Deadline:
    """A monotonic deadline for bounded loops."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        """Seconds left (never negative)."""
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return time.monotonic() >= self.end
