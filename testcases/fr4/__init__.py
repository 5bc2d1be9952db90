"""FR4 checks."""
