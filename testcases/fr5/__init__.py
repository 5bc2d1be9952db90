"""FR5 checks."""
