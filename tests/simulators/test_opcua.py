"""OPC UA simulator: hardened behaviour and each weakness, seen through the asyncua client.

One hardened server starts first (it makes the address-space cache), then one server per
single weakness and one ``--posture weak`` server start in parallel from that cache. The same
probe, a fixed list of observations made with the asyncua client, runs against every server;
each weakness must change exactly the observations it names and nothing else. Client
certificates are minted here with cryptography.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies as sp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

pytestmark = pytest.mark.timeout(150)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Seconds every simulator of the fleet has to get ready (they start together on a shared CPU).
FLEET_READY_S = 90.0
#: Seconds an asyncua request may take before it counts as unanswered.
REQUEST_TIMEOUT_S = 10.0
#: Servers probed at once: each probe holds sessions that must not idle out while the CPU is
#: shared with the other probes (and, under xdist, with other test modules).
PROBES_AT_ONCE = 4

ADMIN = ("admin", "Adm1n-Test-Pass!")
OPERATOR = ("operator", "Op3rator-Test-Pass!")
VIEWER = ("viewer", "V1ewer-Test-Pass!")
LOCKTEST = ("locktest", "L0ckTest-Test-Pass!")
CONFIG: dict[str, Any] = {
    "accounts": [
        {"user": ADMIN[0], "password": ADMIN[1], "role": "admin"},
        {"user": OPERATOR[0], "password": OPERATOR[1], "role": "operator"},
        {"user": VIEWER[0], "password": VIEWER[1], "role": "readonly"},
        {"user": LOCKTEST[0], "password": LOCKTEST[1], "role": "operator"},
    ],
    "session_limit": 2,
    "idle_timeout_s": 3.0,
    "lockout_threshold": 2,
    "lockout_duration_s": 2.0,
    "fragile_threshold_rps": 20.0,
    "fragile_recovery_s": 1.0,
}

WEAKNESSES = (
    "opcua.policy_none", "opcua.deprecated_policies", "opcua.weak_server_cert",
    "opcua.anonymous", "opcua.accepts_untrusted_certs", "opcua.no_authz",
    "opcua.no_session_limit", "opcua.no_session_timeout", "opcua.no_lockout",
    "opcua.user_enumeration", "opcua.no_audit", "opcua.no_hello_timeout", "load.fragile",
)

SECURE_ENDPOINTS = [
    ("Aes128_Sha256_RsaOaep", "Sign"), ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
    ("Aes256_Sha256_RsaPss", "Sign"), ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
    ("Basic256Sha256", "Sign"), ("Basic256Sha256", "SignAndEncrypt"),
]
DEPRECATED_ENDPOINTS = [
    ("Basic128Rsa15", "Sign"), ("Basic128Rsa15", "SignAndEncrypt"),
    ("Basic256", "Sign"), ("Basic256", "SignAndEncrypt"),
]

#: What the probe must see on the hardened server.
HARDENED: dict[str, Any] = {
    "endpoints": sorted(SECURE_ENDPOINTS),
    "cleartext_password_endpoint": False,
    "anonymous_token_offered": False,
    "server_cert": (2048, "sha256"),
    "none_channel_login": "BadSecurityChecksFailed",
    "deprecated_channel_login": "BadSecurityPolicyRejected",
    "anonymous_login": "BadIdentityTokenRejected",
    "untrusted_cert_login": "BadCertificateUntrusted",
    "expired_cert_login": "BadCertificateTimeInvalid",
    "wrong_password_login": "BadUserAccessDenied",
    "unknown_user_login": "BadUserAccessDenied",
    "readonly_write": "BadUserAccessDenied",
    "third_session": "BadTooManySessions",
    "first_session_after_refusal": "Good",
    "revised_session_timeout_ms": 3000.0,
    "idle_session_read": "BadSessionNotActivated",
    "locked_login": "BadUserAccessDenied",
    "heartbeat_after_flood": "advances",
    "auditing_flag": True,
    "failed_login_audit": ("AuditActivateSessionEventType", False, ADMIN[0],
                           "BadUserAccessDenied"),
    "unfinished_hello": "closed",
}

#: The observations each weakness changes, with their values on the weak server.
CHANGES: dict[str, dict[str, Any]] = {
    "opcua.policy_none": {
        "endpoints": sorted([*SECURE_ENDPOINTS, ("None", "None_")]),
        "cleartext_password_endpoint": True,
        "none_channel_login": "Good",
    },
    "opcua.deprecated_policies": {
        "endpoints": sorted(SECURE_ENDPOINTS + DEPRECATED_ENDPOINTS),
        "deprecated_channel_login": "Good",
    },
    "opcua.weak_server_cert": {"server_cert": (1024, "sha1")},
    "opcua.anonymous": {"anonymous_token_offered": True, "anonymous_login": "Good"},
    "opcua.accepts_untrusted_certs": {"untrusted_cert_login": "Good", "expired_cert_login": "Good"},
    "opcua.no_authz": {"readonly_write": "Good"},
    "opcua.no_session_limit": {"third_session": "Good"},
    "opcua.no_session_timeout": {"revised_session_timeout_ms": 86_400_000.0,
                                 "idle_session_read": "Good"},
    "opcua.no_lockout": {"locked_login": "Good"},
    "opcua.user_enumeration": {"unknown_user_login": "BadIdentityTokenInvalid"},
    "opcua.no_audit": {"failed_login_audit": None},
    "opcua.no_hello_timeout": {"unfinished_hello": "kept"},
    "load.fragile": {"heartbeat_after_flood": "stalled"},
}
#: Seconds a probe waits for the audit event of a refused login.
AUDIT_WAIT_S = 3.0


# -- certificates minted by the test (independent of the simulator's code) ------------------
def _write_pem(path: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> tuple[str, str]:
    key_path = path.with_suffix(".key.pem")
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(path), str(key_path)


def mint(path: Path, uri: str, *, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
         valid_from: dt.timedelta = dt.timedelta(hours=-1),
         valid_to: dt.timedelta = dt.timedelta(days=1), ca: bool = False,
         ) -> tuple[x509.Certificate, rsa.RSAPrivateKey, tuple[str, str]]:
    """An RSA 2048 application certificate for ``uri``, self-signed or signed by ``issuer``."""
    key = rsa.generate_private_key(65537, 2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, path.stem)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + valid_from).not_valid_after(now + valid_to)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = (
            builder.add_extension(x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=True, key_encipherment=True,
                data_encipherment=True, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    return cert, key, _write_pem(path, cert, key)


# -- a fleet of simulators started in parallel ----------------------------------------------
class Fleet:
    """Simulators started together; every one is SIGTERMed (and must exit 0) at :meth:`close`."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.events: dict[str, dict[str, Any]] = {}

    def start(self, variants: dict[str, list[str]]) -> None:
        """Start ``python -m simulators.opcua ARGS`` per variant and wait for all ready lines."""
        for name, args in variants.items():
            with open(self.log_dir / f"{name}.stderr", "wb") as err:
                self.procs[name] = subprocess.Popen(
                    [sys.executable, "-m", "simulators.opcua", *args], cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        buffers = dict.fromkeys(variants, b"")
        deadline = time.monotonic() + FLEET_READY_S
        with selectors.DefaultSelector() as sel:
            for name in variants:
                stdout = self.procs[name].stdout
                assert stdout is not None
                sel.register(stdout.fileno(), selectors.EVENT_READ, name)
            while missing := sorted(set(variants) - set(self.events)):
                remaining = deadline - time.monotonic()
                ready = sel.select(remaining) if remaining > 0 else []
                if not ready:
                    pytest.fail(f"simulators not ready in {FLEET_READY_S} s: {missing}")
                for key, _ in ready:
                    name = key.data
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        pytest.fail(f"simulator {name} exited before ready: "
                                    f"{(self.log_dir / f'{name}.stderr').read_text()[-2000:]}")
                    buffers[name] += chunk
                    if b"\n" in buffers[name]:
                        sel.unregister(key.fd)
                        self.events[name] = json.loads(buffers[name].split(b"\n", 1)[0])

    def stop(self, name: str, *, signalled: bool = False) -> int:
        """SIGTERM one simulator (unless ``signalled``), wait, and return its exit status."""
        proc = self.procs[name]
        if proc.poll() is None:
            if not signalled:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
        return int(proc.returncode)

    def close(self) -> None:
        """Stop all (SIGTERM to every one first, then wait); raise if one did not exit 0."""
        running = [name for name, proc in self.procs.items() if proc.poll() is None]
        for name in running:
            self.procs[name].send_signal(signal.SIGTERM)
        bad = {name: rc for name in running if (rc := self.stop(name, signalled=True)) != 0}
        if bad:
            raise AssertionError(f"simulators exited non-zero on SIGTERM: {bad}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """hardened, one server per weakness, and weak posture, all with :data:`CONFIG`.

    The hardened server starts first and makes the address-space cache (in a folder of this
    module, not the user's) that the others then load: it cuts their start from ~2 s of CPU to
    ~0.7 s, and the probes check servers both with and without the cache.
    """
    work = tmp_path_factory.mktemp("opcua")
    config = work / "config.json"
    config.write_text(json.dumps(CONFIG))
    base = ["--config", str(config), "--aspace-cache", str(work / "cache")]
    variants = {"weak": [*base, "--posture", "weak"]}
    variants.update({w: [*base, "--weakness", w] for w in WEAKNESSES})
    fleet = Fleet(work)
    try:
        fleet.start({"hardened": base})
        fleet.start(variants)
        yield fleet
    finally:
        fleet.close()


@pytest.fixture(scope="module")
def hardened(fleet: Fleet) -> dict[str, Any]:
    """Ready-line endpoints of the hardened server."""
    return dict(fleet.events["hardened"]["endpoints"]["opcua"])


@pytest.fixture(scope="module")
def certs(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Client certificates: ``name -> (cert, key)`` PEM paths.

    ``ca_signed*`` are signed with the hardened server's test CA (every server of the fleet has
    its own CA, so they are untrusted elsewhere); the ``*_any`` ones are valid for every server.
    """
    out = tmp_path_factory.mktemp("client-certs")
    ep = fleet.events["hardened"]["endpoints"]["opcua"]
    uri = ep["client_application_uri"]
    ca_cert = x509.load_pem_x509_certificate(Path(ep["ca_cert"]).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(ep["ca_key"]).read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    trusted_ca = (ca_cert, ca_key)
    other_ca_cert, other_ca_key, _ = mint(out / "other_ca.pem", "", issuer=None, ca=True)
    result: dict[str, tuple[str, str]] = {}
    result["self_signed_any"] = mint(out / "self_signed.pem", uri, issuer=None)[2]
    result["unknown_ca"] = mint(out / "unknown_ca.pem", uri,
                                issuer=(other_ca_cert, other_ca_key))[2]
    result["ca_signed"] = mint(out / "ca_signed.pem", uri, issuer=trusted_ca)[2]
    result["ca_signed_wrong_uri"] = mint(out / "wrong_uri.pem", "urn:somebody:else",
                                         issuer=trusted_ca)[2]
    result["ca_signed_expired"] = mint(out / "expired.pem", uri, issuer=trusted_ca,
                                       valid_from=dt.timedelta(days=-30),
                                       valid_to=dt.timedelta(days=-1))[2]
    result["ca_signed_not_yet_valid"] = mint(out / "not_yet.pem", uri, issuer=trusted_ca,
                                             valid_from=dt.timedelta(days=1),
                                             valid_to=dt.timedelta(days=30))[2]
    result["expired_any"] = mint(out / "expired_any.pem", uri, issuer=None,
                                 valid_from=dt.timedelta(days=-30),
                                 valid_to=dt.timedelta(days=-1))[2]
    return result


# -- the asyncua client side ---------------------------------------------------------------
_LOADED: dict[tuple[str, str], tuple[x509.Certificate, rsa.RSAPrivateKey]] = {}
_SERVER_CERTS: dict[str, x509.Certificate] = {}


def _load_pair(cert: str, key: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A certificate and key, parsed once (loading an RSA key costs ~50 ms; the probes connect
    a few hundred times)."""
    if (cert, key) not in _LOADED:
        private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None)
        assert isinstance(private, rsa.RSAPrivateKey)
        _LOADED[cert, key] = (x509.load_pem_x509_certificate(Path(cert).read_bytes()), private)
    return _LOADED[cert, key]


def _server_cert(path: str) -> x509.Certificate:
    if path not in _SERVER_CERTS:
        _SERVER_CERTS[path] = x509.load_pem_x509_certificate(Path(path).read_bytes())
    return _SERVER_CERTS[path]


@contextlib.asynccontextmanager
async def session(ep: dict[str, Any], user: tuple[str, str] | None = None, *,
                  cert: tuple[str, str] | None = None, app_uri: str | None = None,
                  policy: type[sp.SecurityPolicy] | None = sp.SecurityPolicyBasic256Sha256,
                  mode: ua.MessageSecurityMode = ua.MessageSecurityMode.SignAndEncrypt,
                  user_cert: tuple[str, str] | None = None) -> AsyncIterator[Client]:
    """A connected asyncua client; no keep-alive reads (so an idle session really is idle)."""
    client = Client(ep["url"], timeout=REQUEST_TIMEOUT_S, watchdog_intervall=3600)
    client.application_uri = app_uri or ep["client_application_uri"]
    if policy is not None:
        # What Client.set_security does, with the certificate and key parsed only once.
        own_cert, own_key = _load_pair(*(cert or (ep["client_cert"], ep["client_key"])))
        client.security_policy = policy(_server_cert(ep["server_cert"]), own_cert, own_key, mode)
        client.uaclient.set_security(client.security_policy)
    if user is not None:
        client.set_user(user[0])
        client.set_password(user[1])
    if user_cert is not None:
        client.user_certificate, client.user_private_key = _load_pair(*user_cert)
    await client.connect()
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def outcome(awaitable: Awaitable[Any]) -> str:
    """``Good``, the name of the Bad status the server answered, or ``refused:<exception>``."""
    try:
        await awaitable
    except ua.UaStatusCodeError as exc:
        return str(ua.StatusCode(exc.code).name)
    except (OSError, TimeoutError, ua.UaError) as exc:
        return f"refused:{type(exc).__name__}"
    return "Good"


async def login(ep: dict[str, Any], user: tuple[str, str] | None = None, **kw: Any) -> str:
    """Outcome of connecting and reading the heartbeat."""
    async def attempt() -> None:
        async with session(ep, user, **kw) as client:
            await client.get_node(ep["nodes"]["heartbeat"]).read_value()
    return await outcome(attempt())


def u16(value: int) -> ua.DataValue:
    """A UInt16 value to write."""
    return ua.DataValue(ua.Variant(value, ua.VariantType.UInt16))


def policy_name(uri: str) -> str:
    """``Basic256Sha256`` from its URI."""
    return uri.rsplit("#", 1)[-1]


#: Audit event fields the tests select: (declaring type, browse name).
AUDIT_SELECT = (
    (ua.ObjectIds.BaseEventType, "EventType"), (ua.ObjectIds.BaseEventType, "SourceName"),
    (ua.ObjectIds.BaseEventType, "SourceNode"), (ua.ObjectIds.BaseEventType, "Message"),
    (ua.ObjectIds.BaseEventType, "Time"), (ua.ObjectIds.AuditEventType, "Status"),
    (ua.ObjectIds.AuditEventType, "ServerId"), (ua.ObjectIds.AuditEventType, "ClientUserId"),
    (ua.ObjectIds.AuditSecurityEventType, "StatusCodeId"),
    (ua.ObjectIds.AuditSessionEventType, "SessionId"),
    (ua.ObjectIds.AuditActivateSessionEventType, "UserIdentityToken"),
)


def audit_filter() -> ua.EventFilter:
    """Select :data:`AUDIT_SELECT` of events ``OfType`` AuditEventType: as OPC UA Part 4 defines
    it, subtypes included (a client that lists every subtype itself is not needed)."""
    evfilter = ua.EventFilter()
    evfilter.SelectClauses = [
        ua.SimpleAttributeOperand(TypeDefinitionId=ua.NodeId(type_id),
                                  BrowsePath=[ua.QualifiedName(name, 0)],
                                  AttributeId=ua.AttributeIds.Value)
        for type_id, name in AUDIT_SELECT]
    evfilter.WhereClause.Elements.append(ua.ContentFilterElement(
        FilterOperator=ua.FilterOperator.OfType,
        FilterOperands=[ua.LiteralOperand(Value=ua.Variant(ua.NodeId(ua.ObjectIds.AuditEventType)))]))
    return evfilter


@contextlib.asynccontextmanager
async def audit_subscription(client: Client) -> AsyncIterator[Any]:
    """An iterator-mode subscription to AuditEventType events on the Server object."""
    sub = await client.create_subscription(50, None, queue_maxsize=64)
    await sub.subscribe_events(client.get_node(ua.ObjectIds.Server), evfilter=audit_filter())
    try:
        yield sub
    finally:
        with contextlib.suppress(Exception):
            await sub.delete()


async def next_audit(sub: Any, wait_s: float) -> dict[str, Any] | None:
    """The next audit event's fields (by browse name), or None when none comes in ``wait_s``."""
    item = await sub.next_event(timeout=wait_s)
    if item is None:
        return None
    return {name: var.Value for name, var in item.event.get_event_props_as_fields_dict().items()}


def audit_summary(fields: dict[str, Any] | None) -> tuple[str, bool, str, str] | None:
    """(event type name, Status, ClientUserId, StatusCodeId name) of an audit event."""
    if fields is None:
        return None
    names = {v: k for k, v in vars(ua.ObjectIds).items() if k.endswith("EventType")}
    kind = fields["EventType"]
    return (names.get(kind.Identifier, str(kind)), fields["Status"], fields["ClientUserId"],
            ua.StatusCode(fields["StatusCodeId"].value).name)


async def probe(ep: dict[str, Any], certs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Every observation of :data:`HARDENED`, made against one server, in a fixed order."""
    seen: dict[str, Any] = {}
    held = asyncio.create_task(unfinished_hello(ep))
    discovery = Client(ep["url"], timeout=REQUEST_TIMEOUT_S)
    endpoints = await discovery.connect_and_get_server_endpoints()
    seen["endpoints"] = sorted((policy_name(e.SecurityPolicyUri), e.SecurityMode.name)
                               for e in endpoints)
    seen["cleartext_password_endpoint"] = any(
        e.SecurityMode == ua.MessageSecurityMode.None_ and any(
            t.TokenType == ua.UserTokenType.UserName
            and policy_name(t.SecurityPolicyUri or "#None") == "None"
            for t in e.UserIdentityTokens)
        for e in endpoints)
    seen["anonymous_token_offered"] = any(t.TokenType == ua.UserTokenType.Anonymous
                                          for e in endpoints for t in e.UserIdentityTokens)
    server_cert = x509.load_der_x509_certificate(endpoints[0].ServerCertificate)
    key = server_cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    hash_alg = server_cert.signature_hash_algorithm
    seen["server_cert"] = (key.key_size, hash_alg.name if hash_alg else None)

    seen["none_channel_login"] = await login(ep, OPERATOR, policy=None)
    seen["deprecated_channel_login"] = await login(ep, OPERATOR,
                                                   policy=sp.SecurityPolicyBasic256)
    seen["anonymous_login"] = await login(ep)
    seen["untrusted_cert_login"] = await login(ep, OPERATOR, cert=certs["self_signed_any"])
    seen["expired_cert_login"] = await login(ep, OPERATOR, cert=certs["expired_any"])
    seen["wrong_password_login"] = await login(ep, (OPERATOR[0], "not-the-password"))
    seen["unknown_user_login"] = await login(ep, ("no-such-user", "not-the-password"))

    async with session(ep, VIEWER) as auditor, audit_subscription(auditor) as sub:
        seen["auditing_flag"] = await auditor.get_node(ua.ObjectIds.Server_Auditing).read_value()
        await login(ep, (ADMIN[0], "not-the-password"))
        seen["failed_login_audit"] = audit_summary(await next_audit(sub, AUDIT_WAIT_S))

    async def readonly_write() -> None:
        async with session(ep, VIEWER) as client:
            node = client.get_node(ep["nodes"]["scratch"][9])
            before = await node.read_value()
            await node.write_value(u16(4321))
            await node.write_value(u16(before))  # reached only when the write was allowed
    seen["readonly_write"] = await outcome(readonly_write())

    async with session(ep, OPERATOR) as first, session(ep, OPERATOR) as second:
        seen["revised_session_timeout_ms"] = float(first.session_timeout)
        for client in (first, second):  # both live and recently active
            await client.get_node(ep["nodes"]["heartbeat"]).read_value()
        seen["third_session"] = await login(ep, OPERATOR)
        seen["first_session_after_refusal"] = await outcome(
            first.get_node(ep["nodes"]["heartbeat"]).read_value())

    for _ in range(2):
        await login(ep, (LOCKTEST[0], "not-the-password"))
    seen["locked_login"] = await login(ep, LOCKTEST)

    async with session(ep, OPERATOR) as idle:
        await asyncio.sleep(2 * CONFIG["idle_timeout_s"])
        seen["idle_session_read"] = await outcome(
            idle.get_node(ep["nodes"]["heartbeat"]).read_value())

    async with session(ep, OPERATOR) as client:
        scratch = client.get_node(ep["nodes"]["scratch"][1])
        heartbeat = client.get_node(ep["nodes"]["heartbeat"])
        for _ in range(100):  # five times the configured fragile rate, within well under 1 s
            await scratch.read_value()
        await asyncio.sleep(0.1)  # let the node catch up with the scan cycle
        first_beat = await heartbeat.read_value()
        await asyncio.sleep(0.3)
        second_beat = await heartbeat.read_value()
        seen["heartbeat_after_flood"] = "advances" if second_beat != first_beat else "stalled"
    seen["unfinished_hello"] = await held
    return seen


def hello(url: str) -> bytes:
    """An OPC UA Hello (OPC 10000-6, 7.1.2.3) for ``url``."""
    raw = url.encode()
    body = struct.pack("<IIIIIi", 0, 65536, 65536, 0, 0, len(raw)) + raw
    return b"HELF" + struct.pack("<I", 8 + len(body)) + body


#: Seconds :func:`unfinished_hello` holds its connection: the Hello timeout (2 s) plus slack,
#: and past the activation timeout (``idle_timeout_s``, 3 s) that must not start before a Hello.
HOLD_S = 4.0


async def unfinished_hello(ep: dict[str, Any]) -> str:
    """``closed`` when the server closes a connection that sent only the start of a Hello
    within :data:`HOLD_S`, else ``kept``."""
    reader, writer = await asyncio.open_connection(ep["host"], ep["port"])
    try:
        writer.write(hello(ep["url"])[:6])
        await writer.drain()
        try:
            got = await asyncio.wait_for(reader.read(64), HOLD_S)
        except TimeoutError:
            return "kept"
        return "closed" if got == b"" else f"answered {got!r}"
    except ConnectionResetError:
        return "closed"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.fixture(scope="module")
def probes(fleet: Fleet, certs: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The probe of every server of the fleet (run concurrently)."""
    async def run_all() -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(PROBES_AT_ONCE)

        async def gated(name: str) -> dict[str, Any]:
            async with gate:
                return await probe(fleet.events[name]["endpoints"]["opcua"], certs)

        return await asyncio.gather(*(gated(name) for name in fleet.events))
    return dict(zip(fleet.events, asyncio.run(run_all()), strict=True))


# -- the proof: hardened, each single weakness, the weak posture ---------------------------
def test_hardened_probe(probes: dict[str, dict[str, Any]]) -> None:
    assert probes["hardened"] == HARDENED


@pytest.mark.parametrize("weakness", WEAKNESSES)
def test_weakness_changes_exactly_its_behaviour(probes: dict[str, dict[str, Any]],
                                                weakness: str) -> None:
    changed = {k: v for k, v in probes[weakness].items() if HARDENED.get(k) != v}
    assert changed == CHANGES[weakness]


def test_weak_posture_has_every_weakness(fleet: Fleet,
                                         probes: dict[str, dict[str, Any]]) -> None:
    assert fleet.events["weak"]["weaknesses"] == sorted(WEAKNESSES)
    expected = dict(HARDENED)
    for change in CHANGES.values():
        expected.update(change)
    expected["endpoints"] = sorted([*SECURE_ENDPOINTS, *DEPRECATED_ENDPOINTS, ("None", "None_")])
    assert probes["weak"] == expected


# -- the hardened server in detail ---------------------------------------------------------
def test_ready_line_contract(fleet: Fleet, hardened: dict[str, Any]) -> None:
    event = fleet.events["hardened"]
    assert event["event"] == "ready" and event["simulator"] == "opcua"
    assert event["weaknesses"] == []
    assert hardened["url"] == f"opc.tcp://127.0.0.1:{hardened['port']}/harness/plc"
    assert hardened["namespace_uri"] == "urn:harness:simulator:plc"
    for name in ("server_cert", "client_cert", "client_key", "ca_cert", "ca_key"):
        assert Path(hardened[name]).is_file(), name
    server_cert = x509.load_pem_x509_certificate(Path(hardened["server_cert"]).read_bytes())
    san = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert hardened["application_uri"] in san.get_values_for_type(x509.UniformResourceIdentifier)
    idx = hardened["namespace_index"]
    assert hardened["nodes"]["heartbeat"] == f"ns={idx};s=PLC.Heartbeat"
    assert hardened["nodes"]["scratch"] == [f"ns={idx};s=PLC.Scratch.{i}" for i in range(10)]
    assert hardened["nodes"]["protected"] == [f"ns={idx};s=PLC.Protected.{i}" for i in range(10)]

    async def check() -> None:
        async with session(hardened, OPERATOR) as client:
            assert (await client.get_namespace_array())[idx] == hardened["namespace_uri"]
            plc = client.get_node(f"ns={idx};s=PLC")
            names = {(await child.read_browse_name()).Name for child in await plc.get_children()}
            assert names == ({"Heartbeat", "Setpoint", "ProcessValue", "Output"}
                             | {f"Scratch.{i}" for i in range(10)}
                             | {f"Protected.{i}" for i in range(10)})
    asyncio.run(check())


def test_heartbeat_increments_and_values_are_uint16(hardened: dict[str, Any]) -> None:
    async def check() -> None:
        async with session(hardened, VIEWER) as client:
            heartbeat = client.get_node(hardened["nodes"]["heartbeat"])
            first = await heartbeat.read_data_value()
            await asyncio.sleep(0.3)
            second = await heartbeat.read_data_value()
            assert first.Value is not None and second.Value is not None
            assert first.Value.VariantType == ua.VariantType.UInt16
            assert second.Value.Value != first.Value.Value
            for key in ("setpoint", "process_value", "output"):
                value = await client.get_node(hardened["nodes"][key]).read_data_value()
                assert value.Value is not None
                assert value.Value.VariantType == ua.VariantType.UInt16, key
    asyncio.run(check())


@pytest.mark.parametrize(("cert", "app_uri", "expected"), [
    ("self_signed_any", None, "BadCertificateUntrusted"),
    ("unknown_ca", None, "BadCertificateUntrusted"),
    ("ca_signed_expired", None, "BadCertificateTimeInvalid"),
    ("ca_signed_not_yet_valid", None, "BadCertificateTimeInvalid"),
    ("ca_signed_wrong_uri", None, "BadCertificateUriInvalid"),
    ("ca_signed", "urn:not:in:the:certificate", "BadCertificateUriInvalid"),
    ("ca_signed", None, "Good"),
])
def test_client_certificate_validation(hardened: dict[str, Any],
                                       certs: dict[str, tuple[str, str]], cert: str,
                                       app_uri: str | None, expected: str) -> None:
    assert asyncio.run(login(hardened, OPERATOR, cert=certs[cert], app_uri=app_uri)) == expected


def test_authorization(hardened: dict[str, Any]) -> None:
    """Readonly: writes refused, value unchanged; operator: write lands, then restored."""
    async def check() -> None:
        scratch, setpoint = hardened["nodes"]["scratch"][3], hardened["nodes"]["setpoint"]
        async with session(hardened, VIEWER) as viewer:
            node = viewer.get_node(scratch)
            before = await node.read_value()
            for target in (scratch, setpoint):
                assert await outcome(viewer.get_node(target).write_value(u16(777))) \
                    == "BadUserAccessDenied"
            assert await node.read_value() == before
            level = await node.read_attribute(ua.AttributeIds.UserAccessLevel)
            assert level.Value is not None
            assert level.Value.Value == ua.AccessLevel.CurrentRead.mask
        async with session(hardened, OPERATOR) as operator:
            node = operator.get_node(scratch)
            level = await node.read_attribute(ua.AttributeIds.UserAccessLevel)
            assert level.Value is not None
            assert level.Value.Value & ua.AccessLevel.CurrentWrite.mask
            assert await outcome(node.write_value(u16(before ^ 0x5A5A))) == "Good"
            assert await node.read_value() == before ^ 0x5A5A
            assert await outcome(node.write_value(ua.DataValue(ua.Variant("text")))) \
                == "BadTypeMismatch"
            assert await outcome(node.write_value(u16(before))) == "Good"
            assert await node.read_value() == before
        async with session(hardened, ADMIN) as admin:
            for target in (hardened["nodes"]["protected"][0], hardened["nodes"]["heartbeat"]):
                assert await outcome(admin.get_node(target).write_value(u16(1))) \
                    == "BadNotWritable"
    asyncio.run(check())


def test_x509_user_token(hardened: dict[str, Any], certs: dict[str, tuple[str, str]]) -> None:
    """A trusted user certificate logs in as an operator; an untrusted one is refused."""
    async def check() -> None:
        own = (hardened["client_cert"], hardened["client_key"])
        async with session(hardened, user_cert=own) as client:
            node = client.get_node(hardened["nodes"]["scratch"][4])
            before = await node.read_value()
            assert await outcome(node.write_value(u16(before ^ 1))) == "Good"
            assert await outcome(node.write_value(u16(before))) == "Good"
        assert await login(hardened, user_cert=certs["self_signed_any"]) == "BadUserAccessDenied"
    asyncio.run(check())


def test_lockout_refuses_right_password_then_expires(hardened: dict[str, Any]) -> None:
    async def check() -> None:
        for _ in range(2):
            assert await login(hardened, (LOCKTEST[0], "wrong")) == "BadUserAccessDenied"
        assert await login(hardened, LOCKTEST) == "BadUserAccessDenied"
        await asyncio.sleep(CONFIG["lockout_duration_s"] + 0.3)
        assert await login(hardened, LOCKTEST) == "Good"
    asyncio.run(check())


def test_audit_events_of_refused_and_accepted_logins(hardened: dict[str, Any]) -> None:
    """Server.Auditing is True; a refused and an accepted ActivateSession each reach a
    subscriber as AuditActivateSessionEventType events carrying who, what and the outcome."""
    async def check() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        async with session(hardened, OPERATOR) as auditor, audit_subscription(auditor) as sub:
            auditing = await auditor.get_node(ua.ObjectIds.Server_Auditing).read_value()
            assert auditing is True
            assert await login(hardened, (LOCKTEST[0], "not-the-password")) \
                == "BadUserAccessDenied"
            refused = await next_audit(sub, AUDIT_WAIT_S)
            assert await login(hardened, LOCKTEST) == "Good"
            accepted = await next_audit(sub, AUDIT_WAIT_S)
        return refused, accepted
    refused, accepted = asyncio.run(check())
    assert audit_summary(refused) == ("AuditActivateSessionEventType", False, LOCKTEST[0],
                                      "BadUserAccessDenied")
    assert audit_summary(accepted) == ("AuditActivateSessionEventType", True, LOCKTEST[0], "Good")
    assert refused is not None and accepted is not None
    assert refused["Message"].Text == f"ActivateSession refused for {LOCKTEST[0]!r}: " \
                                      "BadUserAccessDenied"
    for fields in (refused, accepted):
        assert fields["SourceName"] == "Session/ActivateSession"
        assert fields["ServerId"] == hardened["application_uri"]
        assert isinstance(fields["SessionId"], ua.NodeId)
        assert fields["SourceNode"] == fields["SessionId"]
        token = fields["UserIdentityToken"]
        assert isinstance(token, ua.UserNameIdentityToken)
        assert token.UserName == LOCKTEST[0]
        assert not token.Password  # never the password, not even encrypted
    assert refused["SessionId"] != accepted["SessionId"]


def test_auditing_off_is_no_weakness_and_reports_nothing(fleet: Fleet,
                                                         start_simulator: Any) -> None:
    """``--auditing off``: a device without auditing (not a weakness): Server.Auditing reads
    False, and a refused login reaches no subscriber."""
    event = start_simulator("opcua", "--config", str(fleet.log_dir / "config.json"),
                            "--aspace-cache", str(fleet.log_dir / "cache"), "--auditing", "off")
    assert event["weaknesses"] == []
    ep = event["endpoints"]["opcua"]

    async def check() -> None:
        async with session(ep, OPERATOR) as auditor, audit_subscription(auditor) as sub:
            auditing = await auditor.get_node(ua.ObjectIds.Server_Auditing).read_value()
            assert auditing is False
            assert await login(ep, (LOCKTEST[0], "not-the-password")) == "BadUserAccessDenied"
            assert await next_audit(sub, AUDIT_WAIT_S) is None
    asyncio.run(check())
    event, rc = start_simulator.expect_error("opcua", "--auditing", "maybe")
    assert rc == 2


def test_address_space_cache_is_private(fleet: Fleet, tmp_path: Path) -> None:
    from simulators.opcua_sim.server import ASPACE_CACHE_NAME, cache_is_private

    made = fleet.log_dir / "cache" / ASPACE_CACHE_NAME
    assert (made / "aspace").is_file()
    assert made.stat().st_mode & 0o077 == 0
    assert cache_is_private(made)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o700)
    (loose / "aspace").touch(mode=0o644)
    assert cache_is_private(loose)
    (loose / "aspace").chmod(0o666)  # anyone could plant a pickle: never load it
    assert not cache_is_private(loose)


def test_taken_port_exits_2(start_simulator: Any, hardened: dict[str, Any]) -> None:
    event, rc = start_simulator.expect_error("opcua", "--port", str(hardened["port"]))
    assert rc == 2
    assert event is not None and event["event"] == "error"
    assert str(hardened["port"]) in event["message"]


def test_sigterm_exits_0_and_removes_state(fleet: Fleet,
                                           probes: dict[str, dict[str, Any]]) -> None:
    """Runs after the probes (which need every server)."""
    ep = fleet.events["opcua.no_lockout"]["endpoints"]["opcua"]
    state_dir = Path(ep["ca_cert"]).parent
    assert state_dir.is_dir()
    proc = fleet.procs["opcua.no_lockout"]
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)  # a repeated SIGTERM must not cut the shutdown short
    assert fleet.stop("opcua.no_lockout", signalled=True) == 0
    assert not state_dir.exists()


# -- connection start-up: the cap and the Hello timeout ----------------------------------------
def _greeted(ep: dict[str, Any]) -> bytes:
    """The first 4 bytes a fresh Hello gets (b"" when the server closes the connection)."""
    with socket.create_connection((ep["host"], ep["port"]), timeout=REQUEST_TIMEOUT_S) as sock:
        try:
            sock.sendall(hello(ep["url"]))
            return sock.recv(4)
        except (ConnectionResetError, BrokenPipeError):
            return b""


def _eventually(predicate: Any, timeout: float = REQUEST_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _trickle_until_closed(socks: list[socket.socket], seconds: float) -> int:
    """Trickle one byte every 0.2 s on each socket for at most ``seconds``; return how many
    the server closed."""
    open_ = list(socks)
    deadline = time.monotonic() + seconds
    while open_ and time.monotonic() < deadline:
        for sock in list(open_):
            sock.settimeout(0.02)
            try:
                if sock.recv(64) == b"":
                    open_.remove(sock)
                    continue
            except TimeoutError:
                pass
            except OSError:
                open_.remove(sock)
                continue
            with contextlib.suppress(OSError):
                sock.sendall(b"\0")
        time.sleep(0.2)
    return len(socks) - len(open_)


@pytest.mark.parametrize("weak", [False, True], ids=["hardened", "no_hello_timeout"])
def test_unfinished_hellos_fill_the_startup_cap(fleet: Fleet, weak: bool) -> None:
    ep = fleet.events["opcua.no_hello_timeout" if weak else "hardened"]["endpoints"]["opcua"]
    assert ep["hello_timeout_s"] == (None if weak else 2.0)
    assert _greeted(ep) == b"ACKF"
    held = [socket.create_connection((ep["host"], ep["port"]), timeout=REQUEST_TIMEOUT_S)
            for _ in range(8)]  # the default connection_limit
    try:
        for sock in held:
            sock.sendall(hello(ep["url"])[:6])
        assert _greeted(ep) == b"", "a ninth connection was served past the start-up cap of 8"
        closed = _trickle_until_closed(held, 4.0)
        if weak:
            assert closed == 0
            assert _greeted(ep) == b""
        else:
            assert closed == len(held)
            assert _greeted(ep) == b"ACKF"
    finally:
        for sock in held:
            sock.close()
    assert _eventually(lambda: _greeted(ep) == b"ACKF")


def test_hello_timeout_must_be_positive(start_simulator: Any) -> None:
    event, rc = start_simulator.expect_error("opcua", "--hello-timeout-s", "-1")
    assert rc == 2
    assert event is not None and "--hello-timeout-s" in event["message"], event
