"""``harness report [verify] DIR``, ``harness diff OLD NEW`` and ``harness replay EVIDENCE``.

Exit codes:

- ``report DIR``: 0 re-rendered; 2 not a report folder.
- ``report verify DIR``: 0 intact; 1 a file changed, is missing or was added (each named);
  2 not a report folder.
- ``diff OLD NEW``: 0 nothing got worse; 1 new FAIL/ERROR or a lower achieved SL; 2 not
  reports, or not the same device (vendor and model) without ``--force``.
- ``replay EVIDENCE --profile P``: 0 every frame sent and the device answered the health probe
  afterwards (not reproduced); 1 the device did not answer afterwards (reproduced); 2 usage
  (malformed file, no ``--allow-disruptive``, target not allowed); 3 the first connection
  failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


def add_commands(sub: Any) -> None:
    """Add ``report``, ``diff`` and ``replay`` to the ``harness`` parser."""
    s = sub.add_parser(
        "report",
        help="re-render report.html and junit.xml from results.json, or verify a report folder",
        description="harness report DIR: re-render report.html and junit.xml from results.json "
        "and rewrite manifest.json. harness report verify DIR: recompute the manifest and name "
        "every file that changed, is missing or was added (exit 1), 2 if DIR is not a report.",
    )
    s.add_argument("args", nargs="+", metavar="[verify] DIR")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "diff", help="what changed between two runs of the same device (firmware A against B)"
    )
    s.add_argument("old", help="old run folder (or its results.json)")
    s.add_argument("new", help="new run folder (or its results.json)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--force", action="store_true", help="compare even if vendor or model differ")
    s.set_defaults(func=cmd_diff)

    s = sub.add_parser(
        "replay",
        help="resend the last inputs recorded before a failure (disruptive, guarded)",
        description="Resend exactly the frames of EVIDENCE/last_inputs.json to the profile's "
        "interface, paced by the profile's caps, then probe the device's health.",
    )
    s.add_argument("evidence", help="a check's evidence folder or its last_inputs.json")
    s.add_argument("--profile", required=True, help="device profile (allow-list, caps, interface)")
    s.add_argument(
        "--allow-disruptive",
        action="store_true",
        help="required: the replay is meant to break the device",
    )
    s.add_argument("--dry-run", action="store_true", help="show what would be sent; send nothing")
    s.set_defaults(func=cmd_replay)


def _err(message: str) -> None:
    sys.stderr.write(f"harness: {message}\n")


# --------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    words: list[str] = args.args
    if len(words) == 2 and words[0] == "verify":
        return _verify(Path(words[1]))
    if len(words) != 1:
        _err("usage: harness report DIR | harness report verify DIR")
        return EXIT_USAGE
    return _rerender(Path(words[0]))


def _verify(folder: Path) -> int:
    from harness.report.manifest import NotAReport, verify

    try:
        problems = verify(folder)
    except NotAReport as exc:
        _err(str(exc))
        return EXIT_USAGE
    for p in problems:
        print(p)
    if problems:
        _err(f"{folder}: {len(problems)} problem(s): the folder is not what its manifest says")
        return EXIT_PROBLEMS
    print(f"{folder}: intact (every file matches manifest.json)")
    return EXIT_OK


def _rerender(folder: Path) -> int:
    from harness.errors import UsageError
    from harness.report.diff import load_results
    from harness.report.results import write_reports

    if not folder.is_dir():
        _err(f"{folder} is not a folder")
        return EXIT_USAGE
    try:
        results = load_results(folder)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    write_reports(folder, results)
    print(f"re-rendered {folder / 'report.html'} and {folder / 'junit.xml'}; manifest rewritten")
    return EXIT_OK


# --------------------------------------------------------------------------- diff
def cmd_diff(args: argparse.Namespace) -> int:
    from harness.errors import UsageError
    from harness.report.diff import diff_results, format_diff, load_results

    try:
        old, new = load_results(Path(args.old)), load_results(Path(args.new))
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    d = diff_results(old, new)
    if not d.same_device and not args.force:
        _err(
            "not the same device: "
            f"{d.old_device.get('vendor')} {d.old_device.get('model')} vs "
            f"{d.new_device.get('vendor')} {d.new_device.get('model')} (use --force to compare)"
        )
        return EXIT_USAGE
    print(json.dumps(d.to_json(), indent=2) if args.json else format_diff(d))
    return EXIT_PROBLEMS if d.regressed else EXIT_OK


# --------------------------------------------------------------------------- replay
def cmd_replay(args: argparse.Namespace) -> int:
    from harness.errors import ProfileError, SafetyViolation, TargetError, UsageError
    from harness.profile import load_profile
    from harness.replay import load_plan, replay
    from harness.safety import Guard

    try:
        loaded = load_profile(args.profile)
        plan = load_plan(Path(args.evidence))
    except ProfileError as exc:
        for problem in exc.problems:
            sys.stderr.write(problem + "\n")
        return EXIT_USAGE
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if not args.dry_run and not args.allow_disruptive:
        _err("replay resends the inputs that broke the device: pass --allow-disruptive")
        return EXIT_USAGE
    prof = loaded.profile
    serial = [i.device for i in (prof.interfaces.modbus_rtu, prof.interfaces.console) if i]
    guard = Guard(prof.allow_list(), allow_disruptive=args.allow_disruptive, serial_devices=serial)
    if plan.check:
        print(f"inputs recorded by {plan.check}")
    try:
        result = replay(plan, loaded, guard, dry_run=args.dry_run, log=print)
    except (SafetyViolation, UsageError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except TargetError as exc:
        _err(str(exc))
        return EXIT_ERROR
    if args.dry_run:
        print("dry run: nothing was sent")
        return EXIT_OK
    for event in result.events:
        print(f"  {event}")
    print(f"sent {result.sent} of {len(plan.frames)} frames; {result.reply_bytes} reply bytes")
    if result.stopped:
        print(f"stopped: {result.stopped}")
    print(f"health after the replay: {result.health}")
    if result.healthy is False:
        print("REPRODUCED: the device does not answer after the replay")
        return EXIT_PROBLEMS
    return EXIT_OK
