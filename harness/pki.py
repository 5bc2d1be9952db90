"""A small test PKI: keys, CAs and certificates minted at run time for the certificate checks.

The Modbus/TCP Security and OPC UA checks need certificates a device should accept (signed by a
CA it trusts, with the right role or ApplicationUri) and ones it must refuse (self-signed,
signed by an unknown CA, expired, not yet valid, SHA-1 signed, short keys). This module makes
them with ``cryptography``; nothing here touches the network.

- :func:`make_ca` and :func:`issue` return an :class:`Issued` (certificate + private key);
- ``modbus_role`` adds the Modbus/TCP Security role extension (OID
  :data:`MODBUS_ROLE_OID`, a non-critical DER UTF8String, e.g. ``ReadWrite``);
- ``hash_name="sha1"`` signs with SHA-1 for negative tests: ``cryptography`` refuses to, so the
  to-be-signed bytes are re-labelled and signed by hand (see :func:`_resign`);
- :func:`load_cert`, :func:`load_key` read PEM or DER; :func:`describe` summarises a certificate
  for evidence (JSON-serialisable, never the key).

Keys are RSA (2048 bits by default) unless the caller passes its own ``key`` (EC and Ed25519
keys work too, e.g. a CA key read from a device's test material).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The Modbus/TCP Security role extension (Modbus/TCP Security specification, "RoleOID").
MODBUS_ROLE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.50316.802.1")

#: Organisation written into every subject this module makes, so test certificates are obvious.
ORGANIZATION = "harness test PKI"

#: Hash names ``issue`` accepts.
HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: Hashes cryptography signs certificates with; the others (SHA-1) are signed by hand.
_BUILDER_HASHES: dict[str, type[hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: DER-encoded signature AlgorithmIdentifiers for hand-signed certificates.
_ALGORITHM_IDENTIFIERS = {
    # sha1WithRSAEncryption, parameters NULL
    ("rsa", "sha1"): bytes.fromhex("300d06092a864886f70d0101050500"),
    # ecdsa-with-SHA1, parameters absent
    ("ec", "sha1"): bytes.fromhex("300906072a8648ce3d0401"),
}

#: Default validity of an issued certificate when ``not_after`` is not given.
DEFAULT_VALID_DAYS = 365
#: How far back ``not_before`` defaults to (tolerates small clock differences to a device).
CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    #: The certificate.
    cert: x509.Certificate
    #: Its private key.
    key: PrivateKeyTypes

    def cert_pem(self) -> bytes:
        """The certificate, PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def cert_der(self) -> bytes:
        """The certificate, DER."""
        return self.cert.public_bytes(serialization.Encoding.DER)

    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM (test material: never log it)."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>-cert.pem`` and ``<stem>-key.pem`` (mode 0600) into ``folder``.

        :param folder: created (mode 0700) if missing.
        :returns: the certificate path and the key path.
        """
        folder = Path(folder)
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert_path, key_path = folder / f"{stem}-cert.pem", folder / f"{stem}-key.pem"
        cert_path.write_bytes(self.cert_pem())
        _write_private(key_path, self.key_pem())
        return cert_path, key_path

    def fingerprint(self) -> str:
        """``SHA256:<hex>`` of the DER certificate."""
        return fingerprint(self.cert)

    @property
    def role(self) -> str | None:
        """The Modbus/TCP Security role in the certificate, if any."""
        return modbus_role_of(self.cert)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing file keeps its mode on open: force it
        fh.write(data)


# --------------------------------------------------------------------------- keys and names
def new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """A fresh RSA key (public exponent 65537).

    :param bits: key size; ``cryptography`` refuses fewer than 1024.
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(common_name: str) -> x509.Name:
    if not common_name:
        raise ValueError("common_name must not be empty")
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _utc(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (e.g. datetime.now(UTC)), got {value!r}")
    return value.astimezone(dt.UTC)


def _key_kind(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "rsa"
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return "ec"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "ed448"
    return type(key).__name__


# --------------------------------------------------------------------------- DER helpers
def der_utf8string(text: str) -> bytes:
    """``text`` as one DER UTF8String (tag 0x0C)."""
    return _der(0x0C, text.encode("utf-8"))


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_elements(data: bytes) -> list[tuple[int, bytes]]:
    """Split concatenated DER TLVs (single-byte tags) into ``(tag, whole TLV bytes)``."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise ValueError("truncated DER element")
        tag, first = data[pos], data[pos + 1]
        head = 2
        if first & 0x80:
            n = first & 0x7F
            if not 1 <= n <= 4 or len(data) - pos < 2 + n:
                raise ValueError("bad DER length")
            length = int.from_bytes(data[pos + 2 : pos + 2 + n], "big")
            head += n
        else:
            length = first
        end = pos + head + length
        if end > len(data):
            raise ValueError("DER element overruns its container")
        out.append((tag, data[pos:end]))
        pos = end
    return out


def _der_content(tlv: bytes) -> bytes:
    """The content of one DER TLV."""
    first = tlv[1]
    head = 2 + (first & 0x7F if first & 0x80 else 0)
    return tlv[head:]


def _resign(cert: x509.Certificate, signer: CertificateIssuerPrivateKeyTypes,
            hash_name: str) -> x509.Certificate:
    """Return ``cert`` re-signed by ``signer`` with a hash ``cryptography`` will not sign with.

    The to-be-signed part names its own signature algorithm, so that field is replaced (and the
    TBS re-encoded, since the identifiers differ in length for ECDSA) before signing it.
    """
    kind = _key_kind(signer)
    algorithm_id = _ALGORITHM_IDENTIFIERS.get((kind, hash_name))
    if algorithm_id is None:
        raise ValueError(f"cannot sign with {hash_name} using a {kind} key")
    (tbs_tag, tbs_tlv), = _der_elements(cert.tbs_certificate_bytes)
    fields = _der_elements(_der_content(tbs_tlv))
    # TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serial, signature AlgorithmIdentifier,
    # issuer, validity, subject, subjectPublicKeyInfo, ...}
    index = 2 if fields and fields[0][0] == 0xA0 else 1
    parts = [tlv for _, tlv in fields]
    parts[index] = algorithm_id
    tbs = _der(tbs_tag, b"".join(parts))
    hash_algorithm = HASHES[hash_name]()
    if isinstance(signer, rsa.RSAPrivateKey):
        signature = signer.sign(tbs, padding.PKCS1v15(), hash_algorithm)
    elif isinstance(signer, ec.EllipticCurvePrivateKey):
        signature = signer.sign(tbs, ec.ECDSA(hash_algorithm))
    else:  # pragma: no cover - guarded by _ALGORITHM_IDENTIFIERS above
        raise ValueError(f"cannot sign with a {kind} key")
    der = _der(0x30, tbs + algorithm_id + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


# --------------------------------------------------------------------------- issuing
def issue(
    common_name: str,
    *,
    issuer: Issued | None = None,
    key: PrivateKeyTypes | None = None,
    bits: int = 2048,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    san_uris: Sequence[str] = (),
    san_dns: Sequence[str] = (),
    san_ips: Sequence[str] = (),
    modbus_role: str | None = None,
    hash_name: str = "sha256",
    client: bool = True,
    server: bool = False,
    is_ca: bool = False,
    subject: x509.Name | None = None,
) -> Issued:
    """Make a certificate for ``common_name``.

    :param issuer: the signing CA; ``None`` makes the certificate self-signed.
    :param key: the subject's private key; a new RSA key of ``bits`` bits if ``None``.
    :param bits: size of the new RSA key (ignored when ``key`` is given).
    :param not_before: start of validity (timezone-aware); default now minus five minutes.
        Deliberately NOT clamped to the issuer's validity, so expired and not-yet-valid
        certificates signed by a trusted CA can be made.
    :param not_after: end of validity (timezone-aware); default ``not_before`` + 365 days.
    :param san_uris: SubjectAltName URIs (an OPC UA ApplicationUri goes here).
    :param san_dns: SubjectAltName DNS names.
    :param san_ips: SubjectAltName IP addresses (text, v4 or v6).
    :param modbus_role: adds the Modbus/TCP Security role extension with this text.
    :param hash_name: signature hash: ``sha1`` (for negative tests), ``sha224``, ``sha256``,
        ``sha384``, ``sha512``; ignored (must stay the default) for Ed25519/Ed448 signers.
    :param client: add the clientAuth extended key usage.
    :param server: add the serverAuth extended key usage.
    :param is_ca: make a CA certificate (basicConstraints CA, keyCertSign, cRLSign).
    :param subject: the full subject name, instead of ``O=harness test PKI, CN=common_name``
        (e.g. to forge a CA with a trusted CA's name but another key).
    :raises ValueError: an unknown hash, an empty name, naive datetimes, an empty validity, a
        bad IP address, or a hash the signer's key type cannot use.
    """
    if hash_name not in HASHES:
        raise ValueError(f"hash_name must be one of {sorted(HASHES)}, got {hash_name!r}")
    subject_key: PrivateKeyTypes = key if key is not None else new_key(bits)
    signer_key = issuer.key if issuer is not None else subject_key
    if not isinstance(signer_key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise ValueError(f"cannot sign certificates with a {_key_kind(signer_key)} key")
    signer_kind = _key_kind(signer_key)
    if signer_kind in ("ed25519", "ed448") and hash_name != "sha256":
        raise ValueError(f"a {signer_kind} signer has no hash choice; got hash_name={hash_name!r}")
    public_key = subject_key.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                      | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise ValueError(f"cannot certify a {_key_kind(public_key)} key")

    now = dt.datetime.now(dt.UTC)
    start = _utc(not_before, "not_before") if not_before is not None else now - CLOCK_SKEW
    end = (_utc(not_after, "not_after") if not_after is not None
           else start + dt.timedelta(days=DEFAULT_VALID_DAYS))
    if end <= start:
        raise ValueError(f"not_after ({end.isoformat()}) must be after not_before "
                         f"({start.isoformat()})")

    if subject is None:
        subject = _name(common_name)
    issuer_name = issuer.cert.subject if issuer is not None else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_key_usage(public_key, is_ca=is_ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + (
        [ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if issuer is not None:
        builder = builder.add_extension(_authority_key_id(issuer), critical=False)
    names = _general_names(san_uris, san_dns, san_ips)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if modbus_role is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(MODBUS_ROLE_OID, der_utf8string(modbus_role)),
            critical=False,
        )

    if signer_kind in ("ed25519", "ed448"):
        cert = builder.sign(signer_key, None)
    elif hash_name in _BUILDER_HASHES:
        cert = builder.sign(signer_key, _BUILDER_HASHES[hash_name]())
    else:
        cert = _resign(builder.sign(signer_key, hashes.SHA256()), signer_key, hash_name)
    return Issued(cert, subject_key)


def make_ca(common_name: str, *, bits: int = 2048, valid_days: int = 365) -> Issued:
    """A self-signed test CA valid from five minutes ago for ``valid_days`` days."""
    if valid_days < 1:
        raise ValueError(f"valid_days must be >= 1, got {valid_days}")
    start = dt.datetime.now(dt.UTC) - CLOCK_SKEW
    return issue(common_name, bits=bits, not_before=start,
                 not_after=start + dt.timedelta(days=valid_days),
                 client=False, server=False, is_ca=True)


def _key_usage(public_key: CertificatePublicKeyTypes, *, is_ca: bool) -> x509.KeyUsage:
    """CA: digitalSignature, keyCertSign, cRLSign. Leaf: digitalSignature and nonRepudiation,
    plus keyEncipherment and dataEncipherment for RSA keys (what OPC UA application instance
    certificates carry; meaningless for EC/EdDSA keys, so left out there)."""
    rsa_key = isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=not is_ca,
        key_encipherment=rsa_key and not is_ca,
        data_encipherment=rsa_key and not is_ca,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: Issued) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer.cert.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey
                          | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            raise ValueError(f"issuer has an unusable {_key_kind(public_key)} key") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _general_names(uris: Sequence[str], dns: Sequence[str],
                   ips: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError as exc:
            raise ValueError(f"san_ips: {ip!r} is not an IP address") from exc
    return names


# --------------------------------------------------------------------------- reading
def load_cert(path: Path) -> x509.Certificate:
    """Read a certificate file, PEM or DER (the first certificate of a PEM bundle).

    :raises ValueError: the file holds no certificate.
    """
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_key(path: Path, password: bytes | None = None) -> PrivateKeyTypes:
    """Read a private key file, PEM or DER (PKCS#8, PKCS#1 or SEC1).

    :param password: for an encrypted key.
    :raises ValueError: the file holds no private key (or the password is wrong).
    """
    data = Path(path).read_bytes()
    if b"-----BEGIN" in data:
        return serialization.load_pem_private_key(data, password=password)
    return serialization.load_der_private_key(data, password=password)


def load_issued(cert_path: Path, key_path: Path, password: bytes | None = None) -> Issued:
    """A certificate and its key from files (e.g. a device's test CA).

    :raises ValueError: the key does not belong to the certificate.
    """
    issued = Issued(load_cert(cert_path), load_key(key_path, password))
    if not key_matches(issued.cert, issued.key):
        raise ValueError(f"{key_path} is not the private key of {cert_path}")
    return issued


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """True if ``key`` is the private key of ``cert``."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        return bool(cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki))
    except (ValueError, TypeError):
        return False


# --------------------------------------------------------------------------- inspecting
def fingerprint(cert: x509.Certificate | bytes) -> str:
    """``SHA256:<hex>`` of a certificate (object or DER bytes)."""
    der = cert if isinstance(cert, bytes) else cert.public_bytes(serialization.Encoding.DER)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(der)
    return "SHA256:" + digest.finalize().hex()


def modbus_role_of(cert: x509.Certificate) -> str | None:
    """The text of the Modbus/TCP Security role extension, or None if absent or not a UTF8String."""
    try:
        ext = cert.extensions.get_extension_for_oid(MODBUS_ROLE_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    raw = value.value
    try:
        elements = _der_elements(raw)
    except ValueError:
        return None
    if len(elements) != 1 or elements[0][0] != 0x0C:
        return None
    try:
        return _der_content(elements[0][1]).decode("utf-8")
    except UnicodeDecodeError:
        return None


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True if ``cert`` names ``issuer`` as issuer and carries a valid signature by its key.

    Only the names and the signature; validity periods and extensions are not checked. Unlike
    ``cert.verify_directly_issued_by`` (which refuses SHA-1), any hash the certificate names is
    accepted, so the SHA-1 certificates made for negative tests verify too.
    """
    if cert.issuer != issuer.subject:
        return False
    public_key = issuer.public_key()
    tbs, signature = cert.tbs_certificate_bytes, cert.signature
    try:
        hash_algorithm = cert.signature_hash_algorithm
        if isinstance(public_key, rsa.RSAPublicKey) and hash_algorithm is not None:
            pad = cert.signature_algorithm_parameters
            if not isinstance(pad, padding.PSS | padding.PKCS1v15):
                pad = padding.PKCS1v15()
            public_key.verify(signature, tbs, pad, hash_algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and hash_algorithm is not None:
            public_key.verify(signature, tbs, ec.ECDSA(hash_algorithm))
        elif isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public_key.verify(signature, tbs)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def describe(cert: x509.Certificate) -> dict[str, Any]:
    """A JSON-serialisable summary of ``cert`` for evidence.

    Keys: ``subject``, ``issuer`` (RFC 4514), ``serial`` (hex), ``not_before``, ``not_after``
    (ISO 8601 UTC), ``key_type`` (``RSA``, ``EC``, ``Ed25519``...), ``key_bits``, ``curve``
    (EC only, else None), ``signature_hash`` (e.g. ``sha256``; None for EdDSA),
    ``self_signed`` (subject == issuer and signature verifies), ``is_ca``, ``san_uris``,
    ``san_dns``, ``san_ips``, ``modbus_role``, ``fingerprint``.
    """
    public_key = cert.public_key()
    curve: str | None = None
    key_bits: int | None
    if isinstance(public_key, rsa.RSAPublicKey):
        key_type, key_bits = "RSA", public_key.key_size
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        key_type, key_bits, curve = "EC", public_key.curve.key_size, public_key.curve.name
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        key_type, key_bits = "Ed25519", 256
    elif isinstance(public_key, ed448.Ed448PublicKey):
        key_type, key_bits = "Ed448", 456
    else:
        key_type, key_bits = type(public_key).__name__, None
    try:
        hash_algorithm = cert.signature_hash_algorithm
        signature_hash = hash_algorithm.name if hash_algorithm is not None else None
    except UnsupportedAlgorithm:  # an unknown signature algorithm: name its OID instead
        signature_hash = cert.signature_algorithm_oid.dotted_string
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        uris, dns, ips = [], [], []
    try:
        is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        is_ca = False
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "key_type": key_type,
        "key_bits": key_bits,
        "curve": curve,
        "signature_hash": signature_hash,
        "self_signed": cert.subject == cert.issuer and verify_issued_by(cert, cert),
        "is_ca": is_ca,
        "san_uris": uris,
        "san_dns": dns,
        "san_ips": ips,
        "modbus_role": modbus_role_of(cert),
        "fingerprint": fingerprint(cert),
    }
