"""The PLC's 32-bit scan clock (HR 5..6) and the ``modbus.torn_reads`` weakness.

In process: the clock's two words after every scan, hardened and torn, its wrap, and that the
weakness changes nothing else in the image. As a process: a raw Modbus/TCP client reading
HR 5..6 as fast as it can sees the value fall at carries on ``modbus.torn_reads`` and never on
the hardened simulator.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest

from simulators.plc import (
    PLC,
    SCAN_CLOCK_HIGH,
    SCAN_CLOCK_LOW,
    SCAN_CLOCK_MODULUS,
    TABLE_SIZE,
)

pytestmark = pytest.mark.timeout(60)

#: Scans in the in-process runs: 100 carries of the clock at 10 ms a scan.
SCANS = 660
#: Seconds a process test may read at most.
READ_BOUND_S = 5.0
#: Carries a hardened reader must see without a fall.
CARRIES = 5


def image_clock(plc: PLC) -> int:
    """The clock as a client reading both words at once sees it."""
    with plc.image.lock:
        return plc.image.holding[SCAN_CLOCK_HIGH] * 65536 + plc.image.holding[SCAN_CLOCK_LOW]


def test_clock_advances_by_the_scan_period_in_microseconds() -> None:
    assert PLC(0.01).scan_clock_step_us == 10_000
    assert PLC(0.001).scan_clock_step_us == 1_000
    plc = PLC(0.01)
    for n in range(1, 20):
        plc.scan()
        assert plc.scan_clock_us == n * 10_000
        assert image_clock(plc) == plc.scan_clock_us


def test_hardened_clock_words_always_make_the_true_value() -> None:
    plc = PLC(0.01)
    carries = 0
    for _ in range(SCANS):
        before = plc.scan_clock_us
        plc.scan()
        carries += plc.scan_clock_us >> 16 != before >> 16
        assert image_clock(plc) == plc.scan_clock_us
    assert carries >= 100


def test_torn_clock_lags_its_high_word_one_scan_after_each_carry() -> None:
    plc = PLC(0.01, torn_reads=True)
    torn = carries = 0
    for _ in range(SCANS):
        before = plc.scan_clock_us
        plc.scan()
        carried = plc.scan_clock_us >> 16 != before >> 16
        carries += carried
        shown = image_clock(plc)
        if carried:  # the new low word with the old high word: 65536 below the clock
            torn += 1
            assert shown == plc.scan_clock_us - 65536
            assert shown < before  # and below what a read before the carry saw
        else:
            assert shown == plc.scan_clock_us
    assert torn == carries >= 100


def test_clock_wraps_at_two_to_the_32() -> None:
    for torn_reads in (False, True):
        plc = PLC(0.01, torn_reads=torn_reads)
        plc.scan_clock_us = SCAN_CLOCK_MODULUS - 5_000
        plc.scan()
        plc.scan()  # a second scan: the torn PLC has published the wrapped high word by now
        assert plc.scan_clock_us == 15_000
        assert image_clock(plc) == 15_000


def test_the_weakness_changes_nothing_but_the_clock_words() -> None:
    hardened, torn = PLC(0.01), PLC(0.01, torn_reads=True)
    for _ in range(SCANS):
        hardened.scan()
        torn.scan()
        for table in ("holding", "input_registers", "coils", "discrete_inputs"):
            mine, theirs = getattr(hardened.image, table), getattr(torn.image, table)
            if mine != theirs:
                differ = {a for a in range(TABLE_SIZE) if mine[a] != theirs[a]}
                assert table == "holding" and differ == {SCAN_CLOCK_HIGH}, (table, differ)


# --------------------------------------------------------------------------- as a process
def read_clock_until(event: dict[str, Any], *, stop_at_fall: bool) -> tuple[int, int, int]:
    """Read HR 5..6 back to back (one FC 3 for both) until a fall (if ``stop_at_fall``) or
    :data:`CARRIES` carries, within :data:`READ_BOUND_S`; return (reads, carries, falls)."""
    ep = event["endpoints"]["modbus"]
    reads = carries = falls = 0
    previous: int | None = None
    deadline = time.monotonic() + READ_BOUND_S
    with socket.create_connection((ep["host"], ep["port"]), timeout=3) as sock:
        while time.monotonic() < deadline:
            reads += 1
            tid = reads & 0xFFFF
            sock.sendall(struct.pack(">HHHBBHH", tid, 0, 6, ep["unit"], 3, SCAN_CLOCK_HIGH, 2))
            reply = b""
            while len(reply) < 13:
                chunk = sock.recv(13 - len(reply))
                assert chunk, "the simulator closed the connection"
                reply += chunk
            rtid, _, _, _, fc, size, high, low = struct.unpack(">HHHBBBHH", reply)
            assert (rtid, fc, size) == (tid, 3, 4), reply.hex()
            value = high * 65536 + low
            if previous is not None:
                delta = (value - previous) % SCAN_CLOCK_MODULUS
                if delta >= SCAN_CLOCK_MODULUS // 2:
                    falls += 1
                    if stop_at_fall:
                        break
                elif value >> 16 != previous >> 16:
                    carries += 1
                    if carries >= CARRIES and not stop_at_fall:
                        break
            previous = value
    return reads, carries, falls


def test_torn_reads_simulator_serves_a_falling_clock(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp", "--weakness", "modbus.torn_reads")
    assert event["weaknesses"] == ["modbus.torn_reads"]
    reads, _, falls = read_clock_until(event, stop_at_fall=True)
    assert falls == 1, f"no fall of HR 5..6 in {reads} reads over {READ_BOUND_S} s"


def test_hardened_simulator_serves_a_clock_that_never_falls(start_simulator: Any) -> None:
    event = start_simulator("modbus_tcp")
    reads, carries, falls = read_clock_until(event, stop_at_fall=False)
    assert carries >= CARRIES, f"only {carries} carries in {reads} reads"
    assert falls == 0, f"{falls} falls of HR 5..6 in {reads} reads"
