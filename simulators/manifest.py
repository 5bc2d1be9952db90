"""Write ``manifest.json``: each simulator's weakness names, for the lab launcher.

The harness never imports a simulator; it reads this file instead. Regenerate it after adding a
weakness (``python -m simulators.manifest``); a test fails while it is stale.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

SIMULATORS = ("modbus_tcp", "modbus_tls", "modbus_rtu", "console", "opcua", "ssh", "hostile")
PATH = Path(__file__).with_name("manifest.json")


def build() -> dict[str, list[str]]:
    """Each simulator's sorted weakness names, read from its ``WEAKNESSES``."""
    out: dict[str, list[str]] = {}
    for name in SIMULATORS:
        module = importlib.import_module(f"simulators.{name}")
        out[name] = sorted(module.WEAKNESSES)
    return out


def render() -> str:
    """The manifest file's text."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {PATH}")
