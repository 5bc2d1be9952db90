"""Fake checks for test_progress.py (not collected): one long "load" check, one quick one."""

from __future__ import annotations

import time

import pytest

from harness import progress

pytestmark = [pytest.mark.requirement("CR 7.1"), pytest.mark.protocol("modbus_tcp")]


def test_load() -> None:
    """Keeps working under load."""
    for _ in range(8):
        progress.update(rate=123.0, latency_ms=4.5)
        time.sleep(0.1)


def test_quick() -> None:
    """Answers at once."""
