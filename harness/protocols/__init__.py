"""Guarded protocol clients: one module per protocol, imported only when used.

Checks never open sockets themselves: they get a client from a fixture. Every client asks the
safety guard before it connects, enforces timeouts, and records what it sent and saw as evidence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.profile import Profile


def target_url(profile: Profile, interface: str) -> str:
    """The interface as one URL (``modbus://host:502?unit=1``, ``serial:///dev/ttyUSB0``...).

    Used as the pytest id and in evidence, so a reader sees exactly which target was meant.
    """
    ifs = profile.interfaces
    if interface == "modbus_tcp" and ifs.modbus_tcp:
        i = ifs.modbus_tcp
        return f"modbus://{i.host}:{i.port}?unit={i.unit_id}"
    if interface == "modbus_tls" and ifs.modbus_tls:
        t = ifs.modbus_tls
        return f"modbus+tls://{t.host}:{t.port}?unit={t.unit_id}"
    if interface == "opcua" and ifs.opcua:
        return ifs.opcua.endpoint
    if interface == "ssh" and ifs.ssh:
        return f"ssh://{ifs.ssh.host}:{ifs.ssh.port}"
    if interface == "modbus_rtu" and ifs.modbus_rtu:
        r = ifs.modbus_rtu
        dev = r.device if "://" in r.device else f"serial://{r.device}"
        return f"{dev}?baud={r.baud}&parity={r.parity}&unit={r.unit_id}"
    if interface == "console" and ifs.console:
        c = ifs.console
        dev = c.device if "://" in c.device else f"serial://{c.device}"
        return f"{dev}?baud={c.baud}"
    raise KeyError(f"no {interface} interface in the profile")
