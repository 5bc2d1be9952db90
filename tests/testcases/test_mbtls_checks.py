"""Proof of the Modbus/TCP Security checks: each FAILS on the lab with its single weakness and
PASSES on the hardened lab; profile gaps give ERROR with the gap named, never PASS.

Each test starts one lab (the ``modbus_tls`` simulator alone) and runs ``harness run -k mbtls``
as a subprocess, so verdicts are read from results.json as a user would see them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import pki

pytestmark = pytest.mark.timeout(240)

AUTH_CHECKS = ("test_client_without_certificate_refused", "test_self_signed_certificate_refused",
               "test_unknown_ca_certificate_refused", "test_forged_issuer_certificate_refused",
               "test_expired_certificate_refused", "test_not_yet_valid_certificate_refused")
ROLE_CHECK = "test_readonly_role_cannot_write"
LEGACY_CHECK = "test_legacy_tls_versions_refused"
ALL_CHECKS = (*AUTH_CHECKS, ROLE_CHECK, LEGACY_CHECK)


def verdicts(run: Any) -> dict[str, str]:
    """Check function name -> verdict (every mbtls check must be there exactly once)."""
    found = {nodeid.split("::")[-1]: v for nodeid, v in run.verdicts().items()
             if "_mbtls.py::" in nodeid}
    assert sorted(found) == sorted(ALL_CHECKS), (
        f"checks run: {sorted(found)}\nstdout:\n{run.stdout[-3000:]}\n"
        f"stderr:\n{run.stderr[-3000:]}")
    return found


def reason(run: Any, name: str) -> str:
    (check,) = run.checks(f"::{name}")
    return str(check["reason"])


@pytest.mark.parametrize(("weakness", "failing"), [
    ("mbtls.accepts_untrusted_certs", AUTH_CHECKS),
    ("mbtls.no_role_check", (ROLE_CHECK,)),
    ("mbtls.legacy_tls", (LEGACY_CHECK,)),
])
def test_each_weakness_fails_its_checks(lab: Callable[..., Any], run_harness: Callable[..., Any],
                                        weakness: str, failing: tuple[str, ...]) -> None:
    running = lab(["modbus_tls"], weaknesses=[weakness])
    run = run_harness(running.profile_path, k="mbtls")
    got = verdicts(run)
    expected = {name: ("FAIL" if name in failing else "PASS") for name in ALL_CHECKS}
    if weakness == "mbtls.accepts_untrusted_certs":
        # a device that asks for no certificate knows no roles: the ReadWrite control cannot
        # write, so role enforcement cannot be judged (ERROR, with the reason), never PASS
        expected[ROLE_CHECK] = "ERROR"
    assert got == expected, {n: reason(run, n) for n in ALL_CHECKS}
    assert run.code == 1
    if weakness == "mbtls.accepts_untrusted_certs":
        assert "ReadWrite role could not write" in reason(run, ROLE_CHECK)
    if weakness == "mbtls.no_role_check":
        (check,) = run.checks(f"::{ROLE_CHECK}")
        # the failing write frames are in results.json: FC 6 as ReadOnly and its normal reply
        (judgement,) = [o for o in check["observations"] if o["summary"] == "judgement"]
        fc6 = next(f for f in judgement["data"]["frames"] if f["function"] == "FC 6")
        assert fc6["request"][14:16] == "06"  # the PDU after the 7-byte MBAP header
        assert fc6["reply"][14:16] == "06"  # a normal response, not 0x86
        assert fc6["value_after"] != fc6["value_before"]
        assert "FC 6" in reason(run, ROLE_CHECK)
    if weakness == "mbtls.legacy_tls":
        assert "TLSv1 offered -> ServerHello selecting TLSv1 " in reason(run, LEGACY_CHECK)
        assert "TLSv1.1 offered -> ServerHello selecting TLSv1.1" in reason(run, LEGACY_CHECK)


def test_hardened_passes_and_profile_gaps_are_errors(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path], tmp_path: Path) -> None:
    running = lab(["modbus_tls"])
    run = run_harness(running.profile_path, k="mbtls")
    assert verdicts(run) == dict.fromkeys(ALL_CHECKS, "PASS"), {
        n: reason(run, n) for n in ALL_CHECKS}
    assert run.code == 0
    (legacy,) = run.checks(f"::{LEGACY_CHECK}")
    notes = [o for o in legacy["observations"] if o["summary"] == "local TLS capability"]
    assert [n["data"]["version"] for n in notes] == ["TLSv1", "TLSv1.1"]

    # ready-made client certificates (preferred) and no CA key: the CA-signed negative
    # certificates cannot be made -> ERROR naming ca_key; everything else still decides
    profile = running.profile()
    iface = profile["interfaces"]["modbus_tls"]
    ca = pki.load_issued(Path(iface["ca_cert"]), Path(iface["ca_key"]))
    certs: dict[str, Any] = {}
    for role, value in (("readwrite", "ReadWrite"), ("readonly", "ReadOnly")):
        cert, key = pki.issue(f"bench {role}", issuer=ca, modbus_role=value).write(
            tmp_path / "bench", role)
        certs[role] = {"cert": str(cert), "key": str(key)}
    del iface["ca_key"]
    iface["client_certs"] = certs
    run = run_harness(write_profile(profile, "given-certs.yaml"), k="mbtls")
    got = verdicts(run)
    gaps = {"test_expired_certificate_refused", "test_not_yet_valid_certificate_refused"}
    assert got == {n: "ERROR" if n in gaps else "PASS" for n in ALL_CHECKS}, {
        n: reason(run, n) for n in ALL_CHECKS}
    for name in gaps:
        assert "ca_key" in reason(run, name)
    (role_check,) = run.checks(f"::{ROLE_CHECK}")
    assert any("profile client_certs.readonly" in o["summary"]
               for o in role_check["observations"])

    # neither: nothing that needs a trusted client can decide (ERROR, never PASS); the
    # protocol-version check needs no certificate and still decides
    del iface["client_certs"]
    run = run_harness(write_profile(profile, "no-certs.yaml"), k="mbtls")
    got = verdicts(run)
    assert got == {n: "PASS" if n == LEGACY_CHECK else "ERROR" for n in ALL_CHECKS}, {
        n: reason(run, n) for n in ALL_CHECKS}
    assert "profile gap" in reason(run, "test_client_without_certificate_refused")
    assert run.code == 3
