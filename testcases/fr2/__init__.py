"""FR2 checks."""
