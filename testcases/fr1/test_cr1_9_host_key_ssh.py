"""CR 1.9 over SSH: every host key the server can prove is strong enough."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.ssh_policy import CURRENT, Judgement

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.ssh import Ssh
    from harness.protocols.ssh import HostKey

pytestmark = pytest.mark.requirement("CR 1.9")


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.weak_host_key")
def test_ssh_host_keys_are_strong(ssh: Ssh, evidence: Evidence) -> None:
    """Every SSH host key the server offers is at least as strong as the policy requires.

    Requirement: CR 1.9 (strength of public key-based authentication): the host key is what
    authenticates the device to every SSH client; a key that can be factored lets anyone
    impersonate the device.

    Procedure: read the host-key algorithms the server offers (its KEXINIT), then run one key
    exchange per algorithm the client can verify, accepting only that algorithm, and record the
    key the server proved (type, size, SHA-256 fingerprint). Distinct keys are judged by
    :meth:`harness.ssh_policy.AlgorithmPolicy.judge_host_key`: RSA under 2048 bits and DSA
    FAIL; ECDSA of 256 bits and more and EdDSA PASS. Certificate algorithms
    (``*-cert-v01@openssh.com``) and names the client cannot verify are listed, not fetched.

    Where this differs from the issue: the *signature algorithm* (``ssh-rsa`` with SHA-1) is
    judged by the CR 4.3 check; this one judges the keys, so a 3072-bit RSA key offered with
    SHA-1 signatures passes here and fails there.

    Pass: at least one key was obtained and none is judged ``fail``.
    """
    from harness.protocols.ssh import CLIENT_HOST_KEYS

    hello = ssh.probe()
    if hello.kexinit is None:
        raise TargetError(f"the server sends no SSH 2 KEXINIT: {hello.identification.version_line}")
    keys: dict[str, tuple[HostKey, list[str]]] = {}
    not_fetched = []
    for algorithm in hello.kexinit.host_key:
        if algorithm not in CLIENT_HOST_KEYS:
            not_fetched.append(algorithm)
            continue
        session = ssh.connect(host_keys=[algorithm], label=f"host key {algorithm}")
        key = session.host_key
        session.close()
        if key.fingerprint in keys:
            keys[key.fingerprint][1].append(algorithm)
        else:
            keys[key.fingerprint] = (key, [algorithm])
    if not keys:
        raise TargetError(f"no host key could be obtained: the server offers only "
                          f"{list(hello.kexinit.host_key)}")
    judged = []
    for key, algorithms in keys.values():
        assessment = CURRENT.judge_host_key(key.key_type, key.bits)
        judged.append((key, algorithms, assessment))
        evidence.note("host key", **key.to_json(), offered_as=algorithms,
                      judgement=str(assessment.judgement), reason=assessment.reason)
    failing = [(k, a) for k, _algs, a in judged if a.judgement is Judgement.FAIL]
    evidence.note("judgement", policy=CURRENT.name, keys=len(judged), not_fetched=not_fetched,
                  failing=[k.fingerprint for k, _ in failing], ok=not failing)
    assert not failing, "weak host key(s): " + "; ".join(
        f"{k.key_type} {k.bits} bits {k.fingerprint} ({a.reason})" for k, a in failing)
