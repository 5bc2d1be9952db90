"""Proof of the OPC UA checks: each FAILS on the lab with its single weakness and PASSES on the
hardened lab; profile gaps give ERROR with the gap named, never PASS.

Every lab is the ``opcua`` simulator alone with small policy numbers (lockout after 2 wrong
passwords for 1.5 s, idle timeout 2 s, 2 sessions), and every run is ``harness run`` as a
subprocess, so verdicts are read from results.json as a user would see them. The hardened lab
runs every OPC UA check at once; each weakness lab runs the checks that name that weakness
(that no *other* check fails there is the detection matrix's job,
``tests/test_detection_matrix.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)

#: The lab's device policy (also what the generated profile declares).
POLICY = {"lockout_threshold": 2, "lockout_duration_s": 1.5, "idle_timeout_s": 2.0,
          "session_limit": 2}

#: Every OPC UA check and the weakness it names.
CHECKS = {
    "test_opcua_failed_login_is_audited": "opcua.no_audit",
    "test_opcua_offers_no_unsecured_endpoint": "opcua.policy_none",
    "test_opcua_passwords_never_in_clear": "opcua.policy_none",
    "test_opcua_offers_no_deprecated_policy": "opcua.deprecated_policies",
    "test_opcua_server_certificate_is_strong": "opcua.weak_server_cert",
    "test_opcua_refuses_anonymous_sessions": "opcua.anonymous",
    "test_opcua_self_signed_certificate_refused": "opcua.accepts_untrusted_certs",
    "test_opcua_unknown_ca_certificate_refused": "opcua.accepts_untrusted_certs",
    "test_opcua_expired_certificate_refused": "opcua.accepts_untrusted_certs",
    "test_opcua_not_yet_valid_certificate_refused": "opcua.accepts_untrusted_certs",
    "test_opcua_wrong_application_uri_refused": "opcua.accepts_untrusted_certs",
    "test_opcua_readonly_account_cannot_write": "opcua.no_authz",
    "test_opcua_locks_out_after_failed_logins": "opcua.no_lockout",
    "test_opcua_login_failure_hides_user_existence": "opcua.user_enumeration",
    "test_opcua_limits_concurrent_sessions": "opcua.no_session_limit",
    "test_opcua_closes_idle_sessions": "opcua.no_session_timeout",
    "test_opcua_drops_connections_held_before_hello": "opcua.no_hello_timeout",
}
WEAKNESSES = sorted(set(CHECKS.values()))
CA_KEY_CHECKS = ("test_opcua_expired_certificate_refused",
                 "test_opcua_not_yet_valid_certificate_refused",
                 "test_opcua_wrong_application_uri_refused")
#: Checks that judge the endpoint list only (no session, so no client certificate needed).
ENDPOINT_CHECKS = ("test_opcua_offers_no_unsecured_endpoint",
                   "test_opcua_passwords_never_in_clear",
                   "test_opcua_offers_no_deprecated_policy",
                   "test_opcua_server_certificate_is_strong")

#: What each weakness's failure reason must show (what was offered or accepted).
REASONS = {
    "opcua.no_audit": ("Server.Auditing is True", "no audit event"),
    "opcua.policy_none": ("None/None",),
    "opcua.deprecated_policies": ("Basic128Rsa15", "Basic256/Sign"),
    "opcua.weak_server_cert": ("RSA 1024 bits", "signed with sha1", "SHA256:"),
    "opcua.anonymous": ("activated an anonymous session", "Good"),
    "opcua.accepts_untrusted_certs": ("SHA256:",),
    "opcua.no_authz": ("answered Good",),
    "opcua.no_lockout": ("no lockout and no delay",),
    "opcua.user_enumeration": ("BadUserAccessDenied", "BadIdentityTokenInvalid"),
    "opcua.no_session_limit": ("3 OPC UA sessions were activated",),
    "opcua.no_session_timeout": ("still answered", "8.64e+07 ms"),
    "opcua.no_hello_timeout": ("still open after", "fresh clients were still refused"),
}
#: Checks that open no OPC UA client (raw TCP only), so they attach no endpoint list.
RAW_TCP_CHECKS = ("test_opcua_drops_connections_held_before_hello",)


def verdicts(run: Any, names: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Check function name -> verdict (each named check must have run exactly once)."""
    found = {nodeid.split("::")[-1]: v for nodeid, v in run.verdicts().items()
             if "_opcua.py::" in nodeid}
    assert sorted(found) == sorted(names), (
        f"checks run: {sorted(found)}\nstdout:\n{run.stdout[-3000:]}\n"
        f"stderr:\n{run.stderr[-3000:]}")
    return found


def reason(run: Any, name: str) -> str:
    (check,) = run.checks(f"::{name}")
    return str(check["reason"])


def judgement(run: Any, name: str) -> dict[str, Any]:
    (check,) = run.checks(f"::{name}")
    notes = [o for o in check["observations"] if o["summary"] == "judgement"]
    assert notes, f"{name} recorded no judgement"
    data: dict[str, Any] = notes[-1]["data"]
    return data


def test_hardened_passes_and_profile_gaps_are_errors(
        lab: Callable[..., Any], run_harness: Callable[..., Any],
        write_profile: Callable[[dict[str, Any], str], Path]) -> None:
    running = lab(["opcua"], policy=POLICY)
    run = run_harness(running.profile_path, k="opcua")
    got = verdicts(run, list(CHECKS))
    assert got == dict.fromkeys(CHECKS, "PASS"), {n: reason(run, n) for n in CHECKS}
    assert run.code == 0
    # what the PASSes rest on
    assert judgement(run, "test_opcua_login_failure_hides_user_existence")["unknown_user"][
        "status"] == "BadUserAccessDenied"
    assert judgement(run, "test_opcua_limits_concurrent_sessions")["extra"] == (
        "refused with BadTooManySessions at CreateSession")
    assert judgement(run, "test_opcua_closes_idle_sessions")["answer"] == (
        "BadSessionNotActivated")
    assert judgement(run, "test_opcua_readonly_account_cannot_write")["readonly"][
        "status"] == "BadUserAccessDenied"
    assert judgement(run, "test_opcua_wrong_application_uri_refused")["status"] == (
        "BadCertificateUriInvalid")
    assert judgement(run, "test_opcua_expired_certificate_refused")["status"] == (
        "BadCertificateTimeInvalid")
    assert judgement(run, "test_opcua_offers_no_deprecated_policy")["hidden_policy_probes"] == {
        "Basic128Rsa15": "BadSecurityPolicyRejected", "Basic256": "BadSecurityPolicyRejected"}
    endpoints = run.out / "evidence"
    listed = {e.parent.name.rsplit("__", 1)[-1] for e in endpoints.glob("*/endpoints.json")}
    assert listed & set(CHECKS) == set(CHECKS) - set(RAW_TCP_CHECKS)
    # no secret in anything the run wrote
    secrets = [p.read_text().strip() for p in (running.state_dir / "secrets").glob("*.password")]
    assert secrets
    written = "".join(p.read_text(errors="replace") for p in run.out.rglob("*") if p.is_file())
    assert not [s for s in secrets if s in written]

    # no CA key: the certificates signed by the trusted CA cannot be made -> ERROR naming
    # ca_key; the untrusted-certificate checks still decide
    profile = running.profile()
    iface = profile["interfaces"]["opcua"]
    del iface["ca_key"]
    names = (*CA_KEY_CHECKS, "test_opcua_self_signed_certificate_refused")
    run = run_harness(write_profile(profile, "no-ca-key.yaml"), k=" or ".join(names))
    got = verdicts(run, names)
    assert got == {n: "ERROR" if n in CA_KEY_CHECKS else "PASS" for n in names}, {
        n: reason(run, n) for n in names}
    for name in CA_KEY_CHECKS:
        assert "ca_key" in reason(run, name)
    assert run.code == 3

    # no client certificate: nothing that needs a session can decide (ERROR, never PASS); the
    # endpoint checks still do
    del iface["client_cert"], iface["client_key"]
    names = (*ENDPOINT_CHECKS, "test_opcua_refuses_anonymous_sessions")
    run = run_harness(write_profile(profile, "no-client-cert.yaml"), k=" or ".join(names))
    got = verdicts(run, names)
    assert got == {n: "PASS" if n in ENDPOINT_CHECKS else "ERROR" for n in names}, {
        n: reason(run, n) for n in names}
    assert "client_cert" in reason(run, "test_opcua_refuses_anonymous_sessions")
    (deprecated,) = run.checks("::test_opcua_offers_no_deprecated_policy")
    assert any("no hidden-policy probes" in o["summary"] for o in deprecated["observations"])


@pytest.mark.parametrize("weakness", WEAKNESSES)
def test_each_weakness_fails_its_checks(lab: Callable[..., Any],
                                        run_harness: Callable[..., Any],
                                        weakness: str) -> None:
    own = [name for name, named in CHECKS.items() if named == weakness]
    running = lab(["opcua"], weaknesses=[weakness], policy=POLICY)
    run = run_harness(running.profile_path, k=" or ".join(own))
    got = verdicts(run, own)
    assert got == dict.fromkeys(own, "FAIL"), {n: reason(run, n) for n in own}
    assert run.code == 1
    for name in own:
        for text in REASONS[weakness]:
            assert text in reason(run, name), (name, reason(run, name))
    if weakness == "opcua.accepts_untrusted_certs":
        for name in own:
            assert judgement(run, name)["accepted"] is True
    if weakness == "opcua.policy_none":
        plaintext = judgement(run, "test_opcua_passwords_never_in_clear")["plaintext"]
        assert plaintext == ["None/None token 'username' (token policy None)"]
