"""The ``harness`` command: run | plan | validate | catalog | schema | lab | demo | report.

Only this module prints for the user and chooses exit codes. It imports the rest of the package
lazily, so that ``harness --help`` and ``harness plan`` start fast and never import a protocol
library.

Exit codes (DESIGN.md section 3): 0 all applicable checks PASS, 1 any FAIL, 2 usage or profile
error, 3 any ERROR and no FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.profile import LoadedProfile
    from harness.selection import CheckSpec, PlanRow

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
#: The only pytest configuration a conformance run reads.
RUN_INI = Path(__file__).with_name("run.ini")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _err(message: str) -> None:
    sys.stderr.write(f"harness: {message}\n")


def _load(path: str) -> LoadedProfile:
    from harness.profile import load_profile

    loaded = load_profile(path)
    for w in loaded.warnings:
        _err(f"warning: {loaded.path}: {w}")
    return loaded


# --------------------------------------------------------------------------- validate / schema
def cmd_validate(args: argparse.Namespace) -> int:
    loaded = _load(args.profile)
    prof = loaded.profile
    print(
        f"{args.profile}: valid profile for {prof.device.vendor} {prof.device.model} "
        f"(firmware {prof.device.firmware}, {prof.device.component_type.value})"
    )
    print(f"  interfaces: {', '.join(prof.interfaces.present()) or 'none'}")
    print(f"  targets: {', '.join(prof.allow_list()) or 'none'}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from harness.profile import json_schema

    print(json_schema())
    return EXIT_OK


# --------------------------------------------------------------------------- catalog
def cmd_catalog(args: argparse.Namespace) -> int:
    from harness.catalog import ComponentType, format_table, load_catalog

    catalog = load_catalog()
    component = ComponentType.from_profile(args.component) if args.component else None
    fr = args.fr.upper() if args.fr else None
    reqs = list(catalog.select(fr=fr, sl=args.sl, component=component))
    print(format_table(reqs))
    print(f"\n{len(reqs)} requirements")
    return EXIT_OK


# --------------------------------------------------------------------------- plan
def collect_checks(profile_path: str, extra: Sequence[str] = ()) -> list[CheckSpec]:
    """The conformance checks' specs: from the cache while no check changed, else collected."""
    if extra:
        return _collect_with_pytest(profile_path, extra)
    from harness import checkcache
    from harness.paths import testcases_dir

    # what a check declares is read by harness code: any change to it is a new cache key
    package = Path(__file__).resolve().parent
    return checkcache.cached_specs(
        testcases_dir(), [*package.glob("*.py"), RUN_INI],
        lambda: _collect_with_pytest(profile_path, ()))


def _collect_with_pytest(profile_path: str, extra: Sequence[str]) -> list[CheckSpec]:
    """Collect the conformance checks with pytest (nothing is sent) and return their specs."""
    import pytest

    from harness.plugin import check_spec

    specs: list[CheckSpec] = []

    class Collector:
        def pytest_collection_finish(self, session: pytest.Session) -> None:
            for item in session.items:
                spec = check_spec(item)
                if spec is not None:
                    specs.append(spec)

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = pytest.main(
            # nothing runs, so no assert needs rewriting: plain asserts keep the plan fast
            [*_pytest_args(profile_path), "--collect-only", "-q", "--assert=plain", *extra],
            plugins=[Collector()],
        )
    if code not in (0, 5):
        from harness.errors import UsageError

        raise UsageError(f"collecting the checks failed (pytest exit {code}):\n{buf.getvalue()}")
    return specs


def _pytest_args(profile_path: str) -> list[str]:
    """The pytest arguments of every conformance run or collection: the bundled checks, our
    plugin only (no third-party plugin changes a run or slows its start; ask for one with
    ``-- -p NAME``), and our own configuration (never the caller's project's)."""
    from harness.paths import testcases_dir

    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    tdir = testcases_dir()
    return [
        str(tdir),
        "-c",
        str(RUN_INI),
        "--rootdir",
        str(tdir.parent),
        "-p",
        "harness.plugin",
        "-p",
        "no:cacheprovider",
        "--profile",
        profile_path,
    ]


def _traffic(spec: CheckSpec, loaded: LoadedProfile) -> str:
    """The most traffic a disruptive check may send, with the profile's caps filled in."""
    text = spec.traffic
    caps: dict[str, Any] = loaded.profile.safety.model_dump()
    try:
        return text.format(**caps)
    except (KeyError, IndexError, ValueError):
        return text


def cmd_plan(args: argparse.Namespace) -> int:
    from harness.catalog import load_catalog
    from harness.selection import build_plan

    loaded = _load(args.profile)
    prof = loaded.profile
    allow = args.allow_disruptive or prof.safety.allow_disruptive
    specs = collect_checks(args.profile)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    rows = build_plan(prof, load_catalog(), specs, allow_disruptive=allow, is_root=is_root)
    if args.json:
        print(json.dumps(_plan_json(rows, loaded), indent=2))
    else:
        _print_plan(rows, loaded, allow)
    return EXIT_OK


def _plan_json(rows: list[PlanRow], loaded: LoadedProfile) -> dict[str, Any]:
    return {
        "profile": str(loaded.path),
        "sha256": loaded.sha256,
        "requirements": [
            {
                "id": r.requirement.id,
                "fr": str(r.requirement.fr),
                "sl": r.requirement.sl_min,
                "claimed": r.claimed,
                "title": r.requirement.title,
                "note": r.note,
                "checks": [
                    {
                        "nodeid": d.check.nodeid,
                        "title": d.check.title,
                        "protocol": d.check.protocol,
                        "weakness": d.check.weakness,
                        "disruptive": d.check.disruptive,
                        "runs": d.runs,
                        "verdict": None if d.runs else str(d.verdict),
                        "reason": d.reason,
                        "note": d.note,
                        "traffic": _traffic(d.check, loaded) if d.check.disruptive else "",
                    }
                    for d in r.decisions
                ],
            }
            for r in rows
        ],
    }


def _print_plan(rows: list[PlanRow], loaded: LoadedProfile, allow: bool) -> None:
    prof = loaded.profile
    d = prof.device
    from harness.catalog import ComponentType

    ctype = ComponentType.from_profile(d.component_type.value)
    print(f"Plan for {d.vendor} {d.model}, firmware {d.firmware} ({ctype.value})")
    print(f"Profile {loaded.path} (sha256 {loaded.sha256[:12]})")
    print(
        "Claimed SL-C: "
        + " ".join(
            f"{fr}={prof.claimed_sl.of(fr)}"
            for fr in ("FR1", "FR2", "FR3", "FR4", "FR5", "FR6", "FR7")
        )
    )
    print(f"Targets (allow-list): {', '.join(prof.allow_list()) or 'none'}")
    print(f"Disruptive checks: {'allowed' if allow else 'not allowed'}")
    print("Nothing has been sent to the device.\n")
    runs = na = notrun = docs = gaps = 0
    current_fr = None
    for row in rows:
        req = row.requirement
        if req.fr != current_fr:
            current_fr = req.fr
            print(f"{req.fr} (claimed SL {row.claimed})")
        print(f"  {req.id:<16} SL{req.sl_min}  {req.title}")
        if not row.decisions:
            print(f"      - {row.note}")
            if "documentary" in row.note:
                docs += 1
            elif "no automated" in row.note:
                gaps += 1
        for dec in row.decisions:
            name = dec.check.nodeid.split("::")[-1]
            if dec.runs:
                runs += 1
                line = f"      RUN             {name} [{dec.check.protocol}]"
                if dec.check.disruptive:
                    line += f"  disruptive: {_traffic(dec.check, loaded) or 'bounded by the caps'}"
            else:
                if dec.verdict is not None and dec.verdict.value == "NOT RUN":
                    notrun += 1
                else:
                    na += 1
                line = f"      {dec.verdict!s:<15} {name} [{dec.check.protocol}]: {dec.reason}"
            if dec.note:
                line += f" ({dec.note})"
            print(line)
    print(
        f"\n{runs} checks will run, {na} not applicable, {notrun} not run; "
        f"{docs} requirements need documentary evidence, {gaps} have no automated check."
    )


# --------------------------------------------------------------------------- run
def cmd_run(args: argparse.Namespace) -> int:
    import pytest

    loaded = _load(args.profile)
    out = Path(args.out).resolve()
    pargs = [*_pytest_args(str(loaded.path)), "--harness-out", str(out), "-rfE"]
    # a device fault is a verdict with a reason (terminal summary, report), not a stack of
    # harness code frames; -v brings short tracebacks back for whoever debugs the harness
    pargs += ["-q", "--tb=line"] if not args.verbose else ["-v", "--tb=short"]
    if args.allow_disruptive:
        pargs.append("--allow-disruptive")
    if args.monitor:
        pargs.append("--monitor-run")
    if args.k:
        pargs += ["-k", args.k]
    pargs += args.pytest_args
    code = int(pytest.main(pargs))
    if code == int(pytest.ExitCode.USAGE_ERROR):
        return EXIT_USAGE
    if code == int(pytest.ExitCode.INTERNAL_ERROR):
        return EXIT_ERROR
    if code == int(pytest.ExitCode.NO_TESTS_COLLECTED):
        return EXIT_OK
    return code


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``harness``."""
    p = _Parser(prog="harness", description="IEC 62443-4-2 device security-conformance harness.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("run", help="run the conformance checks against a device profile")
    s.add_argument("profile")
    s.add_argument("--out", default="harness-report", help="report folder (default: %(default)s)")
    s.add_argument(
        "--allow-disruptive",
        action="store_true",
        help="run disruptive checks (load, floods, lockout, writes)",
    )
    s.add_argument(
        "--monitor",
        action="store_true",
        help="watch the essential functions for the whole run and tell which check upset them",
    )
    s.add_argument("-k", metavar="EXPR", help="only checks matching EXPR (pytest -k)")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_run, pytest_args=[])
    s.epilog = "Arguments after a lone -- go to pytest unchanged (e.g. -- -x --lf)."

    s = sub.add_parser(
        "plan", help="show which checks would run and why not the others (sends nothing)"
    )
    s.add_argument("profile")
    s.add_argument("--allow-disruptive", action="store_true")
    s.add_argument("--json", action="store_true", help="machine-readable plan")
    s.set_defaults(func=cmd_plan)

    s = sub.add_parser("validate", help="validate a device profile")
    s.add_argument("profile")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("schema", help="print the device profile's JSON Schema")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("catalog", help="print the IEC 62443-4-2 requirement catalog")
    s.add_argument("--fr", help="only this foundational requirement (FR1..FR7)")
    s.add_argument(
        "--sl",
        type=int,
        choices=range(5),
        metavar="{0..4}",
        help="only requirements that apply at this SL",
    )
    s.add_argument("--component", choices=["embedded", "host", "network", "software_application"])
    s.set_defaults(func=cmd_catalog)

    _add_lab_commands(sub)
    _add_report_commands(sub)
    return p


def _add_lab_commands(sub: Any) -> None:
    try:
        from harness import labcli
    except ModuleNotFoundError as exc:
        if exc.name != "harness.labcli":
            raise
        return
    labcli.add_commands(sub)


def _add_report_commands(sub: Any) -> None:
    try:
        from harness import reportcli
    except ModuleNotFoundError as exc:
        if exc.name != "harness.reportcli":
            raise
        return
    reportcli.add_commands(sub)


def _version() -> str:
    from harness import __version__

    return f"harness {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harness`` console script."""
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in words:
        cut = words.index("--")
        words, passthrough = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    if passthrough:
        if args.command != "run":
            parser.error("only `harness run` passes arguments after -- to pytest")
        args.pytest_args = passthrough
    func: Callable[[argparse.Namespace], int] = args.func
    from harness.errors import HarnessError, ProfileError, UsageError

    try:
        return func(args)
    except ProfileError as exc:
        for problem in exc.problems:
            sys.stderr.write(problem + "\n")
        _err(f"{len(exc.problems)} problem(s) in {exc.source}")
        return EXIT_USAGE
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except HarnessError as exc:
        _err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
