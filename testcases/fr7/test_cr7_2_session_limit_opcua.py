"""CR 7.2 over OPC UA: sessions beyond the declared limit are refused, and the sessions already
open keep working."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.safety import RateLimiter

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa
    from harness.protocols.opcua import UaSession

pytestmark = pytest.mark.requirement("CR 7.2")

#: Rounds when a session below the limit could not be opened (leftovers of an earlier check).
ATTEMPTS = 2


@dataclass
class Outcome:
    """One fill-and-exceed round."""

    #: True when the session past the limit was activated.
    extra_accepted: bool
    #: What happened to it (status and stage, or what it read).
    detail: str
    #: Held sessions that still answered a read after the extra one was judged.
    held_alive: int
    #: Why held sessions failed, if they did.
    held_errors: list[str]
    #: Set when the round proves nothing (a session below the limit failed).
    inconclusive: str = ""


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.no_session_limit")
@pytest.mark.disruptive(traffic="up to the declared session limit + 1 concurrent OPC UA sessions "
                                "(never more than {max_connections:g}), opened at most "
                                "{max_connection_rate:g} per second, each reading one node")
def test_opcua_limits_concurrent_sessions(opcua: OpcUa, evidence: Evidence) -> None:
    """The OPC UA server refuses a session past its declared limit and keeps serving the others.

    Requirement: CR 7.2 (resource management): the component limits the resources its
    security functions use, so they cannot be exhausted; sessions are an OPC UA server's
    resource and the profile declares the limit (``expectations.session_limit``). A limit that
    is enforced by dropping the sessions already open would take the operators' and the
    monitor's sessions down with it, so those must keep working.

    Where this differs from the issue: the issue names CR 2.7 (concurrent session control),
    which the catalog requires only from SL 3; the bundled lab claims SL 2, where CR 2.7 is
    NOT APPLICABLE. As for SSH (``test_cr7_2_session_limit_ssh``) the check serves CR 7.2, which
    applies from SL 1; with the lab's FR2 claim at 3 it could move to CR 2.7 unchanged.

    Procedure: open the declared number of sessions (read-only account, the profile's client
    certificate, keep-alives on), each reading the probe node; then one more. Then every held
    session reads the probe node again. Sessions are opened at most
    ``safety.max_connection_rate`` per second, and limit + 1 must fit ``safety.max_connections``
    (else ERROR: the profile's caps forbid the test). If a session below the limit is refused
    (sessions left by an earlier check), the round is retried once after the declared idle
    timeout. Everything is closed at the end.

    Pass: the session past the limit is refused (e.g. ``BadTooManySessions``) and every held
    session still answers. Fail: limit + 1 sessions were activated, or the held sessions
    stopped answering.
    """
    from harness.protocols.opcua import ProfileGap

    limit = opcua.expectations.session_limit
    if limit is None:
        raise ProfileGap("profile gap: the check needs expectations.session_limit")
    if limit + 1 > opcua.safety.max_connections:
        raise ProfileGap(f"profile gap: testing a limit of {limit} needs {limit + 1} "
                         f"connections; safety.max_connections is {opcua.safety.max_connections}")
    outcome = None
    for attempt in range(ATTEMPTS):
        outcome = _fill_and_exceed(opcua, evidence, limit)
        opcua.close_all()
        if not outcome.inconclusive:
            break
        evidence.note("round inconclusive", attempt=attempt + 1, why=outcome.inconclusive)
        time.sleep((opcua.expectations.idle_timeout_s or 2.0) + 1.0)
    assert outcome is not None
    if outcome.inconclusive:
        raise TargetError(f"could not hold {limit} sessions to test the limit: "
                          f"{outcome.inconclusive}")
    ok = not outcome.extra_accepted and outcome.held_alive == limit
    evidence.note("judgement", limit=limit, extra_accepted=outcome.extra_accepted,
                  extra=outcome.detail, held_alive=outcome.held_alive,
                  held_errors=outcome.held_errors, ok=ok)
    assert not outcome.extra_accepted, (
        f"{limit + 1} OPC UA sessions were activated at once (declared limit {limit}): "
        f"{outcome.detail}")
    assert outcome.held_alive == limit, (
        f"the session past the limit was refused ({outcome.detail}), but only "
        f"{outcome.held_alive} of the {limit} sessions already open still answered: "
        + "; ".join(outcome.held_errors))


def _fill_and_exceed(opcua: OpcUa, evidence: Evidence, limit: int) -> Outcome:
    node = opcua.probe_node()
    limiter = RateLimiter(opcua.safety.max_connection_rate)
    held: list[UaSession] = []
    for i in range(limit):
        limiter.acquire()
        try:
            session = opcua.connect("readonly", label=f"session {i + 1}")
            session.read_value(node)
        except TargetError as exc:
            return Outcome(False, "", len(held), [], inconclusive=f"session {i + 1}: {exc}")
        held.append(session)
    limiter.acquire()
    extra = opcua.attempt("readonly", keep=True, label=f"session {limit + 1} (past the limit)")
    if extra.session is not None:
        seen = extra.session.read(node)
        detail = f"activated; it read {node} = {seen.value!r} ({seen.status})"
    else:
        detail = f"refused with {extra.status or 'a closed connection'} at {extra.stage}"
    alive, errors = 0, []
    for i, session in enumerate(held):
        try:
            session.read_value(node)
        except TargetError as exc:
            errors.append(f"session {i + 1}: {exc}")
        else:
            alive += 1
    evidence.note("session past the limit", accepted=extra.accepted, detail=detail,
                  held_alive=alive, held_errors=errors)
    return Outcome(extra.accepted, detail, alive, errors)
