"""FR3 checks."""
