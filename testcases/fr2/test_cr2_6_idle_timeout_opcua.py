"""CR 2.6 over OPC UA: an idle session is closed after the declared timeout."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa

pytestmark = pytest.mark.requirement("CR 2.6")

#: Seconds beyond the declared timeout the device may take: at least this...
MIN_GRACE_S = 2.0
#: ... or this fraction of the declared timeout (servers check idleness periodically).
GRACE_FRACTION = 0.25
#: Status names that say "this session is gone".
SESSION_GONE = frozenset({
    "BadSessionNotActivated", "BadSessionIdInvalid", "BadSessionClosed",
    "BadSecureChannelIdInvalid", "BadSecureChannelClosed", "BadConnectionClosed",
})


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.no_session_timeout")
def test_opcua_closes_idle_sessions(opcua: OpcUa, evidence: Evidence) -> None:
    """An OPC UA session left idle is closed by the server within its declared idle timeout.

    Requirement: CR 2.6 (remote session termination): the component terminates a remote
    session after a configurable period of inactivity, the profile's
    ``expectations.idle_timeout_s``.

    Procedure: open a session as the read-only account with the client's keep-alive switched
    off (asyncua otherwise reads the server state every second), read the probe node once, then
    send nothing for the declared timeout plus a grace of max(2 s, 25 %), and read again. The
    session timeout the server granted in CreateSession (RevisedSessionTimeout) is in the
    evidence.

    Pass: the read after the idle period is refused because the session is gone
    (``BadSessionNotActivated``, ``BadSessionIdInvalid``, ``BadSessionClosed``, a closed secure
    channel, or the device closed the connection). Fail: it answered Good. Any other answer is an
    ERROR.
    """
    from harness.protocols.opcua import NO_WATCHDOG, ProfileGap, UaRefused

    timeout = opcua.expectations.idle_timeout_s
    if timeout is None:
        raise ProfileGap("profile gap: the check needs expectations.idle_timeout_s")
    node = opcua.probe_node()
    session = opcua.connect("readonly", watchdog_s=NO_WATCHDOG, label="idle session")
    session.read_value(node)
    grace = max(MIN_GRACE_S, GRACE_FRACTION * timeout)
    started = time.monotonic()
    time.sleep(timeout + grace)
    idle_for = round(time.monotonic() - started, 2)
    try:
        result = session.read(node)
    except UaRefused as exc:
        if exc.status is not None and exc.status not in SESSION_GONE:
            raise TargetError(f"after {idle_for} s idle the read answered {exc.status}, which "
                              "does not say whether the session was closed") from exc
        evidence.note("judgement", declared_timeout_s=timeout, idle_for_s=idle_for,
                      revised_session_timeout_ms=session.revised_timeout_ms,
                      answer=exc.status or "connection closed", ended=True, ok=True)
        return
    evidence.note("judgement", declared_timeout_s=timeout, idle_for_s=idle_for,
                  revised_session_timeout_ms=session.revised_timeout_ms,
                  answer=result.status, value=result.value, ended=False, ok=False)
    assert not result.good, (
        f"the OPC UA session still answered after {idle_for} s without requests (declared idle "
        f"timeout {timeout:g} s, grace {grace:g} s; the server granted a session timeout of "
        f"{session.revised_timeout_ms:g} ms)")
    raise TargetError(f"after {idle_for} s idle the read answered {result.status}")
