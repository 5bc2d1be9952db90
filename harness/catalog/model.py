"""Typed model of the IEC 62443-4-2 requirement catalog.

The catalog lists the seven foundational requirements (FR), every common component requirement
(CR) with its requirement enhancements (RE), and the component-type requirements (SAR, EDR, HDR,
NDR) with theirs. Each entry records the lowest security level (SL-C) at which it is required,
the component types it applies to, and whether a black-box check over the wire can test it.

IDs are written as the standard writes them: ``CR 1.1``, ``CR 1.1 RE(1)``, ``EDR 2.13``,
``NDR 1.6 RE(1)``. :func:`normalize_id` turns looser spellings (``cr1.1``, ``CR1.1 RE1``) into
that form.

This module imports nothing beyond the standard library, so profile validation and
``harness plan`` can use the enums without paying for YAML parsing.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from harness.errors import CatalogError, UnknownRequirementError

#: Lowest and highest security level a component can claim (0 = no claim).
SL_RANGE = range(5)

#: Protocol families a wire check can use, in display order.
PROTOCOLS: tuple[str, ...] = ("modbus", "opcua", "ssh", "serial", "network")

#: Canonical requirement ID: kind, FR number, requirement number, optional enhancement number.
ID_PATTERN = re.compile(
    r"^(?P<kind>CR|SAR|EDR|HDR|NDR) (?P<fr>[1-7])\.(?P<num>[1-9]\d?)(?: RE\((?P<re>[1-9]\d?)\))?$"
)

#: Loose spelling accepted by :func:`normalize_id` (matched case-insensitively).
_LOOSE_PATTERN = re.compile(
    r"""^\s*
    (?P<kind>CR|SAR|EDR|HDR|NDR) [\s_-]*
    (?P<fr>\d+) \s*[._]\s* (?P<num>\d+)
    (?: [\s_-]* (?: RE [\s_-]* \(? \s* (?P<re>\d+) \s* \)? | \( \s* (?P<re2>\d+) \s* \) ) )?
    \s*$""",
    re.IGNORECASE | re.VERBOSE,
)


class FR(StrEnum):
    """The seven foundational requirements. ``str(FR.FR1) == "FR1"``."""

    FR1 = "FR1"
    FR2 = "FR2"
    FR3 = "FR3"
    FR4 = "FR4"
    FR5 = "FR5"
    FR6 = "FR6"
    FR7 = "FR7"

    @property
    def number(self) -> int:
        """The FR number, 1 to 7."""
        return int(self.value[2:])

    @property
    def title(self) -> str:  # type: ignore[override]  # a name, not str.title()
        """A short description of the FR in this project's own words."""
        return _FR_TITLES[self]

    @property
    def abbrev(self) -> str:
        """The customary abbreviation (IAC, UC, SI, DC, RDF, TRE, RA)."""
        return _FR_ABBREVS[self]

    @classmethod
    def parse(cls, text: str | FR) -> FR:
        """Accept ``FR1``, ``fr1``, ``FR 1`` or ``1``.

        :raises ValueError: not one of the seven FRs; the message lists them.
        """
        if isinstance(text, FR):
            return text
        key = re.sub(r"[\s_-]", "", str(text)).upper()
        if key.isdigit():
            key = f"FR{int(key)}"
        try:
            return cls(key)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown foundational requirement {text!r}; valid: {valid}") from None


_FR_TITLES: dict[FR, str] = {
    FR.FR1: "Identify and authenticate every user",
    FR.FR2: "Enforce what authenticated users may do",
    FR.FR3: "Keep the component and its data unaltered",
    FR.FR4: "Keep information secret where it must be",
    FR.FR5: "Confine data flows to where they belong",
    FR.FR6: "Notice and report security events in time",
    FR.FR7: "Keep essential functions and resources available",
}

_FR_ABBREVS: dict[FR, str] = {
    FR.FR1: "IAC",
    FR.FR2: "UC",
    FR.FR3: "SI",
    FR.FR4: "DC",
    FR.FR5: "RDF",
    FR.FR6: "TRE",
    FR.FR7: "RA",
}


class ComponentType(StrEnum):
    """The four component types of IEC 62443-4-2, named by their requirement prefix."""

    SAR = "software application"
    EDR = "embedded device"
    HDR = "host device"
    NDR = "network device"

    @property
    def profile_name(self) -> str:
        """The name a device profile uses for this type (``embedded``, ``host``, ...)."""
        return _PROFILE_NAMES[self]

    @property
    def letter(self) -> str:
        """One-letter code used in tables: E, H, N or S."""
        return self.value[0].upper()

    @classmethod
    def profile_names(cls) -> tuple[str, ...]:
        """Every name :meth:`from_profile` accepts from a profile, in a stable order."""
        return tuple(sorted(_PROFILE_NAMES.values()))

    @classmethod
    def from_profile(cls, name: str | ComponentType) -> ComponentType:
        """Map a profile's component type name to the enum.

        Accepts the profile names ``embedded``, ``host``, ``network`` and
        ``software_application``; the requirement prefixes (``EDR``, ``host device``, ...) are
        accepted too, so the CLI can take either.

        :raises ValueError: an unknown name; the message lists the valid ones.
        """
        if isinstance(name, ComponentType):
            return name
        key = str(name).strip()
        for member in cls:
            if key.casefold() in {
                member.profile_name,
                member.name.casefold(),
                member.value,
            }:
                return member
        valid = ", ".join(cls.profile_names())
        raise ValueError(f"unknown component type {name!r}; valid: {valid}")


_PROFILE_NAMES: dict[ComponentType, str] = {
    ComponentType.SAR: "software_application",
    ComponentType.EDR: "embedded",
    ComponentType.HDR: "host",
    ComponentType.NDR: "network",
}


class Kind(StrEnum):
    """What sort of catalog entry a requirement is."""

    #: Common component requirement.
    CR = "CR"
    #: Requirement enhancement of a CR or of a component-type requirement.
    RE = "RE"
    #: Software application requirement.
    SAR = "SAR"
    #: Embedded device requirement.
    EDR = "EDR"
    #: Host device requirement.
    HDR = "HDR"
    #: Network device requirement.
    NDR = "NDR"

    @property
    def component(self) -> ComponentType | None:
        """The component type a component-type kind belongs to; None for CR and RE."""
        return ComponentType.__members__.get(self.value)


class Verification(StrEnum):
    """How conformance to a requirement can be shown."""

    #: A black-box check over one of the device's interfaces can decide it.
    WIRE = "wire"
    #: It needs documentary evidence or physical inspection.
    DOCUMENT = "document"


@dataclass(frozen=True, slots=True)
class IdParts:
    """A canonical requirement ID taken apart."""

    #: CR, SAR, EDR, HDR or NDR (the prefix; an RE has its base's prefix).
    prefix: str
    #: Foundational requirement number, 1..7.
    fr: int
    #: Requirement number within the FR.
    num: int
    #: Enhancement number, or None for a base requirement.
    re: int | None

    @property
    def base(self) -> str:
        """The ID without its enhancement part."""
        return f"{self.prefix} {self.fr}.{self.num}"

    def __str__(self) -> str:
        return self.base if self.re is None else f"{self.base} RE({self.re})"


def parse_id(text: str) -> IdParts:
    """Take apart a canonical ID (``CR 1.1 RE(1)``); see :func:`normalize_id` for loose ones.

    :raises ValueError: ``text`` is not a canonical ID.
    """
    match = ID_PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a requirement ID of the form 'CR 1.1', 'CR 1.1 RE(1)' or 'EDR 2.13'"
        )
    re_num = match["re"]
    enhancement = int(re_num) if re_num else None
    return IdParts(match["kind"], int(match["fr"]), int(match["num"]), enhancement)


def normalize_id(text: str) -> str:
    """Turn a loose spelling of a requirement ID into the canonical one.

    ``cr1.1`` -> ``CR 1.1``; ``CR1.1 RE1``, ``cr 1.1 re(1)``, ``CR 1.1 (1)`` -> ``CR 1.1 RE(1)``;
    ``edr2.13`` -> ``EDR 2.13``. This is syntax only: the ID need not exist in the catalog
    (use :meth:`Catalog.normalize_id` for that).

    :raises UnknownRequirementError: the text cannot be read as a requirement ID.
    """
    match = _LOOSE_PATTERN.match(str(text))
    if match is not None:
        re_text = match["re"] or match["re2"]
        candidate = f"{match['kind'].upper()} {int(match['fr'])}.{int(match['num'])}"
        if re_text is not None:
            candidate += f" RE({int(re_text)})"
        if ID_PATTERN.match(candidate):
            return candidate
    raise UnknownRequirementError(
        f"{text!r} is not a requirement ID; write it like 'CR 1.1', 'CR 1.1 RE(1)' or 'EDR 2.13'"
    )


_PREFIX_RANK = {"CR": 0, "SAR": 1, "EDR": 2, "HDR": 3, "NDR": 4}


def order_key(req_id: str) -> tuple[int, int, int, int]:
    """Sort key for catalog order: FR, requirement number, CR before SAR/EDR/HDR/NDR, then RE.

    :raises ValueError: ``req_id`` is not canonical.
    """
    parts = parse_id(req_id)
    return (parts.fr, parts.num, _PREFIX_RANK[parts.prefix], parts.re or 0)


@dataclass(frozen=True, slots=True)
class Requirement:
    """One catalog entry: a CR, an RE, or a component-type requirement.

    ``confirmed`` says how much to trust ``sl_min``: True when at least one primary-grade public
    source states that lowest SL explicitly and none contradicts it; False when the value is an
    estimate (an analogy with a sibling clause, or a secondary source only). The standard's own
    text (each requirement's SL paragraph and Annex B, Table B.1) is the authority either way.

    Field checks run in ``__post_init__`` and raise :class:`ValueError` naming the field.
    """

    #: Canonical ID as the standard writes it: ``CR 1.1``, ``CR 1.1 RE(1)``, ``EDR 2.13``.
    id: str
    #: Entry kind; an RE's kind is :attr:`Kind.RE` whatever its base is.
    kind: Kind
    #: Foundational requirement the entry belongs to.
    fr: FR
    #: Short title in this project's own words (not the standard's text).
    title: str
    #: Component types it applies to; empty for a "no component-level requirement" placeholder.
    applies_to: frozenset[ComponentType]
    #: Lowest SL-C at which it is required (also required above); None for a placeholder.
    sl_min: int | None
    #: Whether a wire check can decide it, or it needs documentary evidence.
    verification: Verification
    #: ID of the base requirement for an RE; None otherwise.
    parent: str | None = None
    #: Whether ``sl_min`` is confirmed by a primary-grade source (see the class docstring).
    confirmed: bool = True
    #: Why this catalog's SL or types differ from the reference catalog; None when they agree.
    deviation: str | None = None
    #: Protocol families (of :data:`PROTOCOLS`) a wire check could use; empty for documents.
    protocols: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        parts = parse_id(self.id)
        expected_kind = Kind.RE if parts.re is not None else Kind(parts.prefix)
        if self.kind is not expected_kind:
            raise ValueError(f"kind: {self.kind!s} does not match the ID; expected {expected_kind}")
        if self.fr.number != parts.fr:
            raise ValueError(f"fr: {self.fr!s} does not match the ID; expected FR{parts.fr}")
        expected_parent = parts.base if parts.re is not None else None
        if self.parent != expected_parent:
            raise ValueError(
                f"parent: {self.parent!r} does not match the ID; expected {expected_parent!r}"
            )
        if not self.title.strip() or "\n" in self.title:
            raise ValueError("title: must be a non-empty single line")
        if self.sl_min is not None and (
            isinstance(self.sl_min, bool) or self.sl_min not in range(1, 5)
        ):
            raise ValueError(f"sl_min: {self.sl_min!r} is not 1..4 or null")
        if (self.sl_min is None) != (not self.applies_to):
            raise ValueError(
                "sl_min/applies_to: a placeholder has sl_min null AND applies_to empty; "
                "any other entry needs both"
            )
        if not all(isinstance(c, ComponentType) for c in self.applies_to):
            raise ValueError(f"applies_to: {sorted(map(str, self.applies_to))} has unknown types")
        component = Kind(parts.prefix).component
        if component is not None and self.applies_to - {component}:
            raise ValueError(f"applies_to: a {parts.prefix} entry can apply only to {parts.prefix}")
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"protocols: unknown {unknown}; valid: {', '.join(PROTOCOLS)}")
        if len(set(self.protocols)) != len(self.protocols):
            raise ValueError("protocols: duplicates")
        if self.verification is Verification.WIRE and not self.protocols:
            raise ValueError("protocols: a wire requirement needs at least one protocol")
        if self.verification is Verification.DOCUMENT and self.protocols:
            raise ValueError("protocols: a document requirement takes none")
        if self.deviation is not None and not self.deviation.strip():
            raise ValueError("deviation: must be null or a non-empty reason")

    @property
    def is_placeholder(self) -> bool:
        """True for a "no component-level requirement" entry (CR 2.3, CR 5.4, CR 7.5)."""
        return self.sl_min is None

    def applies(self, component: ComponentType, sl: int) -> bool:
        """Whether a component of this type claiming ``sl`` for this FR must meet the entry.

        SL 0 means nothing applies; a placeholder never applies.

        :param component: the component type under test.
        :param sl: the SL-C claimed for :attr:`fr`, 0..4.
        :raises ValueError: ``sl`` outside 0..4.
        """
        if isinstance(sl, bool) or sl not in SL_RANGE:
            raise ValueError(f"sl: {sl!r} is not a security level 0..4")
        return self.sl_min is not None and component in self.applies_to and self.sl_min <= sl


@dataclass(frozen=True, slots=True)
class ChangelogEntry:
    """One version of the built-in catalog and what changed in it."""

    #: Catalog version this entry introduced.
    version: int
    #: ISO date of the change.
    date: str
    #: What changed, in a sentence or two.
    changes: str


class Catalog:
    """The requirement catalog: lookup, loose-ID normalization, selection, catalog order.

    Construct through :func:`harness.catalog.load_catalog`; the constructor checks cross-entry
    rules (unique IDs, every RE's parent present with the same FR, an RE never required below
    or outside its parent) and raises :class:`~harness.errors.CatalogError` naming the entry.
    """

    __slots__ = ("_by_id", "_children", "_order", "changelog", "source", "standard", "version")

    def __init__(
        self,
        requirements: Iterable[Requirement],
        *,
        version: int,
        changelog: Iterable[ChangelogEntry] = (),
        standard: str = "IEC 62443-4-2:2019",
        source: str = "<catalog>",
    ) -> None:
        """:param requirements: the entries, in any order.
        :param version: version of this catalog data (see :attr:`changelog`).
        :param changelog: every version so far, oldest first.
        :param standard: the edition of the standard the data describes.
        :param source: where the data came from, for error messages.
        """
        #: Version of the catalog data.
        self.version = version
        #: Every version so far, oldest first.
        self.changelog: tuple[ChangelogEntry, ...] = tuple(changelog)
        #: Edition of the standard the data describes.
        self.standard = standard
        #: Where the data came from.
        self.source = source
        by_id: dict[str, Requirement] = {}
        problems: list[str] = []
        for req in requirements:
            if req.id in by_id:
                problems.append(f"{source}: {req.id}: duplicate ID")
            by_id[req.id] = req
        for req in by_id.values():
            if req.parent is None:
                continue
            parent = by_id.get(req.parent)
            if parent is None:
                problems.append(f"{source}: {req.id}: parent {req.parent} is not in the catalog")
                continue
            if parent.fr is not req.fr:
                problems.append(f"{source}: {req.id}: in {req.fr} but its parent is in {parent.fr}")
            if not req.applies_to <= parent.applies_to:
                problems.append(f"{source}: {req.id}: applies to types its parent does not")
            if req.sl_min is not None and (parent.sl_min is None or req.sl_min < parent.sl_min):
                problems.append(
                    f"{source}: {req.id}: required from SL {req.sl_min}, "
                    f"below its parent's {parent.sl_min}"
                )
        if problems:
            raise CatalogError("\n".join(problems))
        self._order: tuple[Requirement, ...] = tuple(
            sorted(by_id.values(), key=lambda r: order_key(r.id))
        )
        self._by_id: dict[str, Requirement] = {r.id: r for r in self._order}
        children: dict[str, list[Requirement]] = {}
        for req in self._order:
            if req.parent is not None:
                children.setdefault(req.parent, []).append(req)
        self._children: dict[str, tuple[Requirement, ...]] = {
            k: tuple(v) for k, v in children.items()
        }

    def __iter__(self) -> Iterator[Requirement]:
        """Entries in catalog order: by FR, then requirement number, each RE after its parent."""
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, item: object) -> bool:
        """True when ``item`` (a loose or canonical ID string) names an entry."""
        if not isinstance(item, str):
            return False
        try:
            return normalize_id(item) in self._by_id
        except UnknownRequirementError:
            return False

    def __repr__(self) -> str:
        return f"<Catalog {self.standard} v{self.version}: {len(self)} requirements>"

    @property
    def ids(self) -> tuple[str, ...]:
        """Every ID in catalog order."""
        return tuple(r.id for r in self._order)

    @property
    def frs(self) -> tuple[FR, ...]:
        """The FRs that have entries, in order (all seven for the built-in catalog)."""
        return tuple(sorted({r.fr for r in self._order}, key=lambda f: f.number))

    def normalize_id(self, text: str) -> str:
        """Canonical ID for a loose spelling, checked against the catalog.

        :raises UnknownRequirementError: unreadable, or not in the catalog (with suggestions).
        """
        canonical = normalize_id(text)
        if canonical not in self._by_id:
            raise UnknownRequirementError(self._unknown_message(text, canonical))
        return canonical

    def get(self, req_id: str) -> Requirement:
        """The entry for ``req_id`` (loose spellings accepted).

        :raises UnknownRequirementError: unreadable or unknown ID; the message suggests close IDs.
        """
        return self._by_id[self.normalize_id(req_id)]

    def children(self, req_id: str) -> tuple[Requirement, ...]:
        """The REs of ``req_id`` in order; empty for an entry without enhancements.

        :raises UnknownRequirementError: unknown ID.
        """
        return self._children.get(self.normalize_id(req_id), ())

    def select(
        self,
        fr: FR | str | None = None,
        sl: int | None = None,
        component: ComponentType | str | None = None,
    ) -> tuple[Requirement, ...]:
        """Entries matching every given filter, in catalog order.

        :param fr: only this FR (``FR1``, ``1``, ...).
        :param sl: only entries required at this SL (``sl_min <= sl``); 0 selects nothing, and
            placeholders are never selected when ``sl`` is given.
        :param component: only entries that apply to this type (a profile name is accepted);
            placeholders apply to no type.
        :raises ValueError: unknown FR or component name, or ``sl`` outside 0..4.
        """
        want_fr = FR.parse(fr) if fr is not None else None
        want_type = ComponentType.from_profile(component) if component is not None else None
        if sl is not None and (isinstance(sl, bool) or sl not in SL_RANGE):
            raise ValueError(f"sl: {sl!r} is not a security level 0..4")
        out: list[Requirement] = []
        for req in self._order:
            if want_fr is not None and req.fr is not want_fr:
                continue
            if want_type is not None and want_type not in req.applies_to:
                continue
            if sl is not None and (req.sl_min is None or req.sl_min > sl):
                continue
            out.append(req)
        return tuple(out)

    def _unknown_message(self, text: str, canonical: str) -> str:
        """Explain an unknown ID and suggest the nearest real ones."""
        parts = parse_id(canonical)
        # Same number under another prefix first: "CR 3.10" exists only as EDR/HDR/NDR 3.10.
        siblings = [
            r.id
            for r in self._order
            if (p := parse_id(r.id)).fr == parts.fr and p.num == parts.num and p.re == parts.re
        ]
        close = difflib.get_close_matches(canonical, self._by_id.keys(), n=4, cutoff=0.75)
        suggestions = list(dict.fromkeys([*siblings, *close]))[:5]
        shown = repr(text) if str(text).strip() == canonical else f"{text!r} ({canonical})"
        message = f"unknown requirement {shown}"
        if suggestions:
            message += f"; did you mean {', '.join(suggestions)}?"
        return message


def _types_cell(applies_to: frozenset[ComponentType]) -> str:
    """Fixed-position letters E, H, N, S; ``-`` where the type does not apply."""
    order = (ComponentType.EDR, ComponentType.HDR, ComponentType.NDR, ComponentType.SAR)
    return "".join(c.letter if c in applies_to else "-" for c in order)


#: Legend for the TYPES column of :func:`format_table`.
TYPES_LEGEND = "types: E embedded device, H host device, N network device, S software application"

_MIN_TITLE_WIDTH = 12


def format_table(requirements: Iterable[Requirement], *, width: int | None = None) -> str:
    """Render requirements as a plain-text table (ID, FR, SL, TYPES, VERIFICATION, TITLE).

    :param requirements: the rows, in the order given.
    :param width: maximum line length; titles are cut with ``...`` to fit (never below a
        readable minimum). None means no limit.
    :returns: the table, header first, lines joined with ``\\n``, no trailing newline.
    """
    header = ("ID", "FR", "SL", "TYPES", "VERIFICATION", "TITLE")
    rows = [
        (
            r.id,
            str(r.fr),
            "-" if r.sl_min is None else str(r.sl_min),
            _types_cell(r.applies_to),
            str(r.verification),
            r.title,
        )
        for r in requirements
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    gap = "  "
    if width is not None:
        fixed = sum(widths[:-1]) + len(gap) * (len(header) - 1)
        widths[-1] = min(widths[-1], max(width - fixed, _MIN_TITLE_WIDTH))

    def line(cells: tuple[str, ...]) -> str:
        title = cells[-1]
        if len(title) > widths[-1]:
            title = title[: widths[-1] - 3].rstrip() + "..."
        padded = [c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=True)]
        return gap.join([*padded, title]).rstrip()

    separator = gap.join("-" * w for w in widths)
    return "\n".join([line(header), separator, *(line(r) for r in rows)])
