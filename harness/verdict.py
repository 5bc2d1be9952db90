"""Verdicts, the exceptions checks use to state them, and the per-check result model.

The mapping is DESIGN.md section 3 and is not negotiable:

- PASS: the check ran and the device met the requirement;
- FAIL: the check ran and observed a violation (a :class:`Violation`, or an ``assert`` in the
  check's own body);
- ERROR: the check could not decide (unreachable, timeout, unexpected reply, harness fault);
- NOT APPLICABLE: SL above the claim, interface absent, other component type, waived;
- NOT RUN: disruptive and not allowed, stopped by the operator, needs privileges we lack.

ERROR is never folded into PASS anywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Verdict(StrEnum):
    """The five verdicts of a check."""

    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    FAIL = "FAIL"
    ERROR = "ERROR"
    NOT_APPLICABLE = "NOT APPLICABLE"
    NOT_RUN = "NOT RUN"

    @property
    def junit(self) -> str:
        """The JUnit outcome this verdict maps to."""
        return {
            Verdict.PASS: "passed",
            Verdict.FAIL: "failure",
            Verdict.ERROR: "error",
            Verdict.NOT_APPLICABLE: "skipped",
            Verdict.NOT_RUN: "skipped",
        }[self]


class Violation(AssertionError):
    """Raised by a check (or :func:`fail`) when it observed the device violating a requirement."""


def fail(message: str) -> None:
    """Declare a violation; the observed values belong in ``message``."""
    __tracebackhide__ = True
    raise Violation(message)


def not_applicable(reason: str) -> None:
    """Stop the check as NOT APPLICABLE with ``reason``."""
    __tracebackhide__ = True
    from harness.outcomes import NotApplicable

    raise NotApplicable(msg=reason, allow_module_level=True)


def not_run(reason: str) -> None:
    """Stop the check as NOT RUN with ``reason``."""
    __tracebackhide__ = True
    from harness.outcomes import NotRun

    raise NotRun(msg=reason, allow_module_level=True)


@dataclass
class CheckResult:
    """The outcome of one check, as every reporter renders it."""

    #: pytest node id, the stable identity of a check.
    nodeid: str
    #: Short title (the first docstring line of the check).
    title: str
    #: Requirement ID as the standard writes it, e.g. ``CR 1.1 RE(1)``.
    requirement: str
    #: Foundational requirement, e.g. ``FR1``.
    fr: str
    #: Lowest SL at which the requirement applies (None: no component-level requirement).
    sl: int | None
    #: Interface the check speaks (``modbus_tcp``, ``opcua``, ...).
    protocol: str
    #: The simulator weakness this check exists to detect.
    weakness: str | None
    #: True when the check loads, floods, writes or locks accounts.
    disruptive: bool
    verdict: Verdict
    #: Why: the failure message, the error, or the reason it was not applicable / not run.
    reason: str = ""
    started: str | None = None
    duration_s: float = 0.0
    #: Evidence files, relative to the run folder.
    evidence: list[str] = field(default_factory=list)
    #: Observed exchanges worth reading without opening the evidence files (bounded).
    observations: list[dict[str, Any]] = field(default_factory=list)
    #: With ``harness run --monitor``: the essential-function probes that were out of bounds
    #: while this check ran, with their figures (empty: within bounds, or not monitored).
    monitor: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = asdict(self)
        data["verdict"] = str(self.verdict)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckResult:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        data["verdict"] = Verdict(data["verdict"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
