"""The live status line: shown on a terminal, erased before pytest writes, quiet under CI."""

from __future__ import annotations

import os
import pty
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).parent
CHECKS = HERE / "check_progress_run.py"


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        path = tmp_path_factory.mktemp("progress") / "p.yaml"
        path.write_text(
            "device: {vendor: ACME, model: PLC, firmware: '1', component_type: embedded}\n"
            "claimed_sl: {FR7: 1}\n"
            f"interfaces:\n  modbus_tcp: {{host: 127.0.0.1, port: {listener.getsockname()[1]}}}\n"
        )
        yield path


def command(profile: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        str(CHECKS),
        "-q",
        "-p",
        "harness.plugin",
        "-p",
        "no:cacheprovider",
        "--profile",
        str(profile),
        "-o",
        "python_files=check_*.py",
        "-o",
        "console_output_style=classic",
        "--rootdir",
        str(HERE),
    ]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "HARNESS_PROGRESS")}
    env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", COLUMNS="150", TERM="xterm", **extra)
    return env


def run_on_pty(profile: Path, **extra: str) -> bytes:
    """Run pytest with a pseudo-terminal as stdout and stderr; return all it wrote."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            command(profile),
            stdin=subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=environment(**extra),
        )
        os.close(slave)
        slave = -1
        out = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        proc.wait(timeout=30)
        return out
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)


def screen(raw: bytes) -> list[str]:
    """What a terminal shows for ``raw``: handles CR, LF, erase-to-end (K) and cursor-left (D)."""
    lines: list[list[str]] = [[]]
    col = 0
    text = raw.decode("utf-8", "replace")
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\x1b":
            m = re.match(r"\x1b\[([0-9;?]*)([A-Za-z])", text[i:])
            if m is None:
                i += 1
                continue
            arg, op = m.group(1), m.group(2)
            if op == "K":
                del lines[-1][col:]
            elif op == "D":
                col = max(0, col - int(arg or 1))
            i += m.end()
            continue
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append([])
            col = 0
        else:
            line = lines[-1]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
        i += 1
    return ["".join(line) for line in lines]


def test_status_line_shows_check_and_load_figures_on_a_terminal(profile: Path) -> None:
    raw = run_on_pty(profile)
    text = raw.decode("utf-8", "replace")
    assert "[1/2] CR 7.1 Keeps working under load" in text, text
    assert "load 123/s" in text and "monitor 4.5 ms" in text
    shown = screen(raw)
    final = "\n".join(shown)
    assert "2 passed" in final
    # every status line was erased: what remains is pytest's own output
    assert "load 123/s" not in final and "[1/2]" not in final, final
    assert ".." in [line.rstrip() for line in shown], shown  # pytest's dots, nothing else


@pytest.mark.parametrize("extra", [{"CI": "true"}, {"HARNESS_PROGRESS": "0"}])
def test_quiet_under_ci(profile: Path, extra: dict[str, str]) -> None:
    text = run_on_pty(profile, **extra).decode("utf-8", "replace")
    assert "2 passed" in text
    assert "[1/2]" not in text and "load 123/s" not in text


def test_quiet_when_not_a_terminal(profile: Path) -> None:
    proc = subprocess.run(
        command(profile),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
        check=False,
    )
    assert "2 passed" in proc.stdout, proc.stdout + proc.stderr
    assert "[1/2]" not in proc.stdout + proc.stderr


def test_update_without_a_session_is_a_no_op() -> None:
    from harness import progress

    progress.update(rate=1.0, latency_ms=2.0)  # nothing registered in this process
    assert progress._Slot.current is None
