"""CR 2.8 over OPC UA: a refused login is reported as an audit event (where the server audits)."""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import TargetError
from harness.verdict import not_applicable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa
    from harness.protocols.opcua import UaEvent, UaEventSubscription

pytestmark = pytest.mark.requirement("CR 2.8")

#: Roles tried, in this order, for the subscribing session: the first one the profile declares.
#: Audit trails are often readable by administrators only (CR 6.1: authorised users).
SUBSCRIBER_ROLES = ("admin", "operator", "readonly")
#: Statuses with which a server says it offers no such event subscription at all: the check
#: is NOT APPLICABLE (any other refusal is an ERROR: the check could not decide).
UNSUPPORTED = frozenset({
    "BadServiceUnsupported", "BadNotSupported", "BadEventFilterInvalid",
    "BadContentFilterInvalid", "BadFilterNotAllowed", "BadMonitoredItemFilterUnsupported",
    "BadMonitoredItemFilterInvalid", "BadAttributeIdInvalid", "BadNodeIdUnknown",
})
#: Most rounds of waiting for events (each ends when events arrive or the wait is over).
MAX_ROUNDS = 64
#: Seconds spent taking events queued before the failed login (they cannot be about it).
DRAIN_S = 0.5


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.no_audit")
@pytest.mark.disruptive(traffic="on the lockout-test account only: one wrong password and up to "
                                "two logins with the right one; one audit-event subscription "
                                "(admin, else operator or readonly account) held for about twice "
                                "the request timeout")
def test_opcua_failed_login_is_audited(opcua: OpcUa, evidence: Evidence) -> None:
    """A server that says it audits reports a refused login as an audit event.

    Requirement: CR 2.8 (auditable events): the component generates audit records for
    security-relevant events, access control and failed logins among them. OPC UA servers
    report audit records as events of AuditEventType (Part 5, 6.4.2) on the Server object, and
    say whether they do in ``Server.Auditing`` (i=2994); a refused ActivateSession is reported
    as an AuditActivateSessionEventType event with ``Status`` False. This is also the
    programmatic way an authorised user reads the audit trail (CR 6.1 and its RE(1)); the
    harness's requirement marker takes one ID, so the verdict is reported under CR 2.8.

    Procedure: a session of the most privileged declared account (admin, else operator, else
    readonly) reads ``Server.Auditing``; False means the server generates no audit events: NOT
    APPLICABLE, and no wrong password is sent. Then the session subscribes to AuditEventType
    events on the Server object (``OfType AuditEventType``, or an EventType among the standard
    audit types, for servers whose OfType ignores subtypes); a refusal meaning "no such
    subscription" (``BadEventFilterInvalid``, ``BadServiceUnsupported``...) is NOT APPLICABLE,
    any other refusal an ERROR. Events already queued are taken and set aside. One
    ActivateSession follows on a second connection, with the lockout-test account (the one
    account whose failure counter the harness may move) and a random wrong password, and the
    check waits at most twice the profile's request timeout (at least 2 s) for an audit event,
    arrived after the attempt began, that is about it: ``Status`` False (or a Bad
    ``StatusCodeId``), and naming the user (``ClientUserId``, the identity token's user name,
    or the Message) or being an AuditActivateSessionEventType. The device's clock is not
    trusted: events are placed by when they arrived, their ``Time`` is only recorded. Finally
    the right password clears the failed attempt (waiting out a lockout if the threshold is
    one). Auditing, the subscription, the attempt and every event's fields are in the evidence.

    Pass: such an event arrived. Fail: ``Server.Auditing`` is True and none arrived although the
    subscription stayed alive (the server answered Publish, at least with keep-alives, after the
    attempt). ERROR: the subscriber cannot log in, the subscription died, the wrong password
    was accepted. NOT APPLICABLE: auditing off, or no audit-event subscription offered (or
    ``Server.Auditing`` unreadable and no audit event).
    """
    from harness.protocols.opcua import (
        EVENT_KEEPALIVE_MS,
        Identity,
        UaRefused,
        right_password_login,
    )

    role = next((r for r in SUBSCRIBER_ROLES if getattr(opcua.profile.accounts, r, None)), None)
    if role is None:
        from harness.protocols.opcua import ProfileGap

        raise ProfileGap("profile gap: the check needs an account to read audit events with "
                         "(accounts.admin, operator or readonly)")
    account = opcua.account("lockout_test")
    session = opcua.connect(role, label=f"audit subscriber ({role})")
    flag = session.read("i=2994")
    auditing = flag.value if flag.good and isinstance(flag.value, bool) else None
    evidence.note("Server.Auditing", node="i=2994", status=flag.status, value=flag.value,
                  subscriber=role)
    if auditing is False:
        evidence.note("judgement", auditing=False, ok=None)
        not_applicable("the server generates no audit events: Server.Auditing (i=2994) reads "
                       "False")
    try:
        sub = session.subscribe_audit_events()
    except UaRefused as exc:
        if exc.status not in UNSUPPORTED:
            raise
        evidence.note("judgement", auditing=auditing, subscription=exc.status, stage=exc.stage,
                      ok=None)
        not_applicable(f"the server offers no subscription to audit events: {exc.stage} on the "
                       f"Server object answered {exc.status} (Server.Auditing "
                       f"{_flag(auditing, flag.status)})")
    evidence.note("audit subscription", role=role, **sub.describe())
    earlier = sub.collect(DRAIN_S)

    wait_s = max(2 * opcua.safety.request_timeout_s, 2 * EVENT_KEEPALIVE_MS / 1000.0)
    wrong = Identity("username", account.username, f"harness-wrong-{secrets.token_hex(6)}",
                     label="lockout_test account, wrong password")
    started = time.monotonic()
    attempt = opcua.attempt(identity=wrong, label="wrong password (to be audited)")
    if attempt.accepted:
        raise TargetError(f"a wrong password was accepted for {account.describe()}: no failed "
                          "login to audit")
    match, later = _wait_for_audit(sub, account.username or "", started, wait_s)
    waited = round(time.monotonic() - started, 3)
    alive = sub.alive_since(started) and session.connected
    sub.close()
    session.close()  # before the next login: sessions count against the device's limit
    right_password_login(opcua, account, "clear the failed attempt")

    evidence.note("audit events", before_attempt=[e.to_json() for e in earlier],
                  after_attempt=[e.to_json() for e in later])
    evidence.note("judgement", auditing=auditing, subscriber=role,
                  attempt={"user": account.username, "accepted": attempt.accepted,
                           "stage": attempt.stage, "status": attempt.status},
                  matched=match.to_json() if match is not None else None,
                  events_after_attempt=len(later), waited_s=waited, wait_bound_s=wait_s,
                  subscription_alive=alive, status_changes=sub.status_changes,
                  ok=match is not None if auditing else None)
    if match is not None:
        return
    if auditing is None:
        not_applicable(f"Server.Auditing could not be read ({flag.status}) and no audit event "
                       f"came within {wait_s:g} s of a refused login: the server does not show "
                       "that it audits")
    if not alive:
        raise TargetError(f"the audit subscription stopped answering during the wait (status "
                          f"changes {sub.status_changes or 'none'}): that no event came proves "
                          "nothing")
    assert match is not None, (
        f"Server.Auditing is True, but no audit event reported the refused login of "
        f"{account.username!r} ({attempt.status} at {attempt.stage}) within {wait_s:g} s; "
        f"{_summary(later)}")


def _flag(auditing: bool | None, status: str) -> str:
    return f"unreadable ({status})" if auditing is None else str(auditing)


def _refers_to(event: UaEvent, username: str) -> bool:
    """True if ``event`` reports a refused login of ``username`` (arrival time is checked by the
    caller)."""
    refused = event.status is False or (
        event.status is None and str(event.fields.get("StatusCodeId") or "").startswith("Bad"))
    return refused and (event.mentions(username)
                        or event.event_type == "AuditActivateSessionEventType")


def _wait_for_audit(sub: UaEventSubscription, username: str, started: float, wait_s: float
                    ) -> tuple[UaEvent | None, list[UaEvent]]:
    """Wait (at most ``wait_s`` after ``started``) for an event about the refused login; return
    it (or None) and every event that arrived meanwhile."""
    deadline = started + wait_s
    later: list[UaEvent] = []
    for _ in range(MAX_ROUNDS):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        for event in sub.collect(remaining):
            later.append(event)
            if event.received >= started and _refers_to(event, username):
                return event, later
    return None, later


def _summary(events: list[UaEvent]) -> str:
    if not events:
        return "no audit event arrived at all"
    seen: list[dict[str, Any]] = [{"type": e.event_type, "Status": e.status,
                                   "ClientUserId": e.fields.get("ClientUserId")}
                                  for e in events[:5]]
    return f"{len(events)} other audit events arrived: {seen}"
