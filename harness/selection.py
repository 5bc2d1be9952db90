"""Applicability: which checks run against a profile, and why the others do not.

A check applies when its requirement applies to the component type, the requirement's lowest SL
is at most the SL the profile claims for its FR, its interface is present, and no active waiver
covers it. An applicable check is still NOT RUN when it is disruptive and disruptive checks are
not allowed, or when it needs privileges the harness does not have. Every check that does not
run gets a reason; :func:`build_plan` also accounts for every catalog requirement of the
component type that has no automated check (documentary evidence, or no check yet).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from harness.catalog import Catalog, ComponentType, Requirement, Verification
from harness.profile import Profile
from harness.verdict import Verdict

#: Protocol names a check may declare, and the profile interface each needs.
PROTOCOL_INTERFACES: dict[str, str | None] = {
    "modbus_tcp": "modbus_tcp",
    "modbus_tls": "modbus_tls",
    "modbus_rtu": "modbus_rtu",
    "console": "console",
    "opcua": "opcua",
    "ssh": "ssh",
    "network": None,  # any declared network target
    "ethernet": "ethernet",  # a link-layer interface the harness may send frames on
}


@dataclass(frozen=True)
class CheckSpec:
    """What a check declares about itself (from its markers and docstring)."""

    #: pytest node id.
    nodeid: str
    #: First docstring line.
    title: str
    requirement: str
    protocol: str
    disruptive: bool = False
    #: The simulator weakness the check detects.
    weakness: str | None = None
    #: Whether the check needs raw sockets (root / CAP_NET_RAW).
    needs_root: bool = False
    #: For a disruptive check: the most traffic it may send (``{cap}`` fields are filled
    #: from the profile's safety caps).
    traffic: str = ""


@dataclass(frozen=True)
class Decision:
    """Whether a check runs and, if not, the verdict it gets without running and why."""

    check: CheckSpec
    requirement: Requirement
    #: None when the check runs; NOT APPLICABLE or NOT RUN otherwise.
    verdict: Verdict | None
    reason: str = ""
    #: Something the plan should say even when the check runs (an expired waiver).
    note: str = ""

    @property
    def runs(self) -> bool:
        """True when the check will be executed."""
        return self.verdict is None


def decide(
    check: CheckSpec,
    profile: Profile,
    catalog: Catalog,
    *,
    allow_disruptive: bool,
    is_root: bool,
    today: dt.date | None = None,
) -> Decision:
    """Decide one check. Order matters: applicability first, then permission to run.

    :raises harness.errors.UnknownRequirementError: the check names an unknown requirement.
    """
    req = catalog.get(check.requirement)
    component = ComponentType.from_profile(profile.device.component_type.value)
    claimed = profile.claimed_sl.of(str(req.fr))
    na = Verdict.NOT_APPLICABLE
    if req.sl_min is None or not req.applies_to:
        return Decision(check, req, na, f"{req.id} has no component-level requirement")
    if component not in req.applies_to:
        return Decision(check, req, na, f"{req.id} does not apply to {component.value} components")
    if claimed < req.sl_min:
        return Decision(
            check,
            req,
            na,
            f"{req.id} is required from SL {req.sl_min}; {req.fr} claims SL {claimed}",
        )
    if check.protocol not in PROTOCOL_INTERFACES:
        known = ", ".join(sorted(PROTOCOL_INTERFACES))
        raise ValueError(f"{check.nodeid}: unknown protocol {check.protocol!r}; known: {known}")
    iface = PROTOCOL_INTERFACES[check.protocol]
    if iface is None:
        if not profile.allow_list():
            return Decision(check, req, na, "no network target declared in the profile")
    elif getattr(profile.interfaces, iface) is None:
        return Decision(check, req, na, f"no {iface} interface declared in the profile")
    note = ""
    waiver = profile.waiver_for(req.id)
    if waiver is not None:
        if waiver.active(today):
            return Decision(
                check, req, na, f"waived until {waiver.expires.isoformat()}: {waiver.justification}"
            )
        note = f"waiver expired on {waiver.expires.isoformat()}; the check runs"
    if check.disruptive and not allow_disruptive:
        return Decision(
            check,
            req,
            Verdict.NOT_RUN,
            "disruptive and not allowed (pass --allow-disruptive or set "
            "safety.allow_disruptive in the profile)",
            note,
        )
    if check.needs_root and not is_root:
        return Decision(
            check, req, Verdict.NOT_RUN, "needs raw sockets (run as root or with CAP_NET_RAW)", note
        )
    return Decision(check, req, None, "", note)


@dataclass
class PlanRow:
    """One catalog requirement of the component type and what the run does about it."""

    requirement: Requirement
    #: Claimed SL of the requirement's FR.
    claimed: int
    decisions: list[Decision] = field(default_factory=list)
    #: Why nothing automated runs for this requirement (no checks, documentary, ...).
    note: str = ""


def build_plan(
    profile: Profile,
    catalog: Catalog,
    checks: list[CheckSpec],
    *,
    allow_disruptive: bool,
    is_root: bool,
    today: dt.date | None = None,
) -> list[PlanRow]:
    """Every requirement that applies to the component type, with its checks' decisions."""
    component = ComponentType.from_profile(profile.device.component_type.value)
    by_req: dict[str, list[CheckSpec]] = {}
    for c in checks:
        by_req.setdefault(catalog.get(c.requirement).id, []).append(c)
    rows: list[PlanRow] = []
    for req in catalog:
        if req.sl_min is None or component not in req.applies_to:
            continue
        claimed = profile.claimed_sl.of(str(req.fr))
        row = PlanRow(req, claimed)
        row.decisions = [
            decide(
                c, profile, catalog, allow_disruptive=allow_disruptive, is_root=is_root, today=today
            )
            for c in by_req.get(req.id, [])
        ]
        if not row.decisions:
            if req.sl_min > claimed:
                row.note = f"not required: from SL {req.sl_min}, {req.fr} claims SL {claimed}"
            elif req.verification is Verification.DOCUMENT:
                row.note = "needs documentary evidence (not testable over the wire)"
            else:
                row.note = "no automated check yet: collect evidence by inspection"
        rows.append(row)
    return rows
