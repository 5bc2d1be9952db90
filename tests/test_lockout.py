"""The CR 1.11 lockout procedure against fake devices (no network): locked, delayed, never
locked, login errors, leftover lockouts, and the deadline that bounds the waits."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from harness.errors import TargetError
from harness.evidence import Evidence
from harness.lockout import (
    DELAY_MIN_S,
    Answer,
    LoginOutcome,
    Observed,
    budget_s,
    margin,
    run_lockout,
)
from harness.profile import LockoutPolicy, Safety
from harness.safety import Deadline

pytestmark = pytest.mark.timeout(30)

RIGHT = "s3cret-right"
WHO = "lockout_test ('locktest')"


@dataclass
class FakeDevice:
    """Counts failed logins like a device; the lockout ends when the fake clock passes it."""

    threshold: int = 3
    duration_s: float = 1.0
    #: False: never locks (the weakness).
    locks: bool = True
    #: Answer time of a right password after the threshold instead of locking (0: no delay).
    delay_s: float = 0.0
    #: Refuse the right password while the fake clock is below this (a leftover lockout).
    locked_until: float = 0.0
    #: How long it really locks (None: the declared duration).
    real_lock_s: float | None = None
    #: Stays locked whatever the clock says.
    stuck: bool = False
    #: Accept every password.
    accepts_anything: bool = False
    #: Answer ERROR to the attempt with this label.
    error_on: str | None = None
    failures: int = 0
    clock: float = 0.0
    waits: list[float] = field(default_factory=list)
    tried: list[tuple[str, str]] = field(default_factory=list)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock += seconds

    def login(self, password: str, label: str) -> LoginOutcome:
        self.tried.append((password, label))
        if label == self.error_on:
            return LoginOutcome(Answer.ERROR, detail="connection reset")
        if self.stuck or self.clock < self.locked_until:
            return LoginOutcome.of(False, 0.01, "locked")
        if self.accepts_anything:
            return LoginOutcome.of(True, 0.01)
        if password != RIGHT:
            self.failures += 1
            if self.locks and not self.delay_s and self.failures >= self.threshold:
                real = self.duration_s if self.real_lock_s is None else self.real_lock_s
                self.locked_until = self.clock + real
            return LoginOutcome.of(False, 0.01, "wrong password")
        delayed = self.delay_s if self.failures >= self.threshold else 0.0
        self.failures = 0
        return LoginOutcome.of(True, delayed or 0.01, status="Good")


def run(device: FakeDevice, *, evidence: Evidence | None = None, deadline_s: float = 60.0,
        threshold: int | None = None) -> Any:
    policy = LockoutPolicy(threshold=threshold or device.threshold,
                           duration_s=device.duration_s)
    return run_lockout(device.login, policy, who=WHO, password=RIGHT,
                       evidence=evidence or Evidence("t::lockout"),
                       deadline=Deadline(deadline_s), sleep=device.sleep)


def judgement(evidence: Evidence) -> dict[str, Any]:
    (note,) = [e for e in evidence.entries if e["summary"] == "judgement"]
    data: dict[str, Any] = note["data"]
    return data


def test_threshold_reached_locks_then_usable_again() -> None:
    device = FakeDevice(threshold=3, duration_s=1.0)
    evidence = Evidence("t::locked")
    result = run(device, evidence=evidence)
    assert result.observed is Observed.LOCKED and result.ok
    assert [label for _, label in device.tried] == [
        "control", "wrong password 1", "wrong password 2", "wrong password 3",
        "right password after the threshold", "after the lockout"]
    wrong = [pw for pw, label in device.tried if label.startswith("wrong")]
    assert all(pw.startswith("harness-wrong-") for pw in wrong) and len(set(wrong)) == 3
    assert device.waits == [1.0 + margin(1.0)]
    assert result.usable_again_after_s is not None
    data = judgement(evidence)
    assert data["locked"] is True and data["delayed"] is False and data["ok"] is True
    assert data["threshold"] == 3 and data["delay_bound_s"] == DELAY_MIN_S
    assert [a["answer"] for a in data["attempts"]] == [
        "accepted", "refused", "refused", "refused", "refused", "accepted"]
    assert RIGHT not in json.dumps(evidence.entries)


def test_never_locks_is_accepted_at_once() -> None:
    device = FakeDevice(threshold=2, locks=False)
    evidence = Evidence("t::weak")
    result = run(device, evidence=evidence)
    assert result.observed is Observed.ACCEPTED and not result.ok
    assert device.waits == [] and result.usable_again_after_s is None
    assert judgement(evidence)["ok"] is False
    assert judgement(evidence)["status"] == "Good"  # the probe's protocol facts are noted


@pytest.mark.parametrize(("delay_s", "observed"), [(DELAY_MIN_S + 1, Observed.DELAYED),
                                                   (DELAY_MIN_S / 2, Observed.ACCEPTED)])
def test_delay_counts_only_from_the_bound(delay_s: float, observed: Observed) -> None:
    device = FakeDevice(threshold=2, delay_s=delay_s)
    result = run(device)
    assert result.observed is observed and result.probe.elapsed_s == delay_s
    assert device.waits == []  # a delay is not a lockout: nothing to wait out


def test_login_error_is_target_error() -> None:
    device = FakeDevice(error_on="wrong password 2")
    with pytest.raises(TargetError, match=r"'wrong password 2' as .* failed: connection reset"):
        run(device)
    assert len(device.tried) == 3  # nothing after the failed attempt


def test_exception_from_login_propagates() -> None:
    def broken(password: str, label: str) -> LoginOutcome:
        raise TargetError(f"{label}: connect timed out")

    with pytest.raises(TargetError, match="control: connect timed out"):
        run_lockout(broken, LockoutPolicy(threshold=2, duration_s=1), who=WHO, password=RIGHT,
                    evidence=Evidence("t::x"), deadline=Deadline(5))


def test_wrong_password_accepted_is_target_error() -> None:
    with pytest.raises(TargetError, match="a wrong password was accepted for lockout_test"):
        run(FakeDevice(accepts_anything=True))


def test_leftover_lockout_is_waited_out_once() -> None:
    device = FakeDevice(threshold=2, duration_s=2.0, locked_until=1.0)
    result = run(device)
    assert result.observed is Observed.LOCKED
    assert device.tried[1][1] == "control (after waiting out a lockout)"
    assert device.waits[0] == 2.0 + margin(2.0)


def test_control_refused_twice_is_target_error() -> None:
    device = FakeDevice(stuck=True)
    with pytest.raises(TargetError, match=r"control login as .* refused \(locked\): cannot"):
        run(device)
    assert len(device.tried) == 2


def test_lockout_until_an_administrator_is_not_waited() -> None:
    device = FakeDevice(threshold=2, duration_s=0, real_lock_s=float("inf"))
    evidence = Evidence("t::admin")
    result = run(device, evidence=evidence)
    assert result.observed is Observed.LOCKED and result.usable_again_after_s is None
    assert device.waits == []
    assert any("not waited out" in e["summary"] for e in evidence.entries)


def test_still_locked_after_the_declared_duration_is_target_error() -> None:
    device = FakeDevice(threshold=2, duration_s=1.0, real_lock_s=float("inf"))
    with pytest.raises(TargetError, match=r"still locked .* \(declared lockout 1 s\)"):
        run(device)
    assert device.waits == [1.0 + margin(1.0), 1.0]
    assert [label for _, label in device.tried].count("after the lockout") == 2


def test_wait_out_respects_the_deadline() -> None:
    """A declared hour of lockout is not waited past the check's deadline."""
    device = FakeDevice(threshold=2, duration_s=3600)
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # really waits, so the deadline really passes
        waits.append(seconds)
        time.sleep(seconds)

    deadline = Deadline(0.3)
    with pytest.raises(TargetError, match="budget ran out"):
        run_lockout(device.login, LockoutPolicy(threshold=2, duration_s=3600), who=WHO,
                    password=RIGHT, evidence=Evidence("t::deadline"), deadline=deadline,
                    sleep=sleep)
    assert waits and sum(waits) <= deadline.seconds
    assert [label for _, label in device.tried].count("after the lockout") == 1


def test_no_wrong_password_after_the_deadline() -> None:
    device = FakeDevice(threshold=3)
    with pytest.raises(TargetError, match="budget ran out after 0 of 3 wrong passwords"):
        run(device, deadline_s=0)
    assert [label for _, label in device.tried] == ["control"]


def test_budget_covers_every_wait_and_login() -> None:
    policy = LockoutPolicy(threshold=5, duration_s=30)
    safety = Safety()
    waits = 2 * (30 + margin(30)) + 15
    assert budget_s(policy, safety) > waits + (5 + 5) * safety.connect_timeout_s
    assert budget_s(LockoutPolicy(threshold=6, duration_s=30), safety) > budget_s(policy, safety)
