"""Proof of the CR 3.6 process-image check: it FAILS on ``modbus.torn_reads``, PASSES on the
hardened lab, and says NOT APPLICABLE or ERROR where it cannot judge.

The judgement itself (steps modulo 2**32, falls, carries) is tested first without a device.
The lab runs use the ``modbus_tcp`` simulator alone and ``harness run`` as a subprocess, with
the profile's load duration cut to 1.5 s (about 300 reads and 20 carries of the scan clock).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testcases.fr3.test_cr3_6_process_image_modbus import (
    MIN_CARRIES,
    MIN_SAMPLES,
    Sample,
    describe_fall,
    judge,
    step,
)

pytestmark = pytest.mark.timeout(180)

CHECK = "test_modbus_tcp_counter_reads_are_whole_under_load"
WEAKNESS = "modbus.torn_reads"


def sample(value: int, t: float = 0.0) -> Sample:
    return Sample(t, value >> 16, value & 0xFFFF, "0001", "0002")


# --------------------------------------------------------------------------- the judgement
def test_step_counts_a_wrap_of_the_counter_as_a_small_step_forward() -> None:
    assert step(sample(0xFFFF_FFF0), sample(0x0000_0010)) == 0x20
    assert step(sample(0x0001_0000), sample(0x0000_FFFF)) == -1
    assert step(sample(5), sample(5)) == 0


def test_judge_counts_carries_and_steps_of_a_counter_that_only_counts_up() -> None:
    values = [0x0000_FFF0, 0x0001_0005, 0x0001_0005, 0x0001_8000, 0x0002_0001, 0x7FFF_FFFF,
              0xFFFF_FFF0, 3]
    got = judge([sample(v, i / 10) for i, v in enumerate(values)])
    assert got.falls == []
    assert got.samples == len(values)
    assert got.carries == 5  # every change of the high word, the wrap 0xffff -> 0x0000 included
    assert got.moved
    assert got.summary()["largest_step"] == 0xFFFF_FFF0 - 0x7FFF_FFFF
    # half the value space or more forward is a fall: no counter jumps that far between reads
    assert judge([sample(0x0002_0001), sample(0x8002_0001)]).falls


def test_judge_reports_a_torn_read_as_a_fall_with_both_reads() -> None:
    # the low word carried, the high word did not follow: a read from two scans
    before, torn, after = sample(0x002D_EDD0, 0.01), sample(0x002D_14E0, 0.02), \
        sample(0x002E_3BF0, 0.03)
    got = judge([before, torn, after])
    assert got.falls == [(before, torn)]
    assert step(before, torn) == -55536
    text = describe_fall(before, torn)
    assert "0x002dedd0" in text and "0x002d14e0" in text and "-55536" in text
    assert "request 0001, reply 0002" in text


def test_a_counter_that_stands_still_did_not_move() -> None:
    got = judge([sample(7), sample(7), sample(7)])
    assert not got.moved
    assert got.falls == [] and got.carries == 0


# --------------------------------------------------------------------------- on the lab
def short_profile(running: Any, write_profile: Callable[..., Path], *, duration_s: float = 1.5,
                  counters: list[dict[str, Any]] | None = None) -> Path:
    """The lab's profile with a shorter load (and other counters, when given)."""
    data = running.profile()
    data["safety"]["max_load_duration_s"] = duration_s
    if counters is not None:
        data["points"]["counters"] = counters
    return write_profile(data)


def the_check(run: Any) -> dict[str, Any]:
    found = run.checks(f"::{CHECK}")
    assert len(found) == 1, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-2000:]}"
    return dict(found[0])


def evidence_entries(run: Any, check: dict[str, Any]) -> list[dict[str, Any]]:
    (path,) = [run.out / p for p in check["evidence"] if p.endswith("exchanges.jsonl")]
    return [json.loads(line) for line in path.read_text().splitlines()]


def evidence_csv(run: Any, check: dict[str, Any], name: str) -> list[dict[str, str]]:
    (path,) = [run.out / p for p in check["evidence"] if p.endswith(name)]
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def judgement(entries: list[dict[str, Any]]) -> dict[str, Any]:
    (note,) = [e for e in entries if e["kind"] == "note" and e["summary"] == "judgement"]
    (counter,) = note["data"]["counters"].values()
    return dict(counter)


def test_hardened_lab_passes_with_the_reads_and_the_load_in_evidence(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    running = lab(["modbus_tcp"])
    run = run_harness(short_profile(running, write_profile), k=CHECK)
    check = the_check(run)
    assert check["verdict"] == "PASS", check["reason"]
    assert run.code == 0
    entries = evidence_entries(run, check)
    figures = judgement(entries)
    assert figures["falls"] == 0
    assert figures["samples"] >= MIN_SAMPLES
    assert figures["carries"] >= MIN_CARRIES
    # every read is in the evidence, and the timeline agrees: no step below zero
    reads = [e for e in entries if e["kind"] == "sent" and "32-bit counter" in e["summary"]]
    assert len(reads) >= figures["samples"]
    rows = evidence_csv(run, check, "counter-HR5.csv")
    assert len(rows) == figures["samples"]
    assert all(int(r["step"]) >= 0 for r in rows[1:])
    # the reads ran under a flood, watched by the monitor
    flood = [e for e in entries if e["summary"] == "load result: modbus_flood"]
    assert flood and flood[0]["data"]["sent"] > 0
    assert flood[0]["data"]["rate_cap"] <= 2000 - 200  # the cap minus the sampler's share
    assert any(r.get("phase") == "load:modbus_flood"
               for r in evidence_csv(run, check, "monitor.csv"))


def test_torn_reads_fail_with_the_offending_frames(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    running = lab(["modbus_tcp"], weaknesses=[WEAKNESS])
    run = run_harness(short_profile(running, write_profile), k=CHECK)
    check = the_check(run)
    assert check["verdict"] == "FAIL", check["reason"]
    assert check["weakness"] == WEAKNESS
    assert run.code == 1
    reason = check["reason"]
    assert "torn" in reason and "HR 5..6" in reason
    # the frames named in the reason are the device's own replies, recorded as received
    entries = evidence_entries(run, check)
    received = {e["hex"] for e in entries if e["kind"] == "received" and "hex" in e}
    replies = re.findall(r"reply ([0-9a-f]{18,})", reason)
    assert replies, reason
    assert set(replies) <= received
    # each fall is a missed carry: the low word wrapped, the high word stayed behind
    figures = judgement(entries)
    assert figures["falls"] >= 1
    for fall in figures["falls_seen"]:
        before, after = fall["before"], fall["after"]
        assert after["high"] == before["high"] and after["low"] < before["low"], fall
        assert after["reply"] in received
        assert -65536 < fall["step"] < 0


def test_no_declared_counter_is_not_applicable_and_a_still_one_is_error(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    running = lab(["modbus_tcp"])
    undeclared = run_harness(short_profile(running, write_profile, counters=[]), k=CHECK)
    check = the_check(undeclared)
    assert check["verdict"] == "NOT APPLICABLE", check["reason"]
    assert "points.counters" in check["reason"]
    # the scratch registers hold still: a PASS must rest on a counter seen counting
    still = [{"protocol": "modbus", "table": "holding", "address": 100}]
    run = run_harness(short_profile(running, write_profile, duration_s=1.0, counters=still),
                      k=CHECK)
    check = the_check(run)
    assert check["verdict"] == "ERROR", check["reason"]
    assert "did not count" in check["reason"]
    assert run.code == 3


def test_too_few_reads_within_the_caps_are_error(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    running = lab(["modbus_tcp"])
    run = run_harness(short_profile(running, write_profile, duration_s=0.2), k=CHECK)
    check = the_check(run)
    assert check["verdict"] == "ERROR", check["reason"]
    assert f"{MIN_SAMPLES} needed" in check["reason"]
