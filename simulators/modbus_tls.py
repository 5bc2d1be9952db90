"""Modbus/TCP Security PLC simulator: MBAP over mutually authenticated TLS, roles from X.509.

``python -m simulators.modbus_tls [--host H] [--port P] [--unit N] [--posture hardened|weak]
[--weakness NAME]... [--config FILE.json] [--scan-period-ms N] [--state-dir D]``

At start it generates, with ``cryptography``, a test CA and a server certificate signed by it
(EC P-256) into the state folder, and reports them so the harness can mint its own client
certificates with that CA: ready line endpoints ``{"mbtls": {"host", "port", "unit",
"ca_cert", "ca_key", "server_cert"}}`` (paths to PEM files, removed when the simulator stops).

Hardened behaviour:

- TLS 1.2 or newer only; a client certificate is REQUIRED and verified against the CA;
- the role comes from the X.509 extension OID 1.3.6.1.4.1.50316.802.1 (non-critical, a DER
  UTF8String): ``ReadWrite`` may write, ``ReadOnly``, a missing or unknown role may only read;
  a write from a read-only connection gets exception 01 (as the Modbus/TCP Security
  specification prescribes for an authorization failure);
- writes touching the protected ranges get exception 02 whatever the role;
- unit ids, MBAP checks, pipelining and the connection limit as in
  :mod:`simulators.modbus_tcp` (the TLS connection counts once its handshake is done).

Weaknesses: ``mbtls.accepts_untrusted_certs`` (no client certificate is requested or verified:
any client connects, and, having no role, reads), ``mbtls.no_role_check`` (every connection may
write), ``mbtls.legacy_tls`` (TLS 1.0 and 1.1 accepted, at OpenSSL security level 0),
``modbus.unprotected_writes``, ``load.fragile``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import ipaddress
import os
import ssl
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from simulators import common
from simulators.modbus_pdu import PduEngine, PduPolicy
from simulators.modbus_tcp import (
    TCP_DIRECT_UNIT,
    ModbusTcpServer,
    add_unit_argument,
    check_unit,
    plc_for,
    stop_event,
)

NAME = "modbus_tls"

WEAKNESSES = (
    "mbtls.accepts_untrusted_certs",
    "mbtls.no_role_check",
    "mbtls.legacy_tls",
    "modbus.unprotected_writes",
    "load.fragile",
)

#: The Modbus/TCP Security role extension.
ROLE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.50316.802.1")
ROLE_READ_ONLY = "ReadOnly"
ROLE_READ_WRITE = "ReadWrite"

#: Seconds a client has to finish the TLS handshake.
HANDSHAKE_TIMEOUT_S = 5.0


def decode_der_utf8string(raw: bytes) -> str | None:
    """The text of a DER UTF8String, or None if ``raw`` is not exactly one."""
    if len(raw) < 2 or raw[0] != 0x0C:
        return None
    length, offset = raw[1], 2
    if length & 0x80:
        n = length & 0x7F
        if not 1 <= n <= 2 or len(raw) < 2 + n:
            return None
        length, offset = int.from_bytes(raw[2 : 2 + n], "big"), 2 + n
    if len(raw) != offset + length:
        return None
    try:
        return raw[offset:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def role_of(cert_der: bytes | None) -> str:
    """The Modbus role of a DER certificate: ``ReadWrite`` only if its role extension says so
    exactly; anything else (no certificate, no extension, unknown value) is ``ReadOnly``."""
    if not cert_der:
        return ROLE_READ_ONLY
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        ext = cert.extensions.get_extension_for_oid(ROLE_OID)
    except (ValueError, x509.ExtensionNotFound):
        return ROLE_READ_ONLY
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    return ROLE_READ_WRITE if decode_der_utf8string(raw) == ROLE_READ_WRITE else ROLE_READ_ONLY


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def generate_pki(state_dir: str, host: str) -> dict[str, str]:
    """Write a test CA and a server certificate for ``host`` into ``state_dir``.

    :returns: paths ``ca_cert``, ``ca_key``, ``server_cert``, ``server_key``.
    """
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Harness Sim"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Harness Sim Modbus/TCP Security test CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        host_ip = ipaddress.ip_address(host)
        if x509.IPAddress(host_ip) not in names:
            names.append(x509.IPAddress(host_ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Harness Sim"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "hsim-plc modbus/tcp security"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca_cert": os.path.join(state_dir, "mbtls-ca.pem"),
        "ca_key": os.path.join(state_dir, "mbtls-ca.key"),
        "server_cert": os.path.join(state_dir, "mbtls-server.pem"),
        "server_key": os.path.join(state_dir, "mbtls-server.key"),
    }
    pem = serialization.Encoding.PEM
    key_format = serialization.PrivateFormat.PKCS8
    for key_name, key in (("ca_key", ca_key), ("server_key", server_key)):
        _write_private(
            paths[key_name],
            key.private_bytes(pem, key_format, serialization.NoEncryption()),
        )
    with open(paths["ca_cert"], "wb") as fh:
        fh.write(ca_cert.public_bytes(pem))
    with open(paths["server_cert"], "wb") as fh:
        fh.write(server_cert.public_bytes(pem))
    return paths


def _remove_files(paths: dict[str, str]) -> None:
    for path in paths.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def server_context(paths: dict[str, str], *, verify_clients: bool, legacy: bool) -> ssl.SSLContext:
    """The TLS context of the simulator."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(paths["server_cert"], paths["server_key"])
    if legacy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify_clients:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=paths["ca_cert"])
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _peer_cert(transport: asyncio.BaseTransport) -> bytes | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) else None


async def _serve(args: common.SimArgs) -> str | None:
    """Run until SIGTERM; return an error message if the simulator cannot start."""
    stop = stop_event()
    loop = asyncio.get_running_loop()
    unit = int(args.extra["unit"])
    paths = generate_pki(args.state_dir, args.host)
    atexit.register(_remove_files, paths)
    ctx = server_context(
        paths,
        verify_clients=not args.has("mbtls.accepts_untrusted_certs"),
        legacy=args.has("mbtls.legacy_tls"),
    )
    plc = plc_for(args)
    engine = PduEngine(plc, PduPolicy(protect_ranges=not args.has("modbus.unprotected_writes")))
    no_role_check = args.has("mbtls.no_role_check")

    def may_write(transport: asyncio.BaseTransport) -> bool:
        return no_role_check or role_of(_peer_cert(transport)) == ROLE_READ_WRITE

    server = ModbusTcpServer(
        plc,
        engine,
        units=frozenset({unit, TCP_DIRECT_UNIT}),
        connection_limit=args.config.connection_limit,
        crash_on_malformed=False,
        write_permission=may_write,
    )
    try:
        listener = await loop.create_server(
            server.protocol,
            args.host,
            args.port,
            backlog=128,
            ssl=ctx,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
        )
    except OSError as exc:
        return f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
    port = listener.sockets[0].getsockname()[1]
    plc.start()
    common.ready(
        NAME,
        {
            "mbtls": {
                "host": args.host,
                "port": port,
                "unit": unit,
                "ca_cert": paths["ca_cert"],
                "ca_key": paths["ca_key"],
                "server_cert": paths["server_cert"],
            }
        },
        args.weaknesses,
    )
    try:
        await stop.wait()
    finally:
        listener.close()
        server.close_all()
        await listener.wait_closed()
        plc.stop()
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m simulators.modbus_tls``."""
    args = common.parse_args(NAME, WEAKNESSES, argv, add_arguments=add_unit_argument)
    check_unit(NAME, int(args.extra["unit"]))
    error = asyncio.run(_serve(args))
    if error is not None:
        common.fail(NAME, error)


if __name__ == "__main__":
    main()
