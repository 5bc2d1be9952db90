"""``harness lab up|down|status`` and ``harness demo``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_STATE = ".harness-lab"


def add_commands(sub: Any) -> None:
    """Add the lab and demo sub-commands to the ``harness`` parser."""
    lab = sub.add_parser("lab", help="start, inspect and stop the bundled simulator lab")
    lsub = lab.add_subparsers(dest="lab_command", required=True, parser_class=type(lab))
    s = lsub.add_parser("up", help="start a lab in the background")
    s.add_argument(
        "lab",
        nargs="?",
        default="hardened",
        help="bundled lab name or lab YAML file (default: %(default)s)",
    )
    s.add_argument("--state", default=DEFAULT_STATE, help="state folder (default: %(default)s)")
    s.add_argument(
        "--weakness", action="append", default=[], help="switch on one more weakness (repeatable)"
    )
    s.set_defaults(func=cmd_lab_up)
    s = lsub.add_parser("status", help="show the running lab")
    s.add_argument("--state", default=DEFAULT_STATE)
    s.set_defaults(func=cmd_lab_status)
    s = lsub.add_parser("down", help="stop the lab's own simulators and remove its state")
    s.add_argument("--state", default=DEFAULT_STATE)
    s.set_defaults(func=cmd_lab_down)

    d = sub.add_parser(
        "demo",
        help="lab up, run every check against it, write the report, lab down (no hardware needed)",
    )
    d.add_argument("--posture", choices=["hardened", "weak"], default="hardened")
    d.add_argument(
        "--weakness",
        action="append",
        default=[],
        help="switch on a single weakness over the posture (repeatable)",
    )
    d.add_argument("--out", default="harness-report", help="report folder (default: %(default)s)")
    d.add_argument("-k", metavar="EXPR", help="only checks matching EXPR")
    d.set_defaults(func=cmd_demo)


def _lab(name: str, weaknesses: list[str], posture: str | None = None) -> Any:
    from harness.lab import load_lab

    lab = load_lab(name)
    updates: dict[str, Any] = {}
    if weaknesses:
        updates["weaknesses"] = sorted(set(lab.weaknesses) | set(weaknesses))
    if posture:
        updates["posture"] = posture
        updates["name"] = f"{lab.name}-{posture}" if posture != lab.posture else lab.name
    lab = lab.model_copy(update=updates)
    if weaknesses:
        from harness.lab import LabDefinition

        lab = LabDefinition.model_validate(lab.model_dump())  # re-check the weakness names
        _check_weaknesses(lab.weaknesses)
    return lab


def _check_weaknesses(names: list[str]) -> None:
    from harness.errors import LabError
    from harness.lab import weakness_manifest

    known = {w for ws in weakness_manifest().values() for w in ws}
    unknown = sorted(set(names) - known)
    if unknown:
        raise LabError(f"unknown weaknesses {unknown}; known: {sorted(known)}")


def cmd_lab_up(args: argparse.Namespace) -> int:
    from harness.lab import lab_up

    lab = _lab(args.lab, args.weakness)
    state = lab_up(lab, Path(args.state))
    print(
        f"lab {lab.name} up in {state['started_s']:.2f} s ({lab.posture}"
        f"{', weaknesses: ' + ', '.join(lab.weaknesses) if lab.weaknesses else ''})"
    )
    for name, sim in state["simulators"].items():
        print(f"  {name:<11} pid {sim['pid']:<7} {json.dumps(sim['endpoints'])}")
    print(f"profile: {Path(state['state_dir']) / 'profile.yaml'}")
    return 0


def cmd_lab_status(args: argparse.Namespace) -> int:
    from harness.lab import lab_status

    status = lab_status(Path(args.state))
    down = 0
    for name, sim in status.items():
        alive = "up" if sim["alive"] else "DOWN"
        down += not sim["alive"]
        print(f"  {name:<11} pid {sim['pid']:<7} {alive}")
    return 0 if not down else 3


def cmd_lab_down(args: argparse.Namespace) -> int:
    from harness.lab import lab_down

    stopped = lab_down(Path(args.state))
    print(f"lab down: stopped {', '.join(stopped) or 'nothing (no simulator was running)'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from harness.cli import cmd_run
    from harness.lab import lab_down, lab_up

    lab = _lab("hardened", args.weakness, args.posture)
    state_dir = Path(tempfile.mkdtemp(prefix="harness-demo-"))
    try:
        state = lab_up(lab, state_dir / "lab")
        print(
            f"lab {lab.name} up in {state['started_s']:.2f} s "
            f"({len(state['simulators'])} simulators)",
            file=sys.stderr,
        )
        run_args = argparse.Namespace(
            profile=str(state_dir / "lab" / "profile.yaml"),
            out=args.out,
            allow_disruptive=True,
            k=args.k,
            verbose=False,
            monitor=False,
            pytest_args=[],
        )
        code = cmd_run(run_args)
    finally:
        try:
            lab_down(state_dir / "lab")
        finally:
            import shutil

            shutil.rmtree(state_dir, ignore_errors=True)
    _print_summary(Path(args.out))
    return code


def _print_summary(out: Path) -> None:
    try:
        results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        print(f"no results written in {out}", file=sys.stderr)
        return
    print("\nFR   claimed  achieved  PASS FAIL ERROR N/A NOT-RUN")
    for row in results["matrix"]:
        c = row["counts"]
        ach = "-" if row["achieved"] is None else row["achieved"]
        print(
            f"{row['fr']:<4} {row['claimed']:>7}  {ach!s:>8}  {c['PASS']:>4} {c['FAIL']:>4} "
            f"{c['ERROR']:>5} {c['NOT APPLICABLE']:>3} {c['NOT RUN']:>7}"
        )
    print(f"\nreport: {out.resolve()}")
