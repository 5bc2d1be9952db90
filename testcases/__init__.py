"""The conformance checks: pytest tests grouped by foundational requirement (see README.md)."""
