"""Live progress on the terminal during a run: which check, load rate, monitor latency.

A small pytest plugin that :mod:`harness.plugin` registers. It draws one status line to the
right of pytest's own progress characters while a check's setup, call or teardown runs, and
erases it before pytest reports, so pytest's output is never garbled::

    ....s.F.   [9/42] CR 7.1 Keep working under denial of service  12 s  load 180/s  monitor 14.2 ms

It is off (and every call is a cheap no-op) when ``CI`` is set to a true value, when
``HARNESS_PROGRESS=0``, when pytest's output is not a terminal, and in verbose mode (pytest
already names each check there).

Load generators and the monitor report figures with :func:`update` from any thread::

    from harness import progress
    progress.update(rate=180.0, latency_ms=14.2)      # also: ok=False, sent=..., note="ramp"

The figures are shown until the check ends. The line is redrawn at most 4 times a second by a
daemon thread, which writes to a duplicate of the terminal's file descriptor taken before any
output capture, and only while a check phase runs (pytest writes nothing then).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Generator
from typing import Any

import pytest

#: Seconds between redraws.
REDRAW_S = 0.25
_lock = threading.Lock()


class _Slot:
    """The progress display of the running session (at most one per process)."""

    current: Progress | None = None


def quiet_by_environment() -> bool:
    """True under CI (``CI`` set to a true value) or with ``HARNESS_PROGRESS=0``."""
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    return os.environ.get("HARNESS_PROGRESS", "").strip().lower() in ("0", "false", "no", "off")


def enabled_for(config: pytest.Config) -> bool:
    """Whether progress is shown for this session (call once the terminal reporter exists)."""
    if quiet_by_environment() or config.getoption("verbose", 0) > 0:
        return False
    tr = config.pluginmanager.get_plugin("terminalreporter")
    return bool(tr is not None and getattr(tr, "isatty", False))


def update(**figures: Any) -> None:
    """Report figures of the running check (``rate``, ``latency_ms``, ``ok``, ``sent``...)."""
    p = _Slot.current
    if p is not None:
        p.figures(figures)


def _fmt_figures(figs: dict[str, Any]) -> str:
    parts = []
    for key, value in figs.items():
        if value is None:
            continue
        if key == "rate":
            parts.append(f"load {float(value):.0f}/s")
        elif key == "latency_ms":
            parts.append(f"monitor {float(value):.1f} ms")
        elif key == "ok":
            if not value:
                parts.append("monitor: NO ANSWER")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.3g}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class Progress:
    """The status line of one session (registered as a pytest plugin)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.total = 0
        self.index = 0
        self.label = ""
        self.started = 0.0
        self._figs: dict[str, Any] = {}
        self._active = False
        self._shown = 0  # characters of status currently on the terminal
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fd = -1
        self._thread: threading.Thread | None = None

    # -- pytest hooks ------------------------------------------------------------------
    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # The terminal reporter exists from here on, and output capture is suspended: fd 1 is
        # the real terminal (pytest has just written its header there).
        if not enabled_for(self.config):
            return
        self._fd = os.dup(1)
        self._thread = threading.Thread(target=self._ticker, name="harness-progress", daemon=True)
        self._thread.start()
        with _lock:
            _Slot.current = self

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        with self._lock:
            self.index += 1
            self.label = nodeid.rsplit("::", 1)[-1]
            self.started = time.monotonic()
            self._figs = {}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, Any, Any]:
        req = item.get_closest_marker("requirement")
        doc = (getattr(getattr(item, "function", None), "__doc__", None) or "").strip()
        title = doc.splitlines()[0] if doc else item.name
        with self._lock:
            self.label = f"{req.args[0]} {title}" if req is not None and req.args else title
        with self._phase():  # fixture set-up (a monitor, a lab) is part of the check's time
            return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._deactivate()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, Any, Any]:
        with self._phase():
            return (yield)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        with self._phase():
            return (yield)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.close()

    # -- drawing -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _phase(self) -> Generator[None, None, None]:
        if self._fd < 0:  # not on a terminal: nothing to draw
            yield
            return
        with self._lock:
            self._active = True
            self._draw_locked()
        try:
            yield
        finally:
            self._deactivate()

    def _deactivate(self) -> None:
        with self._lock:
            self._active = False
            self._erase_locked()

    def figures(self, figs: dict[str, Any]) -> None:
        with self._lock:
            self._figs.update(figs)

    def _ticker(self) -> None:
        while not self._stop.wait(REDRAW_S):
            with self._lock:
                if self._active:
                    self._draw_locked()

    def _write(self, text: str) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._fd, text.encode("utf-8", "replace"))

    def _room(self) -> int:
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        tw = getattr(tr, "_tw", None)
        if tw is None:
            return 0
        used = int(getattr(tw, "width_of_current_line", 0))
        return int(getattr(tw, "fullwidth", 80)) - used - 3

    def _draw_locked(self) -> None:
        room = self._room()
        elapsed = time.monotonic() - self.started if self.started else 0.0
        text = f"  [{self.index}/{self.total}] {self.label}  {elapsed:.0f} s"
        figs = _fmt_figures(self._figs)
        if figs:
            text += f"  {figs}"
        if room < 20:
            self._erase_locked()
            return
        if len(text) > room:
            text = text[: room - 1] + "…"
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        tw = getattr(tr, "_tw", None)
        if tw is not None:
            tw.flush()
        # erase what we showed, write the status, move the cursor back to where pytest
        # continues writing
        self._write(f"\x1b[K{text}\x1b[{len(text)}D")
        self._shown = len(text)

    def _erase_locked(self) -> None:
        if self._shown:
            self._write("\x1b[K")
            self._shown = 0

    def close(self) -> None:
        """Stop the ticker, erase the line, release the descriptor."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        with self._lock:
            self._active = False
            self._erase_locked()
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
        with _lock:
            if _Slot.current is self:
                _Slot.current = None


def register(config: pytest.Config) -> None:
    """Register the progress plugin (call from ``pytest_configure``); it switches itself on at
    session start when the output is a terminal (see the module docstring)."""
    if quiet_by_environment() or config.pluginmanager.has_plugin("harness-progress"):
        return
    config.pluginmanager.register(Progress(config), "harness-progress")
