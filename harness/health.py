"""The device health probe behind the run's circuit breaker.

When a check ends in ERROR, the plugin probes the device: a guarded TCP connect to every
declared network interface (and an open of every declared serial device). If nothing answers,
the breaker opens: later checks that need the device are ERROR at once ("device unavailable")
instead of each waiting out its own timeouts. Before each later check the probe runs again with a
short timeout, so a device that comes back closes the breaker.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from harness.errors import SafetyViolation
from harness.profile import Profile
from harness.safety import Deadline, Guard


@dataclass(frozen=True)
class ProbeResult:
    """Whether the device answered, and what each endpoint said."""

    alive: bool
    details: tuple[str, ...]

    def describe(self) -> str:
        """One line for a reason text."""
        return "; ".join(self.details) or "no endpoint to probe"


def endpoints(profile: Profile) -> list[tuple[str, int]]:
    """The (host, port) pairs of the profile's network interfaces."""
    ifs = profile.interfaces
    out: list[tuple[str, int]] = []
    for iface in (ifs.modbus_tcp, ifs.modbus_tls, ifs.ssh):
        if iface is not None:
            out.append((iface.host, iface.port))
    if ifs.opcua is not None:
        out.append((ifs.opcua.host, ifs.opcua.port))
    return out


def _modbus_read(sock: socket.socket, unit: int, timeout_s: float) -> None:
    """One FC 3 read of register 0 within ``timeout_s`` in all (a device that drips one byte
    at a time cannot stretch it); raises OSError when no well-formed reply comes back."""
    from harness.protocols.mbap import MBAP_SIZE, FrameError, adu, read_pdu, split_adus

    deadline = Deadline(timeout_s)
    sock.sendall(adu(0x4842, unit, read_pdu(3, 0, 1)))
    buf = bytearray()
    while True:
        if deadline.expired:
            raise TimeoutError("no complete Modbus reply in time")
        sock.settimeout(max(0.01, deadline.remaining()))
        chunk = sock.recv(260 - len(buf))
        if not chunk:
            raise OSError("connection closed without a Modbus reply")
        buf += chunk
        try:
            if split_adus(buf):
                return
        except FrameError as exc:
            raise OSError(f"malformed Modbus reply: {exc}") from None
        if len(buf) >= 260 + MBAP_SIZE:
            raise OSError("oversized Modbus reply")


def probe(profile: Profile, guard: Guard, timeout_s: float) -> ProbeResult:
    """Probe every endpoint once; alive when at least one answers (or there is none).

    A plain Modbus/TCP endpoint must answer a read, not just accept the connection: a device
    whose Modbus server hangs usually keeps its listening socket open.
    """
    details: list[str] = []
    answered = 0
    eps = endpoints(profile)
    modbus = profile.interfaces.modbus_tcp
    for host, port in eps:
        try:
            addr = guard.check_destination(host, port)
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout_s)
                sock.connect((addr, port))
                if modbus is not None and (host, port) == (modbus.host, modbus.port):
                    _modbus_read(sock, modbus.unit_id, timeout_s)
            answered += 1
            details.append(f"tcp {host}:{port} answered")
        except SafetyViolation:
            raise
        except OSError as exc:
            details.append(f"tcp {host}:{port} {exc.strerror or type(exc).__name__}")
    serial = [i.device for i in (profile.interfaces.modbus_rtu, profile.interfaces.console) if i]
    for device in serial:
        if "://" in device:
            continue  # a pyserial URL cannot be probed without speaking to it
        if os.path.exists(device):
            answered += 1
            details.append(f"serial {device} present")
        else:
            details.append(f"serial {device} missing")
    probed = len(eps) + sum(1 for d in serial if "://" not in d)
    return ProbeResult(alive=answered > 0 or probed == 0, details=tuple(details))
