"""Tests of the test PKI helper: round trips, the Modbus role extension, validity windows,
self-signed versus CA-signed verification, SHA-1 hand-signing."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from harness import pki

pytestmark = pytest.mark.timeout(60)

UTC = dt.UTC


@pytest.fixture(scope="module")
def ca() -> pki.Issued:
    return pki.make_ca("unit test CA", valid_days=30)


@pytest.fixture(scope="module")
def leaf_key() -> rsa.RSAPrivateKey:
    # one key reused by most certificates keeps the module fast (RSA generation is the slow part)
    return pki.new_key()


def test_new_key_size() -> None:
    assert pki.new_key(1024).key_size == 1024


def test_ca_is_self_signed_ca(ca: pki.Issued) -> None:
    ca.cert.verify_directly_issued_by(ca.cert)
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert ku.crl_sign
    span = ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc
    assert span == dt.timedelta(days=30)
    info = pki.describe(ca.cert)
    assert info["is_ca"]
    assert info["self_signed"]
    assert info["key_type"] == "RSA"
    assert info["key_bits"] == 2048


def test_ca_signed_verifies_against_ca_only(ca: pki.Issued, leaf_key: rsa.RSAPrivateKey) -> None:
    leaf = pki.issue("client", issuer=ca, key=leaf_key)
    leaf.cert.verify_directly_issued_by(ca.cert)
    assert leaf.cert.issuer == ca.cert.subject
    assert pki.verify_issued_by(leaf.cert, ca.cert)
    assert not pki.verify_issued_by(leaf.cert, leaf.cert)
    other = pki.make_ca("other CA", bits=1024)
    with pytest.raises((ValueError, InvalidSignature)):
        leaf.cert.verify_directly_issued_by(other.cert)
    assert not pki.verify_issued_by(leaf.cert, other.cert)
    aki = leaf.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert pki.describe(leaf.cert)["self_signed"] is False


def test_self_signed_verifies_against_itself(leaf_key: rsa.RSAPrivateKey) -> None:
    own = pki.issue("lonely", key=leaf_key)
    own.cert.verify_directly_issued_by(own.cert)
    assert own.cert.issuer == own.cert.subject
    assert pki.describe(own.cert)["self_signed"] is True


def test_same_name_other_key_does_not_verify(ca: pki.Issued, leaf_key: rsa.RSAPrivateKey) -> None:
    # an impostor CA with the trusted CA's name but its own key: names match, signature does not
    impostor = pki.issue("impostor", subject=ca.cert.subject, key=leaf_key, is_ca=True,
                         client=False)
    assert impostor.cert.subject == ca.cert.subject
    leaf = pki.issue("client", issuer=impostor, bits=1024)
    assert leaf.cert.issuer == ca.cert.subject
    assert not pki.verify_issued_by(leaf.cert, ca.cert)


def test_pem_der_round_trips(tmp_path: Path, ca: pki.Issued, leaf_key: rsa.RSAPrivateKey) -> None:
    leaf = pki.issue("round trip", issuer=ca, key=leaf_key)
    assert x509.load_pem_x509_certificate(leaf.cert_pem()) == leaf.cert
    assert x509.load_der_x509_certificate(leaf.cert_der()) == leaf.cert
    cert_path, key_path = leaf.write(tmp_path / "sub", "client")
    assert cert_path.name == "client-cert.pem"
    assert key_path.name == "client-key.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert pki.load_cert(cert_path) == leaf.cert
    key = pki.load_key(key_path)
    assert pki.key_matches(leaf.cert, key)
    der_path = tmp_path / "client.der"
    der_path.write_bytes(leaf.cert_der())
    assert pki.load_cert(der_path) == leaf.cert
    der_key = tmp_path / "client.key.der"
    der_key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert pki.key_matches(leaf.cert, pki.load_key(der_key))
    again = pki.load_issued(cert_path, key_path)
    assert again.fingerprint() == leaf.fingerprint()
    with pytest.raises(ValueError, match="not the private key"):
        pki.load_issued(cert_path, ca.write(tmp_path, "ca")[1])


def test_write_tightens_existing_key_file(tmp_path: Path, ca: pki.Issued) -> None:
    (tmp_path / "ca-key.pem").write_text("old")
    (tmp_path / "ca-key.pem").chmod(0o644)
    _, key_path = ca.write(tmp_path, "ca")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert b"old" not in key_path.read_bytes()


def test_fingerprint_is_sha256_of_der(ca: pki.Issued) -> None:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(ca.cert_der())
    expected = "SHA256:" + digest.finalize().hex()
    assert ca.fingerprint() == expected == pki.describe(ca.cert)["fingerprint"]
    assert pki.fingerprint(ca.cert_der()) == expected


@pytest.mark.parametrize("role", ["ReadWrite", "ReadOnly", "Operätor", "x" * 200])
def test_modbus_role_extension(ca: pki.Issued, leaf_key: rsa.RSAPrivateKey, role: str) -> None:
    leaf = pki.issue("operator", issuer=ca, key=leaf_key, modbus_role=role)
    ext = leaf.cert.extensions.get_extension_for_oid(pki.MODBUS_ROLE_OID)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    raw = ext.value.value
    encoded = role.encode()
    assert raw[0] == 0x0C  # UTF8String
    assert raw.endswith(encoded)
    if len(encoded) < 128:
        assert raw == bytes([0x0C, len(encoded)]) + encoded
    else:
        assert raw[1] == 0x81
        assert raw[2] == len(encoded)
    assert pki.modbus_role_of(leaf.cert) == role == leaf.role
    assert pki.describe(leaf.cert)["modbus_role"] == role


def test_no_role_extension_by_default(ca: pki.Issued, leaf_key: rsa.RSAPrivateKey) -> None:
    leaf = pki.issue("plain", issuer=ca, key=leaf_key)
    with pytest.raises(x509.ExtensionNotFound):
        leaf.cert.extensions.get_extension_for_oid(pki.MODBUS_ROLE_OID)
    assert pki.modbus_role_of(leaf.cert) is None


def test_expiry_windows(ca: pki.Issued, leaf_key: rsa.RSAPrivateKey) -> None:
    now = dt.datetime.now(UTC)
    expired = pki.issue(
        "expired",
        issuer=ca,
        key=leaf_key,
        not_before=now - dt.timedelta(days=10),
        not_after=now - dt.timedelta(days=1),
    )
    assert expired.cert.not_valid_after_utc < now
    expired.cert.verify_directly_issued_by(ca.cert)  # signed by the trusted CA all the same
    future = pki.issue(
        "future",
        issuer=ca,
        key=leaf_key,
        not_before=now + dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=9),
    )
    assert future.cert.not_valid_before_utc > now
    info = pki.describe(future.cert)
    assert dt.datetime.fromisoformat(info["not_before"]) > now
    default = pki.issue("default", issuer=ca, key=leaf_key)
    assert default.cert.not_valid_before_utc <= now <= default.cert.not_valid_after_utc
    # seconds resolution: the certificate stores whole seconds
    start = now.replace(microsecond=0) - dt.timedelta(hours=1)
    exact = pki.issue(
        "exact", key=leaf_key, not_before=start, not_after=start + dt.timedelta(hours=2)
    )
    assert exact.cert.not_valid_before_utc == start
    assert exact.cert.not_valid_after_utc == start + dt.timedelta(hours=2)


def test_validity_errors(leaf_key: rsa.RSAPrivateKey) -> None:
    now = dt.datetime.now(UTC)
    with pytest.raises(ValueError, match="not_after"):
        pki.issue("bad", key=leaf_key, not_before=now, not_after=now)
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.issue("bad", key=leaf_key, not_before=dt.datetime(2020, 1, 1))
    with pytest.raises(ValueError, match="hash_name"):
        pki.issue("bad", key=leaf_key, hash_name="md5")
    with pytest.raises(ValueError, match="san_ips"):
        pki.issue("bad", key=leaf_key, san_ips=["not-an-ip"])
    with pytest.raises(ValueError, match="valid_days"):
        pki.make_ca("bad", valid_days=0)


def test_sans_and_usages(ca: pki.Issued, leaf_key: rsa.RSAPrivateKey) -> None:
    leaf = pki.issue(
        "opcua app",
        issuer=ca,
        key=leaf_key,
        san_uris=["urn:harness:client"],
        san_dns=["localhost"],
        san_ips=["127.0.0.1", "::1"],
        client=True,
        server=True,
    )
    info = pki.describe(leaf.cert)
    assert info["san_uris"] == ["urn:harness:client"]
    assert info["san_dns"] == ["localhost"]
    assert info["san_ips"] == ["127.0.0.1", "::1"]
    ku = leaf.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.content_commitment
    assert ku.key_encipherment
    assert ku.data_encipherment
    assert not ku.key_cert_sign
    eku = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    no_eku = pki.issue("no eku", key=leaf_key, client=False)
    with pytest.raises(x509.ExtensionNotFound):
        no_eku.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    with pytest.raises(x509.ExtensionNotFound):
        no_eku.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize("hash_name", ["sha1", "sha384"])
def test_signature_hash(ca: pki.Issued, leaf_key: rsa.RSAPrivateKey, hash_name: str) -> None:
    # cryptography's verify_directly_issued_by refuses SHA-1, so verify_issued_by is used
    leaf = pki.issue("hashed", issuer=ca, key=leaf_key, hash_name=hash_name)
    assert pki.describe(leaf.cert)["signature_hash"] == hash_name
    assert pki.verify_issued_by(leaf.cert, ca.cert)
    assert not pki.verify_issued_by(leaf.cert, pki.make_ca("unit test CA", bits=1024).cert)
    assert pki.modbus_role_of(leaf.cert) is None
    own = pki.issue("self hashed", key=leaf_key, hash_name=hash_name, modbus_role="ReadOnly")
    assert pki.verify_issued_by(own.cert, own.cert)
    assert pki.describe(own.cert)["self_signed"] is True
    assert pki.describe(own.cert)["signature_hash"] == hash_name
    assert own.role == "ReadOnly"  # extensions survive the hand re-signing


def test_ec_issuer_like_the_modbus_simulator() -> None:
    # the Modbus/TCP Security simulator's CA is EC P-256: sign RSA leaves with it, SHA-256 and SHA-1
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = pki.issue("ec CA", key=ca_key, is_ca=True, client=False)
    assert pki.describe(ca.cert)["curve"] == "secp256r1"
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert not ku.key_encipherment
    for hash_name in ("sha256", "sha1"):
        leaf = pki.issue("rw", issuer=ca, bits=1024, modbus_role="ReadWrite", hash_name=hash_name)
        assert pki.verify_issued_by(leaf.cert, ca.cert)
        if hash_name == "sha256":
            leaf.cert.verify_directly_issued_by(ca.cert)
        assert pki.describe(leaf.cert)["signature_hash"] == hash_name
        assert leaf.role == "ReadWrite"
    ec_leaf = pki.issue("ec leaf", issuer=ca, key=ec.generate_private_key(ec.SECP256R1()))
    ku = ec_leaf.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert not ku.key_encipherment
    assert not ku.data_encipherment


def test_ed25519_signer() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    own = pki.issue("ed", key=key)
    own.cert.verify_directly_issued_by(own.cert)
    assert pki.describe(own.cert)["signature_hash"] is None
    with pytest.raises(ValueError, match="no hash choice"):
        pki.issue("ed", key=key, hash_name="sha1")


def test_describe_is_json_serialisable(ca: pki.Issued) -> None:
    import json

    info = pki.describe(ca.cert)
    assert json.loads(json.dumps(info)) == info
    assert info["serial"] == format(ca.cert.serial_number, "x")
    assert "CN=unit test CA" in info["subject"]
    assert info["subject"] == info["issuer"]
