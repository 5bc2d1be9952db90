"""Certificates of the OPC UA simulator and the trust list that judges client certificates.

At start the simulator makes, in its state folder (all PEM; keys readable by the owner only):

- ``server_cert.pem``/``server_key.pem``: the server's application instance certificate,
  self-signed, RSA 2048 and SHA-256, with the ApplicationUri, ``localhost``, the host name and
  127.0.0.1 in its SubjectAltName. With ``opcua.weak_server_cert`` it is RSA 1024 and SHA-1
  signed instead (cryptography refuses to sign certificates with SHA-1, so the to-be-signed bytes
  are re-labelled and signed by hand; see :func:`_resign_sha1`).
- ``ca_cert.pem``/``ca_key.pem``: a test CA the server trusts. The harness may sign its own
  certificates with it to test rejections of certificates that are trusted but expired, not yet
  valid or carry the wrong ApplicationUri.
- ``client_cert.pem``/``client_key.pem``: a client application instance certificate signed by the
  test CA, with :data:`~simulators.opcua_sim.CLIENT_APPLICATION_URI` in its SubjectAltName.

This module needs only cryptography, so it can run in a thread while asyncua is imported.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Smallest RSA key the hardened server accepts in a client certificate (the minimum of every
#: non-deprecated security policy).
MIN_CLIENT_KEY_BITS = 2048

#: sha256WithRSAEncryption and sha1WithRSAEncryption as DER-encoded OIDs (same length).
_OID_SHA256_RSA = bytes.fromhex("06092a864886f70d01010b")
_OID_SHA1_RSA = bytes.fromhex("06092a864886f70d010105")


@dataclass(frozen=True)
class CertBundle:
    """The generated certificates: objects for the server, paths for the ready line."""

    #: Server certificate and its key.
    server_cert: x509.Certificate
    server_key: rsa.RSAPrivateKey
    #: Test CA certificate (in the trust list).
    ca_cert: x509.Certificate
    #: Client certificate signed by the test CA.
    client_cert: x509.Certificate
    #: File paths, by name: server_cert, server_key, ca_cert, ca_key, client_cert, client_key.
    paths: dict[str, str]


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "harness simulator"),
    ])


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _resign_sha1(cert: x509.Certificate, key: rsa.RSAPrivateKey) -> x509.Certificate:
    """Return ``cert`` (signed with SHA-256) re-signed with SHA-1 by ``key``.

    The to-be-signed part names its signature algorithm; both OIDs have the same DER length, so
    swapping them keeps every length field valid.
    """
    tbs = cert.tbs_certificate_bytes
    if tbs.count(_OID_SHA256_RSA) != 1:
        raise ValueError("cannot re-sign: signature OID not found exactly once")
    tbs = tbs.replace(_OID_SHA256_RSA, _OID_SHA1_RSA)
    signature = key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - deliberately weak
    algorithm = _der(0x30, _OID_SHA1_RSA + b"\x05\x00")
    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def _write(path: str, data: bytes, *, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def generate(state_dir: str, application_uri: str, client_application_uri: str, *,
             weak_server_cert: bool = False) -> CertBundle:
    """Generate the server, CA and client certificates into ``state_dir``.

    :param application_uri: the server's ApplicationUri (put in its SubjectAltName).
    :param client_application_uri: the ApplicationUri of the generated client certificate.
    :param weak_server_cert: make the server certificate RSA 1024 and SHA-1 signed.
    """
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(hours=1), now + dt.timedelta(days=365)
    hostname = socket.gethostname()

    server_key = rsa.generate_private_key(65537, 1024 if weak_server_cert else 2048)
    server_name = _name("harness OPC UA PLC simulator")
    dns = sorted({"localhost", hostname})
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(server_name).issuer_name(server_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(application_uri)]
            + [x509.DNSName(d) for d in dns]
            + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True,
            data_encipherment=True, key_agreement=False, key_cert_sign=True, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()),
                       critical=False)
        .sign(server_key, hashes.SHA256())
    )
    if weak_server_cert:
        server_cert = _resign_sha1(server_cert, server_key)

    ca_key = rsa.generate_private_key(65537, 2048)
    ca_name = _name("harness OPC UA simulator test CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    client_key = rsa.generate_private_key(65537, 2048)
    client_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("harness OPC UA client")).issuer_name(ca_name)
        .public_key(client_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(client_application_uri), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=True,
            data_encipherment=True, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = {name: os.path.join(state_dir, f"{name}.pem") for name in
             ("server_cert", "server_key", "ca_cert", "ca_key", "client_cert", "client_key")}
    pem = serialization.Encoding.PEM
    _write(paths["server_cert"], server_cert.public_bytes(pem), private=False)
    _write(paths["server_key"], _key_pem(server_key), private=True)
    _write(paths["ca_cert"], ca_cert.public_bytes(pem), private=False)
    _write(paths["ca_key"], _key_pem(ca_key), private=True)
    _write(paths["client_cert"], client_cert.public_bytes(pem), private=False)
    _write(paths["client_key"], _key_pem(client_key), private=True)
    return CertBundle(server_cert, server_key, ca_cert, client_cert, paths)


def _time_valid(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


class TrustList:
    """The certificates a server trusts: exact (self-signed) certificates and issuing CAs.

    :param trusted: certificates to trust; those that are CAs also vouch for certificates they
        issued directly.
    """

    def __init__(self, trusted: list[x509.Certificate]) -> None:
        self._exact = {c.fingerprint(hashes.SHA256()) for c in trusted}
        self._cas = [c for c in trusted if _is_ca(c)]

    def is_trusted(self, cert: x509.Certificate, now: dt.datetime) -> bool:
        """True if ``cert`` is in the list or was issued by a valid CA in the list."""
        if cert.fingerprint(hashes.SHA256()) in self._exact:
            return True
        for ca in self._cas:
            if cert.issuer != ca.subject or not _time_valid(ca, now):
                continue
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
        return False

    def check(self, cert: x509.Certificate, application_uri: str | None) -> str | None:
        """Judge a client certificate; return the name of the Bad status code, or None if good.

        Order: validity period, ApplicationUri (when ``application_uri`` is given; the
        certificate's SubjectAltName must carry it), not a CA, RSA key size, trust.
        """
        now = dt.datetime.now(dt.UTC)
        if not _time_valid(cert, now):
            return "BadCertificateTimeInvalid"
        if application_uri is not None:
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            except x509.ExtensionNotFound:
                return "BadCertificateUriInvalid"
            if application_uri not in san.get_values_for_type(x509.UniformResourceIdentifier):
                return "BadCertificateUriInvalid"
        if _is_ca(cert):
            return "BadCertificateUseNotAllowed"
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_CLIENT_KEY_BITS:
            return "BadCertificatePolicyCheckFailed"
        if not self.is_trusted(cert, now):
            return "BadCertificateUntrusted"
        return None
