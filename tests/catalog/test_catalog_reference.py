"""Hold the bundled catalog against the reference catalog in ../shared/reference/.

Every reference ID must exist here with the same lowest SL and component types, unless the
entry carries a written ``deviation``. The reference lives beside the project (CI checks it
out there); when it is absent these tests are skipped, saying where they looked.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.catalog import FR, PROTOCOLS, Catalog, ComponentType, Verification, load_catalog

pytestmark = pytest.mark.timeout(60)

REFERENCE = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "iec62443-4-2.yaml"
)

if not REFERENCE.is_file():
    pytest.skip(
        f"reference catalog not found at {REFERENCE} (it is kept beside the project, not in it)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    data = yaml.load(REFERENCE.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def ref_entries(reference: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = reference["component_requirements"] + reference["component_specific_requirements"]
    by_id = {e["id"]: e for e in entries}
    assert len(by_id) == len(entries), "the reference itself repeats an ID"
    return by_id


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _types(entry: dict[str, Any]) -> frozenset[ComponentType]:
    return frozenset(ComponentType[code] for code in entry["applies_to"])


def test_every_reference_id_exists_with_same_sl_and_types(
    catalog: Catalog, ref_entries: dict[str, dict[str, Any]]
) -> None:
    problems = []
    for rid, entry in ref_entries.items():
        if rid not in catalog:
            problems.append(f"{rid}: missing from the catalog")
            continue
        ours = catalog.get(rid)
        same = ours.sl_min == entry["sl_min"] and ours.applies_to == _types(entry)
        if not same and not (ours.deviation and ours.deviation.strip()):
            types = sorted(c.name for c in ours.applies_to)
            problems.append(
                f"{rid}: SL {ours.sl_min} types {types} vs reference "
                f"SL {entry['sl_min']} types {entry['applies_to']}, and no deviation given"
            )
    assert not problems, "\n".join(problems)


def test_no_entry_beyond_the_reference_without_a_deviation(
    catalog: Catalog, ref_entries: dict[str, dict[str, Any]]
) -> None:
    extra = [r.id for r in catalog if r.id not in ref_entries and not r.deviation]
    assert not extra


def test_deviations_only_where_values_differ(
    catalog: Catalog, ref_entries: dict[str, dict[str, Any]]
) -> None:
    # A deviation note on an entry that agrees with the reference would be stale.
    for req in catalog:
        entry = ref_entries.get(req.id)
        if req.deviation and entry is not None:
            assert (req.sl_min, req.applies_to) != (entry["sl_min"], _types(entry)), req.id


def test_kind_fr_parent_and_confidence_match(
    catalog: Catalog, ref_entries: dict[str, dict[str, Any]]
) -> None:
    for rid, entry in ref_entries.items():
        ours = catalog.get(rid)
        assert ours.kind.value == entry["kind"], rid
        assert ours.fr.value == entry["fr"], rid
        assert ours.parent == entry.get("parent"), rid
        assert ours.confirmed is entry["confirmed"], rid


def test_verification_and_protocols_follow_network_testable(
    catalog: Catalog, ref_entries: dict[str, dict[str, Any]]
) -> None:
    for rid, entry in ref_entries.items():
        ours = catalog.get(rid)
        testable = entry["network_testable"]
        expected = Verification.DOCUMENT if testable == ["document"] else Verification.WIRE
        assert ours.verification is expected, rid
        assert set(ours.protocols) == set(testable) - {"document"}, rid
        assert set(ours.protocols) <= set(PROTOCOLS), rid


def test_summary_lists_agree(catalog: Catalog, reference: dict[str, Any]) -> None:
    summary = reference["catalog"]
    assert {r.id for r in catalog if not r.confirmed} == set(summary["unconfirmed_ids"])
    assert [r.id for r in catalog if r.is_placeholder] == summary["no_component_level_requirement"]
    assert len(catalog) == summary["counts"]["total_entries"]


@pytest.mark.parametrize("component", list(ComponentType))
@pytest.mark.parametrize("sl", [1, 2, 3, 4])
def test_selection_reproduces_reference_sl_vectors(
    catalog: Catalog, reference: dict[str, Any], component: ComponentType, sl: int
) -> None:
    vector = reference["sl_vectors_by_component_type"][component.name][f"SL{sl}"]
    assert [r.id for r in catalog.select(component=component, sl=sl)] == vector


def _plain(title: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", title.casefold()).split())


def test_titles_are_paraphrases_not_copies(
    catalog: Catalog, ref_entries: dict[str, dict[str, Any]]
) -> None:
    copied = [
        rid
        for rid, entry in ref_entries.items()
        if _plain(catalog.get(rid).title) == _plain(entry["title"])
    ]
    assert not copied, f"titles identical to the reference: {copied}"


def test_fr_titles_are_own_words(reference: dict[str, Any]) -> None:
    for item in reference["foundational_requirements"]:
        fr = FR(item["id"])
        assert _plain(fr.title) != _plain(item["name"]), fr
        assert fr.abbrev == item["short"], fr
