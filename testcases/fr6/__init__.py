"""FR6 checks."""
