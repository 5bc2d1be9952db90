"""Modbus/TCP Security simulator: mutual TLS, roles from X.509, and each weakness.

The client is Python's ``ssl`` with a raw MBAP exchange; client certificates come from the
``mint_client_cert`` reference helper (conftest), which is itself tested here.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from simulators.modbus_tls import decode_der_utf8string, role_of

pytestmark = pytest.mark.timeout(60)

REPLY_TIMEOUT_S = 3.0
ROLE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.50316.802.1")
Mint = Callable[..., tuple[str, str]]


def adu(tid: int, pdu: bytes, unit: int = 1) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def exc(fc: int, code: int) -> bytes:
    return bytes((fc | 0x80, code))


def client_context(
    ca_cert: str, cert: tuple[str, str] | None, version: ssl.TLSVersion | None = None
) -> ssl.SSLContext:
    """A client context that verifies the simulator against its CA and shows ``cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=ca_cert)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = version
            ctx.maximum_version = version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


class TlsModbus:
    """One Modbus/TCP Security connection."""

    def __init__(self, ep: dict[str, Any], ctx: ssl.SSLContext) -> None:
        raw = socket.create_connection((ep["host"], ep["port"]), timeout=REPLY_TIMEOUT_S)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname=ep["host"])
        except BaseException:
            raw.close()
            raise
        self.tid = 0

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed by the simulator")
            buf += chunk
        return buf

    def reply(self) -> tuple[int, bytes]:
        tid, _proto, length, _unit = struct.unpack(">HHHB", self._recv_exact(7))
        return tid, self._recv_exact(length - 1)

    def request(self, pdu: bytes) -> bytes:
        self.tid += 1
        self.sock.sendall(adu(self.tid, pdu))
        tid, body = self.reply()
        assert tid == self.tid
        return body

    def read(self, address: int, count: int = 1) -> list[int]:
        body = self.request(struct.pack(">BHH", 3, address, count))
        assert body[:2] == bytes((3, 2 * count)), f"read failed: {body!r}"
        return list(struct.unpack(f">{count}H", body[2:]))


def refused(ep: dict[str, Any], ctx: ssl.SSLContext) -> bool:
    """True if the simulator refuses the session (at handshake or at the first exchange,
    as TLS 1.3 reports a rejected client certificate after the client's handshake ends)."""
    try:
        conn = TlsModbus(ep, ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        conn.read(100)
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        conn.close()
    return False


def ep_of(event: dict[str, Any]) -> dict[str, Any]:
    return dict(event["endpoints"]["mbtls"])


@pytest.fixture(scope="module")
def hardened(start_simulator_module: Any) -> dict[str, Any]:
    return start_simulator_module("modbus_tls")  # type: ignore[no-any-return]


# -- the reference certificate helper -------------------------------------------------------
@pytest.mark.parametrize("role", ["ReadWrite", "ReadOnly", "Admin"])
def test_minted_cert_carries_the_role_and_chains_to_the_ca(
    hardened: dict[str, Any], mint_client_cert: Mint, role: str
) -> None:
    ep = ep_of(hardened)
    cert_path, key_path = mint_client_cert(ep["ca_cert"], ep["ca_key"], role=role)
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    ca = x509.load_pem_x509_certificate(Path(ep["ca_cert"]).read_bytes())
    cert.verify_directly_issued_by(ca)
    ext = cert.extensions.get_extension_for_oid(ROLE_OID)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x0c" + bytes((len(role),)) + role.encode()
    assert Path(key_path).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_minted_cert_without_role_or_ca(mint_client_cert: Mint) -> None:
    cert_path, _ = mint_client_cert(None, None, role=None, common_name="stranger")
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(ROLE_OID)


def test_simulator_role_parser_agrees_with_minted_certs(
    hardened: dict[str, Any], mint_client_cert: Mint
) -> None:
    ep = ep_of(hardened)

    def role(value: str | None) -> str:
        cert_path, _ = mint_client_cert(ep["ca_cert"], ep["ca_key"], role=value)
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        from cryptography.hazmat.primitives.serialization import Encoding

        return role_of(cert.public_bytes(Encoding.DER))

    assert role("ReadWrite") == "ReadWrite"
    assert role("ReadOnly") == "ReadOnly"
    assert role("readwrite") == "ReadOnly"
    assert role(None) == "ReadOnly"
    assert role_of(None) == "ReadOnly"
    assert decode_der_utf8string(b"\x0c\x81\x03abc") == "abc"
    assert decode_der_utf8string(b"\x0c\x04abc") is None
    assert decode_der_utf8string(b"\x13\x03abc") is None  # PrintableString, not UTF8String


# -- process contract -------------------------------------------------------------------------
def test_ready_line_reports_tls_endpoint_and_pki(hardened: dict[str, Any]) -> None:
    ep = ep_of(hardened)
    assert set(ep) == {"host", "port", "unit", "ca_cert", "ca_key", "server_cert"}
    ca = x509.load_pem_x509_certificate(Path(ep["ca_cert"]).read_bytes())
    server = x509.load_pem_x509_certificate(Path(ep["server_cert"]).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    assert os.stat(ep["ca_key"]).st_mode & 0o077 == 0, "CA key readable by others"


def test_weak_posture_lists_its_weaknesses(start_simulator: Any) -> None:
    event = start_simulator("modbus_tls", "--posture", "weak")
    assert event["weaknesses"] == sorted(
        [
            "mbtls.accepts_untrusted_certs",
            "mbtls.no_role_check",
            "mbtls.legacy_tls",
            "modbus.unprotected_writes",
            "load.fragile",
        ]
    )


def test_taken_port_exits_2(start_simulator: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        event, rc = start_simulator.expect_error("modbus_tls", "--port", str(port))
    assert rc == 2
    assert event is not None
    assert event["event"] == "error"


def test_sigterm_exits_0_and_removes_the_pki(start_simulator: Any) -> None:
    event = start_simulator("modbus_tls")
    ep = ep_of(event)
    files = [ep["ca_cert"], ep["ca_key"], ep["server_cert"]]
    assert all(os.path.exists(f) for f in files)
    assert start_simulator.stop(event) == 0
    assert not any(os.path.exists(f) for f in files)
    assert not os.path.exists(os.path.dirname(ep["ca_cert"]))


# -- hardened ------------------------------------------------------------------------------
def test_read_write_role_reads_and_writes_scratch(
    hardened: dict[str, Any], mint_client_cert: Mint
) -> None:
    ep = ep_of(hardened)
    ctx = client_context(
        ep["ca_cert"], mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadWrite")
    )
    conn = TlsModbus(ep, ctx)
    try:
        assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert conn.read(200) == [4000]
        assert conn.request(struct.pack(">BHH", 6, 107, 555)) == struct.pack(">BHH", 6, 107, 555)
        assert conn.read(107) == [555]
        assert conn.request(struct.pack(">BHH", 6, 107, 1007)) == struct.pack(">BHH", 6, 107, 1007)
        # protected ranges stay closed to every role
        assert conn.request(struct.pack(">BHH", 6, 205, 1)) == exc(6, 2)
        assert conn.request(struct.pack(">BHH", 5, 203, 0)) == exc(5, 2)
        assert conn.read(205) == [4005]
    finally:
        conn.close()


@pytest.mark.parametrize("role", ["ReadOnly", None, "Admin"])
def test_other_roles_read_but_cannot_write(
    hardened: dict[str, Any], mint_client_cert: Mint, role: str | None
) -> None:
    ep = ep_of(hardened)
    ctx = client_context(ep["ca_cert"], mint_client_cert(ep["ca_cert"], ep["ca_key"], role=role))
    conn = TlsModbus(ep, ctx)
    try:
        assert conn.read(100) == [1000]
        assert conn.request(struct.pack(">BHH", 6, 100, 1)) == exc(6, 1)
        assert conn.request(struct.pack(">BHHBH", 16, 100, 1, 2, 1)) == exc(16, 1)
        assert conn.request(struct.pack(">BHH", 5, 100, 0xFF00)) == exc(5, 1)
        assert conn.read(100) == [1000]
    finally:
        conn.close()


def test_hardened_requires_a_trusted_client_certificate(
    hardened: dict[str, Any], mint_client_cert: Mint
) -> None:
    ep = ep_of(hardened)
    stranger = mint_client_cert(None, None, role="ReadWrite", common_name="stranger")
    assert refused(ep, client_context(ep["ca_cert"], None))
    assert refused(ep, client_context(ep["ca_cert"], stranger))
    # and the device still serves a trusted client afterwards
    good = mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadOnly")
    assert not refused(ep, client_context(ep["ca_cert"], good))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_hardened_refuses_legacy_tls(
    hardened: dict[str, Any], mint_client_cert: Mint, version: ssl.TLSVersion
) -> None:
    ep = ep_of(hardened)
    cert = mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadWrite")
    assert refused(ep, client_context(ep["ca_cert"], cert, version))
    assert not refused(ep, client_context(ep["ca_cert"], cert, ssl.TLSVersion.TLSv1_2))


def test_pipelined_requests_over_tls(hardened: dict[str, Any], mint_client_cert: Mint) -> None:
    ep = ep_of(hardened)
    ctx = client_context(
        ep["ca_cert"], mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadOnly")
    )
    conn = TlsModbus(ep, ctx)
    try:
        conn.sock.sendall(
            b"".join(adu(i, struct.pack(">BHH", 3, 100 + i % 10, 1)) for i in range(16))
        )
        for i in range(16):
            assert conn.reply() == (i, bytes((3, 2)) + struct.pack(">H", 1000 + i % 10))
    finally:
        conn.close()


# -- weaknesses ---------------------------------------------------------------------------
def test_accepts_untrusted_certs(start_simulator: Any, mint_client_cert: Mint) -> None:
    event = start_simulator("modbus_tls", "--weakness", "mbtls.accepts_untrusted_certs")
    ep = ep_of(event)
    stranger = mint_client_cert(None, None, role="ReadWrite", common_name="stranger")
    for cert in (None, stranger):
        conn = TlsModbus(ep, client_context(ep["ca_cert"], cert))
        try:
            assert conn.read(100) == [1000]
            # no certificate is even requested, so no role: still read-only
            assert conn.request(struct.pack(">BHH", 6, 100, 1)) == exc(6, 1)
        finally:
            conn.close()


def test_no_role_check_lets_read_only_write(start_simulator: Any, mint_client_cert: Mint) -> None:
    event = start_simulator("modbus_tls", "--weakness", "mbtls.no_role_check")
    ep = ep_of(event)
    cert = mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadOnly")
    conn = TlsModbus(ep, client_context(ep["ca_cert"], cert))
    try:
        assert conn.request(struct.pack(">BHH", 6, 100, 9)) == struct.pack(">BHH", 6, 100, 9)
        assert conn.read(100) == [9]
        assert conn.request(struct.pack(">BHH", 6, 200, 9)) == exc(6, 2)
    finally:
        conn.close()
    # still mutual TLS: an untrusted client is refused
    assert refused(ep, client_context(ep["ca_cert"], None))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_legacy_tls_accepts_old_versions(
    start_simulator: Any, mint_client_cert: Mint, version: ssl.TLSVersion
) -> None:
    event = start_simulator("modbus_tls", "--weakness", "mbtls.legacy_tls")
    ep = ep_of(event)
    cert = mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadOnly")
    conn = TlsModbus(ep, client_context(ep["ca_cert"], cert, version))
    try:
        assert (
            conn.sock.version()
            == {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]
        )
        assert conn.read(100) == [1000]
    finally:
        conn.close()


def test_unprotected_writes_over_tls(start_simulator: Any, mint_client_cert: Mint) -> None:
    event = start_simulator("modbus_tls", "--weakness", "modbus.unprotected_writes")
    ep = ep_of(event)
    cert = mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadWrite")
    conn = TlsModbus(ep, client_context(ep["ca_cert"], cert))
    try:
        assert conn.request(struct.pack(">BHH", 6, 200, 9)) == struct.pack(">BHH", 6, 200, 9)
        assert conn.read(200) == [9]
    finally:
        conn.close()
    # the role check still applies
    ro = mint_client_cert(ep["ca_cert"], ep["ca_key"], role="ReadOnly")
    conn = TlsModbus(ep, client_context(ep["ca_cert"], ro))
    try:
        assert conn.request(struct.pack(">BHH", 6, 201, 9)) == exc(6, 1)
    finally:
        conn.close()
