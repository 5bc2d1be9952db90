"""results.json: the versioned, typed record of a run that every other report renders from.

Schema changelog (data-semver: add = minor, rename or remove = major):

- ``1.0``: the first schema.
- ``1.1``: adds ``documents``, the requirements of the component type at SL <= claimed that need
  documentary evidence rather than traffic (``id``, ``fr``, ``sl``, ``title``).
- ``1.2``: adds ``monitor`` (present with ``harness run --monitor``: the whole-run
  essential-function figures per probe, ``checks_out_of_bounds``, ``between_checks``, the sample
  count and the ``timeline`` CSV path) and, on each check, ``monitor`` (the probes out of bounds
  while it ran; empty otherwise).

A run folder is written in this order, each file atomically: ``evidence/`` (by the plugin, per
check), ``results.json``, ``junit.xml``, ``report.html``, and ``manifest.json`` last, so that a
manifest only ever describes a complete folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.evidence import scrub_text
from harness.report.matrix import FRS, build_matrix
from harness.verdict import Verdict

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.plugin import HarnessRun

#: Version of the results document (data-semver: add = minor, rename or remove = major).
SCHEMA_VERSION = "1.2"

_LIBRARIES = (
    "pymodbus",
    "asyncua",
    "paramiko",
    "pyserial",
    "scapy",
    "pytest",
    "pydantic",
    "cryptography",
    "junit-xml",
)

#: Keys whose values are hex dumps: the secret scrubber works on the raw bytes before they are
#: hex-encoded (:mod:`harness.evidence`); matching a secret against hex text only mangles data.
_NOT_SCRUBBED = frozenset({"hex"})


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that speak to the device (without importing them)."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def documentary_requirements(
    catalog: Catalog, component_type: str, claimed: dict[str, int]
) -> list[dict[str, Any]]:
    """The requirements that need documents: component type matches, SL <= the FR's claim.

    :param component_type: the profile's name (``embedded``, ``host``...).
    :param claimed: claimed SL per FR.
    """
    from harness.catalog import ComponentType, Verification

    component = ComponentType.from_profile(component_type)
    out: list[dict[str, Any]] = []
    for req in catalog:
        if req.verification is not Verification.DOCUMENT or req.sl_min is None:
            continue
        if component not in req.applies_to or req.sl_min > claimed.get(str(req.fr), 0):
            continue
        out.append({"id": req.id, "fr": str(req.fr), "sl": req.sl_min, "title": req.title})
    return out


def scrub(value: Any) -> Any:
    """``value`` with every registered secret redacted from every string in it."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {
            scrub_text(str(k)): (v if k in _NOT_SCRUBBED else scrub(v)) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def build_results(run: HarnessRun, *, complete: bool) -> dict[str, Any]:
    """The results document of ``run`` (secrets already scrubbed)."""
    prof = run.loaded.profile
    claimed = {fr: prof.claimed_sl.of(fr) for fr in FRS}
    summary = {str(v): 0 for v in Verdict}
    for r in run.results:
        summary[str(r.verdict)] += 1
    doc = {
        "schema_version": SCHEMA_VERSION,
        "complete": complete,
        "harness_version": __version__,
        "versions": library_versions(),
        "host": socket.gethostname(),
        "started": run.started,
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "allow_disruptive": run.allow_disruptive,
        "profile": {
            "path": str(run.loaded.path),
            "sha256": run.loaded.sha256,
            "device": prof.device.model_dump(mode="json"),
            "claimed_sl": claimed,
            "waivers": [w.model_dump(mode="json") for w in prof.waivers],
        },
        "summary": summary,
        "matrix": [row.to_json() for row in build_matrix(run.results, claimed)],
        "documents": documentary_requirements(
            run.catalog, prof.device.component_type.value, claimed
        ),
        "checks": [r.to_json() for r in run.results],
    }
    if run.monitor_section is not None:
        doc["monitor"] = run.monitor_section
    scrubbed: dict[str, Any] = scrub(doc)
    return scrubbed


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_reports(out: Path, results: dict[str, Any]) -> None:
    """(Re)write junit.xml, report.html and, last, manifest.json from a results document."""
    from harness.report.html import render_html_safe
    from harness.report.junit import render_junit
    from harness.report.manifest import write_manifest

    atomic_write(out / "junit.xml", scrub_text(render_junit(results)))
    atomic_write(out / "report.html", scrub_text(render_html_safe(results, out)))
    write_manifest(out, results)


def write_run(run: HarnessRun, *, complete: bool) -> dict[str, Any]:
    """Write results.json, junit.xml, report.html and manifest.json; return the results."""
    assert run.out is not None
    run.out.mkdir(parents=True, exist_ok=True)
    results = build_results(run, complete=complete)
    atomic_write(run.out / "results.json", json.dumps(results, indent=2, sort_keys=False) + "\n")
    write_reports(run.out, results)
    return results
