"""The built-in SSH algorithm policy: which key exchange, host-key, cipher and MAC algorithms pass.

The policy is a versioned baseline (STYLE.md: built-in baselines are versioned and never edited
in place). To change a judgement, add a new :class:`AlgorithmPolicy` with the next version number,
append it to :data:`POLICIES`, point :data:`CURRENT` at it and add a changelog entry below; an
old version keeps judging the same way forever, so two reports that name the same version are
comparable.

Judgements (:class:`Judgement`):

- ``pass``: accepted by the policy;
- ``fail``: a weakness (SHA-1, MD5, CBC mode, 3DES, RC4, Blowfish, CAST, DSA, 64-bit MAC tags,
  no encryption or MAC at all, RSA host keys under 2048 bits);
- ``info``: a name in the list that is not an algorithm (``ext-info-s``, ``kex-strict-s-v00``):
  reported, never judged;
- ``unknown``: a name this policy does not know. Reported in the evidence with that judgement,
  but **not** a FAIL: a vendor may ship an algorithm the policy has not met, and failing a device
  on a name alone would be a guess. Names that *contain* a known-weak primitive (``sha1``,
  ``md5``, ``-cbc``, ``arcfour``, ``3des``, ...) are judged ``fail`` by pattern even when the
  exact name is not listed (``rijndael-cbc@lysator.liu.se``, ``gss-group14-sha1-*``).

Changelog
---------
- **1** (harness 0.x): first version. FAIL: SHA-1 key exchange (``diffie-hellman-group1-sha1``,
  ``diffie-hellman-group14-sha1``, ``diffie-hellman-group-exchange-sha1``, GSS and RSA SHA-1
  variants), group exchange whose modulus is under 2048 bits (probed), CBC ciphers, 3DES,
  arcfour, Blowfish, CAST-128, ``none``, ``hmac-sha1*``, ``hmac-md5*``, ``hmac-ripemd160*``,
  ``umac-64*``, ``ssh-rsa`` (SHA-1 signatures), ``ssh-dss`` and their certificates, RSA host
  keys under 2048 bits. PASS: ML-KEM and sntrup761 hybrids, curve25519/448, ECDH on the NIST
  curves, DH groups 14 (SHA-256) to 18, group exchange with SHA-256, AES-GCM, AES-CTR,
  ChaCha20-Poly1305, HMAC-SHA-2 (plain and ETM), UMAC-128, Ed25519, Ed448, ECDSA,
  ``rsa-sha2-256/512`` and their certificates and security-key variants.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Judgement(StrEnum):
    """What the policy says about one offered name."""

    PASS = "pass"  # noqa: S105 (a judgement, not a password)
    FAIL = "fail"
    INFO = "info"
    UNKNOWN = "unknown"


class Category(StrEnum):
    """The name-lists of a KEXINIT the policy judges."""

    KEX = "kex"
    HOST_KEY = "host_key"
    CIPHER = "cipher"
    MAC = "mac"
    COMPRESSION = "compression"


@dataclass(frozen=True)
class Assessment:
    """The judgement of one name, and why."""

    #: The algorithm name as offered.
    name: str
    category: Category
    judgement: Judgement
    #: One line a reader of the evidence understands.
    reason: str

    def to_json(self) -> dict[str, str]:
        """For evidence."""
        return {"name": self.name, "category": str(self.category),
                "judgement": str(self.judgement), "reason": self.reason}


@dataclass(frozen=True)
class Pattern:
    """A judgement for every name matching ``regex`` that is not listed exactly."""

    #: Regular expression searched in the name.
    regex: str
    judgement: Judgement
    reason: str

    def __post_init__(self) -> None:
        re.compile(self.regex)


@dataclass(frozen=True)
class AlgorithmPolicy:
    """One version of the built-in policy.

    :param version: the version number (never reused).
    :param exact: per category, exact names and their (judgement, reason).
    :param patterns: per category, fallbacks for names not listed exactly (first match wins).
    :param min_rsa_bits: smallest acceptable RSA host-key modulus.
    :param min_gex_bits: smallest acceptable group-exchange modulus.
    """

    version: int
    exact: Mapping[Category, Mapping[str, tuple[Judgement, str]]]
    patterns: Mapping[Category, tuple[Pattern, ...]] = field(default_factory=dict)
    min_rsa_bits: int = 2048
    min_gex_bits: int = 2048

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"version must be >= 1, got {self.version}")
        for cat in self.exact:
            if not isinstance(cat, Category):
                raise ValueError(f"unknown category {cat!r}; known: {[str(c) for c in Category]}")
        if self.min_rsa_bits < 1024 or self.min_gex_bits < 1024:
            raise ValueError("min_rsa_bits and min_gex_bits must be >= 1024")

    @property
    def name(self) -> str:
        """``harness-ssh-v<version>``, as reports cite it."""
        return f"harness-ssh-v{self.version}"

    def judge(self, category: Category, name: str) -> Assessment:
        """Judge one offered name."""
        listed = self.exact.get(category, {}).get(name)
        if listed is not None:
            return Assessment(name, category, listed[0], listed[1])
        for pat in self.patterns.get(category, ()):
            if re.search(pat.regex, name):
                return Assessment(name, category, pat.judgement, pat.reason)
        return Assessment(name, category, Judgement.UNKNOWN,
                       f"not in policy {self.name}: reported, not judged")

    def judge_rsa_bits(self, bits: int) -> Assessment:
        """Judge an RSA host key's size."""
        name = f"RSA {bits} bits"
        if bits < self.min_rsa_bits:
            return Assessment(name, Category.HOST_KEY, Judgement.FAIL,
                           f"RSA modulus under {self.min_rsa_bits} bits (factorable in reach "
                           "of a well-funded attacker; NIST SP 800-131A disallows it)")
        return Assessment(name, Category.HOST_KEY, Judgement.PASS,
                       f"RSA modulus of at least {self.min_rsa_bits} bits")

    def judge_host_key(self, key_type: str, bits: int) -> Assessment:
        """Judge a host key by its type and size (not by the signature algorithm used)."""
        if key_type == "ssh-rsa":
            return self.judge_rsa_bits(bits)
        name = f"{key_type} {bits} bits"
        if key_type == "ssh-dss":
            return Assessment(name, Category.HOST_KEY, Judgement.FAIL,
                              "DSA key (1024-bit, SHA-1 signatures; removed from OpenSSH)")
        if key_type.startswith("ecdsa-sha2-"):
            if bits < 256:
                return Assessment(name, Category.HOST_KEY, Judgement.FAIL,
                                  "ECDSA key on a curve under 256 bits")
            return Assessment(name, Category.HOST_KEY, Judgement.PASS,
                              "ECDSA key on a NIST curve of at least 256 bits")
        if key_type in ("ssh-ed25519", "ssh-ed448"):
            return Assessment(name, Category.HOST_KEY, Judgement.PASS, "EdDSA key")
        return Assessment(name, Category.HOST_KEY, Judgement.UNKNOWN,
                          f"key type not in policy {self.name}: reported, not judged")

    def judge_gex_bits(self, kex: str, bits: int) -> Assessment:
        """Judge the modulus a group-exchange server chose for us."""
        name = f"{kex} modulus {bits} bits"
        if bits < self.min_gex_bits:
            return Assessment(name, Category.KEX, Judgement.FAIL,
                           f"group exchange handed out a {bits}-bit modulus (under "
                           f"{self.min_gex_bits}: Logjam-class precomputation)")
        return Assessment(name, Category.KEX, Judgement.PASS,
                       f"group exchange modulus of at least {self.min_gex_bits} bits")


_P, _F, _I = Judgement.PASS, Judgement.FAIL, Judgement.INFO

_SHA1_KEX = "SHA-1 exchange hash (collisions practical since 2020: SHA-1 is shambles)"
_CBC = "CBC mode (padding-oracle and plaintext-recovery attacks on SSH, CVE-2008-5161)"
_SHA1_MAC = "HMAC-SHA-1 (SHA-1 deprecated; use HMAC-SHA-2)"
_MD5_MAC = "HMAC-MD5 (MD5 broken)"

_V1_KEX: dict[str, tuple[Judgement, str]] = {
    "mlkem768x25519-sha256": (_P, "hybrid ML-KEM-768 + X25519 (post-quantum)"),
    "sntrup761x25519-sha512": (_P, "hybrid sntrup761 + X25519 (post-quantum)"),
    "sntrup761x25519-sha512@openssh.com": (_P, "hybrid sntrup761 + X25519 (post-quantum)"),
    "curve25519-sha256": (_P, "X25519 with SHA-256 (RFC 8731)"),
    "curve25519-sha256@libssh.org": (_P, "X25519 with SHA-256 (RFC 8731)"),
    "curve448-sha512": (_P, "X448 with SHA-512 (RFC 8731)"),
    "ecdh-sha2-nistp256": (_P, "ECDH on NIST P-256 (RFC 5656)"),
    "ecdh-sha2-nistp384": (_P, "ECDH on NIST P-384 (RFC 5656)"),
    "ecdh-sha2-nistp521": (_P, "ECDH on NIST P-521 (RFC 5656)"),
    "diffie-hellman-group14-sha256": (_P, "2048-bit MODP group with SHA-256 (RFC 8268)"),
    "diffie-hellman-group15-sha512": (_P, "3072-bit MODP group with SHA-512 (RFC 8268)"),
    "diffie-hellman-group16-sha512": (_P, "4096-bit MODP group with SHA-512 (RFC 8268)"),
    "diffie-hellman-group17-sha512": (_P, "6144-bit MODP group with SHA-512 (RFC 8268)"),
    "diffie-hellman-group18-sha512": (_P, "8192-bit MODP group with SHA-512 (RFC 8268)"),
    "diffie-hellman-group-exchange-sha256": (
        _P, "group exchange with SHA-256 (RFC 4419); the modulus size is probed separately"),
    "rsa2048-sha256": (_P, "RSA 2048 key transport with SHA-256 (RFC 4432)"),
    "diffie-hellman-group1-sha1": (_F, "1024-bit Oakley group 2 and " + _SHA1_KEX),
    "diffie-hellman-group14-sha1": (_F, _SHA1_KEX),
    "diffie-hellman-group-exchange-sha1": (_F, _SHA1_KEX),
    "rsa1024-sha1": (_F, "RSA 1024 key transport and " + _SHA1_KEX),
    "ext-info-s": (_I, "extension negotiation marker (RFC 8308), not an algorithm"),
    "ext-info-c": (_I, "extension negotiation marker (RFC 8308), not an algorithm"),
    "kex-strict-s-v00@openssh.com": (_I, "strict key exchange marker (Terrapin counter-measure)"),
    "kex-strict-c-v00@openssh.com": (_I, "strict key exchange marker (Terrapin counter-measure)"),
}

_V1_HOST_KEY: dict[str, tuple[Judgement, str]] = {
    "ssh-ed25519": (_P, "Ed25519 signatures"),
    "ssh-ed448": (_P, "Ed448 signatures"),
    "ecdsa-sha2-nistp256": (_P, "ECDSA P-256 with SHA-256"),
    "ecdsa-sha2-nistp384": (_P, "ECDSA P-384 with SHA-384"),
    "ecdsa-sha2-nistp521": (_P, "ECDSA P-521 with SHA-512"),
    "rsa-sha2-256": (_P, "RSA signatures with SHA-256 (RFC 8332); key size judged separately"),
    "rsa-sha2-512": (_P, "RSA signatures with SHA-512 (RFC 8332); key size judged separately"),
    "sk-ssh-ed25519@openssh.com": (_P, "Ed25519 on a security key"),
    "sk-ecdsa-sha2-nistp256@openssh.com": (_P, "ECDSA P-256 on a security key"),
    "ssh-rsa": (_F, "RSA signatures with SHA-1 (RFC 8332 deprecates them; OpenSSH 8.8 dropped "
                    "them)"),
    "ssh-dss": (_F, "DSA (1024-bit keys, SHA-1; removed from OpenSSH)"),
}
for _base in ("ssh-ed25519", "rsa-sha2-256", "rsa-sha2-512", "ecdsa-sha2-nistp256",
              "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
              "sk-ecdsa-sha2-nistp256@openssh.com"):
    _plain = _base.removesuffix("@openssh.com")
    _V1_HOST_KEY[f"{_plain}-cert-v01@openssh.com"] = (
        _P, f"OpenSSH certificate, {_V1_HOST_KEY[_base][1]}")
for _weak in ("ssh-rsa", "ssh-dss"):
    for _v in ("v00", "v01"):
        _V1_HOST_KEY[f"{_weak}-cert-{_v}@openssh.com"] = (
            _F, f"OpenSSH certificate, {_V1_HOST_KEY[_weak][1]}")

_V1_CIPHER: dict[str, tuple[Judgement, str]] = {
    "chacha20-poly1305@openssh.com": (_P, "ChaCha20-Poly1305 AEAD"),
    "aes128-gcm@openssh.com": (_P, "AES-128-GCM AEAD (RFC 5647)"),
    "aes256-gcm@openssh.com": (_P, "AES-256-GCM AEAD (RFC 5647)"),
    "AEAD_AES_128_GCM": (_P, "AES-128-GCM AEAD (RFC 5647)"),
    "AEAD_AES_256_GCM": (_P, "AES-256-GCM AEAD (RFC 5647)"),
    "aes128-ctr": (_P, "AES-128 in counter mode (RFC 4344)"),
    "aes192-ctr": (_P, "AES-192 in counter mode (RFC 4344)"),
    "aes256-ctr": (_P, "AES-256 in counter mode (RFC 4344)"),
    "aes128-cbc": (_F, _CBC),
    "aes192-cbc": (_F, _CBC),
    "aes256-cbc": (_F, _CBC),
    "rijndael-cbc@lysator.liu.se": (_F, _CBC),
    "3des-cbc": (_F, "3DES (64-bit block: Sweet32) in " + _CBC),
    "3des-ctr": (_F, "3DES (64-bit block: Sweet32)"),
    "blowfish-cbc": (_F, "Blowfish (64-bit block: Sweet32) in " + _CBC),
    "cast128-cbc": (_F, "CAST-128 (64-bit block: Sweet32) in " + _CBC),
    "arcfour": (_F, "RC4 (biased keystream, RFC 7465 forbids it)"),
    "arcfour128": (_F, "RC4 (biased keystream, RFC 7465 forbids it)"),
    "arcfour256": (_F, "RC4 (biased keystream, RFC 7465 forbids it)"),
    "none": (_F, "no encryption"),
}

_V1_MAC: dict[str, tuple[Judgement, str]] = {
    "hmac-sha2-256": (_P, "HMAC-SHA-256 (RFC 6668)"),
    "hmac-sha2-512": (_P, "HMAC-SHA-512 (RFC 6668)"),
    "hmac-sha2-256-etm@openssh.com": (_P, "HMAC-SHA-256, encrypt-then-MAC"),
    "hmac-sha2-512-etm@openssh.com": (_P, "HMAC-SHA-512, encrypt-then-MAC"),
    "umac-128@openssh.com": (_P, "UMAC with a 128-bit tag"),
    "umac-128-etm@openssh.com": (_P, "UMAC with a 128-bit tag, encrypt-then-MAC"),
    "hmac-sha1": (_F, _SHA1_MAC),
    "hmac-sha1-96": (_F, _SHA1_MAC + ", truncated to 96 bits"),
    "hmac-sha1-etm@openssh.com": (_F, _SHA1_MAC),
    "hmac-sha1-96-etm@openssh.com": (_F, _SHA1_MAC + ", truncated to 96 bits"),
    "hmac-md5": (_F, _MD5_MAC),
    "hmac-md5-96": (_F, _MD5_MAC + ", truncated to 96 bits"),
    "hmac-md5-etm@openssh.com": (_F, _MD5_MAC),
    "hmac-md5-96-etm@openssh.com": (_F, _MD5_MAC + ", truncated to 96 bits"),
    "hmac-ripemd160": (_F, "HMAC-RIPEMD-160 (unmaintained; removed from OpenSSH 7.6)"),
    "hmac-ripemd160@openssh.com": (_F, "HMAC-RIPEMD-160 (unmaintained; removed from OpenSSH 7.6)"),
    "hmac-ripemd160-etm@openssh.com": (_F, "HMAC-RIPEMD-160 (unmaintained)"),
    "umac-64@openssh.com": (_F, "UMAC with a 64-bit tag (too short)"),
    "umac-64-etm@openssh.com": (_F, "UMAC with a 64-bit tag (too short)"),
    "none": (_F, "no integrity protection"),
}

_V1_COMPRESSION: dict[str, tuple[Judgement, str]] = {
    "none": (_P, "no compression"),
    "zlib@openssh.com": (_P, "compression after authentication only"),
    "zlib": (_P, "compression (reported; not a cryptographic algorithm)"),
}

_V1_WEAK_FRAGMENTS: tuple[Pattern, ...] = (
    Pattern(r"(^|[-_@])sha1($|[-_@])", _F, "uses SHA-1"),
    Pattern(r"md5", _F, "uses MD5"),
    Pattern(r"-cbc($|@)", _F, _CBC),
    Pattern(r"3des|(^|-)des($|-)", _F, "DES or 3DES (64-bit block)"),
    Pattern(r"arcfour|rc4", _F, "RC4"),
    Pattern(r"blowfish|cast128|idea", _F, "64-bit block cipher (Sweet32)"),
    Pattern(r"ripemd", _F, "RIPEMD (unmaintained)"),
    Pattern(r"umac-64", _F, "64-bit MAC tag"),
    Pattern(r"(^|-)dss($|-)", _F, "DSA"),
)

#: Version 1 of the built-in policy. Never edit it: add version 2 instead.
POLICY_V1 = AlgorithmPolicy(
    version=1,
    exact={
        Category.KEX: _V1_KEX,
        Category.HOST_KEY: _V1_HOST_KEY,
        Category.CIPHER: _V1_CIPHER,
        Category.MAC: _V1_MAC,
        Category.COMPRESSION: _V1_COMPRESSION,
    },
    patterns={
        Category.KEX: _V1_WEAK_FRAGMENTS,
        Category.HOST_KEY: (*_V1_WEAK_FRAGMENTS,
                            Pattern(r"^(x509v3-)?(sign-|ssh-)?rsa($|-cert-v0[01]@)", _F,
                                    "RSA with SHA-1 signatures")),
        Category.CIPHER: _V1_WEAK_FRAGMENTS,
        Category.MAC: _V1_WEAK_FRAGMENTS,
        Category.COMPRESSION: (),
    },
    min_rsa_bits=2048,
    min_gex_bits=2048,
)

#: Every released version, by number.
POLICIES: dict[int, AlgorithmPolicy] = {1: POLICY_V1}
#: The version checks use.
CURRENT = POLICY_V1


def policy(version: int | None = None) -> AlgorithmPolicy:
    """The policy of ``version`` (default :data:`CURRENT`).

    :raises ValueError: an unknown version, naming the known ones.
    """
    if version is None:
        return CURRENT
    try:
        return POLICIES[version]
    except KeyError:
        raise ValueError(f"unknown SSH policy version {version}; known: {sorted(POLICIES)}") \
            from None
