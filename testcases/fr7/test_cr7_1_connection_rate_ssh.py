"""CR 7.1 over SSH: a storm of unauthenticated connections does not stop authenticated service."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.fixtures.ssh import Ssh
    from harness.load import LoadResult
    from harness.protocols.ssh import ShellChannel

pytestmark = pytest.mark.requirement("CR 7.1")

#: The command the session probe types; its answer must come within ``request_timeout_s``.
STATUS_COMMAND = "status"
#: A heartbeat counter in the answer, when the device prints one, must keep changing.
HEARTBEAT = re.compile(r"heartbeat:\s*(\d+)", re.I)
#: A run state in the answer, when the device prints one, must not be one of these.
BAD_STATES = re.compile(r"state:\s*(stalled|stopped|fault\w*)", re.I)
#: A prompt at the end of what a shell printed.
PROMPT_END = r"[>#$%]\s*$"
#: Seconds between two session probes.
PROBE_PERIOD_S = 0.2
#: Healthy probes needed before the load.
BASELINE = 3


@dataclass
class Sample:
    """One session probe."""

    t: float
    ok: bool
    latency_ms: float | None
    heartbeat: int | None
    error: str = ""


class SessionProbe:
    """Types the status command on one authenticated shell and judges each answer."""

    def __init__(self, shell: ShellChannel, timeout_s: float) -> None:
        self.shell = shell
        self.timeout_s = timeout_s
        self.samples: list[Sample] = []
        self._last_heartbeat: int | None = None

    def sample(self) -> Sample:
        """One probe (never raises for a device that stopped answering: that is a sample)."""
        now = time.monotonic()
        if self.shell.closed:
            result = Sample(now, False, None, None, "session closed")
        else:
            self.shell.send(STATUS_COMMAND + "\r")
            got = self.shell.read_until(PROMPT_END, self.timeout_s)
            latency = (time.monotonic() - now) * 1000
            beat = HEARTBEAT.search(got.text)
            value = int(beat.group(1)) if beat else None
            bad = BAD_STATES.search(got.text)
            if got.closed:
                result = Sample(now, False, None, value, "session closed")
            elif not got.matched:
                result = Sample(now, False, None, value,
                                f"no answer within {self.timeout_s:g} s")
            elif bad:
                result = Sample(now, False, latency, value, f"device reports {bad.group(0)!r}")
            elif value is not None and value == self._last_heartbeat:
                result = Sample(now, False, latency, value, "heartbeat did not advance")
            else:
                result = Sample(now, True, latency, value)
            if value is not None:
                self._last_heartbeat = value
        self.samples.append(result)
        return result


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("load.fragile")
@pytest.mark.disruptive(traffic="TCP connect/close to the SSH port at most "
                                "{max_connection_rate:g} connections/s for at most "
                                "{max_load_duration_s:g} s, plus one command every 0.2 s on one "
                                "authenticated SSH session")
def test_ssh_survives_connection_storm(ssh: Ssh, load: LoadKit, monitor: EssentialMonitor,
                                       evidence: Evidence) -> None:
    """An authenticated SSH session keeps working through a storm of unauthenticated connections.

    Requirement: CR 7.1 (denial-of-service protection): the component keeps its essential
    functions, possibly degraded, during a DoS event. New TCP connections to the SSH port are
    the cheapest DoS against a management interface; the device may refuse them, but must not
    lose its control function or the session of the operator who is already logged in.

    Procedure: log in and open a shell; every 0.2 s type ``status`` and read up to the next
    prompt: a probe is ok when the answer comes within ``request_timeout_s``, and, when the
    device prints them, its heartbeat counter advanced and its run state is not
    stalled/stopped. After a healthy baseline the harness's connection-storm generator
    (:meth:`harness.fixtures.load.LoadKit.connect_storm`: connect and close at
    ``safety.max_connection_rate`` for ``safety.max_load_duration_s``) runs against the SSH
    port while the probes go on; the essential-function monitor of the profile watches too.
    Afterwards the probes continue until ok again, at most ``safety.recovery_wait_s``.

    Where this differs from the issue: the profile model has no SSH-command kind of essential
    function, so the command and the heartbeat/state patterns are constants of this module
    (``STATUS_COMMAND``, ``HEARTBEAT``, ``BAD_STATES``), matching the bundled simulators'
    shell; on a device without them only the answer time is judged. The probe is a shell (not
    ``exec``) because it is also what keeps the session from idling out.

    Pass: every probe during the storm was ok, the session recovered in time, and the
    monitor's judgement of the profile's essential functions is within bounds. Otherwise
    FAIL with the failed probes in the reason and the timeline (``monitor-ssh-session.csv``).
    """
    safety = ssh.safety
    session = ssh.login(ssh.session_account(), label="essential session")
    shell = session.shell()
    if not shell.read_until(PROMPT_END, ssh.timeouts.request_s).matched:
        raise TargetError("the shell printed no prompt: cannot probe the session")
    probe = SessionProbe(shell, safety.request_timeout_s)
    for _ in range(BASELINE):
        sample = probe.sample()
        if not sample.ok:
            raise TargetError(f"the session is not healthy before the load: {sample.error}")
        time.sleep(PROBE_PERIOD_S)
    outcome: dict[str, Any] = {}
    storm_thread = threading.Thread(target=_storm, args=(load, ssh, outcome),
                                    name="ssh-connect-storm", daemon=True)
    storm_thread.start()
    bound = (safety.max_load_duration_s + safety.connect_timeout_s + safety.request_timeout_s
             + 30.0)  # the generator first waits for the monitor's healthy baseline
    end = time.monotonic() + bound
    while storm_thread.is_alive() and time.monotonic() < end:
        probe.sample()
        time.sleep(PROBE_PERIOD_S)
    storm_thread.join(timeout=max(0.0, end - time.monotonic()) + 1.0)
    if storm_thread.is_alive():
        raise TargetError(f"the connection storm did not end within {bound:.0f} s")
    if "error" in outcome:
        raise outcome["error"]
    storm: LoadResult = outcome["result"]
    recovered_at = _recover(probe, storm.ended, safety.recovery_wait_s)
    during = [s for s in probe.samples if storm.started <= s.t <= storm.ended]
    failed = [s for s in during if not s.ok]
    _timeline(evidence, probe.samples, storm)
    evidence.note("judgement", storm_connections=storm.sent, established=storm.answered,
                  refused=storm.rejected, achieved_rate=round(storm.achieved_rate, 1),
                  probes_during=len(during), probes_failed=len(failed),
                  failures=[f"{s.t - storm.started:.2f} s: {s.error}" for s in failed[:20]],
                  recovered_after_s=recovered_at, ok=not failed and recovered_at is not None)
    if not during:
        raise TargetError("no session probe fell inside the storm window")
    assert not failed and recovered_at is not None, (
        f"during a storm of {storm.sent} SSH connections at {storm.achieved_rate:.0f}/s "
        f"{len(failed)} of {len(during)} session probes failed "
        f"({'; '.join(sorted({s.error for s in failed}))})"
        + ("" if recovered_at is not None
           else f"; not recovered within {safety.recovery_wait_s:g} s"))
    verdict = monitor.judge_load(storm)
    monitor.require(verdict, f"under a storm of {storm.sent} SSH connections")


def _storm(load: LoadKit, ssh: Ssh, outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = load.connect_storm(ssh.endpoint.port, host=ssh.endpoint.host,
                                               label="ssh_connect_storm")
    except Exception as exc:  # handed to the check's thread and re-raised there
        outcome["error"] = exc


def _recover(probe: SessionProbe, storm_end: float, wait_s: float) -> float | None:
    """Probe until ok after the storm; seconds after its end, or None."""
    end = storm_end + wait_s
    while True:
        sample = probe.sample()
        if sample.ok and sample.t >= storm_end:
            return round(sample.t - storm_end, 2)
        if time.monotonic() >= end:
            return None
        time.sleep(PROBE_PERIOD_S)


def _timeline(evidence: Evidence, samples: list[Sample], storm: LoadResult) -> None:
    origin = samples[0].t if samples else storm.started
    rows = []
    for s in samples:
        phase = ("before" if s.t < storm.started else "load" if s.t <= storm.ended else "after")
        rows.append({"t": round(s.t - origin, 3), "ok": int(s.ok),
                     "latency_ms": "" if s.latency_ms is None else round(s.latency_ms, 1),
                     "phase": phase, "function": f"ssh {STATUS_COMMAND}",
                     "heartbeat": "" if s.heartbeat is None else s.heartbeat,
                     "error": s.error})
    evidence.timeline("monitor-ssh-session", rows)
