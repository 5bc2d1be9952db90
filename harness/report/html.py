"""report.html: one self-contained page a lab engineer can hand over.

Everything is inline: CSS in a ``<style>`` element, plots as inline SVG, no script, no font, no
image, no external URL; a Content-Security-Policy forbids anything else, so even a rendering
mistake cannot make the page fetch or run something. Every string that comes from the run
(device strings, reasons, observations, file names) is untrusted and goes through
:func:`html.escape`.

Load checks and their plots
---------------------------
A check is a load check when its evidence holds a monitor timeline: a CSV whose file name starts
with ``monitor`` (``evidence.timeline("monitor", rows)`` writes ``monitor.csv``; the load
fixture writes :func:`harness.load.monitor.timeline_rows`). Columns:

- ``t``: seconds, any origin, increasing;
- ``ok``: 1/0 (``true``/``false``): the essential function answered within its bound;
- ``latency_ms``: the answer's latency (empty when there was none);
- ``phase`` (optional): ``before``/``baseline``; ``after...``/``recovery...``; any other label
  (``load``, ``load:modbus_flood``, ``malformed``, ``scan``) marks a load phase, and each run of
  one load label is a load window;
- ``probe`` or ``function`` (optional): which essential function, when one file holds several
  (one latency line each).

The load windows, shaded on the plot, come from the first of: a ``load_window.json`` attachment
in the same evidence folder (``{"start": s, "end": s, "label": "..."}`` on the timeline's ``t``
axis, or a list of them), the ``phase`` column, or a note whose data carries ``load_window``
(``[start, end]`` or the same objects).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import math
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from harness.report.matrix import FRS
from harness.verdict import Verdict

#: Largest monitor CSV read for a plot (bytes) and most rows kept.
MAX_TIMELINE_BYTES = 16 * 1024 * 1024
MAX_TIMELINE_ROWS = 200_000
#: Hex characters shown per observation (the evidence files keep everything).
HEX_SHOWN = 128

_FR_TITLES = {
    "FR1": "Identification and authentication control",
    "FR2": "Use control",
    "FR3": "System integrity",
    "FR4": "Data confidentiality",
    "FR5": "Restricted data flow",
    "FR6": "Timely response to events",
    "FR7": "Resource availability",
}
_VERDICT_CLASS = {
    "PASS": "pass",
    "FAIL": "fail",
    "ERROR": "error",
    "NOT APPLICABLE": "na",
    "NOT RUN": "notrun",
}
_TRUE = {"1", "true", "yes", "ok", "y", "t"}
_PHASES = ("before", "load", "after")


def _e(value: object) -> str:
    """Escape anything for HTML text and attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _verdict_badge(verdict: str) -> str:
    cls = _VERDICT_CLASS.get(verdict, "error")
    return f'<span class="badge v-{cls}">{_e(verdict)}</span>'


def _safe_href(rel: str) -> str | None:
    """A relative link into the run folder, or None for anything that is not one."""
    if not rel or "\\" in rel or rel.startswith(("/", "~")) or "\x00" in rel:
        return None
    path = PurePosixPath(rel)
    if not path.parts or path.is_absolute() or ".." in path.parts or ":" in path.parts[0]:
        return None
    return urllib.parse.quote(str(path), safe="/._-")


# --------------------------------------------------------------------------- timelines
@dataclass
class Sample:
    """One monitor sample."""

    #: Seconds on the timeline's own axis.
    t: float
    #: The essential function answered within its bound.
    ok: bool
    #: Latency of the answer (None: no answer).
    latency_ms: float | None
    #: The raw phase label (see :func:`phase_class`).
    phase: str = ""
    #: Which essential function (the ``probe`` or ``function`` column).
    function: str = ""


@dataclass(frozen=True)
class Window:
    """A stretch of the timeline during which the check loaded the device."""

    start: float
    end: float
    #: The phase label (``load``, ``load:modbus_flood``, ``malformed``...).
    label: str = "load"


@dataclass
class Timeline:
    """A monitor timeline of one load check."""

    #: Evidence path of the CSV, relative to the run folder.
    name: str
    samples: list[Sample] = field(default_factory=list)
    #: The load windows on the ``t`` axis, in time order (empty when unknown).
    windows: list[Window] = field(default_factory=list)
    #: Where the windows came from (``load_window.json``, ``phase column``, ``note``).
    window_source: str = ""
    truncated: bool = False


def _float(text: object) -> float | None:
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def phase_class(label: str) -> str:
    """``before``, ``load`` or ``after`` for a phase label; ``""`` for no label.

    ``before``/``baseline`` are before; ``after...``/``recovery...`` are after; any other label
    (``load``, ``load:modbus_flood``, ``malformed``, ``scan``) is a load phase.
    """
    text = label.strip().lower()
    if not text:
        return ""
    if text in ("before", "baseline") or text.startswith("before"):
        return "before"
    if text.startswith(("after", "recovery")):
        return "after"
    return "load"


def parse_timeline(name: str, text: str) -> Timeline:
    """Parse a monitor CSV (see the module docstring for the columns)."""
    tl = Timeline(name)
    reader = csv.DictReader(io.StringIO(text))
    for row in reader:
        if len(tl.samples) >= MAX_TIMELINE_ROWS:
            tl.truncated = True
            break
        t = _float(row.get("t", row.get("t_s", "")))
        if t is None:
            continue
        ok_text = str(row.get("ok", row.get("alive", "")) or "").strip().lower()
        latency = _float(row.get("latency_ms", "") or "")
        phase = str(row.get("phase", "") or "").strip()
        function = str(row.get("function", row.get("probe", row.get("name", ""))) or "")
        tl.samples.append(Sample(t, ok_text in _TRUE, latency, phase, function))
    tl.samples.sort(key=lambda s: s.t)
    label: str | None = None
    start = end = 0.0
    for s in tl.samples:
        if phase_class(s.phase) != "load":
            if label is not None:
                tl.windows.append(Window(start, end, label))
                label = None
            continue
        if label is not None and s.phase == label:
            end = s.t
            continue
        if label is not None:
            tl.windows.append(Window(start, end, label))
        label, start, end = s.phase, s.t, s.t
    if label is not None:
        tl.windows.append(Window(start, end, label))
    if tl.windows:
        tl.window_source = "phase column"
    return tl


def _windows_of(value: object) -> list[Window]:
    """Windows from ``{"start", "end"[, "label"]}``, ``[start, end]`` or a list of either."""
    items = value if isinstance(value, list) and value and not _is_pair(value) else [value]
    out = []
    for item in items:
        start = end = None
        label = "load"
        if isinstance(item, dict):
            start, end = _float(item.get("start", "")), _float(item.get("end", ""))
            label = str(item.get("label", "load"))
        elif _is_pair(item):
            assert isinstance(item, list | tuple)
            start, end = _float(item[0]), _float(item[1])
        if start is None or end is None or end < start:
            return []
        out.append(Window(start, end, label))
    return sorted(out, key=lambda w: w.start)


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
    )


def load_timelines(check: dict[str, Any], run_dir: Path | None) -> list[Timeline]:
    """The monitor timelines in a check's evidence, each with its load windows."""
    if run_dir is None:
        return []
    paths = [p for p in check.get("evidence", []) if isinstance(p, str)]
    note_windows: list[Window] = []
    for obs in check.get("observations", []):
        data = obs.get("data") if isinstance(obs, dict) else None
        if isinstance(data, dict) and "load_window" in data:
            note_windows = _windows_of(data["load_window"]) or note_windows
    out = []
    for rel in paths:
        pure = PurePosixPath(rel)
        if not (pure.name.startswith("monitor") and pure.suffix == ".csv"):
            continue
        if _safe_href(rel) is None:
            continue
        path = run_dir / rel
        try:
            with path.open("r", encoding="utf-8", errors="replace") as fh:
                text = fh.read(MAX_TIMELINE_BYTES + 1)
        except OSError:
            continue
        tl = parse_timeline(rel, text[:MAX_TIMELINE_BYTES])
        tl.truncated = tl.truncated or len(text) > MAX_TIMELINE_BYTES
        window_file = path.parent / "load_window.json"
        file_windows: list[Window] = []
        if window_file.is_file():
            try:
                file_windows = _windows_of(json.loads(window_file.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                file_windows = []
        if file_windows:
            tl.windows, tl.window_source = file_windows, "load_window.json"
        elif not tl.windows and note_windows:
            tl.windows, tl.window_source = note_windows, "note"
        out.append(tl)
    return out


def _phase_of(s: Sample, windows: list[Window]) -> str:
    cls = phase_class(s.phase)
    if cls:
        return cls
    if not windows:
        return "all"
    if s.t < windows[0].start:
        return "before"
    return "load" if any(w.start <= s.t <= w.end for w in windows) else "after"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]


def phase_stats(tl: Timeline) -> list[dict[str, Any]]:
    """Per phase: samples, availability %, p50/p95/max latency, longest outage (s)."""
    groups: dict[str, list[Sample]] = {}
    for s in tl.samples:
        groups.setdefault(_phase_of(s, tl.windows), []).append(s)
    out = []
    for phase in (*_PHASES, "all"):
        samples = groups.get(phase)
        if not samples:
            continue
        lat = [s.latency_ms for s in samples if s.ok and s.latency_ms is not None]
        outage, start = 0.0, None
        for s in samples:
            if not s.ok and start is None:
                start = s.t
            elif s.ok and start is not None:
                outage, start = max(outage, s.t - start), None
        if start is not None:
            outage = max(outage, samples[-1].t - start)
        out.append(
            {
                "phase": phase,
                "samples": len(samples),
                "availability": 100.0 * sum(s.ok for s in samples) / len(samples),
                "p50": _percentile(lat, 0.5) if lat else None,
                "p95": _percentile(lat, 0.95) if lat else None,
                "max": max(lat) if lat else None,
                "outage_s": outage,
            }
        )
    return out


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(1, ticks)
    if raw <= 0:
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


_LINE_COLOURS = ("#1f5fa8", "#7a3fb0", "#0f7f6f", "#a85a1f")


def svg_timeline(tl: Timeline) -> str:
    """Latency (top) and availability (bottom) over time, with the load window shaded."""
    samples = tl.samples
    if not samples:
        return '<p class="muted">The monitor timeline is empty.</p>'
    width, left, right = 760, 58, 14
    top, lat_h, gap, av_h, bottom = 26, 190, 34, 70, 30
    height = top + lat_h + gap + av_h + bottom
    t0, t1 = samples[0].t, samples[-1].t
    for w in tl.windows:
        t0, t1 = min(t0, w.start), max(t1, w.end)
    if t1 <= t0:
        t1 = t0 + 1.0
    plot_w = width - left - right
    lat_values = [s.latency_ms for s in samples if s.ok and s.latency_ms is not None]
    ymax = max(lat_values, default=1.0) or 1.0
    ystep = _nice_step(ymax, 4)
    ymax = ystep * math.ceil(ymax / ystep)

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    def y_lat(ms: float) -> float:
        return top + lat_h - min(ms, ymax) / ymax * lat_h

    av_top = top + lat_h + gap

    def y_av(pct: float) -> float:
        return av_top + av_h - pct / 100.0 * av_h

    parts = [
        f'<svg class="plot" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e("monitor latency and availability: " + tl.name)}">',
        f"<title>{_e(tl.name)}</title>",
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{lat_h}" fill="#fbfbfd" '
        'stroke="#c9ccd4"/>',
        f'<rect x="{left}" y="{av_top}" width="{plot_w}" height="{av_h}" fill="#fbfbfd" '
        'stroke="#c9ccd4"/>',
    ]
    for w in tl.windows:
        wx0, wx1 = x(w.start), x(w.end)
        parts.append(
            f'<rect class="load-window" x="{wx0:.1f}" y="{top}" width="{max(wx1 - wx0, 1):.1f}" '
            f'height="{av_top + av_h - top}" fill="#f4b400" fill-opacity="0.22">'
            f"<title>{_e(w.label)}: {_e(_fmt(w.start))} to {_e(_fmt(w.end))} s</title></rect>"
        )
        parts.append(
            f'<text x="{wx0 + 4:.1f}" y="{top + 12}" font-size="11" fill="#8a6500">'
            f"{_e(w.label)}</text>"
        )
    # grid and axes
    n = 0
    while n * ystep <= ymax + 1e-9:
        yy = y_lat(n * ystep)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e3e5ea"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{yy + 4:.1f}" font-size="11" text-anchor="end">'
            f"{_e(_fmt(n * ystep))}</text>"
        )
        n += 1
    for pct in (0, 50, 100):
        yy = y_av(pct)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e3e5ea"/>'
        )
        parts.append(
            f'<text x="{left - 6}" y="{yy + 4:.1f}" font-size="11" text-anchor="end">{pct}%</text>'
        )
    xstep = _nice_step(t1 - t0, 8)
    tick = math.ceil(t0 / xstep) * xstep
    while tick <= t1 + 1e-9:
        xx = x(tick)
        parts.append(
            f'<line x1="{xx:.1f}" x2="{xx:.1f}" y1="{top}" y2="{av_top + av_h}" stroke="#eef0f3"/>'
        )
        parts.append(
            f'<text x="{xx:.1f}" y="{av_top + av_h + 16}" font-size="11" text-anchor="middle">'
            f"{_e(_fmt(tick))}</text>"
        )
        tick += xstep
    parts.append(
        f'<text x="{left}" y="{top - 8}" font-size="12" font-weight="600">'
        "latency of answered samples (ms)</text>"
    )
    parts.append(
        f'<text x="{left}" y="{av_top - 8}" font-size="12" font-weight="600">'
        "availability (% of samples answered)</text>"
    )
    parts.append(
        f'<text x="{left + plot_w}" y="{av_top + av_h + 28}" font-size="11" '
        'text-anchor="end">time (s)</text>'
    )
    # latency lines: one per function, broken at failed samples, max per pixel column
    functions = list(dict.fromkeys(s.function for s in samples))
    for i, fn in enumerate(functions):
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        segments: list[list[tuple[float, float]]] = [[]]
        for s in samples:
            if s.function != fn:
                continue
            if not s.ok or s.latency_ms is None:
                if segments[-1]:
                    segments.append([])
                continue
            px, py = round(x(s.t), 1), round(y_lat(s.latency_ms), 1)
            seg = segments[-1]
            if seg and seg[-1][0] == px:
                if py < seg[-1][1]:
                    seg[-1] = (px, py)  # keep the slowest sample of this pixel column
            else:
                seg.append((px, py))
        for seg in segments:
            if len(seg) == 1:
                parts.append(f'<circle cx="{seg[0][0]}" cy="{seg[0][1]}" r="1.8" fill="{colour}"/>')
            elif seg:
                points = " ".join(f"{a},{b}" for a, b in seg)
                parts.append(
                    f'<polyline class="latency" points="{points}" fill="none" '
                    f'stroke="{colour}" stroke-width="1.4"/>'
                )
        if len(functions) > 1:
            parts.append(
                f'<text x="{left + plot_w - 4}" y="{top + 14 + 13 * i}" font-size="11" '
                f'text-anchor="end" fill="{colour}">{_e(fn or "(unnamed)")}</text>'
            )
    # failed samples: red ticks along the top of the latency panel
    failed_cols = sorted({round(x(s.t)) for s in samples if not s.ok})
    for col in failed_cols:
        parts.append(
            f'<rect class="failed" x="{col - 0.5}" y="{top + 1}" width="1.5" height="8" '
            'fill="#c62828"/>'
        )
    # availability: share of answered samples per time bucket, as a step line
    buckets = max(1, min(80, len(samples) // 4))
    width_t = (t1 - t0) / buckets
    counts = [[0, 0] for _ in range(buckets)]
    for s in samples:
        b = min(buckets - 1, int((s.t - t0) / width_t))
        counts[b][0] += 1
        counts[b][1] += int(s.ok)
    path: list[str] = []
    for b, (total, ok) in enumerate(counts):
        if not total:
            continue
        yy = y_av(100.0 * ok / total)
        xa, xb = x(t0 + b * width_t), x(t0 + (b + 1) * width_t)
        path.append(f"M{xa:.1f},{yy:.1f} H{xb:.1f}")
    if path:
        parts.append(
            f'<path class="availability" d="{" ".join(path)}" fill="none" stroke="#2e7d32" '
            'stroke-width="2"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _stats_table(tl: Timeline) -> str:
    rows = []
    for st in phase_stats(tl):

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        rows.append(
            f"<tr><td>{_e(st['phase'])}</td><td class='num'>{st['samples']}</td>"
            f"<td class='num'>{st['availability']:.1f}%</td><td class='num'>{ms(st['p50'])}</td>"
            f"<td class='num'>{ms(st['p95'])}</td><td class='num'>{ms(st['max'])}</td>"
            f"<td class='num'>{st['outage_s']:.2f}</td></tr>"
        )
    return (
        '<table class="stats"><thead><tr><th>phase</th><th>samples</th><th>available</th>'
        "<th>p50 ms</th><th>p95 ms</th><th>max ms</th><th>longest outage s</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


# --------------------------------------------------------------------------- sections
_CSS = """
:root { --ink:#1d2330; --muted:#5d6475; --line:#d9dce3; --bg:#f5f6f8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); margin: 0; background: var(--bg); }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 10px; border-bottom: 2px solid var(--line);
     padding-bottom: 4px; }
h3 { font-size: 15px; margin: 22px 0 8px; }
.muted { color: var(--muted); }
.banner { padding: 10px 14px; border-radius: 6px; margin: 14px 0; font-weight: 600; }
.banner.partial { background: #fff4e0; border: 1px solid #f0b44c; }
.outcome-PASS { background: #e7f5ea; border: 1px solid #7cc38b; }
.outcome-FAIL { background: #fdecec; border: 1px solid #e57373; }
.outcome-ERROR { background: #fff4e0; border: 1px solid #f0b44c; }
.outcome-NONE { background: #eef0f3; border: 1px solid var(--line); }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; }
th, td { border: 1px solid var(--line); padding: 5px 8px; text-align: left;
         vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; white-space: nowrap; }
.v-pass { background: #d8f0dd; color: #1b5e20; }
.v-fail { background: #fbd5d5; color: #8e0000; }
.v-error { background: #ffe3b3; color: #7a4a00; }
.v-na { background: #e6e8ec; color: #404656; }
.v-notrun { background: #dfe7f5; color: #1f3f73; }
.counts span { margin-right: 8px; }
td.below { background: #fdecec; font-weight: 600; }
td.met { background: #e7f5ea; font-weight: 600; }
td.untested { color: var(--muted); font-style: italic; }
td.zero { color: #b5b9c3; }
details.check { border: 1px solid var(--line); border-radius: 6px; margin: 8px 0;
                background: #fff; }
details.check > summary { cursor: pointer; padding: 8px 12px; list-style: none;
                          display: flex; gap: 10px; align-items: baseline; }
details.check > summary::-webkit-details-marker { display: none; }
details.check[open] > summary { border-bottom: 1px solid var(--line); background: #fafbfc; }
details.check .body { padding: 8px 14px 12px; }
details.c-pass { border-left: 4px solid #7cc38b; }
details.c-fail { border-left: 4px solid #e57373; }
details.c-error { border-left: 4px solid #f0b44c; }
details.c-na, details.c-notrun { border-left: 4px solid #c3c8d2; }
h4 { font-size: 13px; margin: 12px 0 4px; }
.req { font-weight: 600; white-space: nowrap; }
pre { background: #f6f7f9; border: 1px solid var(--line); padding: 8px; overflow-x: auto;
      white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0; font-size: 12.5px; }
table.obs td { font-size: 12.5px; }
table.obs td.hex { font-family: ui-monospace, "DejaVu Sans Mono", monospace;
                   overflow-wrap: anywhere; min-width: 220px; max-width: 380px; }
code, .mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.plot { max-width: 100%; height: auto; display: block; margin: 8px 0; }
table.stats { width: auto; }
ul.evidence { margin: 4px 0; padding-left: 18px; }
.checkbox { font-size: 16px; }
footer { margin-top: 36px; font-size: 12px; color: var(--muted); }
@media print { body { background: #fff; } main { padding: 0; } }
"""


def _outcome(summary: dict[str, int]) -> tuple[str, str]:
    if summary.get("FAIL"):
        return "FAIL", "The device failed at least one applicable check."
    if summary.get("ERROR"):
        return "ERROR", "At least one check could not decide; no check failed."
    if summary.get("PASS"):
        return "PASS", "Every check that ran passed."
    return "NONE", "No check ran."


def _header(results: dict[str, Any]) -> str:
    prof = results.get("profile", {})
    dev = prof.get("device", {})
    title = f"{dev.get('vendor', '?')} {dev.get('model', '?')}"
    facts = [
        ("Vendor", dev.get("vendor")),
        ("Model", dev.get("model")),
        ("Firmware", dev.get("firmware")),
        ("Serial", dev.get("serial")),
        ("Component type", dev.get("component_type")),
        ("Description", dev.get("description")),
        ("Run started", results.get("started")),
        ("Run finished", results.get("finished")),
        ("Host", results.get("host")),
        ("Disruptive checks", "allowed" if results.get("allow_disruptive") else "not allowed"),
        ("Profile", prof.get("path")),
        ("Profile sha256", prof.get("sha256")),
        ("Harness", results.get("harness_version")),
        ("Results schema", results.get("schema_version")),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts if v not in (None, ""))
    banner = ""
    if not results.get("complete", True):
        banner = (
            '<div class="banner partial" id="partial">Partial run: the run was interrupted. '
            "Checks that did not get to run are missing from this report.</div>"
        )
    return (
        "<header>"
        "<h1>IEC 62443-4-2 conformance test report</h1>"
        f'<div class="muted">{_e(title)}, firmware {_e(dev.get("firmware", "?"))}</div>'
        f"{banner}"
        f'<dl class="facts" id="facts">{dl}</dl>'
        "</header>"
    )


def _summary(results: dict[str, Any], checks: list[dict[str, Any]], ids: dict[int, str]) -> str:
    summary = results.get("summary", {})
    outcome, text = _outcome(summary)
    counts = "".join(
        f"<span>{_verdict_badge(str(v))} {int(summary.get(str(v), 0))}</span>" for v in Verdict
    )
    attention = [
        f'<li>{_verdict_badge(c["verdict"])} <a href="#{ids[i]}">{_e(c.get("requirement"))}: '
        f"{_e(c.get('title'))}</a></li>"
        for i, c in enumerate(checks)
        if c.get("verdict") in ("FAIL", "ERROR")
    ]
    att = f"<h3>Needs attention</h3><ul>{''.join(attention)}</ul>" if attention else ""
    return (
        '<section id="summary"><h2>Summary</h2>'
        f'<div class="banner outcome-{outcome}" id="outcome">Outcome: {_e(outcome)}. '
        f"{_e(text)}</div>"
        f'<p class="counts">{counts}</p>'
        f"<p class='muted'>{len(checks)} checks in total. ERROR is never counted as PASS: "
        "a check that could not decide lowers the achieved SL like a failure.</p>"
        f"{att}</section>"
    )


def _matrix(results: dict[str, Any]) -> str:
    rows_by_fr = {r.get("fr"): r for r in results.get("matrix", [])}
    head = "".join(f'<th class="num">{_e(v)}</th>' for v in Verdict)
    body = []
    for fr in FRS:
        row = rows_by_fr.get(fr, {"claimed": 0, "achieved": None, "counts": {}})
        claimed, achieved = int(row.get("claimed", 0)), row.get("achieved")
        if achieved is None:
            ach = '<td class="num untested" data-achieved="untested">untested</td>'
        else:
            cls = "met" if int(achieved) >= claimed else "below"
            ach = f'<td class="num {cls}" data-achieved="{int(achieved)}">{int(achieved)}</td>'
        cells = []
        for v in Verdict:
            n = int(row.get("counts", {}).get(str(v), 0))
            zero = " zero" if n == 0 else ""
            cells.append(f'<td class="num count{zero}" data-verdict="{_e(v)}">{n}</td>')
        body.append(
            f'<tr data-fr="{fr}"><th>{fr}</th><td>{_e(_FR_TITLES[fr])}</td>'
            f'<td class="num" data-claimed="{claimed}">{claimed}</td>{ach}{"".join(cells)}</tr>'
        )
    return (
        '<section id="matrix"><h2>Conformance matrix</h2>'
        '<table id="matrix-table"><thead><tr><th>FR</th><th>Foundational requirement</th>'
        f'<th class="num">Claimed SL</th><th class="num">Tested SL achieved</th>{head}</tr>'
        f"</thead><tbody>{''.join(body)}</tbody></table>"
        '<p class="muted">Tested SL achieved: the highest SL n for which every black-box check '
        "of the FR at SL &le; n passed (untested: no black-box check was in scope). It is the "
        "<em>tested</em> SL: requirements that need documentary evidence (below) are not part of "
        "it and must be assessed separately.</p></section>"
    )


def _documents(results: dict[str, Any]) -> str:
    docs = results.get("documents")
    if docs is None:
        docs = _documents_fallback(results)
    if docs is None:
        return (
            '<section id="documents"><h2>Documentary evidence to collect</h2>'
            '<p class="muted">Not recorded in this results.json.</p></section>'
        )
    waived = {w.get("requirement"): w for w in results.get("profile", {}).get("waivers", [])}
    if not docs:
        body = '<p class="muted">No requirement at the claimed SLs needs documents.</p>'
    else:
        rows = []
        for d in docs:
            w = waived.get(d.get("id"))
            note = f"waived until {_e(w.get('expires'))}" if w else ""
            rows.append(
                f'<tr data-req="{_e(d.get("id"))}"><td class="checkbox">&#9744;</td>'
                f'<td class="req">{_e(d.get("id"))}</td><td>{_e(d.get("fr"))}</td>'
                f'<td class="num">{_e(d.get("sl"))}</td><td>{_e(d.get("title"))}</td>'
                f"<td>{note}</td></tr>"
            )
        body = (
            '<table id="documents-table"><thead><tr><th></th><th>Requirement</th><th>FR</th>'
            '<th class="num">SL</th><th>Title</th><th>Note</th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>"
        )
    return (
        '<section id="documents"><h2>Documentary evidence to collect</h2>'
        '<p class="muted">Requirements of this component type at an SL up to the claim that '
        "cannot be tested over the wire: the vendor provides documents, the assessor checks "
        f"them off.</p>{body}</section>"
    )


def _documents_fallback(results: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Schema 1.0 documents had no ``documents``: compute them from the catalog."""
    prof = results.get("profile", {})
    ctype = prof.get("device", {}).get("component_type")
    claimed = prof.get("claimed_sl")
    if not ctype or not isinstance(claimed, dict):
        return None
    from harness.catalog import load_catalog
    from harness.report.results import documentary_requirements

    try:
        return documentary_requirements(load_catalog(), str(ctype), claimed)
    except ValueError:
        return None


def _waivers(results: dict[str, Any]) -> str:
    waivers = results.get("profile", {}).get("waivers", [])
    if not waivers:
        return (
            '<section id="waivers"><h2>Waivers</h2><p class="muted">The profile waives no '
            "requirement.</p></section>"
        )
    started = str(results.get("started") or "")[:10]
    try:
        run_day = dt.date.fromisoformat(started)
    except ValueError:
        run_day = None
    rows = []
    for w in waivers:
        expires = str(w.get("expires", ""))
        try:
            active = run_day is None or run_day <= dt.date.fromisoformat(expires)
        except ValueError:
            active = False
        status = "active" if active else "expired: the check ran"
        rows.append(
            f'<tr><td class="req">{_e(w.get("requirement"))}</td>'
            f"<td>{_e(w.get('justification'))}</td><td>{_e(expires)}</td>"
            f"<td>{_e(status)}</td></tr>"
        )
    return (
        '<section id="waivers"><h2>Waivers</h2>'
        '<table id="waivers-table"><thead><tr><th>Requirement</th><th>Justification '
        "(compensating countermeasure)</th><th>Expires</th><th>Status at the run</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _observations(obs: list[dict[str, Any]]) -> str:
    if not obs:
        return ""
    rows = []
    for o in obs:
        if not isinstance(o, dict):
            continue
        hx = str(o.get("hex", "") or "")
        shown = hx[:HEX_SHOWN] + ("…" if len(hx) > HEX_SHOWN else "")
        length = f" ({_e(o.get('length'))} B)" if o.get("length") is not None else ""
        summary = _e(o.get("summary"))
        if o.get("data") is not None:
            summary += f'<br><span class="mono">{_e(json.dumps(o["data"], default=str))}</span>'
        rows.append(
            f"<tr><td class='mono'>{_e(o.get('time') or o.get('t'))}</td>"
            f"<td>{_e(o.get('kind'))}</td><td class='mono'>{_e(o.get('channel'))}</td>"
            f"<td>{summary}</td><td class='hex'>{_e(shown)}{length}</td></tr>"
        )
    return (
        "<h4>Observations (the last ones before the verdict)</h4>"
        '<table class="obs"><thead><tr><th>time</th><th>kind</th><th>channel</th>'
        f"<th>summary</th><th>hex</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _evidence_links(paths: list[Any]) -> str:
    if not paths:
        return ""
    items = []
    for p in paths:
        href = _safe_href(str(p))
        if href is None:
            items.append(f"<li><code>{_e(p)}</code></li>")
        else:
            items.append(f'<li><a href="{_e(href)}"><code>{_e(p)}</code></a></li>')
    return f'<h4>Evidence files</h4><ul class="evidence">{"".join(items)}</ul>'


def _check(check: dict[str, Any], anchor: str, run_dir: Path | None) -> str:
    verdict = str(check.get("verdict", "ERROR"))
    timelines = load_timelines(check, run_dir)
    is_open = verdict in ("FAIL", "ERROR") or bool(timelines)
    facts = [
        ("Check", f"<code>{_e(check.get('nodeid'))}</code>"),
        (
            "Requirement",
            f"{_e(check.get('requirement'))} ({_e(check.get('fr'))}, SL {_e(check.get('sl'))})",
        ),
        ("Protocol", _e(check.get("protocol"))),
        ("Disruptive", "yes" if check.get("disruptive") else "no"),
        ("Started", _e(check.get("started"))),
        ("Duration", f"{float(check.get('duration_s') or 0):.3f} s"),
    ]
    if check.get("weakness"):
        facts.append(("Detects (simulator weakness)", f"<code>{_e(check['weakness'])}</code>"))
    monitor = check.get("monitor")
    if isinstance(monitor, dict) and monitor:
        lost = ", ".join(
            f"{_e(name)}: {_e(fig.get('failed'))} of {_e(fig.get('samples'))} samples"
            for name, fig in monitor.items() if isinstance(fig, dict)
        )
        facts.append(("Essential function while it ran", f"out of bounds ({lost})"))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    reason = check.get("reason") or ""
    reason_html = f"<h4>Reason</h4><pre>{_e(reason)}</pre>" if reason else ""
    plots = ""
    for tl in timelines:
        src = (
            f" (load window from the {_e(tl.window_source)})"
            if tl.windows
            else (" (no load window recorded)")
        )
        trunc = " Timeline truncated for the plot." if tl.truncated else ""
        plots += (
            f'<figure class="timeline" data-timeline="{_e(tl.name)}">'
            f"{svg_timeline(tl)}"
            f"<figcaption class='muted'>Essential-function monitor <code>{_e(tl.name)}</code>"
            f"{src}. Red ticks: samples without an answer within the bound.{trunc}"
            f"</figcaption>{_stats_table(tl)}</figure>"
        )
    return (
        f'<details class="check c-{_VERDICT_CLASS.get(verdict, "error")}" id="{anchor}" '
        f'data-verdict="{_e(verdict)}"{" open" if is_open else ""}>'
        f"<summary>{_verdict_badge(verdict)} <span class='req'>{_e(check.get('requirement'))}"
        f"</span> <span>{_e(check.get('title'))}</span>"
        f"<span class='muted'>[{_e(check.get('protocol'))}]</span></summary>"
        f'<div class="body"><dl class="facts">{dl}</dl>{reason_html}{plots}'
        f"{_observations(check.get('observations', []))}"
        f"{_evidence_links(check.get('evidence', []))}</div></details>"
    )


def _checks(checks: list[dict[str, Any]], ids: dict[int, str], run_dir: Path | None) -> str:
    parts = ['<section id="checks"><h2>Checks</h2>']
    for fr in (*FRS, None):
        mine = [
            (i, c)
            for i, c in enumerate(checks)
            if (c.get("fr") == fr) or (fr is None and c.get("fr") not in FRS)
        ]
        if not mine:
            continue
        heading = f"{fr} {_FR_TITLES[fr]}" if fr else "Other"
        parts.append(f"<h3>{_e(heading)}</h3>")
        parts.extend(_check(c, ids[i], run_dir) for i, c in mine)
    if not checks:
        parts.append('<p class="muted">No check was collected.</p>')
    parts.append("</section>")
    return "".join(parts)


def _run_monitor(results: dict[str, Any], checks: list[dict[str, Any]],
                 ids: dict[int, str]) -> str:
    """The whole-run monitor (``harness run --monitor``): figures per probe, checks during
    which the essential function was out of bounds, and the timeline file."""
    section = results.get("monitor")
    if not isinstance(section, dict):
        return ""
    head = '<section id="run-monitor"><h2>Essential function over the whole run</h2>'
    if "error" in section:
        return f"{head}<p>The monitor failed: {_e(section['error'])}</p></section>"

    def ms(value: object) -> str:
        number = _float(value)
        return "" if number is None else f"{number:.1f}"

    rows = "".join(
        f"<tr><td><code>{_e(name)}</code></td><td>{_e(fig.get('samples'))}</td>"
        f"<td>{_e(fig.get('failed'))}</td><td>{ms(fig.get('longest_outage_ms'))}</td>"
        f"<td>{ms(fig.get('latency_p50_ms'))}</td><td>{ms(fig.get('latency_p99_ms'))}</td>"
        f"<td>{ms(fig.get('late_p99_ms'))}</td></tr>"
        for name, fig in sorted(section.get("probes", {}).items()) if isinstance(fig, dict)
    )
    anchors = {c.get("nodeid"): ids[i] for i, c in enumerate(checks)}
    during = [
        f'<li><a href="#{anchors[n]}">{_e(n)}</a></li>' if n in anchors else f"<li>{_e(n)}</li>"
        for n in section.get("checks_out_of_bounds", [])
    ]
    gaps = section.get("between_checks", [])
    timeline = section.get("timeline")
    link = _safe_href(timeline) if isinstance(timeline, str) else None
    return (
        f"{head}<p class='muted'>{_e(section.get('samples'))} samples at "
        f"{_e(section.get('rate_hz'))} Hz over {_e(section.get('duration_s'))} s. The monitor "
        "observes; a check's verdict is what that check saw.</p>"
        "<table><thead><tr><th>Probe</th><th>Samples</th><th>Out of bounds</th>"
        "<th>Longest outage (ms)</th><th>p50 (ms)</th><th>p99 (ms)</th>"
        "<th title='how late the monitor itself polled, against its schedule: small means our "
        "load did not starve it'>Monitor late, p99 (ms)</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        + (f"<h3>Out of bounds while these checks ran</h3><ul>{''.join(during)}</ul>"
           if during else "<p>Within bounds during every check.</p>")
        + (f"<p>{len(gaps)} sample(s) out of bounds between checks.</p>" if gaps else "")
        + (f'<p>Timeline: <a href="{_e(link)}">{_e(timeline)}</a></p>' if link else "")
        + "</section>"
    )


def _footer(results: dict[str, Any]) -> str:
    versions = results.get("versions", {})
    items = ", ".join(f"{_e(k)} {_e(v)}" for k, v in versions.items())
    return (
        f"<footer>Generated by harness {_e(results.get('harness_version'))}. "
        f"Libraries: {items}. The sha256 of every file of this folder is in manifest.json; "
        "check it with <code>harness report verify DIR</code>.</footer>"
    )


def render_html(results: dict[str, Any], run_dir: Path | None = None) -> str:
    """Render a results document as one self-contained HTML page.

    :param run_dir: the run folder, to read the monitor timelines for the plots (None: no
        plots).
    """
    checks = [c for c in results.get("checks", []) if isinstance(c, dict)]
    ids = {i: f"check-{i + 1}" for i in range(len(checks))}
    dev = results.get("profile", {}).get("device", {})
    title = f"Conformance report: {dev.get('vendor', '?')} {dev.get('model', '?')}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src data:\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="generator" content="harness">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>"
        f"{_header(results)}{_summary(results, checks, ids)}{_matrix(results)}"
        f"{_run_monitor(results, checks, ids)}"
        f"{_documents(results)}{_waivers(results)}{_checks(checks, ids, run_dir)}"
        f"{_footer(results)}</main></body></html>\n"
    )


def render_html_safe(results: dict[str, Any], run_dir: Path | None = None) -> str:
    """:func:`render_html`, or a minimal page naming the fault if rendering fails.

    The run's results.json and evidence are already on disk when this runs; a rendering bug
    must not cost the manifest.
    """
    try:
        return render_html(results, run_dir)
    except Exception as exc:  # a report bug must not lose the run folder
        detail = re.sub(r"\s+", " ", f"{type(exc).__name__}: {exc}")[:500]
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            "<title>Conformance report (rendering failed)</title></head><body>"
            "<h1>The HTML report could not be rendered</h1>"
            f"<p>{_e(detail)}</p><p>results.json and junit.xml in this folder are complete; "
            "re-render with <code>harness report DIR</code>.</p></body></html>\n"
        )
