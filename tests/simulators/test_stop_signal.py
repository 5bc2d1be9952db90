"""The simulators' stop handler: SIGTERM ends a process whatever its main thread is doing.

A Python signal handler runs on the main thread between two bytecodes. If it took a lock that
the main thread may hold at that moment (``threading.Event.set`` while the main loop sits in
``Event.wait``), the process would hang until SIGKILL. The process below spins in exactly that
pattern, and is told to stop many times over.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

SPINNER = textwrap.dedent(
    """
    import sys, threading
    from simulators import common
    stopping = threading.Event()
    common.install_stop_handler(stopping.set)
    print("spinning", flush=True)
    while not stopping.wait(0):  # takes and drops the Event's lock as fast as it can
        pass
    sys.exit(0)
    """
)

#: Rounds of start-spin-SIGTERM; the old handler hung in about one round in ten.
ROUNDS = 20


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_a_main_thread_spinning_on_an_event(signum: int) -> None:
    for round_no in range(ROUNDS):
        proc = subprocess.Popen([sys.executable, "-c", SPINNER], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"spinning\n"
            proc.send_signal(signum)
            proc.send_signal(signum)  # a repeat while stopping must not kill it either
            try:
                rc = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"round {round_no}: still running 10 s after the stop signal")
            assert rc == 0, proc.stderr.read() if proc.stderr else b""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
