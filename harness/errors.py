"""One exception hierarchy for the library. Only the CLI prints errors and picks exit codes."""

from __future__ import annotations


class HarnessError(Exception):
    """Base of every error the harness raises on purpose."""


class UsageError(HarnessError):
    """Bad command-line use or bad input data (exit code 2)."""


class CatalogError(HarnessError):
    """The bundled requirement catalog is malformed (a packaging defect)."""


class UnknownRequirementError(UsageError):
    """A requirement ID that the catalog does not know."""


class ProfileError(UsageError):
    """A device profile that cannot be loaded; carries every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems) if problems else source)


class SecretError(HarnessError):
    """A secret reference that cannot be resolved (missing env var or file)."""


class SafetyViolation(HarnessError):
    """The safety guard refused an action (destination not allowed, cap exceeded)."""


class TargetError(HarnessError):
    """The device could not be reached, timed out, or answered something unexpected."""


class LabError(HarnessError):
    """A lab could not be started, inspected or stopped."""
