"""manifest.json: the sha256 of every file of a run folder, so that tampering shows.

The manifest records the run's start and end, the host, the harness version and the profile's
hash, and one entry per file (path relative to the folder, POSIX separators, size, sha256).
It is written last, after every other file of the folder. :func:`verify` recomputes it and
names each file that changed, is missing, or was added since.

Symbolic links are recorded by their link text (``symlink`` entry), never followed, so a
link cannot make the manifest vouch for a file outside the folder.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from harness.errors import UsageError

MANIFEST = "manifest.json"
#: Version of the manifest format.
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


class NotAReport(UsageError):
    """A folder that is not a run folder (no manifest.json and no results.json)."""


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def scan(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` (except the manifest itself) with its size and sha256."""
    files: dict[str, dict[str, Any]] = {}
    for root, dirs, names in os.walk(folder, followlinks=False):
        base = Path(root)
        for d in list(dirs):
            if (base / d).is_symlink():  # os.walk lists a link to a folder as a folder
                names.append(d)
                dirs.remove(d)
        dirs.sort()
        for name in sorted(names):
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel == MANIFEST:
                continue
            if path.is_symlink():
                target = os.readlink(path)
                files[rel] = {
                    "symlink": target,
                    "sha256": hashlib.sha256(target.encode("utf-8", "replace")).hexdigest(),
                }
            elif path.is_file():
                files[rel] = {"size": path.stat().st_size, "sha256": _digest_file(path)}
    return dict(sorted(files.items()))


def build_manifest(folder: Path, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of ``folder``; run facts come from ``results`` (or its results.json)."""
    if results is None:
        results = _load_results(folder) or {}
    profile = results.get("profile", {})
    return {
        "manifest_version": MANIFEST_VERSION,
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "harness_version": results.get("harness_version"),
        "results_schema_version": results.get("schema_version"),
        "run": {
            "started": results.get("started"),
            "finished": results.get("finished"),
            "complete": results.get("complete"),
            "host": results.get("host"),
        },
        "profile": {"path": profile.get("path"), "sha256": profile.get("sha256")},
        "versions": results.get("versions", {}),
        "files": scan(folder),
    }


def write_manifest(folder: Path, results: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``folder/manifest.json`` atomically (call it after every other file is written)."""
    manifest = build_manifest(folder, results)
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def _load_results(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify(folder: Path) -> list[str]:
    """Recompute the manifest of ``folder``; one problem per changed, missing or extra file.

    An empty list means the folder is exactly what the manifest describes.

    :raises NotAReport: ``folder`` is not a folder, or has neither manifest.json nor
        results.json.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotAReport(f"{folder} is not a folder")
    mpath = folder / MANIFEST
    if not mpath.exists():
        if (folder / "results.json").exists():
            return [f"missing: {MANIFEST} (the run folder has no manifest)"]
        raise NotAReport(f"{folder} is not a report folder (no {MANIFEST}, no results.json)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        recorded = manifest["files"]
        if not isinstance(recorded, dict):
            raise TypeError("files is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"changed: {MANIFEST} (unreadable: {exc})"]
    problems: list[str] = []
    actual = scan(folder)
    for rel, entry in recorded.items():
        now = actual.get(rel)
        if now is None:
            problems.append(f"missing: {rel}")
        elif not isinstance(entry, dict) or entry.get("sha256") != now["sha256"]:
            problems.append(f"changed: {rel}")
        elif ("symlink" in entry) != ("symlink" in now):
            problems.append(f"changed: {rel} (file type)")
    problems.extend(f"extra: {rel}" for rel in actual if rel not in recorded)
    results = _load_results(folder)
    profile_hash = manifest.get("profile", {}).get("sha256") if isinstance(manifest, dict) else None
    if results is not None and profile_hash != results.get("profile", {}).get("sha256"):
        problems.append(f"changed: {MANIFEST} (profile sha256 differs from results.json)")
    return problems
