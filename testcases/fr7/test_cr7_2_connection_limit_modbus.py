"""CR 7.2 over Modbus/TCP: the device caps its connections and keeps serving the ones it has."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.protocols.modbus import ConnectFailed
from harness.safety import Deadline, RateLimiter
from harness.verdict import fail

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.modbus import ModbusChannels
    from harness.profile import Profile
    from harness.protocols.modbus import ModbusTcpClient

pytestmark = pytest.mark.requirement("CR 7.2")

#: Extra connections opened after the first refusal, to see the refusal is not a fluke.
CONFIRM_REFUSALS = 1


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.no_connection_limit")
@pytest.mark.disruptive(traffic="at most {max_connections:g} concurrent Modbus/TCP connections, "
                                "opened at most {max_connection_rate:g} per second, each with one "
                                "read")
def test_modbus_tcp_limits_connections(
        modbus: ModbusTcpClient, modbus_channels: ModbusChannels, device_profile: Profile,
        evidence: Evidence) -> None:
    """The device refuses connections beyond its own limit and keeps serving the open ones.

    Requirement: CR 7.2 (resource management), as in the issue: connections are a resource;
    a device with no limit can be exhausted by anyone who can reach its port, and a limit that
    starves existing sessions is no better.

    Procedure: the ``modbus`` connection is the monitor; a health read on it must succeed.
    Then open new connections one by one, at most ``safety.max_connection_rate`` per second,
    up to ``safety.max_connections`` in total (the monitor included), each followed by one read
    of the heartbeat register: a connection is *served* when that read is answered, *refused*
    when the connect fails or the device closes it, answers nothing, or answers with an
    exception. After each one the monitor must still answer. One more connection is opened after
    the first refusal, then all are closed, and a fresh connection must be served again.

    Pass: a connection is refused before the cap, the monitor is answered throughout, and the
    device serves a new connection once the others are gone. No refusal up to the cap FAILS
    ("no connection limit observed"); a monitor that stops being answered FAILS.
    """
    safety = device_profile.safety
    first = modbus.health_read()
    if not first.ok:
        raise TargetError(f"the monitor connection is not served: {first.detail}")
    limiter = RateLimiter(safety.max_connection_rate)
    deadline = Deadline(safety.max_connections * (safety.connect_timeout_s
                                                  + safety.request_timeout_s + 1.0))
    opened: list[ModbusTcpClient] = []
    served = 0
    refused: list[str] = []
    monitor_lost: str | None = None
    try:
        for n in range(2, safety.max_connections + 1):  # the monitor is connection 1
            if deadline.expired or len(refused) > CONFIRM_REFUSALS:
                break
            limiter.acquire()
            try:
                client = modbus_channels.connect_tcp()
            except ConnectFailed as exc:
                refused.append(f"connection {n}: connect failed ({exc})")
                continue
            opened.append(client)
            health = client.health_read()
            if health.ok:
                served += 1
            else:
                refused.append(f"connection {n}: {health.detail}")
            monitor = modbus.health_read()
            if not monitor.ok:
                monitor_lost = f"with {n} connections open: {monitor.detail}"
                break
    finally:
        for client in opened:
            modbus_channels.release(client)
    evidence.note("judgement", served_new=served, refused=refused, monitor_lost=monitor_lost,
                  cap=safety.max_connections)
    if monitor_lost:
        fail(f"the monitor connection stopped being served {monitor_lost}")
    if not refused:
        fail(f"no connection limit observed: all {served + 1} connections up to the cap "
             f"(safety.max_connections = {safety.max_connections}) were served")
    after = modbus_channels.probe_tcp()
    evidence.note("recovery", ok=after.ok, detail=after.detail)
    if not after.ok:
        fail(f"after the extra connections were closed, a new connection is not served: "
             f"{after.detail}")
