"""Where the bundled folders are: beside the package in a checkout, inside it when installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from harness.errors import HarnessError

_PKG = Path(__file__).resolve().parent


def bundled(name: str) -> Path:
    """The bundled folder ``name`` (``lab`` or ``device_profiles``).

    A source checkout keeps them at the top level; a wheel installs them under
    ``harness/_bundled/``.
    """
    for candidate in (_PKG.parent / name, _PKG / "_bundled" / name):
        if candidate.is_dir():
            return candidate
    raise HarnessError(f"bundled folder {name!r} not found (looked beside and inside {_PKG})")


def testcases_dir() -> Path:
    """The folder of the conformance checks (the ``testcases`` package)."""
    spec = importlib.util.find_spec("testcases")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("the testcases package is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve()
