"""Default credentials to try, and how to try them without locking anyone out.

Shared by the SSH and serial-console CR 1.5 checks. Three sources, tried in this order per user
name:

1. the profile's vendor defaults (``expectations.default_credentials``);
2. :data:`BUILTIN`, a bounded list of factory defaults common on OT devices (PLCs, switches,
   gateways, HMIs);
3. the user name as its own password.

**Only user names the profile declares are tried** (the issue's rule). A built-in pair whose
user name is not declared (``root``, ``guest``, ``service``...) is not sent to the device: on a
bench, an undeclared account may be a real one that a lockout would take away from the
operators. Those names are listed in the evidence as *not tried*, so the engineer sees the gap
and can declare the account if it exists.

**Lockout rules.** With a declared lockout threshold ``T``, at most ``T - 1`` wrong passwords
are sent for one user name in a row; then the account's real password is used once (a good
login clears the failure count on the devices we know, and the simulators), and the next batch
follows. Without a declared policy the batch is one attempt. Without a real password for the
account, only the first batch is sent and the rest is listed as not tried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: Factory defaults (user, password) seen on OT devices. Bounded on purpose; extend the
#: profile's ``expectations.default_credentials`` for a specific vendor instead.
BUILTIN: tuple[tuple[str, str], ...] = (
    ("admin", "admin"),
    ("admin", "password"),
    ("admin", "1234"),
    ("admin", "12345"),
    ("admin", "private"),
    ("admin", "moxa"),
    ("admin", ""),
    ("root", "root"),
    ("root", "admin"),
    ("root", "toor"),
    ("root", ""),
    ("user", "user"),
    ("user", "public"),
    ("USER", "USER"),
    ("operator", "operator"),
    ("guest", "guest"),
    ("service", "service"),
    ("maintenance", "maintenance"),
    ("engineer", "engineer"),
    ("supervisor", "supervisor"),
    ("plc", "plc"),
    ("default", "default"),
)


@dataclass(frozen=True)
class Candidate:
    """One user name and password to try."""

    username: str
    password: str
    #: ``profile``, ``built-in`` or ``user name``.
    source: str

    def describe(self, show_password: bool = True) -> str:
        """``user/password (source)``; profile passwords are never shown."""
        shown = self.password if show_password and self.source != "profile" else "<vendor default>"
        return f"{self.username}/{shown or '<empty>'} ({self.source})"


@dataclass(frozen=True)
class Plan:
    """What will be tried, per declared user name, and what will not."""

    #: Declared user name -> candidates in order.
    per_user: dict[str, list[Candidate]]
    #: Built-in user names that are not declared, so not tried.
    undeclared: list[str]
    #: Vendor defaults naming an undeclared user (not tried).
    undeclared_vendor: list[str]


def plan(declared: Sequence[str], vendor: Iterable[tuple[str, str]] = (),
         builtin: Iterable[tuple[str, str]] = BUILTIN) -> Plan:
    """Candidates per declared user name, deduplicated, in source order."""
    per_user: dict[str, list[Candidate]] = {u: [] for u in declared}
    undeclared_vendor: list[str] = []

    def add(user: str, password: str, source: str) -> None:
        if all(c.password != password for c in per_user[user]):
            per_user[user].append(Candidate(user, password, source))

    for user, password in vendor:
        if user in per_user:
            add(user, password, "profile")
        elif user not in undeclared_vendor:
            undeclared_vendor.append(user)
    undeclared: list[str] = []
    for user, password in builtin:
        if user in per_user:
            add(user, password, "built-in")
        elif user not in undeclared:
            undeclared.append(user)
    for user in declared:
        add(user, user, "user name")
    return Plan(per_user, undeclared, undeclared_vendor)


def batch_size(threshold: int | None) -> int:
    """Wrong passwords in a row that stay under a lockout ``threshold`` (1 when unknown)."""
    if threshold is None:
        return 1
    return max(1, threshold - 1)


def batches(candidates: Sequence[Candidate], size: int) -> list[list[Candidate]]:
    """``candidates`` cut into batches of at most ``size``."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    return [list(candidates[i:i + size]) for i in range(0, len(candidates), size)]


@dataclass
class Outcome:
    """What :func:`run` found."""

    #: Candidates the device accepted (at most one per user name: the search stops there).
    accepted: list[Candidate]
    #: Candidates not sent (no real password to clear the failure count with).
    not_tried: list[Candidate]
    #: Candidates sent.
    attempts: int


def run(todo: Plan, *, size: int, can_reset: Callable[[str], bool],
        attempt: Callable[[Candidate], bool], reset: Callable[[str, bool], None]) -> Outcome:
    """Try the plan within the lockout rules.

    :param size: wrong passwords in a row per user name (:func:`batch_size`).
    :param can_reset: whether the real password of a user name is known.
    :param attempt: one login with a candidate; True when accepted (and logged out again).
    :param reset: ``reset(user, first)``: one login with the real password, which clears the
        failure count; ``first`` is the one before any candidate (it may wait out a lockout
        left by someone else). Raises when refused.
    """
    accepted: list[Candidate] = []
    not_tried: list[Candidate] = []
    sent = 0
    for user, candidates in todo.per_user.items():
        resettable = can_reset(user)
        if resettable:
            reset(user, True)
        chunks = batches(candidates, size) if candidates else []
        failures = 0
        for i, chunk in enumerate(chunks):
            if i > 0:
                if not resettable:
                    not_tried.extend(c for rest in chunks[i:] for c in rest)
                    break
                reset(user, False)
                failures = 0
            hit = None
            for cand in chunk:
                sent += 1
                if attempt(cand):
                    hit = cand
                    break
                failures += 1
            if hit is not None:
                accepted.append(hit)
                failures = 0  # a good login clears the count
                break
        if failures and resettable:
            reset(user, False)
    return Outcome(accepted, not_tried, sent)
