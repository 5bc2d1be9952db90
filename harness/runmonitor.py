"""The essential-function monitor for a whole run (``harness run --monitor``).

The load checks watch the device only while they load it. A lab engineer also wants to know
whether anything else in the run (a fuzzed frame, a lockout, a certificate probe) upset the
device's essential function, and which check was running when it did. This module runs the same
monitor process (:mod:`harness.load.monitor`) from the first check to the last, then cuts its
samples into one window per check and the gaps between them.

It observes; it does not judge a check. A check's verdict is what that check saw (DESIGN.md
section 3); the run monitor's findings go beside it: a ``monitor`` entry on each check that ran
while the function was out of bounds, and a ``monitor`` section in ``results.json`` with the
figures of the whole run, and ``monitor/timeline.csv`` in the run folder: every sample, its
phase being the check that was running (``-`` between checks).

Bounds: the monitor process stops by itself after ``max_runtime_s`` (default: the run's own
budget, capped), when the run ends, or when the harness dies. Its abort flag is ignored here:
there is no run-wide load for it to stop (each load check runs its own monitor and abort).
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.load.monitor import (
    DEFAULT_RATE_HZ,
    MonitorConfig,
    MonitorProcess,
    figures,
    timeline_rows,
)

if TYPE_CHECKING:
    from harness.load.monitor import Sample
    from harness.profile import LoadedProfile
    from harness.verdict import CheckResult

#: A whole run is monitored for at most this long (the process then stops by itself).
MAX_RUNTIME_S = 4 * 3600.0
#: Columns of ``monitor/timeline.csv`` (as :func:`~harness.load.monitor.timeline_rows` makes).
TIMELINE_FIELDS = ("t", "phase", "probe", "ok", "latency_ms", "value", "stall_ms", "error")


@dataclass
class _Window:
    nodeid: str
    start: float
    end: float


@dataclass
class RunMonitor:
    """The monitor of one run.

    :param loaded: the profile (its essential functions become the probes).
    The monitor process works in a private temporary folder (its config may hold a password
    from the profile); only the timeline reaches the run folder.
    """

    loaded: LoadedProfile
    rate_hz: float = DEFAULT_RATE_HZ
    max_runtime_s: float = MAX_RUNTIME_S
    _process: MonitorProcess | None = None
    _windows: list[_Window] = field(default_factory=list)
    _started: float = 0.0
    _ended: float | None = None
    _workdir: Path | None = None
    _samples: list[Sample] = field(default_factory=list)

    def start(self) -> None:
        """Start the monitor process; raises :class:`~harness.errors.HarnessError` if it cannot."""
        config = MonitorConfig.from_profile(self.loaded, rate_hz=self.rate_hz,
                                            max_runtime_s=self.max_runtime_s)
        self._workdir = Path(tempfile.mkdtemp(prefix="harness-run-monitor-"))
        self._process = MonitorProcess(config, self._workdir)
        try:
            self._process.start()
        except BaseException:
            self._cleanup()
            raise
        self._started = time.monotonic()

    @property
    def probes(self) -> list[str]:
        """The probe names (one per essential function)."""
        return [p.name for p in self._process.config.probes] if self._process else []

    def check_ran(self, nodeid: str, start: float, end: float) -> None:
        """Record that check ``nodeid`` ran from ``start`` to ``end`` (``time.monotonic``)."""
        self._windows.append(_Window(nodeid, start, end))

    def stop(self) -> list[Sample]:
        """Stop the process (idempotent) and return every sample it took."""
        if self._process is None:
            return []
        if self._ended is None:
            self._ended = time.monotonic()
            try:
                self._process.stop()
                self._process.close()
                self._samples = list(self._process.poll())
            finally:
                self._cleanup()
        return self._samples

    def _cleanup(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def finish(self, results: list[CheckResult], out: Path | None) -> dict[str, Any]:
        """Stop, annotate ``results`` in place and return the ``monitor`` section of the run.

        A check gets a ``monitor`` entry when at least one sample taken while it ran was out of
        bounds. With ``out``, the timeline is written to ``out/monitor/timeline.csv``.
        """
        samples = self.stop()
        end = self._ended or time.monotonic()
        probes = self.probes
        by_node = {w.nodeid: w for w in self._windows}
        for result in results:
            window = by_node.get(result.nodeid)
            if window is None:
                continue
            entry = _window_entry(samples, probes, window.start, window.end)
            if entry:
                result.monitor = entry
        whole = {p: figures(samples, p, self._started, end).to_json() for p in probes}
        gaps = _between_checks(samples, probes, self._windows, self._started, end)
        process = self._process
        timeline = None
        if out is not None:
            path = self._write_timeline(samples, out / "monitor" / "timeline.csv")
            timeline = path.relative_to(out).as_posix()
        return {
            "rate_hz": self.rate_hz,
            "duration_s": round(end - self._started, 3),
            "probes": whole,
            "notes": list(process.config.notes) if process else [],
            "checks_out_of_bounds": sorted(r.nodeid for r in results if r.monitor),
            "between_checks": gaps,
            "samples": len(samples),
            "timeline": timeline,
        }

    def _write_timeline(self, samples: list[Sample], path: Path) -> Path:
        """Every sample as a CSV row, its phase the check that was running (``-``: none)."""
        marks: list[tuple[str, float]] = []
        for w in self._windows:
            marks += [(w.nodeid, w.start), ("-", w.end)]
        rows = timeline_rows(samples, self._started, marks)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=TIMELINE_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        return path


def _window_entry(samples: list[Sample], probes: list[str], start: float,
                  end: float) -> dict[str, Any]:
    """Figures of the probes that were out of bounds (or unsampled) in ``[start, end]``."""
    entry: dict[str, Any] = {}
    for probe in probes:
        fig = figures(samples, probe, start, end)
        # a check shorter than one sampling period has no sample of its own: nothing to say
        if fig.failed:
            entry[probe] = fig.to_json()
    return entry


def _between_checks(samples: list[Sample], probes: list[str], windows: list[_Window],
                    start: float, end: float) -> list[dict[str, Any]]:
    """Out-of-bounds samples taken while no check ran (after one ended, before the next)."""
    inside = sorted((w.start, w.end) for w in windows)
    out: list[dict[str, Any]] = []
    for s in samples:
        if s.ok or not start <= s.t <= end:
            continue
        if any(a <= s.t <= b for a, b in inside):
            continue
        before = [w.nodeid for w in windows if w.end < s.t]
        out.append({"t": round(s.t - start, 3), "probe": s.probe, "error": s.error,
                    "after": before[-1] if before else None})
        if len(out) >= 100:  # bounded: the samples file has the rest
            break
    return out
