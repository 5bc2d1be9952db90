"""A cache of the collected check specs, so that ``harness plan`` need not start pytest.

Collecting the checks means importing pytest, our plugin and every check module: most of the
time ``harness plan`` takes. What it yields (:class:`~harness.selection.CheckSpec` per check)
depends only on the check modules and on the code that reads their markers, so the specs are
stored in a JSON file keyed by a fingerprint of those files (path, size and modification time
of every ``.py`` under the checks' folder, of the plugin and of the run configuration, and the
harness and Python versions). Any change to a check makes a new key; a missing, stale or
unreadable cache file only means collecting again.

The file lives in ``$XDG_CACHE_HOME/harness/checks-<folder hash>/`` (default under
``~/.cache/harness``), one per installed checks folder; set
``HARNESS_NO_CACHE=1`` to bypass it. It is written atomically (a temporary file renamed over the
old one), so two concurrent plans never read half a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from harness.selection import CheckSpec

#: Bump when the file layout changes.
FORMAT = 1
_FIELDS = {f.name for f in dataclasses.fields(CheckSpec)}


def cache_dir() -> Path | None:
    """Where the cache lives, or None when caching is switched off."""
    if os.environ.get("HARNESS_NO_CACHE"):
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "harness"


def fingerprint(checks_dir: Path, code_files: Iterable[Path]) -> str:
    """A key that changes whenever a check module or the code that reads them changes."""
    from harness import __version__

    digest = hashlib.sha256(f"{FORMAT}|{__version__}|{sys.version}|{checks_dir}".encode())
    files = sorted(checks_dir.rglob("*.py")) + sorted(code_files)
    for path in files:
        st = path.stat()
        digest.update(f"|{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def load(directory: Path, key: str) -> list[CheckSpec] | None:
    """The cached specs for ``key``, or None (no file, another key, unreadable)."""
    try:
        data = json.loads((directory / "checks.json").read_text(encoding="utf-8"))
        if data.get("key") != key:
            return None
        return [CheckSpec(**{k: v for k, v in item.items() if k in _FIELDS})
                for item in data["checks"]]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def store(directory: Path, key: str, specs: list[CheckSpec]) -> None:
    """Write the specs under ``key``; a cache that cannot be written is silently skipped."""
    payload = json.dumps({"key": key, "checks": [dataclasses.asdict(s) for s in specs]})
    with contextlib.suppress(OSError):
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checks-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
            os.replace(tmp, directory / "checks.json")
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def slot(checks_dir: Path) -> Path | None:
    """The cache folder of one installation's checks (a checkout and a venv each have theirs,
    so using both does not evict one another's entry); None when caching is off."""
    base = cache_dir()
    if base is None:
        return None
    return base / f"checks-{hashlib.sha256(str(checks_dir).encode()).hexdigest()[:12]}"


def cached_specs(checks_dir: Path, code_files: Iterable[Path],
                 collect: Callable[[], list[CheckSpec]]) -> list[CheckSpec]:
    """The specs from the cache when it is current, else from ``collect()`` (then stored)."""
    directory = slot(checks_dir)
    if directory is None:
        return collect()
    try:
        key = fingerprint(checks_dir, code_files)
    except OSError:
        return collect()
    specs = load(directory, key)
    if specs is None:
        specs = collect()
        store(directory, key, specs)
    return specs
