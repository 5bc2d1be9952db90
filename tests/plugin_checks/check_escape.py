"""A fake check that tries to reach an address outside the allow-list (for test_safety.py)."""

from __future__ import annotations

import os
import socket

import pytest

pytestmark = pytest.mark.requirement("CR 7.7")


@pytest.mark.protocol("network")
@pytest.mark.weakness("fake.none")
def test_reaches_outside() -> None:
    """Tries a TCP connect and a UDP datagram to an address the profile does not declare."""
    port = int(os.environ["HARNESS_ESCAPE_PORT"])
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.sendto(b"escape", ("127.0.0.2", port))
    finally:
        udp.close()
    socket.create_connection(("127.0.0.2", port), timeout=1).close()
