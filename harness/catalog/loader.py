"""Load the bundled IEC 62443-4-2 catalog (package data) into the typed model.

The data file is ``harness/catalog/data/iec62443-4-2.yaml``. It is parsed with PyYAML's C loader
when available and cached, so repeated :func:`load_catalog` calls cost nothing. Every problem in
the file is collected and raised at once as :class:`~harness.errors.CatalogError`, each line
naming the entry.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import TypeVar

from harness.catalog.model import (
    FR,
    PROTOCOLS,
    Catalog,
    ChangelogEntry,
    ComponentType,
    Kind,
    Requirement,
    Verification,
    parse_id,
)
from harness.errors import CatalogError

#: File name of the built-in catalog inside ``harness/catalog/data/``.
DATA_FILE = "iec62443-4-2.yaml"

_TOP_KEYS = frozenset({"version", "standard", "changelog", "requirements"})
_ENTRY_KEYS = frozenset(
    {
        "id",
        "fr",
        "title",
        "applies_to",
        "sl_min",
        "verification",
        "protocols",
        "confirmed",
        "deviation",
    }
)
_OPTIONAL_ENTRY_KEYS = frozenset({"deviation"})

_T = TypeVar("_T")


@functools.cache
def load_catalog() -> Catalog:
    """The built-in catalog, parsed once per process.

    :raises CatalogError: the bundled data is malformed (a packaging defect).
    """
    ref = resources.files("harness.catalog").joinpath("data", DATA_FILE)
    try:
        text = ref.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read the bundled catalog {DATA_FILE}: {exc}") from exc
    return catalog_from_text(text, source=DATA_FILE)


def load_catalog_file(path: str | Path) -> Catalog:
    """Load a catalog from a file of the same format (not cached).

    :raises CatalogError: unreadable or malformed file.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"cannot read catalog {file}: {exc}") from exc
    return catalog_from_text(text, source=str(file))


def catalog_from_text(text: str, *, source: str = "<catalog>") -> Catalog:
    """Parse catalog YAML text.

    :raises CatalogError: not YAML, or malformed content.
    """
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, C or Python
    except yaml.YAMLError as exc:
        raise CatalogError(f"{source}: not valid YAML: {exc}") from exc
    return catalog_from_data(data, source=source)


def catalog_from_data(data: object, *, source: str = "<catalog>") -> Catalog:
    """Build a :class:`Catalog` from already-parsed data, checking every rule.

    :raises CatalogError: every problem found, one per line, each naming the entry.
    """
    if not isinstance(data, Mapping):
        raise CatalogError(f"{source}: top level must be a mapping")
    problems: list[str] = []
    unknown = sorted(map(str, set(data) - _TOP_KEYS))
    if unknown:
        problems.append(f"{source}: unknown top-level key(s): {', '.join(unknown)}")
    missing = sorted(_TOP_KEYS - set(data))
    if missing:
        raise CatalogError(f"{source}: missing top-level key(s): {', '.join(missing)}")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        problems.append(f"{source}: version: {version!r} is not a positive integer")
        version = 0
    standard = data["standard"]
    if not isinstance(standard, str) or not standard.strip():
        problems.append(f"{source}: standard: must be a non-empty string")
        standard = ""
    changelog = _changelog(data["changelog"], version, source, problems)
    entries = data["requirements"]
    requirements: list[Requirement] = []
    if not isinstance(entries, list) or not entries:
        problems.append(f"{source}: requirements: must be a non-empty list")
        entries = []
    for index, entry in enumerate(entries, start=1):
        name = f"entry {index}"
        if isinstance(entry, Mapping) and isinstance(entry.get("id"), str):
            name = f"{entry['id']} (entry {index})"
        try:
            if not isinstance(entry, Mapping):
                raise ValueError("must be a mapping")
            requirements.append(requirement_from_mapping(entry))
        except ValueError as exc:
            problems.append(f"{source}: {name}: {exc}")
    if problems:
        raise CatalogError("\n".join(problems))
    return Catalog(
        requirements, version=version, changelog=changelog, standard=standard, source=source
    )


def _changelog(
    raw: object, version: int, source: str, problems: list[str]
) -> tuple[ChangelogEntry, ...]:
    """Check the changelog: versions 1, 2, ... oldest first, the last equal to ``version``."""
    if not isinstance(raw, list) or not raw:
        problems.append(f"{source}: changelog: must be a non-empty list")
        return ()
    out: list[ChangelogEntry] = []
    for index, item in enumerate(raw, start=1):
        if (
            not isinstance(item, Mapping)
            or set(item) != {"version", "date", "changes"}
            or not isinstance(item["version"], int)
            or not isinstance(item["date"], (dt.date, str))
            or not isinstance(item["changes"], str)
            or not item["changes"].strip()
        ):
            problems.append(
                f"{source}: changelog entry {index}: needs exactly version (int), date, changes"
            )
            continue
        date = item["date"]
        out.append(
            ChangelogEntry(
                item["version"],
                date.isoformat() if isinstance(date, dt.date) else date,
                item["changes"].strip(),
            )
        )
    versions = [c.version for c in out]
    if versions and versions != list(range(1, len(versions) + 1)):
        problems.append(f"{source}: changelog: versions must run 1, 2, 3, ...; got {versions}")
    if versions and version and versions[-1] != version:
        problems.append(
            f"{source}: version {version} has no changelog entry (last is {versions[-1]}); "
            "add one instead of editing a released version in place"
        )
    return tuple(out)


def requirement_from_mapping(entry: Mapping[str, object]) -> Requirement:
    """Build a :class:`Requirement` from one data-file entry (kind and parent come from the ID).

    :raises ValueError: a missing, unknown or badly typed field; the message names the field.
    """
    unknown = sorted(map(str, set(entry) - _ENTRY_KEYS))
    if unknown:
        valid = ", ".join(sorted(_ENTRY_KEYS))
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; valid: {valid}")
    missing = sorted(_ENTRY_KEYS - _OPTIONAL_ENTRY_KEYS - set(entry))
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    req_id = _want(entry, "id", str)
    parts = parse_id(req_id)
    codes = _want(entry, "applies_to", list)
    applies: set[ComponentType] = set()
    for code in codes:
        if not isinstance(code, str) or code not in ComponentType.__members__:
            valid = ", ".join(ComponentType.__members__)
            raise ValueError(f"applies_to: unknown component type {code!r}; valid: {valid}")
        applies.add(ComponentType[code])
    if len(applies) != len(codes):
        raise ValueError("applies_to: duplicates")
    sl_min = entry["sl_min"]
    if sl_min is not None and (isinstance(sl_min, bool) or not isinstance(sl_min, int)):
        raise ValueError(f"sl_min: {sl_min!r} is not 1..4 or null")
    protocols = _want(entry, "protocols", list)
    if not all(isinstance(p, str) for p in protocols):
        raise ValueError(f"protocols: must be names from {', '.join(PROTOCOLS)}")
    deviation = entry.get("deviation")
    if deviation is not None and not isinstance(deviation, str):
        raise ValueError("deviation: must be a string or null")
    fr = FR.parse(_want(entry, "fr", str))
    try:
        verification = Verification(_want(entry, "verification", str))
    except ValueError:
        valid = ", ".join(v.value for v in Verification)
        raise ValueError(f"verification: {entry['verification']!r}; valid: {valid}") from None
    return Requirement(
        id=req_id,
        kind=Kind.RE if parts.re is not None else Kind(parts.prefix),
        fr=fr,
        title=_want(entry, "title", str),
        applies_to=frozenset(applies),
        sl_min=sl_min,
        verification=verification,
        parent=parts.base if parts.re is not None else None,
        confirmed=_want(entry, "confirmed", bool),
        deviation=deviation,
        protocols=tuple(sorted(protocols, key=_protocol_rank)),
    )


def _protocol_rank(name: str) -> int:
    """Position in :data:`PROTOCOLS`, unknown names last (rejected later by the model)."""
    return PROTOCOLS.index(name) if name in PROTOCOLS else len(PROTOCOLS)


def _want(entry: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    """``entry[key]`` if it has type ``kind``, else a ValueError naming the key."""
    value = entry[key]
    if not isinstance(value, kind):
        raise ValueError(f"{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value
