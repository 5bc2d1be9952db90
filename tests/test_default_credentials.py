"""Default-credential planning: declared user names only, batches under the lockout threshold."""

from __future__ import annotations

import pytest

from harness import default_credentials as d

pytestmark = pytest.mark.timeout(30)


def test_plan_tries_only_declared_users_in_source_order() -> None:
    todo = d.plan(["admin", "viewer"], vendor=[("admin", "vendor-pw"), ("root", "x")],
                  builtin=[("admin", "admin"), ("admin", "vendor-pw"), ("root", "root")])
    assert [(c.password, c.source) for c in todo.per_user["admin"]] == [
        ("vendor-pw", "profile"), ("admin", "built-in")]  # deduplicated, vendor first
    assert [(c.password, c.source) for c in todo.per_user["viewer"]] == [
        ("viewer", "user name")]
    assert todo.undeclared == ["root"]
    assert todo.undeclared_vendor == ["root"]
    assert "vendor-pw" not in todo.per_user["admin"][0].describe()
    assert todo.per_user["admin"][1].describe() == "admin/admin (built-in)"


def test_builtin_list_is_bounded_and_unique() -> None:
    assert 0 < len(d.BUILTIN) <= 30
    assert len(set(d.BUILTIN)) == len(d.BUILTIN)


@pytest.mark.parametrize(("threshold", "size"), [(None, 1), (1, 1), (2, 1), (3, 2), (10, 9)])
def test_batch_size_stays_under_the_threshold(threshold: int | None, size: int) -> None:
    assert d.batch_size(threshold) == size


def test_batches() -> None:
    cands = [d.Candidate("u", str(i), "built-in") for i in range(5)]
    assert [len(b) for b in d.batches(cands, 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="size must be >= 1"):
        d.batches(cands, 0)


class FakeDevice:
    """Counts failures per user like a device with a lockout; records every call."""

    def __init__(self, threshold: int, accepts: set[tuple[str, str]]) -> None:
        self.threshold = threshold
        self.accepts = accepts
        self.failures: dict[str, int] = {}
        self.locked: set[str] = set()
        self.log: list[str] = []

    def attempt(self, cand: d.Candidate) -> bool:
        self.log.append(f"try {cand.username}/{cand.password}")
        if (cand.username, cand.password) in self.accepts and cand.username not in self.locked:
            self.failures[cand.username] = 0
            return True
        self.failures[cand.username] = self.failures.get(cand.username, 0) + 1
        if self.failures[cand.username] >= self.threshold:
            self.locked.add(cand.username)
        return False

    def reset(self, user: str, first: bool) -> None:
        self.log.append(f"reset {user}{' first' if first else ''}")
        assert user not in self.locked, f"{user} got locked"
        self.failures[user] = 0


def test_run_never_reaches_the_threshold_and_resets_between_batches() -> None:
    device = FakeDevice(threshold=3, accepts=set())
    todo = d.plan(["admin"], builtin=[("admin", p) for p in "abcde"])
    out = d.run(todo, size=d.batch_size(3), can_reset=lambda u: True, attempt=device.attempt,
                reset=device.reset)
    assert out.accepted == [] and out.not_tried == [] and out.attempts == 6
    assert not device.locked
    assert device.log == ["reset admin first", "try admin/a", "try admin/b", "reset admin",
                          "try admin/c", "try admin/d", "reset admin", "try admin/e",
                          "try admin/admin", "reset admin"]


def test_run_stops_at_a_hit_and_skips_what_it_cannot_reset() -> None:
    device = FakeDevice(threshold=3, accepts={("admin", "b")})
    todo = d.plan(["admin", "keyonly"], builtin=[("admin", "a"), ("admin", "b"),
                                                 ("admin", "c"), ("keyonly", "1"),
                                                 ("keyonly", "2"), ("keyonly", "3")])
    out = d.run(todo, size=2, can_reset=lambda u: u == "admin", attempt=device.attempt,
                reset=device.reset)
    assert [c.describe() for c in out.accepted] == ["admin/b (built-in)"]
    assert [c.password for c in out.not_tried] == ["3", "keyonly"]
    assert "try admin/c" not in device.log
    assert not device.locked
