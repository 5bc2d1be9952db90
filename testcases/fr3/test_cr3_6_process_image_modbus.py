"""CR 3.6 over Modbus/TCP: a multi-register value is served whole, from one scan, under load."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from statistics import median
from typing import TYPE_CHECKING, Any, cast

import pytest

from harness import progress
from harness.errors import HarnessError, TargetError
from harness.protocols import mbap
from harness.safety import Deadline, RateLimiter
from harness.verdict import fail, not_applicable

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import LoadKit
    from harness.fixtures.modbus import ModbusChannels
    from harness.load import LoadResult
    from harness.profile import ModbusCounter, Profile
    from harness.protocols.modbus import ModbusTcpClient

pytestmark = pytest.mark.requirement("CR 3.6")

#: A counter's value space: two 16-bit registers.
MODULUS = 1 << 32
WORD = 1 << 16
#: Highest read rate (reads/s) of the sampling connection; the rest of the profile's request
#: cap goes to the flood.
SAMPLE_RATE = 200.0
#: Most reads the sampling connection makes in one run (each is two evidence entries).
MAX_SAMPLES = 2000
#: Least reads of each counter a verdict needs.
MIN_SAMPLES = 100
#: Least carries (changes of the high word between two reads) of each counter a PASS needs: a
#: read can only be torn while both words change, so a window without carries proves nothing.
MIN_CARRIES = 3
#: Offending pairs named in the FAIL message (the judgement note keeps up to MAX_NOTED).
MAX_IN_MESSAGE = 3
MAX_NOTED = 20
#: Flood connections at most (one connection is the monitor's, one the sampler's).
MAX_FLOOD_CONNECTIONS = 4
#: Seconds the flood thread may overrun its duration before the check gives up on it.
FLOOD_JOIN_GRACE_S = 10.0

_FC = {"holding": 3, "input": 4}
_TABLE = {"holding": "HR", "input": "IR"}


@dataclass(frozen=True)
class Sample:
    """One whole read of a counter's two registers."""

    #: Seconds since sampling began.
    t: float
    #: The most and least significant words, as decoded by the declared word order.
    high: int
    low: int
    #: The request and reply ADUs (hex), the evidence of this read.
    request: str
    reply: str

    @property
    def value(self) -> int:
        """The 32-bit value the two words make."""
        return self.high * WORD + self.low


def step(before: Sample, after: Sample) -> int:
    """How far the counter moved from ``before`` to ``after``, modulo 2**32 as a signed number:
    a wrap of the counter (0xFFFFxxxx to 0x0000xxxx) is a small step forward; a negative step is
    a fall no counting-up counter makes."""
    delta = (after.value - before.value) % MODULUS
    return delta - MODULUS if delta >= MODULUS // 2 else delta


@dataclass
class CounterJudgement:
    """What the reads of one counter showed."""

    #: Reads judged.
    samples: int = 0
    #: Pairs of successive reads whose high word differs (a carry happened in between).
    carries: int = 0
    #: Pairs whose value fell: (the read before, the read that fell).
    falls: list[tuple[Sample, Sample]] = field(default_factory=list)
    #: Forward steps (for the reader: median and largest).
    steps: list[int] = field(default_factory=list)

    @property
    def moved(self) -> bool:
        """True if the counter counted at all between the reads."""
        return any(s > 0 for s in self.steps) or bool(self.falls)

    def summary(self) -> dict[str, Any]:
        """The figures for the judgement note."""
        return {
            "samples": self.samples,
            "carries": self.carries,
            "falls": len(self.falls),
            "median_step": median(self.steps) if self.steps else None,
            "largest_step": max(self.steps) if self.steps else None,
        }


def judge(samples: list[Sample]) -> CounterJudgement:
    """Judge successive reads of one counter: every step must be zero or forward (mod 2**32)."""
    out = CounterJudgement(samples=len(samples))
    for before, after in pairwise(samples):
        moved = step(before, after)
        if moved < 0:
            out.falls.append((before, after))
            continue
        out.steps.append(moved)
        if after.high != before.high:
            out.carries += 1
    return out


def describe_fall(before: Sample, after: Sample) -> str:
    """One offending pair, with both reads' frames."""
    return (
        f"0x{before.value:08x} at t={before.t:.3f} s then 0x{after.value:08x} at "
        f"t={after.t:.3f} s ({step(before, after):+d}; request {after.request}, reply "
        f"{after.reply}; the read before: request {before.request}, reply {before.reply})"
    )


def counter_name(counter: ModbusCounter) -> str:
    """``HR 5..6 (high word first)``."""
    table = _TABLE[counter.table]
    order = "high word first" if counter.word_order == "high_first" else "low word first"
    return f"{table} {counter.address}..{counter.address + 1} ({order})"


def read_counter(client: ModbusTcpClient, counter: ModbusCounter, t: float) -> Sample:
    """One whole read of ``counter`` (one request for both registers).

    :raises TargetError: no reply, an exception reply, or a reply that is not two registers.
    """
    pdu = mbap.read_pdu(_FC[counter.table], counter.address, 2)
    ex = client.exchange(pdu, summary=f"read 32-bit counter {counter_name(counter)}")
    frames = f"request {ex.request.hex()}, reply {ex.reply.hex() or 'none'}"
    if not ex.accepted or ex.problem is not None or ex.response is None:
        raise TargetError(f"{client.channel}: cannot read the counter {counter_name(counter)}: "
                          f"{ex.describe()} ({frames})")
    try:
        words = ex.response.registers()
    except mbap.FrameError as exc:
        raise TargetError(f"{client.channel}: counter read: {exc} ({frames})") from None
    if len(words) != 2:
        raise TargetError(f"{client.channel}: counter read: {len(words)} registers for 2 "
                          f"({frames})")
    high, low = (words[0], words[1]) if counter.word_order == "high_first" else (words[1],
                                                                                 words[0])
    return Sample(round(t, 6), high, low, ex.request.hex(), ex.reply.hex())


class _Flood:
    """A capped Modbus read flood of the ``load`` kit, run in a thread of its own so that the
    check's own reads overlap it.

    :param run: starts the flood and returns its result (blocks for the flood's duration).
    :param duration_s: the flood's duration, to bound the wait for its end.
    """

    def __init__(self, run: Callable[[], LoadResult], duration_s: float) -> None:
        self.duration_s = duration_s
        self.result: LoadResult | None = None
        self.error: BaseException | None = None
        self._run = run
        self._thread = threading.Thread(target=self._main, name="cr3_6-flood", daemon=True)

    def _main(self) -> None:
        try:
            self.result = self._run()
        except BaseException as exc:  # handed to the check's thread by join()
            self.error = exc

    def start(self) -> None:
        """Start the flood thread."""
        self._thread.start()

    def join(self) -> LoadResult:
        """Wait (bounded) for the flood; re-raise what stopped it (an ERROR for the check)."""
        self._thread.join(self.duration_s + FLOOD_JOIN_GRACE_S)
        if self._thread.is_alive():
            raise HarnessError(f"the flood did not end within {self.duration_s:g} s + "
                               f"{FLOOD_JOIN_GRACE_S:g} s")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.mark.protocol("modbus_tcp")
@pytest.mark.weakness("modbus.torn_reads")
@pytest.mark.disruptive(traffic="reads of each declared 32-bit counter on one connection "
                                "during a Modbus/TCP read flood of the first one, at most "
                                "{max_request_rate:g} requests/s in all, for at most "
                                "{max_load_duration_s:g} s")
def test_modbus_tcp_counter_reads_are_whole_under_load(
        modbus_channels: ModbusChannels, device_profile: Profile, evidence: Evidence,
        request: pytest.FixtureRequest) -> None:
    """A 32-bit counter read over Modbus/TCP is never torn, even while the device is loaded.

    Requirement: CR 3.6 (deterministic output): the component's outputs are in a defined state,
    never an undefined one, including when normal operation is disturbed. Over the wire, what a
    controller outputs to its clients is its process image, and an undefined state a client
    can observe is a value that never existed: a multi-register value whose words come
    from two different scans (a *torn* read, e.g. the new low word of a 32-bit counter with its
    old high word). This check differs from the requirement's first reading (driving physical
    outputs to a fail-safe state needs the process side and cannot be observed on the wire);
    it tests the part that can: the image the device serves stays consistent under load.

    The profile declares the counters (``points.counters``: 32-bit values in two consecutive
    registers that only count up, e.g. a scan counter or a microsecond clock); without one the
    check is NOT APPLICABLE.

    Procedure: one read of each counter (a device that cannot be read is ERROR); a healthy
    baseline from the essential-function monitor; then for ``max_load_duration_s`` a Modbus
    read flood of the first counter's registers (at the request cap minus the sampling rate, on
    at most 4 connections, one left for the monitor and one for the sampler) while one
    connection reads every counter whole (one FC 3/4 request for both registers), paced at up to
    200 reads/s, at most 2000 reads. Steps between successive reads of a counter are taken
    modulo 2**32, so the counter's own wrap is a small step forward.

    Pass: no read of any counter is below the read before it, with at least 100 reads and 3
    carries (changes of the high word: the moments a read can tear) seen per counter. A fall
    FAILS with the offending reads and their frames (hex). Too few reads, or a counter that does
    not count or carries too seldom to be judged, is ERROR.
    """
    counters = [c for c in device_profile.points.counters if c.protocol == "modbus"]
    if not counters:
        not_applicable("the profile declares no 32-bit Modbus counter (points.counters) to read "
                       "whole; declare one the device keeps in two registers, e.g. a scan counter")
    safety = device_profile.safety
    client = modbus_channels.tcp()
    for counter in counters:  # a counter that cannot be read stops the check before any load
        read_counter(client, counter, 0.0)

    load = cast("LoadKit", request.getfixturevalue("load"))  # the monitor starts here
    sample_rate = min(SAMPLE_RATE, safety.max_request_rate / 2)
    flood_rate = safety.max_request_rate - sample_rate
    flood_connections = min(MAX_FLOOD_CONNECTIONS, safety.max_connections - 2)
    duration = safety.max_load_duration_s
    first = counters[0]
    flood: _Flood | None = None
    if flood_connections >= 1:
        pdu = mbap.read_pdu(_FC[first.table], first.address, 2)
        flood = _Flood(lambda: load.modbus_flood(rate=flood_rate, duration_s=duration,
                                                 connections=flood_connections, pdu=pdu),
                       duration)
    else:
        evidence.note("no flood: the connection cap leaves no connection for it",
                      max_connections=safety.max_connections)
    load.monitor.wait_healthy()  # before the flood starts, so the reads overlap it
    evidence.note("sampling", counters=[counter_name(c) for c in counters],
                  read_rate=sample_rate, flood_rate=flood_rate if flood else 0,
                  flood_connections=flood_connections if flood else 0, duration_s=duration)

    samples: dict[int, list[Sample]] = {i: [] for i in range(len(counters))}
    limiter = RateLimiter(sample_rate)
    deadline = Deadline(duration)
    t0 = time.monotonic()
    if flood is not None:
        flood.start()
    reads = 0
    try:
        while not deadline.expired and reads < MAX_SAMPLES:
            i = reads % len(counters)  # the counters in turn
            limiter.acquire()
            samples[i].append(read_counter(client, counters[i], time.monotonic() - t0))
            reads += 1
            if reads % 100 == 0:
                progress.update(reads=reads, rate=round(reads / max(1e-3, time.monotonic() - t0)))
    except BaseException:
        if flood is not None:  # wait for it (bounded), but report what stopped the reads
            with contextlib.suppress(Exception):
                flood.join()
        raise
    result = flood.join() if flood is not None else None
    if result is not None:
        evidence.note("flood during the reads", sent=result.sent,
                      achieved_rate=round(result.achieved_rate, 1),
                      stop_reason=result.stop_reason)

    judgements = {i: judge(s) for i, s in samples.items()}
    for i, counter in enumerate(counters):
        evidence.timeline(
            f"counter-{_TABLE[counter.table]}{counter.address}",
            [{"t": s.t, "high": s.high, "low": s.low, "value": s.value,
              "step": step(prev, s) if prev is not None else ""}
             for prev, s in zip([None, *samples[i][:-1]], samples[i], strict=True)])
    falls = {i: j.falls for i, j in judgements.items() if j.falls}
    evidence.note("judgement", counters={
        counter_name(counters[i]): {**j.summary(), "falls_seen": [
            {"before": asdict(b), "after": asdict(a), "step": step(b, a)}
            for b, a in j.falls[:MAX_NOTED]]}
        for i, j in judgements.items()})
    if falls:
        parts = []
        for i, pairs in falls.items():
            shown = "; ".join(describe_fall(b, a) for b, a in pairs[:MAX_IN_MESSAGE])
            parts.append(f"the 32-bit counter {counter_name(counters[i])} fell {len(pairs)} "
                         f"times in {judgements[i].samples} reads: {shown}")
        fail("a multi-register value was served torn (its words from different scans) under "
             "load: " + " | ".join(parts))
    for i, j in judgements.items():
        name = counter_name(counters[i])
        if j.samples < MIN_SAMPLES:
            raise TargetError(f"only {j.samples} reads of the counter {name} within the caps "
                              f"({sample_rate:g} reads/s for {duration:g} s); {MIN_SAMPLES} "
                              "needed to judge")
        if not j.moved:
            raise TargetError(f"the counter {name} did not count in {j.samples} reads: its "
                              "consistency cannot be judged (is it a counter?)")
        if j.carries < MIN_CARRIES:
            raise TargetError(f"the counter {name} carried into its high word only {j.carries} "
                              f"times in {j.samples} reads ({MIN_CARRIES} needed): a read can "
                              "only tear at a carry, so this window cannot show one")
