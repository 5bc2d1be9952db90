"""The conformance matrix: per FR, claimed SL, tested SL achieved, and verdict counts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.verdict import CheckResult, Verdict

FRS = ("FR1", "FR2", "FR3", "FR4", "FR5", "FR6", "FR7")
#: Verdicts that count towards the achieved SL (NOT APPLICABLE checks are out of scope).
_IN_SCOPE = (Verdict.PASS, Verdict.FAIL, Verdict.ERROR, Verdict.NOT_RUN)


@dataclass
class MatrixRow:
    """One foundational requirement."""

    fr: str
    claimed: int
    #: Highest SL n <= claimed at which every in-scope check with SL <= n PASSed;
    #: None when no black-box check of this FR was in scope (untested).
    achieved: int | None
    counts: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "fr": self.fr,
            "claimed": self.claimed,
            "achieved": self.achieved,
            "counts": self.counts,
        }


def achieved_sl(results: list[CheckResult], fr: str, claimed: int) -> int | None:
    """The tested SL achieved for ``fr`` (DESIGN.md section 3).

    ERROR and NOT RUN count as not passed: they can never lift the achieved SL.
    """
    scoped = [r for r in results if r.fr == fr and r.verdict in _IN_SCOPE and r.sl is not None]
    if not scoped:
        return None
    achieved = 0
    for n in range(1, claimed + 1):
        if all(r.verdict is Verdict.PASS for r in scoped if r.sl is not None and r.sl <= n):
            achieved = n
        else:
            break
    return achieved


def build_matrix(results: list[CheckResult], claimed: dict[str, int]) -> list[MatrixRow]:
    """One row per FR."""
    rows = []
    for fr in FRS:
        counts = {str(v): 0 for v in Verdict}
        for r in results:
            if r.fr == fr:
                counts[str(r.verdict)] += 1
        rows.append(
            MatrixRow(fr, claimed.get(fr, 0), achieved_sl(results, fr, claimed.get(fr, 0)), counts)
        )
    return rows
