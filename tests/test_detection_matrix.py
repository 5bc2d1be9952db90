"""The detection matrix: every check FAILS on its single weakness and PASSES on hardened.

Generated from what the checks declare: each check names the simulator weakness it detects
(``@pytest.mark.weakness``). For every weakness a lab is started with only the simulators the
declaring checks speak to and that weakness switched on; every declaring check must FAIL there,
and no other non-disruptive check of that lab may FAIL (a weakness trips exactly its own checks;
the slow disruptive checks witness only on their own weakness and on hardened). Every check must
PASS on the full hardened lab (all simulators up); the checks are run there in a few shards by
protocol (:data:`HARDENED_SHARDS`), each on a lab of its own, so that test workers can run the
shards side by side. A check that declares no weakness fails this test.

Exception: a layer-2 weakness (:data:`NETNS_WEAKNESSES`) exists only on an Ethernet link, which a
loopback lab does not have. Its checks are NOT APPLICABLE on the (loopback) hardened lab run here,
and its weakness lab runs in a network namespace (root) instead; the hardened netns proof is
``tests/test_netns.py::test_l2_checks_pass_on_a_hardened_netns_lab``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.selection import CheckSpec

#: Each lab run is bounded by the profile's caps; the hardened run holds every check.
pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "device_profiles" / "template-plc.yaml"
MANIFEST: dict[str, list[str]] = json.loads((ROOT / "simulators" / "manifest.json").read_text())

#: The simulator behind each protocol a check may speak.
PROTOCOL_SIMULATOR = {
    "modbus_tcp": "modbus_tcp",
    "modbus_tls": "modbus_tls",
    "modbus_rtu": "modbus_rtu",
    "console": "console",
    "opcua": "opcua",
    "ssh": "ssh",
}


#: Weaknesses shown only on a link layer: their weakness lab runs in a network namespace, and
#: their checks are NOT APPLICABLE on the loopback hardened lab (no ``interfaces.ethernet``).
NETNS_WEAKNESSES = frozenset({"net.fragile_l2"})


def _collect() -> list[CheckSpec]:
    """The checks as `harness plan --json` lists them (a subprocess: no nested pytest)."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "plan", str(TEMPLATE), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    plan = json.loads(proc.stdout)
    return [
        CheckSpec(
            nodeid=c["nodeid"],
            title=c["title"],
            requirement=r["id"],
            protocol=c["protocol"],
            disruptive=c["disruptive"],
            weakness=c["weakness"],
        )
        for r in plan["requirements"]
        for c in r["checks"]
    ]


CHECKS = _collect()
WEAKNESSES = sorted({c.weakness for c in CHECKS if c.weakness})


def _name(spec: CheckSpec) -> str:
    return spec.nodeid.rsplit("::", 1)[-1]


def simulators_for(weakness: str, checks: list[CheckSpec]) -> list[str]:
    """The simulators a weakness lab needs: those the declaring checks speak to."""
    sims = {PROTOCOL_SIMULATOR[c.protocol] for c in checks if c.protocol in PROTOCOL_SIMULATOR}
    if not sims:  # network-level checks: the simulators that know the weakness
        sims = {name for name, known in MANIFEST.items() if weakness in known}
    return sorted(sims)


def test_checks_were_collected() -> None:
    assert CHECKS, "no conformance checks collected"


@pytest.mark.parametrize("spec", CHECKS, ids=_name)
def test_every_check_declares_a_known_weakness(spec: CheckSpec) -> None:
    assert spec.weakness, f"{spec.nodeid} declares no weakness (@pytest.mark.weakness)"
    known = {w for ws in MANIFEST.values() for w in ws}
    assert spec.weakness in known, f"{spec.nodeid}: weakness {spec.weakness} is in no simulator"
    assert spec.protocol in (*PROTOCOL_SIMULATOR, "network", "ethernet"), spec.nodeid
    assert any(spec.protocol in protocols for protocols in HARDENED_SHARDS.values())


#: The hardened run in shards by protocol (each a full hardened lab, only these checks run):
#: the shards are independent, so xdist may put them on different workers.
HARDENED_SHARDS = {
    "modbus_tcp": ("modbus_tcp", "network", "ethernet"),
    "opcua": ("opcua",),
    "ssh_console": ("ssh", "console"),
    "tls_rtu": ("modbus_tls", "modbus_rtu"),
}


def _shard(spec: CheckSpec) -> str:
    return next(name for name, protocols in HARDENED_SHARDS.items()
                if spec.protocol in protocols)


class HardenedRuns:
    """One full hardened lab and run per shard, made on first use (once per worker: every
    check of a shard is in one xdist group)."""

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._runs: dict[str, dict[str, Any]] = {}

    def get(self, shard: str) -> dict[str, Any]:
        if shard not in self._runs:
            from harness.lab import LabDefinition, lab_down, lab_up

            state = self._tmp.mktemp(f"matrix-{shard}") / "hardened"
            lab_up(LabDefinition.model_validate({"name": f"matrix-hardened-{shard}"}), state)
            try:
                names = sorted(_name(c) for c in CHECKS if _shard(c) == shard)
                self._runs[shard] = _run(state / "profile.yaml",
                                         self._tmp.mktemp(f"matrix-{shard}-out"),
                                         k=" or ".join(names))
            finally:
                lab_down(state)
        return self._runs[shard]


@pytest.fixture(scope="module")
def hardened_runs(tmp_path_factory: pytest.TempPathFactory) -> HardenedRuns:
    return HardenedRuns(tmp_path_factory)


def _run(profile: Path, out: Path, k: str | None = None) -> dict[str, Any]:
    import os
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        str(profile),
        "--out",
        str(out),
        "--allow-disruptive",
    ]
    if k:
        cmd += ["-k", k]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
        env={**os.environ, "CI": "true"},
        check=False,
    )
    assert (out / "results.json").exists(), f"no results:\n{proc.stdout[-4000:]}\n{proc.stderr}"
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    results["_output"] = proc.stdout[-6000:] + proc.stderr[-2000:]
    return results


def _verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["nodeid"]: c for c in results["checks"]}


@pytest.mark.parametrize("spec", [
    pytest.param(c, id=_name(c), marks=pytest.mark.xdist_group(f"matrix-hardened-{_shard(c)}"))
    for c in CHECKS
])
def test_check_passes_on_hardened(spec: CheckSpec, hardened_runs: HardenedRuns) -> None:
    hardened_run = hardened_runs.get(_shard(spec))
    found = _verdicts(hardened_run).get(spec.nodeid)
    assert found is not None, f"{spec.nodeid} did not run:\n{hardened_run['_output']}"
    if spec.weakness in NETNS_WEAKNESSES:  # no Ethernet on loopback; see the module docstring
        assert found["verdict"] == "NOT APPLICABLE", f"{spec.nodeid}: {found['verdict']}"
        assert "ethernet" in found["reason"], found["reason"]
        return
    assert found["verdict"] == "PASS", f"{spec.nodeid}: {found['verdict']}: {found['reason']}"


@pytest.mark.spread
@pytest.mark.parametrize("weakness", WEAKNESSES)
def test_weakness_fails_exactly_its_checks(
    weakness: str, lab: Callable[..., Any], tmp_path: Path
) -> None:
    declaring = [c for c in CHECKS if c.weakness == weakness]
    sims = simulators_for(weakness, declaring)
    network = {"kind": "netns" if weakness in NETNS_WEAKNESSES else "loopback"}
    running = lab(simulators=sims, weaknesses=[weakness], network=network)
    protocols = {p for p, s in PROTOCOL_SIMULATOR.items() if s in sims} | {"network", "ethernet"}
    # The declaring checks, and every quick (non-disruptive) check of the same simulators as
    # witnesses that nothing else trips; the slow disruptive ones (loads, lockouts) are proven
    # on hardened above and on their own weakness here.
    in_scope = [
        c
        for c in CHECKS
        if c.weakness == weakness or (c.protocol in protocols and not c.disruptive)
    ]
    results = _run(
        running.profile_path, tmp_path / "out", k=" or ".join(sorted({_name(c) for c in in_scope}))
    )
    verdicts = _verdicts(results)
    for spec in declaring:
        got = verdicts.get(spec.nodeid)
        assert got is not None, f"{spec.nodeid} did not run:\n{results['_output']}"
        assert got["verdict"] == "FAIL", (
            f"{spec.nodeid} on {weakness}: {got['verdict']}: {got['reason']}"
        )
    others = {n: c for n, c in verdicts.items() if c["weakness"] != weakness}
    collateral = {n: c["reason"] for n, c in others.items() if c["verdict"] == "FAIL"}
    assert not collateral, f"{weakness} also failed other checks: {collateral}"
