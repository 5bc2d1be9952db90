"""The pytest plugin: ``pytest testcases --profile P`` is a conformance run.

Registered through the ``pytest11`` entry point, so it is loaded in every pytest session; it
stays inert unless ``--profile`` is given (or a collected item carries the ``requirement``
marker, which then demands a profile).

- options live in one group, ``harness``;
- markers ``requirement``, ``protocol``, ``disruptive``, ``weakness`` and ``raw_socket`` are
  registered unconditionally (run with ``--strict-markers``);
- collection decides applicability (:mod:`harness.selection`) and turns every check that will
  not run into a skip carrying its verdict and reason;
- the report hooks classify every outcome into a :class:`~harness.verdict.Verdict`: an
  ``assert`` in the check body or a :class:`~harness.verdict.Violation` is FAIL, any other
  exception is ERROR, never PASS;
- at the end it writes ``results.json`` and ``junit.xml`` (with ``--harness-out``) and sets the
  exit status of DESIGN.md: 0 all PASS, 1 any FAIL, 3 any ERROR and no FAIL.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from harness.errors import HarnessError, ProfileError
from harness.evidence import Evidence, has_secrets, scrub_text, slug
from harness.outcomes import NotApplicable, NotRun
from harness.verdict import CheckResult, Verdict, Violation

if TYPE_CHECKING:
    from harness.catalog import Catalog
    from harness.profile import LoadedProfile
    from harness.runmonitor import RunMonitor
    from harness.safety import Guard
    from harness.selection import CheckSpec, Decision  # noqa: F401 - named in StashKey["..."]

#: Exit codes of a run (DESIGN.md section 3).
EXIT_PASS, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3

#: Modules whose fixtures the plugin registers (each imports its protocol library lazily).
FIXTURE_MODULES = (
    "harness.fixtures.core",
    "harness.fixtures.modbus",
    "harness.fixtures.modbus_tls",
    "harness.fixtures.opcua",
    "harness.fixtures.ssh",
    "harness.fixtures.console",
    "harness.fixtures.load",
)

MARKERS = {
    "requirement": "requirement(ID): the IEC 62443-4-2 requirement a check serves, e.g. 'CR 1.1'",
    "protocol": "protocol(NAME): the interface a check speaks (modbus_tcp, modbus_tls, "
    "modbus_rtu, console, opcua, ssh, network)",
    "disruptive": "disruptive(traffic=TEXT): the check loads, floods, writes or locks accounts; "
    "TEXT says the most traffic it may send",
    "weakness": "weakness(NAME): the simulator weakness on which this check must FAIL",
    "raw_socket": "raw_socket: the check needs raw sockets (root or CAP_NET_RAW)",
}

_run_key = pytest.StashKey["HarnessRun"]()
_decision_key = pytest.StashKey["Decision"]()
_verdict_key = pytest.StashKey["tuple[Verdict, str]"]()
_evidence_key = pytest.StashKey[Evidence]()
_start_key = pytest.StashKey["tuple[str, float]"]()
_recorded_key = pytest.StashKey[bool]()


@dataclass
class HarnessRun:
    """State of one conformance run, shared by the plugin hooks and the fixtures."""

    loaded: LoadedProfile
    catalog: Catalog
    guard: Guard
    out: Path | None
    allow_disruptive: bool
    started: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    )
    results: list[CheckResult] = field(default_factory=list)
    #: Set once the device fails its health probe: later checks that need it are ERROR at once.
    breaker: str | None = None
    interrupted: bool = False
    #: A failure after the last check (e.g. a restore in session teardown), for the report.
    teardown_problem: str | None = None
    #: The whole-run essential-function monitor (``--monitor-run``) and, at the end, its section
    #: of the results.
    monitor: RunMonitor | None = None
    monitor_section: dict[str, Any] | None = None


def get_run(config: pytest.Config) -> HarnessRun | None:
    """The run state, or None when the plugin is inert."""
    return config.stash.get(_run_key, None)


def evidence_for(item: pytest.Item) -> Evidence:
    """The evidence log of ``item`` (created on first use)."""
    ev = item.stash.get(_evidence_key, None)
    if ev is None:
        ev = Evidence(item.nodeid)
        item.stash[_evidence_key] = ev
    return ev


# --------------------------------------------------------------------------- options
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "IEC 62443-4-2 conformance harness")
    group.addoption("--profile", metavar="PROFILE", help="device profile (YAML) to test against")
    group.addoption(
        "--harness-out", metavar="DIR", help="write junit.xml, results.json and evidence/ into DIR"
    )
    group.addoption(
        "--allow-disruptive",
        action="store_true",
        default=False,
        help="run disruptive checks (load, floods, lockout, writes)",
    )
    group.addoption(
        "--monitor-run",
        action="store_true",
        default=False,
        help="watch the device's essential functions for the whole run, not only under load",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    for mod in FIXTURE_MODULES:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name == mod:
                continue  # that protocol's fixtures are not part of this build
            raise
        if not config.pluginmanager.is_registered(module):
            config.pluginmanager.register(module, f"harness-fixtures-{mod.rsplit('.', 1)[-1]}")
    path = config.getoption("--profile", None)
    if not path:
        return
    from harness.catalog import load_catalog
    from harness.profile import load_profile
    from harness.safety import Guard

    try:
        loaded = load_profile(path)
    except ProfileError as exc:
        raise pytest.UsageError("invalid device profile:\n" + "\n".join(exc.problems)) from None
    prof = loaded.profile
    allow = bool(config.getoption("--allow-disruptive")) or prof.safety.allow_disruptive
    serial = [i.device for i in (prof.interfaces.modbus_rtu, prof.interfaces.console) if i]
    ethernet = [prof.interfaces.ethernet.ifname] if prof.interfaces.ethernet else []
    guard = Guard(prof.allow_list(), allow_disruptive=allow, serial_devices=serial,
                  interfaces=ethernet)
    out_opt = config.getoption("--harness-out", None)
    out = Path(out_opt).resolve() if out_opt else None
    config.stash[_run_key] = HarnessRun(loaded, load_catalog(), guard, out, allow)
    importlib.import_module("harness.progress").register(config)  # live status line on a TTY


# --------------------------------------------------------------------------- collection
def check_spec(item: pytest.Item) -> CheckSpec | None:
    """The check's declared metadata, or None for an item that is not a conformance check."""
    from harness.selection import CheckSpec

    req = item.get_closest_marker("requirement")
    if req is None:
        return None
    proto = item.get_closest_marker("protocol")
    weak = item.get_closest_marker("weakness")
    disruptive = item.get_closest_marker("disruptive")
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    title = doc.strip().splitlines()[0].strip() if doc.strip() else item.name
    return CheckSpec(
        nodeid=item.nodeid,
        title=title,
        requirement=str(req.args[0]) if req.args else "",
        protocol=str(proto.args[0]) if proto and proto.args else "",
        disruptive=disruptive is not None,
        traffic=str(disruptive.kwargs.get("traffic", "")) if disruptive is not None else "",
        weakness=str(weak.args[0]) if weak and weak.args else None,
        needs_root=item.get_closest_marker("raw_socket") is not None,
    )


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    from harness.selection import decide

    run = get_run(config)
    specs = [(item, check_spec(item)) for item in items]
    if run is None:
        if any(spec is not None for _, spec in specs):
            raise pytest.UsageError(
                "conformance checks need a device profile: pass --profile PROFILE"
            )
        return
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    for item, spec in specs:
        if spec is None:
            continue
        try:
            decision = decide(
                spec,
                run.loaded.profile,
                run.catalog,
                allow_disruptive=run.allow_disruptive,
                is_root=is_root,
            )
        except (HarnessError, ValueError) as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        item.stash[_decision_key] = decision
        if not decision.runs:
            item.add_marker(pytest.mark.skip(reason=f"{decision.verdict}: {decision.reason}"))


def pytest_sessionstart(session: pytest.Session) -> None:
    run = get_run(session.config)
    if run is not None:
        run.guard.arm()
        _stop_on_sigterm()
        if session.config.getoption("--monitor-run", False):
            _start_run_monitor(run)


def _start_run_monitor(run: HarnessRun) -> None:
    """Start the whole-run monitor; a monitor that cannot start is a usage error (exit 2)."""
    from harness.runmonitor import RunMonitor

    monitor = RunMonitor(run.loaded)
    try:
        monitor.start()
    except HarnessError as exc:
        raise pytest.UsageError(f"--monitor: {exc}") from None
    run.monitor = monitor


def _stop_on_sigterm() -> None:
    """Treat SIGTERM like Ctrl-C: loads stop, fixtures restore, a partial report is written."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# --------------------------------------------------------------------------- outcomes
def _classify_failure(item: pytest.Item, call: pytest.CallInfo[None]) -> tuple[Verdict, str]:
    excinfo = call.excinfo
    assert excinfo is not None
    exc = excinfo.value
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, Violation):
        return Verdict.FAIL, text
    if isinstance(exc, AssertionError):
        # An assert written in the check itself is a FAIL; an assert tripping inside the
        # harness or a library is a fault of ours or a surprise: ERROR.
        last = excinfo.traceback[-1]
        test_file = str(getattr(item, "path", ""))
        if test_file and str(last.path) == test_file:
            return Verdict.FAIL, text.split("\nassert ")[0]
        return Verdict.ERROR, f"internal assertion: {text}"
    return Verdict.ERROR, f"{type(exc).__name__}: {text}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_start_key] = (
        dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        time.monotonic(),
    )
    run = get_run(item.config)
    decision = item.stash.get(_decision_key, None)
    if run is None or decision is None or not decision.runs or run.breaker is None:
        return
    from harness.health import probe

    prof = run.loaded.profile
    result = probe(prof, run.guard, min(1.0, prof.safety.connect_timeout_s))
    if result.alive:
        run.breaker = None  # the device is back
        return
    raise HarnessError(f"device unavailable, not tried: {run.breaker}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if _decision_key not in item.stash:
        return report
    if report.longrepr is not None and has_secrets():
        # pytest prints this on the terminal: never a secret there either
        text = str(report.longrepr)
        cleaned = scrub_text(text)
        if cleaned != text:
            report.longrepr = cleaned
    current = item.stash.get(_verdict_key, None)
    verdict: tuple[Verdict, str] | None = None
    if report.skipped:
        exc = call.excinfo.value if call.excinfo is not None else None
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        decision = item.stash[_decision_key]
        if isinstance(exc, NotApplicable | NotRun):
            reason = str(exc.msg)
        if isinstance(exc, NotApplicable):
            verdict = (Verdict.NOT_APPLICABLE, reason)
        elif isinstance(exc, NotRun) or (not decision.runs and decision.verdict is Verdict.NOT_RUN):
            verdict = (Verdict.NOT_RUN, decision.reason if not decision.runs else reason)
        elif not decision.runs:
            verdict = (Verdict.NOT_APPLICABLE, decision.reason)
        else:  # a bare pytest.skip() in a check is a check that did not decide
            verdict = (Verdict.ERROR, f"check skipped itself without a verdict: {reason}")
            report.outcome = "failed"
            report.longrepr = verdict[1]
    elif report.failed:
        if call.when == "call":
            verdict = _classify_failure(item, call)
        else:
            exc = call.excinfo.value if call.excinfo is not None else None
            phase = "setup" if call.when == "setup" else "teardown"
            text = f"{type(exc).__name__}: {exc}" if exc is not None else "failed"
            if current is not None and current[0] is Verdict.FAIL:
                verdict = (Verdict.FAIL, f"{current[1]}; also in {phase}: {text}")
            else:
                verdict = (Verdict.ERROR, f"{phase}: {text}")
    elif call.when == "call":
        verdict = (Verdict.PASS, "")
    if verdict is not None:
        item.stash[_verdict_key] = verdict
        report.harness_verdict = str(verdict[0])
    return report


def pytest_report_teststatus(
    report: pytest.TestReport, config: pytest.Config
) -> tuple[str, str, str] | None:
    verdict = getattr(report, "harness_verdict", None)
    if verdict == Verdict.ERROR and report.when == "call":
        return "error", "E", "ERROR"
    if verdict in (Verdict.NOT_APPLICABLE, Verdict.NOT_RUN) and report.skipped:
        return "skipped", "s", verdict
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    try:
        result = yield
    except (KeyboardInterrupt, pytest.exit.Exception) as exc:
        # the check in progress when the operator stopped the run is in the report too
        if _decision_key in item.stash and _verdict_key not in item.stash:
            item.stash[_verdict_key] = (Verdict.ERROR, f"interrupted: {exc or 'stopped'}")
        _record(item, probe=False)
        raise
    _record(item)
    return result


def _record(item: pytest.Item, *, probe: bool = True) -> None:
    """Add the outcome of ``item`` to the run's results (once); after an ERROR, ``probe`` the
    device for the circuit breaker."""
    run = get_run(item.config)
    decision = item.stash.get(_decision_key, None)
    if run is None or decision is None or item.stash.get(_recorded_key, False):
        return
    item.stash[_recorded_key] = True
    verdict, reason = item.stash.get(_verdict_key, (Verdict.ERROR, "no outcome recorded"))
    started, t0 = item.stash.get(_start_key, (None, time.monotonic()))
    ev = item.stash.get(_evidence_key, None)
    files: list[str] = []
    observations: list[dict[str, Any]] = []
    if ev is not None:
        observations = ev.observations()
        if run.out is not None:
            files = ev.save(run.out / "evidence" / slug(item.nodeid), run.out)
    if run.monitor is not None and decision.runs:
        run.monitor.check_ran(item.nodeid, t0, time.monotonic())
    if probe and verdict is Verdict.ERROR and decision.runs and run.breaker is None:
        _maybe_open_breaker(run, item.nodeid)
    spec, req = decision.check, decision.requirement
    run.results.append(
        CheckResult(
            nodeid=item.nodeid,
            title=spec.title,
            requirement=req.id,
            fr=str(req.fr),
            sl=req.sl_min,
            protocol=spec.protocol,
            weakness=spec.weakness,
            disruptive=spec.disruptive,
            verdict=verdict,
            reason=reason,
            started=started,
            duration_s=round(time.monotonic() - t0, 3),
            evidence=files,
            observations=observations,
        )
    )


def _maybe_open_breaker(run: HarnessRun, nodeid: str) -> None:
    """After an ERROR, probe the device; open the breaker when nothing answers."""
    from harness.health import probe

    prof = run.loaded.profile
    result = probe(prof, run.guard, prof.safety.connect_timeout_s)
    if not result.alive:
        run.breaker = f"no answer to the health probe after {nodeid} ({result.describe()})"


# --------------------------------------------------------------------------- the end
def exit_code(results: list[CheckResult]) -> int:
    """DESIGN.md section 3: 1 any FAIL; 3 any ERROR and no FAIL; 0 otherwise."""
    verdicts = {r.verdict for r in results}
    if Verdict.FAIL in verdicts:
        return EXIT_FAIL
    if Verdict.ERROR in verdicts:
        return EXIT_ERROR
    return EXIT_PASS


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Any:
    """Write the report after every other session-finish step (fixture teardown, restores),
    even when one of them fails: a failed restore is reported, it does not eat the report."""
    run = get_run(session.config)
    try:
        return (yield)
    except Exception as exc:
        if run is not None:
            run.teardown_problem = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if run is not None:
            _finish(session, run, exitstatus)


def _finish(session: pytest.Session, run: HarnessRun, exitstatus: int) -> None:
    _finish_run_monitor(run)
    run.guard.disarm()
    if exitstatus in (pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.INTERNAL_ERROR):
        return
    interrupted = run.interrupted or exitstatus == pytest.ExitCode.INTERRUPTED
    if run.out is not None:
        from harness.report import write_run

        write_run(run, complete=not interrupted)
    code = exit_code(run.results)
    if (interrupted or run.teardown_problem) and code != EXIT_FAIL:
        code = EXIT_ERROR  # never 0 for a run that was cut short or could not clean up
    session.exitstatus = code


def _finish_run_monitor(run: HarnessRun) -> None:
    """Stop the whole-run monitor and cut its samples per check (never loses the report)."""
    if run.monitor is None:
        return
    try:
        run.monitor_section = run.monitor.finish(run.results, run.out)
    except Exception as exc:  # the report must still be written: say what went wrong in it
        run.monitor.stop()
        run.monitor_section = {"error": f"{type(exc).__name__}: {exc}"}


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = get_run(config)
    if run is None or not run.results:
        return
    counts: dict[str, int] = {}
    for r in run.results:
        counts[str(r.verdict)] = counts.get(str(r.verdict), 0) + 1
    order = [str(v) for v in Verdict]
    text = ", ".join(f"{counts[v]} {v}" for v in order if v in counts)
    terminalreporter.write_sep("=", f"harness verdicts: {text}")
    section = run.monitor_section
    if section is not None:
        terminalreporter.write_line(_monitor_line(section))
    if run.out is not None:
        terminalreporter.write_line(f"report: {run.out}")


def _monitor_line(section: dict[str, Any]) -> str:
    """One line on the whole-run monitor for the terminal."""
    if "error" in section:
        return f"essential function monitor: {section['error']}"
    failed = sum(int(p.get("failed", 0)) for p in section["probes"].values())
    line = (f"essential function: {section['samples']} samples over "
            f"{section['duration_s']:.0f} s, {failed} out of bounds")
    during = section["checks_out_of_bounds"]
    if during:
        line += f" (during {len(during)} check(s): {', '.join(during[:3])}"
        line += ", ...)" if len(during) > 3 else ")"
    return line
