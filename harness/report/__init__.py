"""Reports of a run: results.json (the typed source of truth), junit.xml, the matrix."""

from __future__ import annotations

from harness.report.results import build_results, write_run

__all__ = ["build_results", "write_run"]
