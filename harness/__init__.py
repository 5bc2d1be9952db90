"""harness: an IEC 62443-4-2 device security-conformance test harness for OT components."""

from __future__ import annotations

__version__ = "0.1.0"
