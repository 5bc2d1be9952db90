"""The pytest outcomes behind NOT APPLICABLE and NOT RUN.

They are pytest skips (pytest must stop the check there), but a verdict is not a pytest
concept: :mod:`harness.verdict` raises these lazily, so that ``harness plan`` and the report
commands never import pytest.
"""

from __future__ import annotations

import pytest


class NotApplicable(pytest.skip.Exception):  # type: ignore[misc, name-defined]
    """Raised by a check that finds at run time that its requirement does not apply."""


class NotRun(pytest.skip.Exception):  # type: ignore[misc, name-defined]
    """Raised by a check that must not or cannot run (not allowed, no privileges)."""
