"""Proof of the FR7 load checks: each FAILS on its weakness and PASSES on the hardened lab.

The labs run the ``modbus_tcp`` simulator alone; verdicts come from ``harness run`` as a
subprocess (results.json), with the profile's load duration cut to 1.5 s to keep this short.

The port inventory scans all 65535 TCP ports of the lab's address: each lab binds its own
loopback address, and the generated profile declares the host's wildcard listeners (which answer
on every address), so only the simulator's own ports are judged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness.lab import weakness_manifest

pytestmark = pytest.mark.timeout(300)

LOAD_CHECKS = ("test_modbus_request_flood", "test_modbus_connection_storm",
               "test_modbus_load_ramp", "test_recovery_after_modbus_flood")
RAW_CHECKS = ("test_syn_flood", "test_malformed_ip_tcp", "test_icmp_storm")
#: Network-robustness checks that need no raw socket (they run without root too).
PLAIN_NET_CHECKS = ("test_udp_storm",)
NET_CHECKS = RAW_CHECKS + PLAIN_NET_CHECKS
K_LOAD = "dos_protection or communication_load or recovery_after"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _short_profile(running: Any, write_profile: Callable[..., Path], **safety: Any) -> Path:
    data = running.profile()
    data["safety"].update({"max_load_duration_s": 1.5, **safety})
    return write_profile(data)


def _verdicts(run: Any, names: tuple[str, ...]) -> dict[str, str]:
    found = {nodeid.split("::")[-1]: v for nodeid, v in run.verdicts().items()
             if nodeid.split("::")[-1] in names}
    assert sorted(found) == sorted(names), (
        f"checks run: {sorted(found)}\nstdout:\n{run.stdout[-3000:]}\n"
        f"stderr:\n{run.stderr[-2000:]}")
    return found


def _reasons(run: Any, names: tuple[str, ...]) -> dict[str, str]:
    return {n: str(run.checks(f"::{n}")[0]["reason"]) for n in names}


def _evidence_file(run: Any, check: str, name: str) -> Path:
    (found,) = run.checks(f"::{check}")
    paths = [run.out / p for p in found["evidence"] if p.endswith(name)]
    assert paths, f"{check}: no {name} in {found['evidence']}"
    return paths[0]


def test_load_fragile_fails_every_load_check(lab: Callable[..., Any],
                                             run_harness: Callable[..., Any],
                                             write_profile: Callable[..., Path]) -> None:
    # fragile_recovery_s above the profile's recovery_wait_s (2 s): CR 7.4 must see it
    running = lab(["modbus_tcp"], weaknesses=["load.fragile"], policy={"fragile_recovery_s": 3})
    run = run_harness(_short_profile(running, write_profile), k=K_LOAD)
    got = _verdicts(run, LOAD_CHECKS)
    assert got == dict.fromkeys(LOAD_CHECKS, "FAIL"), _reasons(run, LOAD_CHECKS)
    assert run.code == 1
    reasons = _reasons(run, LOAD_CHECKS)
    assert "stalled" in reasons["test_modbus_request_flood"]
    assert "load aborted by the monitor" in reasons["test_modbus_request_flood"]
    assert "first degraded during step" in reasons["test_modbus_load_ramp"]
    assert "did not recover" in reasons["test_recovery_after_modbus_flood"] \
        or "to recover" in reasons["test_recovery_after_modbus_flood"]
    # the timeline is evidence: stalled samples inside the load phase
    csv = _evidence_file(run, "test_modbus_request_flood", "monitor.csv").read_text()
    assert "load:modbus_flood" in csv and "stalled" in csv


def test_recovery_check_passes_a_fragile_device_that_comes_back_in_time(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    # CR 7.4 judges the recovery, not the behaviour under load: the same weakness with a fast
    # recovery FAILS CR 7.1 and PASSES CR 7.4
    running = lab(["modbus_tcp"], weaknesses=["load.fragile"], policy={"fragile_recovery_s": 0.2})
    run = run_harness(_short_profile(running, write_profile),
                      k="test_recovery_after_modbus_flood or test_modbus_request_flood")
    got = _verdicts(run, ("test_recovery_after_modbus_flood", "test_modbus_request_flood"))
    assert got == {"test_recovery_after_modbus_flood": "PASS",
                   "test_modbus_request_flood": "FAIL"}, run.stdout[-3000:]


def test_hardened_passes_every_load_check(lab: Callable[..., Any],
                                          run_harness: Callable[..., Any],
                                          write_profile: Callable[..., Path]) -> None:
    running = lab(["modbus_tcp"])
    run = run_harness(_short_profile(running, write_profile),
                      k=f"{K_LOAD} or network_robustness")
    got = _verdicts(run, LOAD_CHECKS + NET_CHECKS)
    raw = "PASS" if IS_ROOT else "NOT RUN"
    assert got == {**dict.fromkeys(LOAD_CHECKS + PLAIN_NET_CHECKS, "PASS"),
                   **dict.fromkeys(RAW_CHECKS, raw)}, _reasons(run, LOAD_CHECKS + NET_CHECKS)
    flood = run.checks("::test_modbus_request_flood")[0]
    notes = [o for o in flood["observations"] if o.get("summary") == "load result: modbus_flood"]
    assert notes and notes[0]["data"]["sent"] > 0
    assert notes[0]["data"]["achieved_rate"] <= 2000  # the lab profile's max_request_rate


@pytest.mark.skipif(not IS_ROOT, reason="raw-socket checks need root")
def test_network_checks_fail_on_a_fragile_stack(lab: Callable[..., Any],
                                                run_harness: Callable[..., Any],
                                                write_profile: Callable[..., Path]) -> None:
    assert "net.fragile_stack" in weakness_manifest()["modbus_tcp"]
    running = lab(["modbus_tcp"], weaknesses=["net.fragile_stack"])
    run = run_harness(_short_profile(running, write_profile), k="network_robustness")
    assert _verdicts(run, NET_CHECKS) == dict.fromkeys(NET_CHECKS, "FAIL"), \
        _reasons(run, NET_CHECKS)
    assert run.code == 1
    reasons = _reasons(run, NET_CHECKS)
    # the heartbeat stalled: the monitor, not a send error, made the verdict
    assert all("stalled" in reason for reason in reasons.values()), reasons
    assert "UDP storm" in reasons["test_udp_storm"], reasons
    assert "ICMP echo storm" in reasons["test_icmp_storm"], reasons


# --------------------------------------------------------------------------- port inventory
#: Packet-rate cap of the inventory runs (the scan's pace).
SCAN_RATE = 5000

def _inventory_run(lab: Callable[..., Any], run_harness: Callable[..., Any],
                   write_profile: Callable[..., Path], weaknesses: list[str]) -> dict[str, Any]:
    running = lab(["modbus_tcp"], weaknesses=weaknesses)
    # 65535 ports in about 13 s on loopback; the scan's bound (2 x ports / rate + slack, 32 s)
    # leaves room for a host the other test workers keep busy
    run = run_harness(_short_profile(running, write_profile, max_packet_rate=SCAN_RATE),
                      k="port_inventory")
    (check,) = run.checks("::test_no_undeclared_open_ports")
    return dict(check)


def test_port_inventory_fails_on_an_extra_open_port(lab: Callable[..., Any],
                                                    run_harness: Callable[..., Any],
                                                    write_profile: Callable[..., Path]) -> None:
    check = _inventory_run(lab, run_harness, write_profile, ["net.extra_open_port"])
    assert check["verdict"] == "FAIL", check["reason"]
    assert "debug service" in check["reason"]  # the banner of the undeclared port is named


def test_port_inventory_passes_on_hardened(lab: Callable[..., Any],
                                           run_harness: Callable[..., Any],
                                           write_profile: Callable[..., Path]) -> None:
    check = _inventory_run(lab, run_harness, write_profile, [])
    assert check["verdict"] == "PASS", check["reason"]
    inventory = [o for o in check["observations"] if o.get("summary") == "inventory"]
    assert inventory and inventory[0]["data"]["undeclared_tcp"] == []
    modbus = [o for o in check["observations"] if o.get("summary", "").startswith("tcp scan")]
    assert modbus and modbus[0]["data"]["ports_scanned"] == 65535


def test_port_inventory_judges_udp_against_the_declared_udp_ports(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[..., Path]) -> None:
    """A BACnet/IP responder on the device address: undeclared FAILS, declared PASSES."""
    import socket
    import threading

    running = lab(["modbus_tcp"])
    data = running.profile()
    host = data["interfaces"]["modbus_tcp"]["host"]
    data["safety"].update({"max_load_duration_s": 1.5, "max_packet_rate": SCAN_RATE})
    stop = threading.Event()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as responder:
        responder.bind((host, 47808))
        responder.settimeout(0.1)

        def answer() -> None:  # bounded by the test: stops with the event
            while not stop.is_set():
                try:
                    _, peer = responder.recvfrom(512)
                except OSError:
                    continue
                responder.sendto(bytes.fromhex("810b0019"), peer)

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        try:
            undeclared = run_harness(write_profile(data, "udp-undeclared.yaml"),
                                     k="port_inventory")
            data["expectations"]["open_udp_ports"] = [47808]
            declared = run_harness(write_profile(data, "udp-declared.yaml"), k="port_inventory")
        finally:
            stop.set()
            thread.join(timeout=5)
    (check,) = undeclared.checks("::test_no_undeclared_open_ports")
    assert check["verdict"] == "FAIL", check["reason"]
    assert "udp/47808" in check["reason"] and "tcp/" not in check["reason"]
    (check,) = declared.checks("::test_no_undeclared_open_ports")
    assert check["verdict"] == "PASS", check["reason"]
    inventory = [o for o in check["observations"] if o.get("summary") == "inventory"]
    assert inventory[0]["data"]["open_udp"] == [47808]
