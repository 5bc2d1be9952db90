"""report.html: structure, numbers, escaping, the load plot, no external assets."""

from __future__ import annotations

import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from reportdocs import PROFILE, make_run_folder, monitor_rows

from harness.report.html import (
    Window,
    load_timelines,
    parse_timeline,
    phase_stats,
    render_html,
    render_html_safe,
    svg_timeline,
)

pytestmark = pytest.mark.timeout(60)

HOSTILE = '<script>alert("pwned")</script>'


class Doc(HTMLParser):
    """Collects start tags with their attributes, and the text of matrix rows."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: dict[str, list[tuple[dict[str, str | None], str]]] = {}
        self._row: str | None = None
        self._cell: dict[str, str | None] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "tr" and a.get("data-fr"):
            self._row = str(a["data-fr"])
            self.rows[self._row] = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell, self._text = a, ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self.rows[self._row].append((self._cell, self._text.strip()))
            self._cell = None
        elif tag == "tr":
            self._row = None


def parse(text: str) -> Doc:
    doc = Doc()
    doc.feed(text)
    return doc


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("html") / "run"
    results = make_run_folder(out, outage=True)
    return out, results, (out / "report.html").read_text(encoding="utf-8")


def check_section(page: str, nodeid_end: str) -> str:
    """The <details> element of the check whose node id ends with ``nodeid_end``."""
    for part in page.split("<details ")[1:]:
        body = part.split("</details>", 1)[0]
        if f"::{nodeid_end}</code>" in body:
            return body
    raise AssertionError(f"no check section for {nodeid_end}")


def test_matrix_numbers_match_the_results(folder: Any) -> None:
    _, results, page = folder
    doc = parse(page)
    assert list(doc.rows) == ["FR1", "FR2", "FR3", "FR4", "FR5", "FR6", "FR7"]
    for row in results["matrix"]:
        cells = doc.rows[row["fr"]]
        claimed = next(a["data-claimed"] for a, _ in cells if "data-claimed" in a)
        achieved = next(a["data-achieved"] for a, _ in cells if "data-achieved" in a)
        counts = {a["data-verdict"]: int(t) for a, t in cells if "data-verdict" in a}
        assert int(str(claimed)) == row["claimed"]
        assert achieved == ("untested" if row["achieved"] is None else str(row["achieved"]))
        assert counts == row["counts"]
    # and the numbers are the ones this run must give (DESIGN.md section 3)
    fr1 = {a.get("data-verdict") or a.get("data-achieved") or "": t for a, t in doc.rows["FR1"]}
    assert fr1["PASS"] == "1" and fr1["FAIL"] == "1" and fr1["1"] == "1"  # SL1 passed, SL2 failed
    fr3 = [t for a, t in doc.rows["FR3"] if "data-achieved" in a]
    assert fr3 == ["0"]  # an ERROR never counts as passed
    fr4 = [t for a, t in doc.rows["FR4"] if "data-achieved" in a]
    assert fr4 == ["untested"]


def test_summary_documents_and_waivers(folder: Any) -> None:
    _, results, page = folder
    assert 'id="outcome"' in page and "Outcome: FAIL" in page
    for doc in results["documents"]:
        assert f'data-req="{doc["id"]}"' in page
    assert results["documents"], "the catalog lists documentary requirements at SL1 for EDR"
    waivers = page.split('id="waivers-table"', 1)[1].split("</table>", 1)[0]
    assert "CR 2.8" in waivers and "plant historian (site SOP-17)" in waivers
    assert "2099-12-31" in waivers and "active" in waivers


def test_every_check_with_verdict_reason_and_evidence_links(folder: Any) -> None:
    out, results, page = folder
    doc = parse(page)
    details = [a for t, a in doc.tags if t == "details"]
    assert [a["data-verdict"] for a in details] == [c["verdict"] for c in results["checks"]]
    failed = check_section(page, "test_unique_users")
    assert "two operators share the account op" in failed
    links = [a["href"] for t, a in doc.tags if t == "a" and not str(a["href"]).startswith("#")]
    assert links and all((out / str(h)).is_file() for h in links)
    expected = {p for c in results["checks"] for p in c["evidence"]}
    assert set(links) == expected


def test_load_check_has_a_plot_with_the_window_shaded(folder: Any) -> None:
    _, _, page = folder
    flood = check_section(page, "test_flood")
    assert "<svg" in flood and 'class="load-window"' in flood
    assert 'class="latency"' in flood and 'class="availability"' in flood
    assert 'class="failed"' in flood  # the outage shows as red ticks
    m = re.search(r'class="load-window" x="([\d.]+)" y="\d+" width="([\d.]+)"', flood)
    assert m is not None
    # the timeline runs 0..3.98 s and the load is 1.0..2.98 s: the window starts about a
    # quarter in and covers about half of the plot width (700 px wide, 58 px margin)
    x, width = float(m.group(1)), float(m.group(2))
    assert 58 + 0.2 * 688 < x < 58 + 0.3 * 688
    assert 0.45 * 688 < width < 0.55 * 688
    for other in ("test_login_required", "test_unique_users", "test_malformed"):
        assert "<svg" not in check_section(page, other)


def test_phase_stats_and_window_sources(tmp_path: Path) -> None:
    rows = monitor_rows(outage=True)
    text = "t,ok,latency_ms,phase\n" + "".join(
        f"{r['t']},{r['ok']},{r['latency_ms']},{r['phase']}\n" for r in rows
    )
    tl = parse_timeline("monitor.csv", text)
    assert tl.windows == [Window(1.0, 2.98, "load")] and tl.window_source == "phase column"
    stats = {s["phase"]: s for s in phase_stats(tl)}
    assert stats["before"]["availability"] == 100.0
    assert stats["load"]["availability"] == 80.0  # 20 of 100 samples unanswered
    assert stats["load"]["outage_s"] == pytest.approx(0.4)
    assert stats["load"]["p50"] > stats["before"]["max"]
    # without a phase column: a note, then load_window.json (which wins)
    ev = tmp_path / "evidence" / "c"
    ev.mkdir(parents=True)
    (ev / "monitor.csv").write_text(
        "t,ok,latency_ms\n" + "".join(f"{i / 10},1,5\n" for i in range(40))
    )
    check = {
        "evidence": ["evidence/c/monitor.csv"],
        "observations": [{"kind": "note", "data": {"load_window": [0.5, 1.5]}}],
    }
    [tl] = load_timelines(check, tmp_path)
    assert tl.windows == [Window(0.5, 1.5)] and tl.window_source == "note"
    (ev / "load_window.json").write_text(json.dumps({"start": 1.0, "end": 2.0}))
    [tl] = load_timelines(check, tmp_path)
    assert tl.windows == [Window(1.0, 2.0)] and tl.window_source == "load_window.json"


def test_the_monitors_own_phase_labels(tmp_path: Path) -> None:
    """harness.load.monitor.timeline_rows: baseline, load:KIND, after:KIND, several loads, a
    ``probe`` column per essential function."""
    rows = ["t,phase,probe,ok,latency_ms,value,stall_ms,error"]
    phases = [
        (0, "baseline"),
        (10, "load:modbus_flood"),
        (20, "after:modbus_flood"),
        (30, "malformed"),
        (35, "after-malformed"),
    ]
    for i in range(40):
        phase = [p for start, p in phases if i >= start][-1]
        for probe in ("heartbeat", "tcp"):
            ok = not (probe == "tcp" and 12 <= i < 15)
            rows.append(f"{i / 10},{phase},{probe},{int(ok)},{'3.5' if ok else ''},,,")
    tl = parse_timeline("monitor.csv", "\n".join(rows) + "\n")
    assert tl.windows == [Window(1.0, 1.9, "load:modbus_flood"), Window(3.0, 3.4, "malformed")]
    stats = {s["phase"]: s for s in phase_stats(tl)}
    assert stats["before"]["samples"] == 20 and stats["after"]["samples"] == 30
    assert stats["load"]["samples"] == 30 and stats["load"]["availability"] == 90.0
    svg = svg_timeline(tl)
    assert svg.count('class="load-window"') == 2 and "load:modbus_flood" in svg
    assert svg.count('class="latency"') == 3  # heartbeat, and tcp broken by its outage
    assert "heartbeat" in svg and "tcp" in svg  # one legend entry per probe


def hostile_results(results: dict[str, Any]) -> dict[str, Any]:
    bad = copy.deepcopy(results)
    dev = bad["profile"]["device"]
    dev["vendor"] = '"><img src=x onerror=alert(1)>'
    dev["model"] = HOSTILE
    dev["firmware"] = "1.0</title><script>x()</script>"
    check = bad["checks"][1]
    check["reason"] = f"</pre>{HOSTILE}"
    check["title"] = "<b onmouseover=alert(1)>t</b>"
    check["observations"].append(
        {"kind": "received", "summary": HOSTILE, "hex": "3c7363726970743e", "channel": "<i>"}
    )
    check["evidence"] = [
        "javascript:alert(1)",
        "https://evil.example/x.js",
        "../../etc/passwd",
        'evidence/a"onclick="x.jsonl',
    ]
    bad["profile"]["waivers"][0]["justification"] = HOSTILE
    return bad


def test_hostile_strings_are_escaped(folder: Any) -> None:
    out, results, _ = folder
    page = render_html(hostile_results(results), out)
    doc = parse(page)
    tags = {t for t, _ in doc.tags}
    assert "script" not in tags and "img" not in tags and "b" not in tags and "i" not in tags
    assert not any(k.startswith("on") for _, a in doc.tags for k in a)
    assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in page
    hrefs = [str(a["href"]) for t, a in doc.tags if t == "a"]
    assert not any(h.startswith(("javascript:", "https:", "../")) for h in hrefs)
    assert "evidence/a%22onclick%3D%22x.jsonl" in hrefs  # quoted, stays one attribute


def test_no_external_assets(folder: Any) -> None:
    out, results, page = folder
    for text in (page, render_html(hostile_results(results), out)):
        refs = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"'\s>]+)""", text, re.I)
        assert not [r for r in refs if re.match(r"(?i)(https?:|//|ftp:|javascript:)", r)]
        assert "<link" not in text and "<script" not in text.lower()
        assert "@import" not in text and "url(" not in text
        assert "default-src 'none'" in text  # the CSP forbids anything external anyway


def test_schema_1_0_documents_are_computed_and_partial_runs_flagged(folder: Any) -> None:
    out, results, _ = folder
    old = copy.deepcopy(results)
    del old["documents"]
    old["schema_version"] = "1.0"
    old["complete"] = False
    page = render_html(old, out)
    for doc in results["documents"]:
        assert f'data-req="{doc["id"]}"' in page
    assert 'id="partial"' in page
    assert 'id="partial"' not in render_html(results, out)


def test_a_rendering_fault_still_yields_a_page(folder: Any) -> None:
    _, results, _ = folder
    broken = copy.deepcopy(results)
    broken["matrix"] = [{"fr": "FR1", "claimed": "<two>", "achieved": None, "counts": {}}]
    page = render_html_safe(broken, None)
    assert "could not be rendered" in page and "&lt;two&gt;" in page


def test_profile_without_waivers_or_documents(tmp_path: Path) -> None:
    prof = copy.deepcopy(PROFILE)
    prof["waivers"] = []
    prof["claimed_sl"] = {"FR1": 1}
    results = make_run_folder(tmp_path / "run", profile=prof)
    page = (tmp_path / "run" / "report.html").read_text()
    assert "The profile waives no requirement" in page
    assert results["documents"] == [] and "No requirement at the claimed SLs" in page
