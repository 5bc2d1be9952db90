"""The built-in SSH algorithm policy: versioned, well-formed, and judging what the issue lists."""

from __future__ import annotations

import re

import pytest

from harness import ssh_policy as p
from harness.ssh_policy import Category, Judgement

pytestmark = pytest.mark.timeout(30)

FAIL = [
    (Category.KEX, "diffie-hellman-group1-sha1"),
    (Category.KEX, "diffie-hellman-group14-sha1"),
    (Category.KEX, "diffie-hellman-group-exchange-sha1"),
    (Category.KEX, "gss-group14-sha1-toWM5Slw5Ew8Mqkay+al2g=="),
    (Category.CIPHER, "aes128-cbc"),
    (Category.CIPHER, "rijndael-cbc@lysator.liu.se"),
    (Category.CIPHER, "twofish256-cbc"),
    (Category.CIPHER, "3des-cbc"),
    (Category.CIPHER, "arcfour256"),
    (Category.CIPHER, "blowfish-cbc"),
    (Category.CIPHER, "none"),
    (Category.MAC, "hmac-sha1"),
    (Category.MAC, "hmac-sha1-96-etm@openssh.com"),
    (Category.MAC, "hmac-md5-96"),
    (Category.MAC, "umac-64@openssh.com"),
    (Category.HOST_KEY, "ssh-rsa"),
    (Category.HOST_KEY, "ssh-dss"),
    (Category.HOST_KEY, "ssh-rsa-cert-v01@openssh.com"),
    (Category.HOST_KEY, "x509v3-sign-rsa"),
]
PASS = [
    (Category.KEX, "mlkem768x25519-sha256"),
    (Category.KEX, "sntrup761x25519-sha512@openssh.com"),
    (Category.KEX, "curve25519-sha256"),
    (Category.KEX, "ecdh-sha2-nistp384"),
    (Category.KEX, "diffie-hellman-group14-sha256"),
    (Category.KEX, "diffie-hellman-group16-sha512"),
    (Category.KEX, "diffie-hellman-group18-sha512"),
    (Category.CIPHER, "aes256-gcm@openssh.com"),
    (Category.CIPHER, "aes128-ctr"),
    (Category.CIPHER, "chacha20-poly1305@openssh.com"),
    (Category.MAC, "hmac-sha2-256-etm@openssh.com"),
    (Category.MAC, "hmac-sha2-512"),
    (Category.HOST_KEY, "ssh-ed25519"),
    (Category.HOST_KEY, "ecdsa-sha2-nistp256"),
    (Category.HOST_KEY, "rsa-sha2-512"),
    (Category.HOST_KEY, "rsa-sha2-256-cert-v01@openssh.com"),
]


@pytest.mark.parametrize(("category", "name"), FAIL)
def test_weak_algorithms_fail(category: Category, name: str) -> None:
    verdict = p.CURRENT.judge(category, name)
    assert verdict.judgement is Judgement.FAIL, verdict
    assert verdict.reason


@pytest.mark.parametrize(("category", "name"), PASS)
def test_modern_algorithms_pass(category: Category, name: str) -> None:
    assert p.CURRENT.judge(category, name).judgement is Judgement.PASS


def test_unknown_names_are_reported_not_failed_and_markers_are_info() -> None:
    unknown = p.CURRENT.judge(Category.CIPHER, "serpent256-ctr@vendor.example")
    assert unknown.judgement is Judgement.UNKNOWN and "harness-ssh-v1" in unknown.reason
    assert p.CURRENT.judge(Category.KEX, "kex-strict-s-v00@openssh.com").judgement \
        is Judgement.INFO


@pytest.mark.parametrize(("key_type", "bits", "judgement"), [
    ("ssh-rsa", 1024, Judgement.FAIL),
    ("ssh-rsa", 2047, Judgement.FAIL),
    ("ssh-rsa", 2048, Judgement.PASS),
    ("ssh-rsa", 4096, Judgement.PASS),
    ("ssh-dss", 1024, Judgement.FAIL),
    ("ecdsa-sha2-nistp256", 256, Judgement.PASS),
    ("ssh-ed25519", 256, Judgement.PASS),
    ("ssh-xmss@openssh.com", 0, Judgement.UNKNOWN),
])
def test_host_keys(key_type: str, bits: int, judgement: Judgement) -> None:
    assert p.CURRENT.judge_host_key(key_type, bits).judgement is judgement


def test_group_exchange_modulus() -> None:
    method = "diffie-hellman-group-exchange-sha256"
    assert p.CURRENT.judge_gex_bits(method, 1024).judgement is Judgement.FAIL
    assert p.CURRENT.judge_gex_bits(method, 2048).judgement is Judgement.PASS


def test_every_released_version_is_well_formed() -> None:
    assert p.POLICIES, "no policy released"
    assert p.CURRENT is p.POLICIES[max(p.POLICIES)]
    for version, policy in p.POLICIES.items():
        assert policy.version == version
        assert policy.name == f"harness-ssh-v{version}"
        assert set(policy.exact) == set(Category)
        for cat, names in policy.exact.items():
            for name, (judgement, reason) in names.items():
                assert re.fullmatch(r"[\x21-\x7e]{1,64}", name), (cat, name)
                assert isinstance(judgement, Judgement) and reason.strip(), (cat, name)
        # every version has a changelog entry in the module docstring
        assert re.search(rf"^- \*\*{version}\*\*", p.__doc__ or "", re.M), version


def test_policy_lookup() -> None:
    assert p.policy() is p.CURRENT
    assert p.policy(1) is p.POLICY_V1
    with pytest.raises(ValueError, match=r"unknown SSH policy version 99; known: \[1\]"):
        p.policy(99)
    with pytest.raises(ValueError, match="version must be >= 1"):
        p.AlgorithmPolicy(version=0, exact={})
