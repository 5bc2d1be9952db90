"""report.html renders in a real browser: headless Chromium (Debian's ``chromium`` package).

``.ci/run`` installs Chromium; elsewhere the test is skipped with the reason when it is absent.
Two renderings: ``--dump-dom`` (the parsed page has the matrix, the checks and the plot) and
``--screenshot`` (the PNG is decoded here and must show the report's own colours: the CSS was
applied and the inline SVG drawn).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import pytest
from reportdocs import make_run_folder

from harness.report.html import load_timelines, svg_timeline

pytestmark = pytest.mark.timeout(120)

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
WIDTH, HEIGHT = 1280, 2000


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium with no network and a throw-away profile; kill it on timeout."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={tmp / 'chrome-profile'}",
        *args,
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB rows of an 8-bit, non-interlaced RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        prev = line
        rows.append(bytes(line) if bpp == 3 else bytes(v for j, v in enumerate(line) if j % 4 != 3))
    return width, height, rows


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("render")
    results = make_run_folder(tmp / "run", outage=True)
    return tmp, results


@needs_chromium
def test_dom_has_the_matrix_checks_and_plot(report: Any) -> None:
    tmp, results = report
    page = (tmp / "run" / "report.html").as_uri()
    proc = chromium(tmp, "--dump-dom", page)
    dom = proc.stdout.decode("utf-8", "replace")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert '<table id="matrix-table">' in dom
    assert dom.count("<tr data-fr=") == 7
    assert dom.count('<details class="check') == len(results["checks"])
    assert "<svg" in dom and 'class="load-window"' in dom and "<polyline" in dom
    assert "Fake PLC" in dom and "Needs attention" in dom


@needs_chromium
def test_screenshot_shows_the_styled_report(report: Any) -> None:
    tmp, _ = report
    shot = tmp / "report.png"
    page = (tmp / "run" / "report.html").as_uri()
    proc = chromium(tmp, f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", page)
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    colours: set[bytes] = set()
    for row in rows[::4]:
        colours.update(row[i : i + 3] for i in range(0, len(row), 12))
    # a blank or unstyled page has a handful of colours; ours has the CSS's own
    assert len(colours) > 50, f"only {len(colours)} colours: the page did not render"
    expected = {
        "page background #f5f6f8": b"\xf5\xf6\xf8",
        "FAIL outcome banner #fdecec": b"\xfd\xec\xec",
        "achieved SL met #e7f5ea": b"\xe7\xf5\xea",
        "table header #f0f2f5": b"\xf0\xf2\xf5",
    }
    missing = [name for name, rgb in expected.items() if rgb not in colours]
    assert not missing, f"colours of the stylesheet not on screen: {missing}"


@needs_chromium
def test_plot_is_drawn(report: Any) -> None:
    """Render just the load check (the plot sits below the first screen of the full report)."""
    tmp, results = report
    flood = next(c for c in results["checks"] if c["nodeid"].endswith("test_flood"))
    [tl] = load_timelines(flood, tmp / "run")
    page = tmp / "plot.html"
    page.write_text(f"<!DOCTYPE html><html><body style='margin:0'>{svg_timeline(tl)}</body></html>")
    shot = tmp / "plot.png"
    chromium(tmp, f"--screenshot={shot}", "--window-size=800,400", page.as_uri())
    _, _, rows = decode_png(shot.read_bytes())
    colours = {row[i : i + 3] for row in rows for i in range(0, len(row), 3)}
    assert b"\xc6\x28\x28" in colours, "failed-sample ticks (#c62828) not drawn"
    assert b"\x2e\x7d\x32" in colours, "availability line (#2e7d32) not drawn"
    shaded = [c for c in colours if c[0] > 240 and 200 < c[2] < 230 and c[0] - c[2] > 25]
    assert shaded, "load window shading not drawn"
