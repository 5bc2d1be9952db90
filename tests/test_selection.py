"""Applicability: every reason a check does or does not run."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from harness.catalog import load_catalog
from harness.errors import UnknownRequirementError
from harness.profile import Profile
from harness.selection import CheckSpec, build_plan, decide
from harness.verdict import Verdict

TODAY = dt.date(2026, 11, 25)


def profile(**over: Any) -> Profile:
    data: dict[str, Any] = {
        "device": {"vendor": "A", "model": "B", "firmware": "1", "component_type": "embedded"},
        "claimed_sl": {"FR1": 2, "FR2": 2, "FR3": 2, "FR7": 2},
        "interfaces": {"modbus_tcp": {"host": "127.0.0.1"}, "ssh": {"host": "127.0.0.1"}},
    }
    data.update(over)
    return Profile.model_validate(data)


def spec(req: str = "CR 1.1", protocol: str = "ssh", **kw: Any) -> CheckSpec:
    return CheckSpec(nodeid=f"t.py::{req}", title="t", requirement=req, protocol=protocol, **kw)


def run(check: CheckSpec, prof: Profile, *, allow: bool = True, root: bool = True) -> Any:
    return decide(check, prof, load_catalog(), allow_disruptive=allow, is_root=root, today=TODAY)


def test_applicable_check_runs() -> None:
    d = run(spec(), profile())
    assert d.runs and d.verdict is None and d.reason == ""


def test_sl_zero_claim_makes_everything_not_applicable() -> None:
    d = run(spec("CR 1.1"), profile(claimed_sl={"FR1": 0}))
    assert d.verdict is Verdict.NOT_APPLICABLE
    assert d.reason == "CR 1.1 is required from SL 1; FR1 claims SL 0"


def test_requirement_above_claim() -> None:
    d = run(spec("CR 1.1 RE(2)"), profile())
    assert d.verdict is Verdict.NOT_APPLICABLE
    assert "required from SL 3; FR1 claims SL 2" in d.reason


def test_requirement_at_claim_runs() -> None:
    assert run(spec("CR 1.2", "modbus_tcp"), profile()).runs  # SL 2 at claim 2


def test_missing_interface() -> None:
    d = run(spec("CR 1.1", "opcua"), profile())
    assert d.verdict is Verdict.NOT_APPLICABLE
    assert d.reason == "no opcua interface declared in the profile"


def test_other_component_type() -> None:
    d = run(spec("NDR 1.6", "network"), profile())
    assert d.verdict is Verdict.NOT_APPLICABLE
    assert "does not apply to embedded device components" in d.reason
    host = profile(
        device={"vendor": "A", "model": "B", "firmware": "1", "component_type": "network"},
        claimed_sl={"FR1": 2},
    )
    assert run(spec("NDR 1.6", "network"), host).runs


def test_placeholder_requirement_never_applies() -> None:
    d = run(spec("CR 2.3", "ssh"), profile())
    assert d.verdict is Verdict.NOT_APPLICABLE
    assert "no component-level requirement" in d.reason


def test_active_and_expired_waivers() -> None:
    waiver = {"requirement": "CR 1.2", "justification": "cell firewall admits the EWS only"}
    active = profile(waivers=[{**waiver, "expires": "2026-12-31"}])
    d = run(spec("CR 1.2", "modbus_tcp"), active)
    assert d.verdict is Verdict.NOT_APPLICABLE
    assert d.reason.startswith("waived until 2026-12-31: cell firewall")
    expired = profile(waivers=[{**waiver, "expires": "2026-11-24"}])
    d = run(spec("CR 1.2", "modbus_tcp"), expired)
    assert d.runs
    assert d.note == "waiver expired on 2026-11-24; the check runs"


def test_disruptive_needs_permission() -> None:
    d = run(spec("CR 7.1", "modbus_tcp", disruptive=True), profile(), allow=False)
    assert d.verdict is Verdict.NOT_RUN
    assert "disruptive and not allowed" in d.reason
    assert run(spec("CR 7.1", "modbus_tcp", disruptive=True), profile(), allow=True).runs


def test_applicability_wins_over_permission() -> None:
    # not applicable stays not applicable even when it would also be disallowed
    d = run(spec("CR 7.1", "opcua", disruptive=True), profile(), allow=False)
    assert d.verdict is Verdict.NOT_APPLICABLE


def test_raw_socket_checks_need_root() -> None:
    d = run(spec("CR 7.1", "network", needs_root=True), profile(), root=False)
    assert d.verdict is Verdict.NOT_RUN
    assert "raw sockets" in d.reason
    assert run(spec("CR 7.1", "network", needs_root=True), profile(), root=True).runs


def test_unknown_requirement_and_protocol() -> None:
    with pytest.raises(UnknownRequirementError, match=r"CR 9\.9"):
        run(spec("CR 9.9"), profile())
    with pytest.raises(ValueError, match="unknown protocol 'telnet'"):
        run(spec("CR 1.1", "telnet"), profile())


def test_plan_accounts_for_every_requirement_of_the_component_type() -> None:
    catalog = load_catalog()
    prof = profile()
    checks = [spec("CR 1.1", "ssh"), spec("CR 1.1", "opcua")]
    rows = build_plan(prof, catalog, checks, allow_disruptive=False, is_root=True, today=TODAY)
    ids = [r.requirement.id for r in rows]
    expected = [r.id for r in catalog.select(component="embedded") if r.sl_min is not None]
    assert sorted(ids) == sorted(expected)
    by_id = {r.requirement.id: r for r in rows}
    assert [d.runs for d in by_id["CR 1.1"].decisions] == [True, False]
    assert by_id["CR 1.1 RE(2)"].note.startswith("not required: from SL 3")
    for row in rows:
        assert row.decisions or row.note, f"{row.requirement.id} has neither checks nor a reason"
    documentary = [r for r in rows if "documentary" in r.note]
    assert documentary, "some requirements need documentary evidence"
