"""Load spread over worker processes, for sending loops that the GIL would serialise.

A connect/close storm costs the kernel about 40 us per connection (both ends of the handshake
run in the sender's context on loopback) and Python a few more: two Python threads share one
GIL and hand it over at every ``connect`` and ``close``, so a second *thread* adds little. A
second *process* doubles the rate. :func:`run_in_processes` starts ``count`` workers
(``python -m harness.load.workers``, a fresh interpreter: no fork of a process that holds
threads and event loops), gives each a share of the work and merges what they did into one
:class:`~harness.load.LoadResult`.

Safety travels with the work:

- the caller's guard has checked the destination before any worker starts, and each worker
  re-checks it against the same allow-list and arms the process-wide guard
  (:meth:`~harness.safety.Guard.arm`) before its first packet;
- the rate cap and the count bound are split between the workers (each runs its own
  :class:`~harness.load.Pacer` at ``rate / count``), so together they never exceed them;
- every worker stops at the caller's absolute deadline;
- the caller's stop signal is relayed to a shared :class:`~harness.load.StopFlag` that every
  worker polls once per batch; the caller sets it too when it is interrupted (Ctrl-C) and waits
  for the workers; a worker that outlives its deadline by :data:`GRACE_S` is killed.

The worker protocol: one JSON object on stdin (``{"task": name, "kwargs": {...}, "allow":
[networks], "deadline": monotonic, "halt": flag path}``), one JSON object on stdout (the
result's fields, or ``{"error": text}``). ``CLOCK_MONOTONIC`` is system-wide on Linux, so the
deadline and the result's start and end times mean the same in both processes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.load import BUCKET_S, LoadResult, StopFlag, Stoppable, child_env

if TYPE_CHECKING:
    from harness.safety import Guard

#: Seconds a worker may take to start, and to finish after the deadline, before it is killed.
GRACE_S = 10.0
#: How often the caller relays its stop signal to the workers (seconds).
RELAY_S = 0.01


def _connect_storm(*, payload_hex: str | None, **kwargs: Any) -> LoadResult:
    from harness.load.connflood import connect_storm

    payload = bytes.fromhex(payload_hex) if payload_hex else None
    return connect_storm(payload=payload, **kwargs)


#: The functions a worker may run, by name (JSON-friendly arguments: bytes travel as hex).
TASKS: dict[str, Callable[..., LoadResult]] = {"connect_storm": _connect_storm}


def split(total: int, count: int) -> list[int]:
    """``total`` in ``count`` near-equal whole shares (the first ones one larger)."""
    share, extra = divmod(total, count)
    return [share + (1 if i < extra else 0) for i in range(count)]


def run_in_processes(task: str, count: int, *, guard: Guard, stop: Stoppable, deadline: float,
                     shares: Sequence[dict[str, Any]]) -> list[LoadResult]:
    """Run ``task`` in ``count`` worker processes until ``deadline`` (monotonic).

    ``shares[i]`` are worker ``i``'s keyword arguments (its part of the rate and the count:
    the caller splits them); ``guard``, ``stop`` and ``duration_s`` are the worker's own.

    :raises HarnessError: a worker failed or did not answer (the others are stopped first).
    """
    if len(shares) != count:
        raise ValueError(f"{count} workers need {count} shares, got {len(shares)}")
    allow = [str(n) for n in guard.networks]
    env = child_env()
    halt = StopFlag()
    workers: list[_Worker] = []
    with contextlib.ExitStack() as files:
        try:
            for kwargs in shares:
                spec = {"task": task, "kwargs": kwargs, "allow": allow, "deadline": deadline,
                        "halt": str(halt.path)}
                out = files.enter_context(tempfile.TemporaryFile())
                err = files.enter_context(tempfile.TemporaryFile())
                workers.append(_Worker.start(json.dumps(spec).encode(), env, out, err))
            kill_at = max(deadline, time.monotonic()) + GRACE_S
            while any(w.proc.poll() is None for w in workers):
                if stop.is_set():
                    halt.set()
                if time.monotonic() > kill_at:
                    break
                time.sleep(RELAY_S)
        except BaseException:
            halt.set()  # e.g. Ctrl-C: the workers stop within one batch
            raise
        finally:
            for w in workers:
                w.reap(halt)
            halt.close()
        return [w.result(i) for i, w in enumerate(workers)]


class _Worker:
    """One worker process; its output goes to unnamed temporary files (a result of any size
    cannot fill a pipe and block the worker while we wait for it)."""

    def __init__(self, proc: subprocess.Popen[bytes], out: IO[bytes], err: IO[bytes]) -> None:
        self.proc, self.out, self.err = proc, out, err

    @classmethod
    def start(cls, spec: bytes, env: dict[str, str], out: IO[bytes], err: IO[bytes]) -> _Worker:
        """Start a worker on ``spec``, its output going to ``out`` and ``err``."""
        proc = subprocess.Popen([sys.executable, "-m", "harness.load.workers"],
                                stdin=subprocess.PIPE, stdout=out, stderr=err, env=env)
        assert proc.stdin is not None
        proc.stdin.write(spec)
        proc.stdin.close()
        return cls(proc, out, err)

    def reap(self, halt: StopFlag) -> None:
        """Stop the worker if it still runs (the halt flag, then a kill)."""
        if self.proc.poll() is None:
            halt.set()
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def result(self, index: int) -> LoadResult:
        """What the worker did; :class:`HarnessError` when it failed or said nothing."""
        self.out.seek(0)
        self.err.seek(0)
        out, err = self.out.read(), self.err.read()
        try:
            data = json.loads(out or b"null")
        except ValueError:
            data = None
        if not isinstance(data, dict):
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise HarnessError(
                f"load worker {index} ended with code {self.proc.returncode}: {tail[0]}")
        if "error" in data:
            raise HarnessError(f"load worker {index}: {data['error']}")
        return LoadResult(**data)


def merge(results: Sequence[LoadResult], kind: str, target: str, rate_cap: float) -> LoadResult:
    """The workers' results as one: counts added, series re-bucketed on the earliest start,
    ``stop_reason`` the first worker's unless another aborted, details of the first worker
    plus ``workers``."""
    start = min(r.started for r in results)
    out = LoadResult(kind, target, rate_cap, started=start, ended=max(r.ended for r in results))
    buckets: dict[int, list[float]] = {}
    for r in results:
        out.sent += r.sent
        out.answered += r.answered
        out.rejected += r.rejected
        out.errors += r.errors
        out.disconnects += r.disconnects
        for t, sent, answered in r.series:
            index = int((r.started + t - start) / BUCKET_S + 1e-9)
            row = buckets.setdefault(index, [round(index * BUCKET_S, 3), 0, 0])
            row[1] += sent
            row[2] += answered
    out.series = [buckets[i] for i in sorted(buckets)]
    reasons = [r.stop_reason for r in results]
    out.stop_reason = "abort" if "abort" in reasons else reasons[0]
    out.details = dict(results[0].details)
    kinds: dict[str, int] = {}
    for r in results:
        for key, n in r.details.get("error_kinds", {}).items():
            kinds[key] = kinds.get(key, 0) + n
    if kinds:
        out.details["error_kinds"] = kinds
    out.details["workers"] = len(results)
    return out


def main() -> int:
    """Entry point of ``python -m harness.load.workers`` (spec on stdin, result on stdout)."""
    from harness.safety import Guard

    spec = json.loads(sys.stdin.read())
    halt = StopFlag(Path(spec["halt"]))
    try:
        guard = Guard(spec["allow"])
        guard.arm()
        task = TASKS[spec["task"]]
        kwargs = dict(spec["kwargs"])
        kwargs["duration_s"] = max(0.0, float(spec["deadline"]) - time.monotonic())
        result = task(guard=guard, stop=halt, **kwargs)
        sys.stdout.write(json.dumps(asdict(result)))
    except Exception as exc:  # reported to the caller, which raises it
        sys.stdout.write(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    finally:
        halt.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
