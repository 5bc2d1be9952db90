"""Evidence: what each check sent and saw, kept for the report and the evidence bundle.

Protocol clients record every exchange here (timestamp, direction, channel, summary, hex).
Secrets are scrubbed before anything is written: every secret the run resolves is registered
with :func:`register_secret`, and any text or bytes containing it is redacted.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

REDACTED = "<redacted>"
_secrets: set[str] = set()
_secrets_lock = threading.Lock()

#: Observations copied inline into results.json per check (the files keep everything).
INLINE_LIMIT = 60
#: Hard bound on recorded entries per check, so a hostile device cannot exhaust memory.
MAX_ENTRIES = 20000
#: Bytes of payload kept per entry.
MAX_PAYLOAD = 4096


def register_secret(value: str) -> None:
    """Remember a secret value so that it is scrubbed from every evidence file."""
    if value and len(value) >= 3:
        with _secrets_lock:
            _secrets.add(value)


def has_secrets() -> bool:
    """True once any secret has been registered."""
    return bool(_secrets)


def scrub_text(text: str) -> str:
    """Replace every registered secret in ``text``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        if s in text:
            text = text.replace(s, REDACTED)
    return text


def scrub_bytes(data: bytes) -> bytes:
    """Replace every registered secret (UTF-8 encoded) in ``data``."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for s in secrets:
        raw = s.encode("utf-8", "replace")
        if raw in data:
            data = data.replace(raw, REDACTED.encode())
    return data


def slug(nodeid: str) -> str:
    """A file-system-safe folder name for a check."""
    base = nodeid.split("::", 1)[-1] if "::" in nodeid else nodeid
    mod = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{mod}__{base}")[:150]


class Evidence:
    """The evidence log of one check. Thread-safe; bounded in size."""

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.entries: list[dict[str, Any]] = []
        self.attachments: dict[str, bytes] = {}
        self.timelines: dict[str, list[dict[str, Any]]] = {}
        self.dropped = 0
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def _add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            if len(self.entries) >= MAX_ENTRIES:
                self.dropped += 1
                return
            self.entries.append(entry)

    def _base(self, kind: str, channel: str, summary: str) -> dict[str, Any]:
        return {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "t": round(time.monotonic() - self._t0, 6),
            "kind": kind,
            "channel": channel,
            "summary": scrub_text(summary),
        }

    def sent(self, channel: str, data: bytes | None = None, summary: str = "") -> None:
        """Record bytes (or an action) sent to the device."""
        entry = self._base("sent", channel, summary)
        if data is not None:
            entry["hex"] = scrub_bytes(data[:MAX_PAYLOAD]).hex()
            entry["length"] = len(data)
        self._add(entry)

    def received(self, channel: str, data: bytes | None = None, summary: str = "") -> None:
        """Record bytes (or an outcome) received from the device."""
        entry = self._base("received", channel, summary)
        if data is not None:
            entry["hex"] = scrub_bytes(data[:MAX_PAYLOAD]).hex()
            entry["length"] = len(data)
        self._add(entry)

    def note(self, summary: str, **fields: Any) -> None:
        """Record an observation or a judgement (``fields`` must be JSON-serialisable)."""
        entry = self._base("note", "", summary)
        if fields:
            entry["data"] = json.loads(scrub_text(json.dumps(fields, default=str)))
        self._add(entry)

    def attach(self, name: str, content: bytes | str) -> None:
        """Attach a file (e.g. an endpoint list, a certificate, a pcap)."""
        data = content.encode() if isinstance(content, str) else content
        with self._lock:
            self.attachments[re.sub(r"[^A-Za-z0-9_.-]+", "_", name)] = data

    def timeline(self, name: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Attach a time series (e.g. the monitor's samples), saved as CSV."""
        with self._lock:
            self.timelines[name] = [dict(r) for r in rows]

    def observations(self, limit: int = INLINE_LIMIT) -> list[dict[str, Any]]:
        """The last ``limit`` entries (the ones nearest the verdict)."""
        with self._lock:
            return list(self.entries[-limit:])

    def save(self, folder: Path, run_root: Path) -> list[str]:
        """Write the evidence under ``folder``; return paths relative to ``run_root``."""
        with self._lock:
            entries = list(self.entries)
            attachments = dict(self.attachments)
            timelines = dict(self.timelines)
        if not (entries or attachments or timelines):
            return []
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        if entries:
            path = folder / "exchanges.jsonl"
            with path.open("w", encoding="utf-8") as fh:
                for e in entries:
                    fh.write(json.dumps(e, sort_keys=True) + "\n")
                if self.dropped:
                    fh.write(
                        json.dumps(
                            {
                                "kind": "note",
                                "summary": f"{self.dropped} further entries dropped (bound)",
                            }
                        )
                        + "\n"
                    )
            written.append(path)
        for name, data in attachments.items():
            path = folder / name
            path.write_bytes(scrub_bytes(data))
            written.append(path)
        for name, rows in timelines.items():
            path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.csv"
            buf = io.StringIO()
            if rows:
                fields = list(rows[0])
                for r in rows[1:]:
                    fields.extend(k for k in r if k not in fields)
                writer = csv.DictWriter(buf, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)
            path.write_text(scrub_text(buf.getvalue()), encoding="utf-8")
            written.append(path)
        return [str(p.relative_to(run_root)) for p in written]
