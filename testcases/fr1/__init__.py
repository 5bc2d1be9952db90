"""FR1 checks."""
