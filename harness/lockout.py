"""The CR 1.11 lockout procedure, independent of the protocol it logs in over.

Shared by the SSH, OPC UA and serial-console checks of CR 1.11 (unsuccessful login attempts).
A check hands :func:`run_lockout` one callable that makes one whole login attempt over its
protocol (``try_login(password, label) -> LoginOutcome``), the profile's lockout policy
(``expectations.lockout``), the dedicated lockout-test account's name and password, its
evidence log and a :class:`~harness.safety.Deadline`; it gets back a :class:`LockoutResult`
saying what was observed, and turns that into PASS or FAIL itself.

The procedure, on the lockout-test account only:

1. a control login with the right password; if it is refused (the account may still be locked
   from an earlier run) the declared duration is waited out once and the control tried again,
   and a second refusal is an ERROR (the lockout cannot be tested);
2. ``threshold`` logins with wrong passwords (a wrong password that is accepted is an ERROR:
   the device does not check passwords, or the profile is wrong);
3. one login with the right password, the probe: refused means **locked**; accepted after at
   least ``max(DELAY_MIN_S, DELAY_FACTOR x the control's answer time)`` means **delayed**;
   accepted sooner means **accepted at once** (no lockout, no delay: the check fails);
4. when locked, the declared duration is waited out (plus a margin, then once more for half
   of it) and the right password must work again, so later checks find the account usable; a
   duration of 0 means "until an administrator unlocks it" and is not waited for. Still locked
   after that is an ERROR: the device did not do what its profile says.

A login that answers :attr:`Answer.ERROR`, or raises, makes the check an ERROR. Every sleep is
cut to what is left of the deadline, and no wrong password is sent once it has passed. The
attempts (labels, answers, timings; never a password) and the judgement go into the evidence.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.profile import LockoutPolicy, Safety
    from harness.safety import Deadline

#: A login after the threshold that takes at least this long counts as delayed, not accepted.
DELAY_MIN_S = 2.0
#: ... and at least this many times the control login's answer time.
DELAY_FACTOR = 10.0
#: Request rounds one login may take at most (a session set-up or a key exchange), for the
#: time budget.
ROUNDS_PER_LOGIN = 4
#: Logins besides the wrong ones: two controls, the probe, two after the lockout.
EXTRA_LOGINS = 5
#: What the procedure sends at most, for a check's ``disruptive`` marker.
TRAFFIC = ("on the lockout-test account only: the declared threshold of wrong passwords, one "
           "right one, and up to three logins after waiting out the declared lockout duration")


class Answer(StrEnum):
    """What the device answered to one login attempt."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    #: No answer that says accepted or refused (the protocol's own failure, not a refusal).
    ERROR = "error"


class Observed(StrEnum):
    """What the right password met after the threshold."""

    LOCKED = "locked"
    DELAYED = "delayed"
    ACCEPTED = "accepted at once"


@dataclass(frozen=True)
class LoginOutcome:
    """The outcome of one login attempt over some protocol."""

    answer: Answer
    #: Seconds from sending the credentials to the answer.
    elapsed_s: float = 0.0
    #: Why it was refused or failed (empty when accepted or when the device says nothing).
    detail: str = ""
    #: Protocol facts for the judgement note (e.g. an OPC UA status and stage).
    facts: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, accepted: bool, elapsed_s: float, detail: str = "", **facts: Any
           ) -> LoginOutcome:
        """An accepted or refused outcome.

        :param accepted: the device let the account in.
        :param elapsed_s: the answer time.
        :param detail: why it was refused.
        :param facts: protocol facts for the judgement note.
        """
        return cls(Answer.ACCEPTED if accepted else Answer.REFUSED, elapsed_s, detail, facts)

    @property
    def accepted(self) -> bool:
        """True when the device let the account in."""
        return self.answer is Answer.ACCEPTED


class TryLogin(Protocol):
    """One whole login attempt on the lockout-test account over one protocol."""

    def __call__(self, password: str, label: str, /) -> LoginOutcome:
        """Log in with ``password`` (``label`` names the attempt in the evidence)."""
        ...


@dataclass(frozen=True)
class LockoutResult:
    """What :func:`run_lockout` observed."""

    observed: Observed
    #: The declared threshold (wrong passwords sent).
    threshold: int
    #: The control login with the right password before the wrong ones.
    control: LoginOutcome
    #: The right password after the threshold.
    probe: LoginOutcome
    #: The answer time from which an accepted probe counts as delayed.
    delay_bound_s: float
    #: Seconds from the end of the probe until the right password worked again (None: not
    #: locked, or locked until an administrator unlocks it).
    usable_again_after_s: float | None
    #: Every attempt in order: (label, outcome).
    attempts: tuple[tuple[str, LoginOutcome], ...]

    @property
    def ok(self) -> bool:
        """True when the account was locked or the login delayed (the requirement is met)."""
        return self.observed is not Observed.ACCEPTED


def margin(duration_s: float) -> float:
    """What is waited beyond a declared lockout duration."""
    return max(0.5, 0.1 * duration_s)


def budget_s(policy: LockoutPolicy, safety: Safety) -> float:
    """The time the whole procedure may take: every wait plus every login at its timeouts.

    :param policy: the profile's ``expectations.lockout``.
    :param safety: the profile's caps (connect and request timeouts, connection rate).
    """
    duration = policy.duration_s
    waits = 2 * (duration + margin(duration)) + max(1.0, duration / 2)
    login_s = (safety.connect_timeout_s + ROUNDS_PER_LOGIN * safety.request_timeout_s
               + 1 / safety.max_connection_rate)
    return waits + (policy.threshold + EXTRA_LOGINS) * login_s


def run_lockout(try_login: TryLogin, policy: LockoutPolicy, *, who: str, password: str,
                evidence: Evidence, deadline: Deadline,
                sleep: Callable[[float], None] = time.sleep) -> LockoutResult:
    """Run the procedure of this module's docstring and judge what the device did.

    :param try_login: one login attempt over the check's protocol.
    :param policy: the profile's ``expectations.lockout``.
    :param who: the lockout-test account as the evidence names it (never its password).
    :param password: the account's right password.
    :param evidence: the check's evidence log (attempts and judgement are noted there).
    :param deadline: bounds every wait; no wrong password is sent after it has passed.
    :param sleep: how to wait (tests pass a fake).
    :raises TargetError: the control login was refused twice, a wrong password was accepted,
        a login failed, the time budget ran out, or the account stayed locked.
    """
    attempts: list[tuple[str, LoginOutcome]] = []

    def attempt(secret: str, label: str) -> LoginOutcome:
        outcome = try_login(secret, label)
        attempts.append((label, outcome))
        if outcome.answer is Answer.ERROR:
            raise TargetError(f"login attempt '{label}' as {who} failed"
                              + (f": {outcome.detail}" if outcome.detail else ""))
        return outcome

    control = attempt(password, "control")
    if not control.accepted:
        sleep(min(policy.duration_s + margin(policy.duration_s), deadline.remaining()))
        control = attempt(password, "control (after waiting out a lockout)")
        if not control.accepted:
            raise TargetError(f"control login as {who} refused"
                              + (f" ({control.detail})" if control.detail else "")
                              + ": cannot test the lockout")
    for i in range(policy.threshold):
        if deadline.expired:
            raise TargetError(f"the lockout check's {deadline.seconds:g} s budget ran out after "
                              f"{i} of {policy.threshold} wrong passwords for {who}")
        if attempt(f"harness-wrong-{secrets.token_hex(6)}", f"wrong password {i + 1}").accepted:
            raise TargetError(f"a wrong password was accepted for {who}")
    probe = attempt(password, "right password after the threshold")
    bound = max(DELAY_MIN_S, DELAY_FACTOR * control.elapsed_s)
    if not probe.accepted:
        observed = Observed.LOCKED
    elif probe.elapsed_s >= bound:
        observed = Observed.DELAYED
    else:
        observed = Observed.ACCEPTED
    recovery = None
    if observed is Observed.LOCKED:
        recovery = _wait_out(attempt, password, who=who, policy=policy, evidence=evidence,
                             deadline=deadline, sleep=sleep)
    result = LockoutResult(observed, policy.threshold, control, probe, bound, recovery,
                           tuple(attempts))
    evidence.note("judgement", threshold=policy.threshold, duration_s=policy.duration_s,
                  locked=observed is Observed.LOCKED, delayed=observed is Observed.DELAYED,
                  **probe.facts, answer_s=probe.elapsed_s, control_answer_s=control.elapsed_s,
                  delay_bound_s=bound, usable_again_after_s=recovery, ok=result.ok,
                  attempts=[{"label": label, "answer": str(o.answer), "elapsed_s": o.elapsed_s}
                            for label, o in attempts])
    return result


def _wait_out(attempt: Callable[[str, str], LoginOutcome], password: str, *, who: str,
              policy: LockoutPolicy, evidence: Evidence, deadline: Deadline,
              sleep: Callable[[float], None]) -> float | None:
    """Wait out the lockout; return when the account worked again (None: not waited)."""
    duration = policy.duration_s
    if duration <= 0:
        evidence.note("lockout until an administrator unlocks it (duration 0): not waited out")
        return None
    started = time.monotonic()
    for wait in (duration + margin(duration), max(1.0, duration / 2)):
        sleep(min(wait, deadline.remaining()))
        if attempt(password, "after the lockout").accepted:
            return round(time.monotonic() - started, 2)
        if deadline.expired:
            break
    budget = (f"; the check's {deadline.seconds:g} s budget ran out" if deadline.expired
              else "")
    raise TargetError(f"{who} was still locked {time.monotonic() - started:.1f} s after the "
                      f"threshold (declared lockout {duration:g} s{budget}): later checks would "
                      "fail")
