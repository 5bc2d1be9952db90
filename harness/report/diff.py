"""``harness diff OLD NEW``: what changed between two runs of the same device.

Typical use: firmware A against firmware B. Checks are matched by their pytest node id. The
diff says whether both runs are of the same device (vendor and model; the firmware may
differ), which checks newly FAIL or ERROR (regressions), which are fixed (FAIL or ERROR before,
PASS now), every other verdict change, checks only one run has, and the claimed and achieved SL
per FR.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UsageError
from harness.report.matrix import FRS

_BAD = ("FAIL", "ERROR")


@dataclass(frozen=True)
class VerdictChange:
    """One check whose verdict differs between the runs (None: absent from that run)."""

    nodeid: str
    requirement: str
    old: str | None
    new: str | None
    #: The reason in the new run (or the old one, for a check that disappeared).
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "nodeid": self.nodeid,
            "requirement": self.requirement,
            "old": self.old,
            "new": self.new,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SlChange:
    """Claimed and achieved SL of one FR in both runs (achieved None: untested)."""

    fr: str
    old_claimed: int
    new_claimed: int
    old_achieved: int | None
    new_achieved: int | None

    @property
    def changed(self) -> bool:
        """True when the claim or the achieved SL differs."""
        return (self.old_claimed, self.old_achieved) != (self.new_claimed, self.new_achieved)

    @property
    def lowered(self) -> bool:
        """True when the achieved SL went down (or became untested)."""
        if self.old_achieved is None:
            return False
        return self.new_achieved is None or self.new_achieved < self.old_achieved

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "fr": self.fr,
            "claimed": [self.old_claimed, self.new_claimed],
            "achieved": [self.old_achieved, self.new_achieved],
            "lowered": self.lowered,
        }


@dataclass
class RunDiff:
    """The differences between two results documents."""

    old_device: dict[str, Any]
    new_device: dict[str, Any]
    same_device: bool
    profile_changed: bool
    #: Checks that FAIL or ERROR now and did not before (including new checks).
    new_failures: list[VerdictChange] = field(default_factory=list)
    #: Checks that FAILed or ERRORed before and PASS now.
    fixed: list[VerdictChange] = field(default_factory=list)
    #: Every other verdict change of a check present in both runs.
    changed: list[VerdictChange] = field(default_factory=list)
    #: Checks present in one run only (that are not new failures).
    added: list[VerdictChange] = field(default_factory=list)
    removed: list[VerdictChange] = field(default_factory=list)
    sl: list[SlChange] = field(default_factory=list)

    @property
    def regressed(self) -> bool:
        """True when something got worse: a new FAIL/ERROR or a lower achieved SL."""
        return bool(self.new_failures) or any(s.lowered for s in self.sl)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "same_device": self.same_device,
            "profile_changed": self.profile_changed,
            "old_device": self.old_device,
            "new_device": self.new_device,
            "regressed": self.regressed,
            "new_failures": [c.to_json() for c in self.new_failures],
            "fixed": [c.to_json() for c in self.fixed],
            "changed": [c.to_json() for c in self.changed],
            "added": [c.to_json() for c in self.added],
            "removed": [c.to_json() for c in self.removed],
            "sl": [s.to_json() for s in self.sl],
        }


def load_results(path: Path) -> dict[str, Any]:
    """A results document from a run folder or a results.json file.

    :raises UsageError: not a run folder, or not a results document.
    """
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(
            f"{path}: not a report (cannot read {file.name}: {exc.strerror})"
        ) from None
    except ValueError as exc:
        raise UsageError(f"{file}: not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "checks" not in data or "schema_version" not in data:
        raise UsageError(f"{file}: not a harness results document")
    major = str(data["schema_version"]).split(".", 1)[0]
    if major != "1":
        raise UsageError(f"{file}: results schema {data['schema_version']} is not supported")
    return data


def _device(results: dict[str, Any]) -> dict[str, Any]:
    dev = results.get("profile", {}).get("device", {})
    return dev if isinstance(dev, dict) else {}


def diff_results(old: dict[str, Any], new: dict[str, Any]) -> RunDiff:
    """Compare two results documents."""
    od, nd = _device(old), _device(new)
    same = (od.get("vendor"), od.get("model")) == (nd.get("vendor"), nd.get("model"))
    out = RunDiff(
        od,
        nd,
        same,
        old.get("profile", {}).get("sha256") != new.get("profile", {}).get("sha256"),
    )
    old_checks = {c["nodeid"]: c for c in old.get("checks", [])}
    new_checks = {c["nodeid"]: c for c in new.get("checks", [])}
    for nodeid, nc in new_checks.items():
        oc = old_checks.get(nodeid)
        ov, nv = (oc or {}).get("verdict"), nc.get("verdict")
        change = VerdictChange(nodeid, str(nc.get("requirement", "")), ov, nv, nc.get("reason", ""))
        if oc is None:
            (out.new_failures if nv in _BAD else out.added).append(change)
        elif ov == nv:
            continue
        elif nv in _BAD and ov not in _BAD:
            out.new_failures.append(change)
        elif ov in _BAD and nv == "PASS":
            out.fixed.append(change)
        else:
            out.changed.append(change)
    for nodeid, oc in old_checks.items():
        if nodeid not in new_checks:
            out.removed.append(
                VerdictChange(
                    nodeid,
                    str(oc.get("requirement", "")),
                    oc.get("verdict"),
                    None,
                    oc.get("reason", ""),
                )
            )
    old_rows = {r["fr"]: r for r in old.get("matrix", [])}
    new_rows = {r["fr"]: r for r in new.get("matrix", [])}
    for fr in FRS:
        o, n = old_rows.get(fr, {}), new_rows.get(fr, {})
        out.sl.append(
            SlChange(
                fr,
                int(o.get("claimed", 0)),
                int(n.get("claimed", 0)),
                o.get("achieved"),
                n.get("achieved"),
            )
        )
    return out


def _sl(value: int | None) -> str:
    return "untested" if value is None else str(value)


def format_diff(d: RunDiff) -> str:
    """The diff as text for the terminal."""

    def dev(x: dict[str, Any]) -> str:
        return f"{x.get('vendor', '?')} {x.get('model', '?')} firmware {x.get('firmware', '?')}"

    lines = [f"old: {dev(d.old_device)}", f"new: {dev(d.new_device)}"]
    if not d.same_device:
        lines.append("WARNING: not the same device (vendor or model differ)")
    if d.profile_changed:
        lines.append("note: the profiles differ (sha256)")

    def block(title: str, changes: list[VerdictChange], reason: bool = True) -> None:
        lines.append(f"\n{title}: {len(changes)}")
        for c in changes:
            line = f"  {c.requirement:<14} {c.old or '-'} -> {c.new or '-'}  {c.nodeid}"
            lines.append(line)
            if reason and c.reason:
                lines.append(f"      {c.reason.splitlines()[0][:200]}")

    block("new failures", d.new_failures)
    block("fixed", d.fixed, reason=False)
    block("other verdict changes", d.changed)
    block("only in the new run", d.added, reason=False)
    block("only in the old run", d.removed, reason=False)
    lines.append("\nSL per FR (claimed, tested achieved): old -> new")
    for s in d.sl:
        mark = "  LOWER" if s.lowered else ("  changed" if s.changed else "")
        lines.append(
            f"  {s.fr}  claimed {s.old_claimed} -> {s.new_claimed}   achieved "
            f"{_sl(s.old_achieved)} -> {_sl(s.new_achieved)}{mark}"
        )
    return "\n".join(lines)
