"""Meta-tests over the bundled requirement catalog, its loader and its model."""

from __future__ import annotations

import copy
import re
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.catalog import (
    FR,
    ID_PATTERN,
    PROTOCOLS,
    Catalog,
    ComponentType,
    Kind,
    Requirement,
    Verification,
    catalog_from_data,
    catalog_from_text,
    format_table,
    load_catalog,
    load_catalog_file,
    normalize_id,
    parse_id,
)
from harness.errors import CatalogError, UnknownRequirementError, UsageError

pytestmark = pytest.mark.timeout(60)

PLACEHOLDERS = ("CR 2.3", "CR 5.4", "CR 7.5")


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The data file as plain YAML, before the loader touches it."""
    text = resources.files("harness.catalog").joinpath("data", "iec62443-4-2.yaml").read_text()
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


# --- the data file itself ---------------------------------------------------------------------


def test_raw_ids_are_unique_and_canonical(raw: dict[str, Any]) -> None:
    ids = [e["id"] for e in raw["requirements"]]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"duplicate IDs in the data file: {dupes}"
    bad = [i for i in ids if not ID_PATTERN.match(i)]
    assert not bad, f"IDs not in canonical form: {bad}"


def test_data_file_is_in_catalog_order(raw: dict[str, Any], catalog: Catalog) -> None:
    # The loader sorts anyway; this keeps the file readable in the order people expect.
    assert [e["id"] for e in raw["requirements"]] == list(catalog.ids)


def test_header_says_titles_are_paraphrases() -> None:
    text = resources.files("harness.catalog").joinpath("data", "iec62443-4-2.yaml").read_text()
    header = "\n".join(line for line in text.splitlines()[:20] if line.startswith("#")).lower()
    assert "paraphrase" in header
    assert "authority" in header


def test_version_has_a_changelog_entry(catalog: Catalog) -> None:
    assert catalog.version >= 1
    assert [c.version for c in catalog.changelog] == list(range(1, catalog.version + 1))
    assert all(c.changes and re.fullmatch(r"\d{4}-\d{2}-\d{2}", c.date) for c in catalog.changelog)


# --- entries ----------------------------------------------------------------------------------


def test_size_and_placeholders(catalog: Catalog) -> None:
    assert len(catalog) == 125
    assert tuple(r.id for r in catalog if r.is_placeholder) == PLACEHOLDERS
    for rid in PLACEHOLDERS:
        req = catalog.get(rid)
        assert req.sl_min is None
        assert req.applies_to == frozenset()
        assert req.verification is Verification.DOCUMENT


def test_every_id_is_canonical_and_matches_kind_fr_parent(catalog: Catalog) -> None:
    for req in catalog:
        parts = parse_id(req.id)
        assert ID_PATTERN.match(req.id), req.id
        assert req.fr.number == parts.fr, req.id
        if parts.re is None:
            assert req.kind.value == parts.prefix, req.id
            assert req.parent is None, req.id
        else:
            assert req.kind is Kind.RE, req.id
            assert req.parent == parts.base, req.id


def test_every_re_has_a_parent_in_the_same_fr(catalog: Catalog) -> None:
    res = [r for r in catalog if r.kind is Kind.RE]
    assert res
    for req in res:
        assert req.parent is not None
        parent = catalog.get(req.parent)
        assert parent.kind is not Kind.RE, req.id
        assert parent.fr is req.fr, req.id
        assert req.applies_to <= parent.applies_to, req.id
        assert req.sl_min is not None
        assert parent.sl_min is not None
        assert req.sl_min >= parent.sl_min, req.id


def test_component_type_clauses_apply_to_their_own_type_only(catalog: Catalog) -> None:
    for req in catalog:
        component = Kind(parse_id(req.id).prefix).component
        if component is not None:
            assert req.applies_to == {component}, req.id
        elif not req.is_placeholder:
            assert req.applies_to == set(ComponentType), req.id


def test_titles_present_short_and_single_line(catalog: Catalog) -> None:
    for req in catalog:
        assert req.title == req.title.strip(), req.id
        assert 0 < len(req.title) <= 60, f"{req.id}: {len(req.title)} chars"
        assert "\n" not in req.title, req.id


def test_every_fr_has_requirements(catalog: Catalog) -> None:
    assert catalog.frs == tuple(FR)
    for fr in FR:
        assert catalog.select(fr=fr, sl=4), fr
        assert fr.title
        assert fr.title != fr.value
        assert fr.abbrev.isupper()


def test_verification_and_protocols_agree(catalog: Catalog) -> None:
    for req in catalog:
        assert set(req.protocols) <= set(PROTOCOLS), req.id
        if req.verification is Verification.WIRE:
            assert req.protocols, req.id
        else:
            assert req.protocols == (), req.id
    assert {r.verification for r in catalog} == set(Verification)


def test_sl_min_in_range_or_placeholder(catalog: Catalog) -> None:
    for req in catalog:
        assert req.sl_min is None or req.sl_min in (1, 2, 3, 4), req.id
        assert (req.sl_min is None) == (req.applies_to == frozenset()), req.id
        assert req.deviation is None or req.deviation.strip(), req.id


# --- order, lookup, children ------------------------------------------------------------------


def test_iteration_order_is_numeric_with_re_after_parent(catalog: Catalog) -> None:
    ids = list(catalog.ids)
    # Numeric, not lexical: CR 1.2 before CR 1.10, CR 2.1 RE(4) before CR 2.2.
    assert ids.index("CR 1.2") < ids.index("CR 1.10") < ids.index("CR 1.11")
    assert ids.index("CR 2.1 RE(4)") < ids.index("CR 2.2")
    assert ids[: ids.index("CR 2.1")] == [r.id for r in catalog.select(fr="FR1")]
    frs = [r.fr.number for r in catalog]
    assert frs == sorted(frs)
    for req in catalog:
        if req.parent is not None:
            between = ids[ids.index(req.parent) + 1 : ids.index(req.id)]
            assert all(catalog.get(b).parent == req.parent for b in between), req.id
    # Component-type clauses come after the common CR of the same number, SAR first.
    assert ids.index("SAR 2.4") < ids.index("SAR 2.4 RE(1)") < ids.index("EDR 2.4")
    assert ids.index("EDR 2.4 RE(1)") < ids.index("HDR 2.4") < ids.index("NDR 2.4")


def test_children(catalog: Catalog) -> None:
    assert [r.id for r in catalog.children("CR 2.1")] == [
        "CR 2.1 RE(1)",
        "CR 2.1 RE(2)",
        "CR 2.1 RE(3)",
        "CR 2.1 RE(4)",
    ]
    assert [r.id for r in catalog.children("ndr5.2")] == [
        "NDR 5.2 RE(1)",
        "NDR 5.2 RE(2)",
        "NDR 5.2 RE(3)",
    ]
    assert catalog.children("CR 1.3") == ()
    assert catalog.children("CR 2.1 RE(1)") == ()
    with pytest.raises(UnknownRequirementError):
        catalog.children("CR 9.9")


def test_get_accepts_loose_ids(catalog: Catalog) -> None:
    assert catalog.get("cr1.1 re1").id == "CR 1.1 RE(1)"
    assert catalog.get("edr2.13") is catalog.get("EDR 2.13")
    assert "cr 1.1" in catalog
    assert "CR 9.9" not in catalog
    assert "banana" not in catalog
    assert 42 not in catalog


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CR 1.1", "CR 1.1"),
        ("cr1.1", "CR 1.1"),
        ("  Cr 1.1  ", "CR 1.1"),
        ("CR1.1 RE1", "CR 1.1 RE(1)"),
        ("cr 1.1 re(1)", "CR 1.1 RE(1)"),
        ("CR 1.1 RE (1)", "CR 1.1 RE(1)"),
        ("CR 1.1 RE 1", "CR 1.1 RE(1)"),
        ("CR 1.1 (1)", "CR 1.1 RE(1)"),
        ("CR-1.1-RE-2", "CR 1.1 RE(2)"),
        ("cr1_1", "CR 1.1"),
        ("edr2.13", "EDR 2.13"),
        ("EDR2.13RE1", "EDR 2.13 RE(1)"),
        ("ndr 1.6 re(1)", "NDR 1.6 RE(1)"),
        ("sar 2.4", "SAR 2.4"),
        ("hdr3.2 RE(1)", "HDR 3.2 RE(1)"),
        ("CR 01.010", "CR 1.10"),
    ],
)
def test_normalize_id(text: str, expected: str) -> None:
    assert normalize_id(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "FR1", "CR", "CR 1", "XYZ 1.1", "CR 1.1 RE", "CR 8.1", "CR 0.1", "CR 1.1 RE(0)", "1.1"],
)
def test_normalize_id_rejects_non_ids(text: str) -> None:
    with pytest.raises(UnknownRequirementError, match="not a requirement ID"):
        normalize_id(text)


def test_every_catalog_id_round_trips_through_loose_spellings(catalog: Catalog) -> None:
    for rid in catalog.ids:
        squashed = rid.lower().replace(" ", "").replace("(", "").replace(")", "")
        assert catalog.normalize_id(squashed) == rid
        assert catalog.normalize_id(rid) == rid


def test_unknown_id_message_suggests_close_ids(catalog: Catalog) -> None:
    with pytest.raises(UnknownRequirementError) as info:
        catalog.get("CR 3.10")
    message = str(info.value)
    assert "'CR 3.10'" in message
    # CR 3.10 exists only as component-type clauses: those are the useful suggestions.
    assert "EDR 3.10" in message
    assert "NDR 3.10" in message

    with pytest.raises(UnknownRequirementError) as info:
        catalog.get("cr 1.1 re(3)")
    message = str(info.value)
    assert "CR 1.1 RE(3)" in message
    assert "CR 1.1 RE(1)" in message or "CR 1.1 RE(2)" in message

    with pytest.raises(UnknownRequirementError, match="not a requirement ID"):
        catalog.get("banana")
    # An unknown ID is a usage error (exit 2), not a catalog defect.
    assert issubclass(UnknownRequirementError, UsageError)


# --- applicability and selection -------------------------------------------------------------


def test_sl_zero_selects_nothing(catalog: Catalog) -> None:
    assert catalog.select(sl=0) == ()
    for component in ComponentType:
        assert catalog.select(component=component, sl=0) == ()
        assert not any(r.applies(component, 0) for r in catalog)


def test_requirement_above_claimed_sl_does_not_apply(catalog: Catalog) -> None:
    req = catalog.get("CR 2.7")  # SL 3
    assert req.sl_min == 3
    assert not req.applies(ComponentType.EDR, 2)
    assert req.applies(ComponentType.EDR, 3)
    assert req.applies(ComponentType.EDR, 4)
    assert req not in catalog.select(component="embedded", sl=2)
    assert req in catalog.select(component="embedded", sl=3)


def test_sl_outside_range_is_rejected(catalog: Catalog) -> None:
    req = catalog.get("CR 1.1")
    for bad in (-1, 5, True):
        with pytest.raises(ValueError, match="security level"):
            req.applies(ComponentType.EDR, bad)
        with pytest.raises(ValueError, match="security level"):
            catalog.select(sl=bad)


def test_component_mismatch_does_not_apply(catalog: Catalog) -> None:
    assert not catalog.get("NDR 1.6").applies(ComponentType.EDR, 4)
    assert catalog.get("NDR 1.6").applies(ComponentType.NDR, 1)
    assert not catalog.get("EDR 2.13").applies(ComponentType.SAR, 4)
    assert not catalog.get("SAR 2.4").applies(ComponentType.HDR, 4)
    edr = catalog.select(component=ComponentType.EDR)
    assert all(ComponentType.EDR in r.applies_to for r in edr)
    assert not any(r.id.startswith(("SAR", "HDR", "NDR")) for r in edr)


def test_placeholders_never_apply(catalog: Catalog) -> None:
    for rid in PLACEHOLDERS:
        req = catalog.get(rid)
        for component in ComponentType:
            for sl in range(5):
                assert not req.applies(component, sl)
    selected = {r.id for sl in range(5) for r in catalog.select(sl=sl)}
    selected |= {r.id for c in ComponentType for r in catalog.select(component=c)}
    assert not selected & set(PLACEHOLDERS)
    assert set(PLACEHOLDERS) <= {r.id for r in catalog.select()}


def test_select_agrees_with_applies_and_grows_with_sl(catalog: Catalog) -> None:
    for component in ComponentType:
        previous: set[str] = set()
        for sl in range(5):
            chosen = catalog.select(component=component, sl=sl)
            assert {r.id for r in chosen} == {r.id for r in catalog if r.applies(component, sl)}
            assert previous <= {r.id for r in chosen}
            previous = {r.id for r in chosen}
        assert previous, component


def test_select_by_fr_and_names(catalog: Catalog) -> None:
    fr5 = catalog.select(fr="FR5")
    assert fr5 == catalog.select(fr=FR.FR5) == catalog.select(fr="5")
    assert {r.fr for r in fr5} == {FR.FR5}
    assert catalog.select(fr="fr1", sl=1, component="embedded") == catalog.select(
        fr=FR.FR1, sl=1, component=ComponentType.EDR
    )
    with pytest.raises(ValueError, match="FR1, FR2"):
        catalog.select(fr="FR8")
    with pytest.raises(ValueError, match="embedded, host, network, software_application"):
        catalog.select(component="plc")


def test_select_results_are_in_catalog_order(catalog: Catalog) -> None:
    ids = list(catalog.ids)
    chosen = [r.id for r in catalog.select(component="network", sl=3)]
    assert chosen == sorted(chosen, key=ids.index)


# --- enums ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("embedded", ComponentType.EDR),
        ("host", ComponentType.HDR),
        ("network", ComponentType.NDR),
        ("software_application", ComponentType.SAR),
        ("EDR", ComponentType.EDR),
        ("network device", ComponentType.NDR),
    ],
)
def test_component_type_from_profile(name: str, expected: ComponentType) -> None:
    assert ComponentType.from_profile(name) is expected
    assert ComponentType.from_profile(expected) is expected


def test_component_type_from_profile_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown component type 'plc'") as info:
        ComponentType.from_profile("plc")
    for valid in ("embedded", "host", "network", "software_application"):
        assert valid in str(info.value)


def test_enum_values() -> None:
    assert ComponentType.SAR.value == "software application"
    assert ComponentType.EDR.value == "embedded device"
    assert ComponentType.HDR.value == "host device"
    assert ComponentType.NDR.value == "network device"
    assert [c.profile_name for c in ComponentType] == [
        "software_application",
        "embedded",
        "host",
        "network",
    ]
    assert {k.value for k in Kind} == {"CR", "RE", "SAR", "EDR", "HDR", "NDR"}
    assert Kind.EDR.component is ComponentType.EDR
    assert Kind.CR.component is None
    assert {v.value for v in Verification} == {"wire", "document"}
    assert str(FR.FR3) == "FR3"
    assert FR.parse("fr 3") is FR.FR3


# --- table ------------------------------------------------------------------------------------


def test_format_table(catalog: Catalog) -> None:
    rows = [catalog.get("CR 1.1"), catalog.get("EDR 2.13"), catalog.get("CR 2.3")]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["ID", "FR", "SL", "TYPES", "VERIFICATION", "TITLE"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + len(rows)
    cr11, edr213, cr23 = (line.split(maxsplit=5) for line in lines[2:])
    assert cr11[:2] == ["CR", "1.1"]
    assert cr11[2:5] == ["FR1", "1", "EHNS"]
    assert edr213[2:5] == ["FR2", "2", "E---"]
    assert cr23[2:5] == ["FR2", "-", "----"]
    assert lines[2].endswith(catalog.get("CR 1.1").title)
    # Columns line up: every row's TITLE starts where the header's does.
    start = lines[0].index("TITLE")
    for line, req in zip(lines[2:], rows, strict=True):
        assert line[start:] == req.title


def test_format_table_width_truncates_titles_only(catalog: Catalog) -> None:
    everything = list(catalog)
    wide = format_table(everything).splitlines()
    narrow = format_table(everything, width=60).splitlines()
    assert max(map(len, wide)) > 60
    assert max(map(len, narrow)) <= 60
    assert any(line.endswith("...") for line in narrow)
    for w, n in zip(wide, narrow, strict=True):
        assert n.split()[:3] == w.split()[:3]
    assert format_table([]).splitlines()[0].startswith("ID")


# --- loader validation ------------------------------------------------------------------------


def _minimal() -> dict[str, Any]:
    base = {
        "fr": "FR1",
        "applies_to": ["SAR", "EDR", "HDR", "NDR"],
        "verification": "wire",
        "protocols": ["ssh"],
        "confirmed": True,
    }
    return {
        "version": 2,
        "standard": "IEC 62443-4-2:2019",
        "changelog": [
            {"version": 1, "date": "2026-01-01", "changes": "first"},
            {"version": 2, "date": "2026-02-01", "changes": "second"},
        ],
        "requirements": [
            {**base, "id": "CR 1.1", "title": "Base", "sl_min": 1},
            {**base, "id": "CR 1.1 RE(1)", "title": "Enhancement", "sl_min": 2},
            {
                **base,
                "id": "CR 2.3",
                "fr": "FR2",
                "title": "Placeholder",
                "applies_to": [],
                "sl_min": None,
                "verification": "document",
                "protocols": [],
            },
        ],
    }


def test_minimal_catalog_loads() -> None:
    cat = catalog_from_data(_minimal(), source="mini.yaml")
    assert cat.ids == ("CR 1.1", "CR 1.1 RE(1)", "CR 2.3")
    assert cat.version == 2
    assert cat.get("CR 1.1 RE(1)").parent == "CR 1.1"


def _break(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(_minimal())
    target: Any = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("requirements", 1, "id"), "CR 1.1", r"CR 1\.1: duplicate ID"),
        (("requirements", 0, "id"), "CR1.1", r"CR1\.1 \(entry 1\): 'CR1\.1' is not a requirement"),
        (("requirements", 0, "id"), "CR 1.5", r"CR 1\.1 RE\(1\): parent CR 1\.1 is not in"),
        (("requirements", 1, "fr"), "FR2", r"CR 1\.1 RE\(1\) \(entry 2\): fr: FR2 does not match"),
        (("requirements", 0, "sl_min"), 5, r"CR 1\.1 \(entry 1\): sl_min: 5 is not 1\.\.4"),
        (("requirements", 0, "sl_min"), 0, r"CR 1\.1 \(entry 1\): sl_min: 0 is not 1\.\.4"),
        (("requirements", 0, "sl_min"), "2", r"CR 1\.1 \(entry 1\): sl_min: '2'"),
        (("requirements", 0, "sl_min"), None, r"CR 1\.1 \(entry 1\): sl_min/applies_to"),
        (("requirements", 0, "sl_min"), 3, r"CR 1\.1 RE\(1\): required from SL 2, below"),
        (("requirements", 0, "applies_to"), ["PLC"], r"CR 1\.1 \(entry 1\): applies_to: unknown"),
        (("requirements", 0, "applies_to"), ["EDR"], r"CR 1\.1 RE\(1\): applies to types its"),
        (("requirements", 0, "verification"), "pcap", r"CR 1\.1 \(entry 1\): verification"),
        (("requirements", 0, "protocols"), [], r"CR 1\.1 \(entry 1\): protocols: a wire"),
        (("requirements", 0, "protocols"), ["http"], r"CR 1\.1 \(entry 1\): protocols: unknown"),
        (("requirements", 0, "titel"), "typo", r"CR 1\.1 \(entry 1\): unknown field\(s\) titel"),
        (("requirements", 0, "title"), _DELETE, r"CR 1\.1 \(entry 1\): missing field\(s\) title"),
        (("requirements", 0, "title"), " ", r"CR 1\.1 \(entry 1\): title"),
        (("requirements", 0, "confirmed"), "yes", r"CR 1\.1 \(entry 1\): confirmed: expected"),
        (("requirements", 0, "deviation"), "", r"CR 1\.1 \(entry 1\): deviation"),
        (("requirements", 2), "CR 2.3", r"entry 3: must be a mapping"),
        (("version",), 3, r"version 3 has no changelog entry"),
        (("changelog", 1, "version"), 3, r"versions must run 1, 2, 3"),
        (("extra",), 1, r"unknown top-level key\(s\): extra"),
        (("requirements",), [], r"requirements: must be a non-empty list"),
    ],
)
def test_loader_rejects_malformed_data(path: tuple[Any, ...], value: Any, expected: str) -> None:
    with pytest.raises(CatalogError, match=expected) as info:
        catalog_from_data(_break(path, value), source="bad.yaml")
    assert str(info.value).startswith("bad.yaml: ")


def test_loader_reports_every_problem_at_once() -> None:
    data = _minimal()
    data["requirements"][0]["sl_min"] = 9
    data["requirements"][2]["titel"] = "x"
    with pytest.raises(CatalogError) as info:
        catalog_from_data(data, source="bad.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert "CR 1.1 (entry 1)" in lines[0]
    assert "CR 2.3 (entry 3)" in lines[1]


def test_loader_rejects_non_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="not valid YAML"):
        catalog_from_text("requirements: [unclosed", source="x.yaml")
    with pytest.raises(CatalogError, match="top level must be a mapping"):
        catalog_from_text("- a\n- b\n", source="x.yaml")
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog_file(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_minimal()), encoding="utf-8")
    assert len(load_catalog_file(good)) == 3


def test_requirement_checks_fields_eagerly() -> None:
    with pytest.raises(ValueError, match="kind"):
        Requirement(
            id="CR 1.1 RE(1)",
            kind=Kind.CR,
            fr=FR.FR1,
            title="x",
            applies_to=frozenset(ComponentType),
            sl_min=2,
            verification=Verification.WIRE,
            parent="CR 1.1",
            protocols=("ssh",),
        )
    with pytest.raises(ValueError, match="applies_to: a EDR entry"):
        Requirement(
            id="EDR 2.13",
            kind=Kind.EDR,
            fr=FR.FR2,
            title="x",
            applies_to=frozenset({ComponentType.NDR}),
            sl_min=2,
            verification=Verification.DOCUMENT,
        )


def test_load_catalog_is_cached() -> None:
    assert load_catalog() is load_catalog()
