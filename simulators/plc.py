"""The PLC core every bundled simulator runs: a process image updated by a scan cycle.

The image is the same on every protocol (Modbus registers and coils, OPC UA nodes, the serial
and SSH shells' status commands). The scan cycle increments a heartbeat counter every scan and
runs a small simulated control loop (a first-order tank level chasing a setpoint). When the scan
cycle stalls, the heartbeat stops: that is what the harness's essential-function monitor watches.

Layout (0-based addresses, the same in every simulator and in the bundled device profiles):

==================  ===========  =====================================================
what                address      notes
==================  ===========  =====================================================
heartbeat           HR 0, IR 0   +1 every scan, wraps at 65536
setpoint            HR 1         operator set point of the control loop (writable)
process value       HR 2, IR 1   tank level, follows the setpoint
output              HR 3, IR 2   valve output 0..1000
scan count (high)   HR 4         heartbeat // 65536 (wraps)
scan clock (high)   HR 5         32-bit scan clock in microseconds, most significant word
scan clock (low)    HR 6         its least significant word (see below)
scratch registers   HR 100..109  free for the harness to write and restore
protected registers HR 200..209  configuration; every write must be refused
scratch coils       C 100..107
protected coils     C 200..207
run state           DI 0         1 while the scan cycle runs
==================  ===========  =====================================================

The scan clock is one unsigned 32-bit value in two registers, high word first: it advances by
the scan period in microseconds every scan (10 000 at the default 10 ms, so its low word carries
into its high word every 6.5 scans) and wraps at 2**32 (after 71 minutes at any scan period).
It stops while the scan cycle stalls. A hardened PLC writes both words in one step under the
image lock, which every Modbus read also holds, so a read of HR 5..6 always sees one scan's
value. With ``torn_reads`` (the ``modbus.torn_reads`` weakness) the scan publishes the high word
one scan after the low word, as a controller does whose communication task copies a multi-word
value while the scan is still writing it: for one scan after every carry the two words read
together give the new low word with the old high word, 65 536 microseconds less than the clock
and so *less* than a value read before the carry (at any scan period under 65.5 ms). Nothing
else in the image changes with the weakness.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

#: Size of each Modbus table.
TABLE_SIZE = 1000

HEARTBEAT = 0
SETPOINT = 1
PROCESS_VALUE = 2
OUTPUT = 3
SCAN_HIGH = 4
SCAN_CLOCK_HIGH = 5
SCAN_CLOCK_LOW = 6
#: The scan clock is an unsigned 32-bit value: it wraps here.
SCAN_CLOCK_MODULUS = 1 << 32
SCRATCH_REGISTERS = range(100, 110)
PROTECTED_REGISTERS = range(200, 210)
SCRATCH_COILS = range(100, 108)
PROTECTED_COILS = range(200, 208)


@dataclass
class FragileConfig:
    """How a fragile device starves: past ``threshold_rps`` requests per second (measured over
    one second), the scan cycle stops until the rate has stayed below it for ``recovery_s``."""

    #: Requests (or connections) per second above which the scan cycle starves.
    threshold_rps: float = 300.0
    #: Seconds the rate must stay below the threshold before the scan cycle resumes.
    recovery_s: float = 1.0

    def __post_init__(self) -> None:
        if self.threshold_rps <= 0:
            raise ValueError(f"threshold_rps must be > 0, got {self.threshold_rps}")
        if self.recovery_s < 0:
            raise ValueError(f"recovery_s must be >= 0, got {self.recovery_s}")


@dataclass
class ProcessImage:
    """The four Modbus tables. Access only under :attr:`lock`."""

    coils: list[bool] = field(default_factory=lambda: [False] * TABLE_SIZE)
    discrete_inputs: list[bool] = field(default_factory=lambda: [False] * TABLE_SIZE)
    holding: list[int] = field(default_factory=lambda: [0] * TABLE_SIZE)
    input_registers: list[int] = field(default_factory=lambda: [0] * TABLE_SIZE)
    lock: threading.RLock = field(default_factory=threading.RLock)


class Worker:
    """A daemon thread that runs :meth:`_run` until :meth:`stop`: the base of the scan cycle and
    of the packet sniffers (:mod:`simulators.fragile_net`). :meth:`_run` polls ``self._stop``.

    :param name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop and wait for it (at most 2 s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError


class PLC(Worker):
    """A process image plus a scan-cycle thread.

    :param scan_period_s: scan period in seconds (default 10 ms).
    :param fragile: when set, request load above its threshold starves the scan cycle.
    :param torn_reads: publish the scan clock's high word one scan after its low word (the
        ``modbus.torn_reads`` weakness; see the module docstring).
    """

    def __init__(
        self,
        scan_period_s: float = 0.01,
        fragile: FragileConfig | None = None,
        *,
        torn_reads: bool = False,
    ) -> None:
        if scan_period_s <= 0:
            raise ValueError(f"scan_period_s must be > 0, got {scan_period_s}")
        super().__init__("plc-scan")
        self.scan_period_s = scan_period_s
        self.fragile = fragile
        self.torn_reads = torn_reads
        self.image = ProcessImage()
        self.scans = 0
        #: The scan clock's true value (microseconds, 32 bits): what a whole read must show.
        self.scan_clock_us = 0
        #: Microseconds the scan clock advances every scan.
        self.scan_clock_step_us = max(1, round(scan_period_s * 1_000_000))
        #: With ``torn_reads``: the high word the next scan publishes (this scan's, one late).
        self._pending_clock_high = 0
        self._level = 0.0
        self._requests: deque[float] = deque()
        self._req_lock = threading.Lock()
        self._starved_until = 0.0
        with self.image.lock:
            self.image.holding[SETPOINT] = 500
            for i, addr in enumerate(SCRATCH_REGISTERS):
                self.image.holding[addr] = 1000 + i
            for i, addr in enumerate(PROTECTED_REGISTERS):
                self.image.holding[addr] = 4000 + i
            for addr in PROTECTED_COILS:
                self.image.coils[addr] = True

    # -- load accounting (for the load.fragile weakness) -------------------------------
    def note_request(self) -> None:
        """Count one request or connection against the fragile threshold."""
        if self.fragile is None:
            return
        now = time.monotonic()
        with self._req_lock:
            self._requests.append(now)
            while self._requests and self._requests[0] < now - 1.0:
                self._requests.popleft()
            if len(self._requests) > self.fragile.threshold_rps:
                self._starved_until = max(self._starved_until, now + self.fragile.recovery_s)

    def starve(self, seconds: float) -> None:
        """Stall the scan cycle for ``seconds`` from now (a longer stall already running is kept).

        Works on any PLC, fragile or not: protocol front ends use it to model other ways a
        device falls over (an IP stack that chokes on abnormal packets).
        """
        until = time.monotonic() + max(0.0, seconds)
        with self._req_lock:
            self._starved_until = max(self._starved_until, until)

    @property
    def starved(self) -> bool:
        """True while the scan cycle is stalled (by load on a fragile PLC, or :meth:`starve`)."""
        return time.monotonic() < self._starved_until

    # -- scan cycle ------------------------------------------------------------------
    def scan(self) -> None:
        """Run one scan: heartbeat, scan clock, control loop, mirrored inputs."""
        img = self.image
        with img.lock:
            self.scans += 1
            img.holding[HEARTBEAT] = self.scans % 65536
            img.holding[SCAN_HIGH] = (self.scans // 65536) % 65536
            self._advance_scan_clock()
            setpoint = img.holding[SETPOINT]
            error = setpoint - self._level
            output = max(0.0, min(1000.0, 500.0 + 2.0 * error))
            self._level += (output - 500.0) * 0.01
            img.holding[PROCESS_VALUE] = max(0, min(65535, round(self._level)))
            img.holding[OUTPUT] = round(output)
            img.input_registers[0] = img.holding[HEARTBEAT]
            img.input_registers[1] = img.holding[PROCESS_VALUE]
            img.input_registers[2] = img.holding[OUTPUT]
            img.discrete_inputs[0] = True

    def _advance_scan_clock(self) -> None:
        """Advance the 32-bit scan clock by one scan and write its words (under the lock)."""
        clock = (self.scan_clock_us + self.scan_clock_step_us) % SCAN_CLOCK_MODULUS
        self.scan_clock_us = clock
        high, low = divmod(clock, 65536)
        holding = self.image.holding
        holding[SCAN_CLOCK_LOW] = low
        if self.torn_reads:
            # the high word of the previous scan goes out now; this scan's waits for the next
            holding[SCAN_CLOCK_HIGH] = self._pending_clock_high
            self._pending_clock_high = high
        else:
            holding[SCAN_CLOCK_HIGH] = high

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            if not self.starved:
                self.scan()
            else:
                with self.image.lock:
                    self.image.discrete_inputs[0] = False
            next_at += self.scan_period_s
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind: do not try to catch up in a burst
                next_at = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def start(self) -> None:
        """Run one scan, then start the scan-cycle thread (idempotent)."""
        if self._thread is None:
            self.scan()
            super().start()

    # -- helpers for protocol front ends --------------------------------------------
    @staticmethod
    def is_protected_register(address: int, count: int = 1) -> bool:
        """True if any register in ``address .. address+count-1`` is protected."""
        return any(a in PROTECTED_REGISTERS for a in range(address, address + count))

    @staticmethod
    def is_protected_coil(address: int, count: int = 1) -> bool:
        """True if any coil in ``address .. address+count-1`` is protected."""
        return any(a in PROTECTED_COILS for a in range(address, address + count))
