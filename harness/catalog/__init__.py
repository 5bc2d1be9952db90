"""The IEC 62443-4-2 requirement catalog: typed model, bundled data and loader.

>>> from harness.catalog import load_catalog, ComponentType
>>> catalog = load_catalog()
>>> catalog.get("cr1.1 re1").id
'CR 1.1 RE(1)'
>>> catalog.get("CR 1.1").applies(ComponentType.EDR, 1)
True
"""

from __future__ import annotations

from harness.catalog.loader import (
    DATA_FILE,
    catalog_from_data,
    catalog_from_text,
    load_catalog,
    load_catalog_file,
)
from harness.catalog.model import (
    FR,
    ID_PATTERN,
    PROTOCOLS,
    SL_RANGE,
    TYPES_LEGEND,
    Catalog,
    ChangelogEntry,
    ComponentType,
    IdParts,
    Kind,
    Requirement,
    Verification,
    format_table,
    normalize_id,
    order_key,
    parse_id,
)

__all__ = [
    "DATA_FILE",
    "FR",
    "ID_PATTERN",
    "PROTOCOLS",
    "SL_RANGE",
    "TYPES_LEGEND",
    "Catalog",
    "ChangelogEntry",
    "ComponentType",
    "IdParts",
    "Kind",
    "Requirement",
    "Verification",
    "catalog_from_data",
    "catalog_from_text",
    "format_table",
    "load_catalog",
    "load_catalog_file",
    "normalize_id",
    "order_key",
    "parse_id",
]
