"""FR7 checks."""
