"""OPC UA client for conformance checks: asyncua behind a guarded, bounded, synchronous facade.

asyncua does the protocol; this module makes it fit a check:

- **Guard first.** Every function that opens a connection calls
  :meth:`~harness.safety.Guard.check_destination` before anything leaves; the endpoint URLs a
  server *declares* in GetEndpoints are reported, never connected to (we always dial the
  profile's URL).
- **One event loop per check** (:class:`UaLoop`): an asyncio loop on its own thread, so the
  sessions a check holds keep their keep-alives running while the check waits (asyncua reads the
  server state every ``watchdog_s``; an idle-timeout check sets :data:`NO_WATCHDOG`). Every call
  from the check is bounded: the coroutine by ``asyncio.wait_for`` and the caller by the
  future's own timeout, so a stuck loop cannot hang a check.
- **Bounded transport.** asyncua announces 2 GiB receive buffers, buffers whatever a chunk
  header declares, and takes the server's Acknowledge limits as its own (0 = unlimited). The
  harness's transport announces :data:`RECEIVE_BUFFER_SIZE` and caps messages at
  :data:`MAX_MESSAGE_SIZE` / :data:`MAX_CHUNK_COUNT`; it refuses an Acknowledge whose sizes break
  OPC UA Part 6 (SendBufferSize above what we announced, buffers under 8192), and checks every
  chunk header as it arrives: an unknown message or chunk type, or a chunk larger than we
  announced, ends the connection at once with :class:`TransportViolation` (a
  :class:`~harness.errors.TargetError`) before the body is buffered.
- **Outcomes, not exceptions from a library.** A Bad status from the server (a ServiceFault or
  an Error message) becomes :class:`UaRefused` with the status *name* (``BadUserAccessDenied``)
  and the stage (``OpenSecureChannel``, ``CreateSession``, ``ActivateSession``, ``Read``...); a
  server that closes the connection after the Hello is a refusal without a status; no answer,
  no TCP connection, or a malformed reply is a plain :class:`~harness.errors.TargetError`
  (:class:`NoAnswer` for a timeout). :meth:`UaConnection.attempt` turns a session set-up into
  an :class:`Attempt` (accepted, or refused and where) for the authentication checks.
- **Evidence.** The Hello (hex: it is plaintext) and the Acknowledge's sizes, the
  OpenSecureChannel policy and mode, CreateSession (announced ApplicationUri, certificate
  fingerprint, requested timeout) and ActivateSession (token type and user name, never the
  password) with their outcome, every Read and Write the check makes with values and status
  names, the endpoint list with each server certificate's key size, signature hash and
  fingerprint; an event subscription (node, fields, what the server granted) and every event
  it delivers (type, Status, ClientUserId, Message).

API: :class:`UaConnection` (``get_endpoints``, ``open_session``, ``attempt``, ``open_channel``,
``probe_insecure_session``) over a :class:`UaLoop`; :class:`UaSession` (``read``, ``read_value``,
``write``, ``server_auditing``, ``subscribe_audit_events``, ``close``);
:class:`UaEventSubscription` (``collect``, ``alive_since``, ``close``) and :class:`UaEvent`;
:class:`EndpointInfo`, :class:`AppCert`, :class:`Identity`. The asyncua subclasses
(transport, client) are built on first use by ``_client_class`` and lean on three asyncua
internals: ``UaClient._make_protocol``, the connection's ``_limits`` and
``Client._watchdog_intervall``; ``tests/protocols/test_opcua_client.py`` proves they still
hold.

Passwords are given to asyncua only; asyncua's loggers are set to WARNING (when unset) because
at DEBUG it logs whole requests, identity tokens included.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, cast

from harness import pki
from harness.errors import HarnessError, TargetError
from harness.protocols import uatcp

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.profile import Expectations
    from harness.profile import OpcUa as OpcUaInterface
    from harness.safety import Guard

T = TypeVar("T")

#: URI prefix of the standard security policies.
POLICY_URI_PREFIX = "http://opcfoundation.org/UA/SecurityPolicy#"
#: Security policies this client knows, by their short name (the URI fragment).
POLICIES = ("None", "Basic128Rsa15", "Basic256", "Basic256Sha256", "Aes128_Sha256_RsaOaep",
            "Aes256_Sha256_RsaPss")
#: Policies OPC UA deprecated (SHA-1 signatures; RSA PKCS#1 v1.5 for Basic128Rsa15).
DEPRECATED_POLICIES = frozenset({"Basic128Rsa15", "Basic256"})
#: asyncua's class for each policy.
_POLICY_CLASSES = {
    "None": "SecurityPolicyNone",
    "Basic128Rsa15": "SecurityPolicyBasic128Rsa15",
    "Basic256": "SecurityPolicyBasic256",
    "Basic256Sha256": "SecurityPolicyBasic256Sha256",
    "Aes128_Sha256_RsaOaep": "SecurityPolicyAes128Sha256RsaOaep",
    "Aes256_Sha256_RsaPss": "SecurityPolicyAes256Sha256RsaPss",
}
Mode = Literal["None", "Sign", "SignAndEncrypt"]
#: MessageSecurityMode values on the wire.
_MODES: dict[int, Mode] = {1: "None", 2: "Sign", 3: "SignAndEncrypt"}
#: Secured (policy, mode) pairs a session uses, best first.
PREFERRED_SECURITY: tuple[tuple[str, Mode], ...] = (
    ("Basic256Sha256", "SignAndEncrypt"), ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"), ("Basic256Sha256", "Sign"),
    ("Aes256_Sha256_RsaPss", "Sign"), ("Aes128_Sha256_RsaOaep", "Sign"),
)
#: UserTokenType values on the wire.
_TOKEN_TYPES = {0: "Anonymous", 1: "UserName", 2: "Certificate", 3: "IssuedToken"}

#: Largest chunk we accept (announced as our ReceiveBufferSize in the Hello).
RECEIVE_BUFFER_SIZE = 65535
#: Largest message we reassemble (announced as MaxMessageSize): endpoint lists with
#: certificate chains and single reads fit many times over.
MAX_MESSAGE_SIZE = 2 * 1024 * 1024
#: Most chunks per message (announced as MaxChunkCount).
MAX_CHUNK_COUNT = 64

#: ``watchdog_s`` for a session that must stay idle (no keep-alive reads).
NO_WATCHDOG = 86_400.0

#: The Server object: the root notifier, where a server reports every event it generates.
SERVER_OBJECT = "i=2253"
#: BaseEventType and AuditEventType (numeric ids in namespace 0).
BASE_EVENT_TYPE = 2041
AUDIT_EVENT_TYPE = 2052
#: Fields an audit subscription selects: (the event type that declares it, its browse name).
AUDIT_FIELDS: tuple[tuple[int, str], ...] = (
    (BASE_EVENT_TYPE, "EventId"), (BASE_EVENT_TYPE, "EventType"),
    (BASE_EVENT_TYPE, "SourceNode"), (BASE_EVENT_TYPE, "SourceName"),
    (BASE_EVENT_TYPE, "Time"), (BASE_EVENT_TYPE, "Message"), (BASE_EVENT_TYPE, "Severity"),
    (AUDIT_EVENT_TYPE, "ActionTimeStamp"), (AUDIT_EVENT_TYPE, "Status"),
    (AUDIT_EVENT_TYPE, "ServerId"), (AUDIT_EVENT_TYPE, "ClientAuditEntryId"),
    (AUDIT_EVENT_TYPE, "ClientUserId"),
    (2058, "StatusCodeId"),  # AuditSecurityEventType
    (2069, "SessionId"),  # AuditSessionEventType
    (2075, "UserIdentityToken"),  # AuditActivateSessionEventType
)
#: Most events an event subscription keeps, and asks the server to queue (oldest dropped).
MAX_EVENTS = 256
#: Publishing interval an event subscription asks for (ms), and its keep-alive (ms): a live
#: subscription answers a Publish at least this often even when nothing happens.
EVENT_PUBLISHING_MS = 250.0
EVENT_KEEPALIVE_MS = 1000.0
#: Seconds added to a call's own timeout before the caller gives up on the loop.
_LOOP_GRACE_S = 2.0

_logger = logging.getLogger("asyncua")
if _logger.level == logging.NOTSET:
    _logger.setLevel(logging.WARNING)


# --------------------------------------------------------------------------- errors
class ProfileGap(HarnessError):
    """The profile lacks what a check needs (a client certificate, an account, a CA key): the
    check is an ERROR naming the gap, never a PASS."""


class NoAnswer(TargetError):
    """Nothing came back within the timeout."""


class TransportViolation(TargetError):
    """The device broke OPC UA TCP's framing rules (absurd sizes, unknown message types)."""


class UaRefused(TargetError):
    """The device said no: a Bad status, or it closed the connection after the Hello.

    A :class:`~harness.errors.TargetError`, so a check that did not expect a refusal is ERROR;
    the authentication checks catch it as their observation.
    """

    def __init__(self, message: str, *, status: str | None, stage: str) -> None:
        super().__init__(message)
        #: The Bad status name (``BadUserAccessDenied``), or None when the device just closed.
        self.status = status
        #: Where it happened: ``OpenSecureChannel``, ``CreateSession``, ``ActivateSession``...
        self.stage = stage


# --------------------------------------------------------------------------- small types
@dataclass(frozen=True)
class Target:
    """Where the OPC UA server is."""

    #: The endpoint URL from the profile (always the one dialled).
    url: str
    host: str
    port: int

    @classmethod
    def from_interface(cls, iface: OpcUaInterface) -> Target:
        """The profile's ``interfaces.opcua``."""
        return cls(iface.endpoint, iface.host, iface.port)


@dataclass(frozen=True)
class Timeouts:
    """The profile's timeouts (``safety.connect_timeout_s``, ``safety.request_timeout_s``)."""

    connect_s: float = 3.0
    request_s: float = 3.0

    @property
    def session_s(self) -> float:
        """Bound of a whole session set-up: TCP, Hello, channel, CreateSession, Activate."""
        return self.connect_s + 4 * self.request_s


@dataclass(frozen=True)
class AppCert:
    """A certificate and its private key (DER, in memory only)."""

    cert_der: bytes = field(repr=False)
    key_der: bytes = field(repr=False)
    #: Where it came from, for evidence (``profile client_cert``, ``minted expired ...``).
    label: str
    #: ``SHA256:<hex>`` of the certificate.
    fingerprint: str
    #: :func:`harness.pki.describe` of the certificate.
    summary: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_issued(cls, issued: pki.Issued, label: str) -> AppCert:
        """From a certificate minted with :mod:`harness.pki`."""
        from cryptography.hazmat.primitives import serialization

        key = issued.key.private_bytes(serialization.Encoding.DER,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
        return cls(issued.cert_der(), key, label, issued.fingerprint(), pki.describe(issued.cert))

    @classmethod
    def from_files(cls, cert: Path, key: Path, label: str) -> AppCert:
        """Load a certificate/key pair (PEM or DER).

        :raises ProfileGap: unreadable files, or a key that is not the certificate's.
        """
        try:
            issued = pki.load_issued(cert, key)
        except (OSError, ValueError, TypeError) as exc:
            raise ProfileGap(f"{label}: cannot use {cert} / {key}: {exc}") from exc
        return cls.from_issued(issued, label)

    def describe(self) -> str:
        """One line for evidence: label, fingerprint, ApplicationUri(s)."""
        uris = self.summary.get("san_uris") or []
        return f"{self.label} ({self.fingerprint}, URI {', '.join(uris) or 'none'})"


@dataclass(frozen=True)
class Identity:
    """Who activates a session: nobody (anonymous), a user name and password, or a user
    certificate. ``repr`` and :meth:`describe` never show the password."""

    kind: Literal["anonymous", "username", "certificate"]
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: For ``certificate``: the user certificate and key.
    cert: AppCert | None = None
    #: Where it came from (``readonly account``), for evidence.
    label: str = ""

    @classmethod
    def anonymous(cls) -> Identity:
        """No user token credentials (AnonymousIdentityToken)."""
        return cls("anonymous", label="anonymous")

    def describe(self) -> str:
        """For evidence: ``username 'viewer' (readonly account)``; never the password."""
        if self.kind == "username":
            return f"username {self.username!r}" + (f" ({self.label})" if self.label else "")
        if self.kind == "certificate" and self.cert is not None:
            return f"user certificate {self.cert.describe()}"
        return "anonymous"


@dataclass(frozen=True)
class TokenPolicy:
    """One user token policy of an endpoint."""

    policy_id: str
    #: ``Anonymous``, ``UserName``, ``Certificate`` or ``IssuedToken``.
    token_type: str
    #: The SecurityPolicyUri as declared (empty: the endpoint's policy secures the token).
    security_policy_uri: str
    #: Short name of the policy that actually secures the token.
    effective_policy: str


@dataclass(frozen=True)
class EndpointInfo:
    """One endpoint from GetEndpoints, with its server certificate described."""

    #: The URL the server declares (reported, never dialled).
    url: str
    #: Short policy name (``Basic256Sha256``), or the URI when unknown.
    policy: str
    policy_uri: str
    mode: str
    security_level: int
    tokens: tuple[TokenPolicy, ...]
    #: :func:`harness.pki.describe` of the server certificate, or None when none was sent.
    server_cert: dict[str, Any] | None
    #: The server certificate (first of the chain), DER.
    server_cert_der: bytes = field(default=b"", repr=False)
    #: Why the certificate could not be read, if it could not.
    cert_error: str = ""

    @property
    def secured(self) -> bool:
        """True when both the policy and the mode are something other than None."""
        return self.policy != "None" and self.mode in ("Sign", "SignAndEncrypt")

    def tokens_of(self, token_type: str) -> list[TokenPolicy]:
        """The token policies of one type (``Anonymous``, ``UserName``, ``Certificate``)."""
        return [t for t in self.tokens if t.token_type == token_type]

    def plaintext_password_tokens(self) -> list[TokenPolicy]:
        """UserName token policies under which a password would travel in clear: the token is
        not encrypted (policy None) and neither is the channel (mode not SignAndEncrypt)."""
        return [t for t in self.tokens_of("UserName")
                if t.effective_policy == "None" and self.mode != "SignAndEncrypt"]

    def describe(self) -> str:
        """One line: ``Basic256Sha256/SignAndEncrypt tokens UserName(None),Certificate``."""
        toks = ",".join(f"{t.token_type}({t.effective_policy})" for t in self.tokens)
        cert = ""
        if self.server_cert:
            cert = (f" cert {self.server_cert['key_type']} {self.server_cert['key_bits']} "
                    f"{self.server_cert['signature_hash']}")
        return f"{self.policy}/{self.mode} level {self.security_level} tokens {toks}{cert}"

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable form for evidence."""
        return {
            "url": self.url, "policy": self.policy, "policy_uri": self.policy_uri,
            "mode": self.mode, "security_level": self.security_level,
            "user_tokens": [t.__dict__ for t in self.tokens],
            "server_certificate": self.server_cert, "certificate_error": self.cert_error or None,
        }


@dataclass(frozen=True)
class ReadResult:
    """One attribute read."""

    #: ``Good`` or the Bad/Uncertain status name.
    status: str
    value: Any
    #: The variant type name (``UInt16``), or None.
    variant: str | None

    @property
    def good(self) -> bool:
        """True when the status is Good."""
        return self.status == "Good"


@dataclass(frozen=True)
class Attempt:
    """One session set-up attempt: accepted (activated) or refused, and where."""

    accepted: bool
    #: ``session activated``, or the stage that refused (``CreateSession``...).
    stage: str
    #: ``Good`` when accepted; the Bad status name, or None when the device just closed.
    status: str | None
    detail: str
    #: The session, when accepted and kept open (closed by the caller or the factory).
    session: UaSession | None = None
    #: Seconds from the TCP connect to the answer.
    elapsed_s: float = 0.0


class Attempts(Protocol):
    """What :func:`right_password_login` needs of a check's OPC UA facade (the ``opcua``
    fixture, :class:`harness.fixtures.opcua.OpcUa`)."""

    def attempt(self, role: str | None = ..., *, identity: Identity | None = ...,
                label: str | None = ...) -> Attempt:
        """One session set-up as an observation (accepted or refused)."""
        ...

    @property
    def expectations(self) -> Expectations:
        """The profile's expectations (``lockout`` among them)."""
        ...


def right_password_login(opcua: Attempts, account: Identity, label: str) -> Attempt:
    """A login as ``account`` with its right password; if refused, the lockout the profile
    declares (``expectations.lockout``, when it has a duration) is waited out once and the login
    tried again.

    :param label: what the login is for (the evidence labels end in ``: right password``).
    :raises TargetError: the right password was still refused.
    """
    result = opcua.attempt(identity=account, label=f"{label}: right password")
    if result.accepted:
        return result
    policy = opcua.expectations.lockout
    if policy is not None and policy.duration_s > 0:
        time.sleep(policy.duration_s + max(0.5, 0.1 * policy.duration_s))
        result = opcua.attempt(identity=account, label=f"{label}: right password (after "
                                                        "waiting out a lockout)")
    if not result.accepted:
        raise TargetError(f"{label}: the right password for {account.describe()} was refused "
                          f"({result.status} at {result.stage})")
    return result


def policy_name(uri: str) -> str:
    """``Basic256Sha256`` for its URI; the URI itself when it is not a standard one."""
    if uri.startswith(POLICY_URI_PREFIX):
        return uri[len(POLICY_URI_PREFIX):]
    return uri or "None"


def policy_uri(name: str) -> str:
    """The URI of a short policy name."""
    return POLICY_URI_PREFIX + name


def status_name(code: int) -> str:
    """The name of a status code (``BadUserAccessDenied``); unknown codes keep their severity
    and hex value (``Bad(0x80FF0000)``)."""
    from asyncua.ua import status_codes

    table = status_codes.code_to_name_doc
    for value in (code, code & 0xFFFF0000):
        if value in table:
            return str(table[value][0])
    severity = "Bad" if code & 0x80000000 else "Uncertain" if code & 0x40000000 else "Good"
    return f"{severity}(0x{code:08X})"


def first_der_certificate(blob: bytes) -> bytes:
    """The first certificate of a DER chain (OPC UA may send a concatenated chain)."""
    if len(blob) < 2 or blob[0] != 0x30:
        return blob
    first = blob[1]
    if first < 0x80:
        return blob[:2 + first]
    n = first & 0x7F
    if not 1 <= n <= 4 or len(blob) < 2 + n:
        return blob
    return blob[:2 + n + int.from_bytes(blob[2:2 + n], "big")]


def scan_headers(buffer: bytes) -> str | None:
    """Check every complete message header in ``buffer`` (OPC UA TCP framing, chunks of at most
    :data:`RECEIVE_BUFFER_SIZE`); return what is wrong, or None. Headers are checked before
    their bodies are buffered (:func:`harness.protocols.uatcp.check_headers`)."""
    try:
        uatcp.check_headers(buffer, RECEIVE_BUFFER_SIZE)
    except uatcp.FrameError as exc:
        return str(exc)
    return None


def check_acknowledge(receive: int, send: int) -> str | None:
    """What is wrong with an Acknowledge's buffer sizes (OPC UA Part 6, 7.1.2.4), or None
    (:func:`harness.protocols.uatcp.acknowledge_problem` against our
    :data:`RECEIVE_BUFFER_SIZE`).

    :param receive: its ReceiveBufferSize (the largest chunk the server takes from us).
    :param send: its SendBufferSize (the largest chunk it will send us).
    """
    return uatcp.acknowledge_problem(receive, send, RECEIVE_BUFFER_SIZE)


# --------------------------------------------------------------------------- the loop
class UaLoop:
    """An asyncio event loop on its own daemon thread; checks submit coroutines to it.

    :param name: thread name.
    """

    def __init__(self, name: str = "harness-opcua") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self.closed = False

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float, what: str) -> T:
        """Run ``coro`` on the loop, at most ``timeout`` seconds.

        :raises TargetError: nothing came back in time (the coroutine is cancelled).
        :raises TimeoutError: the coroutine's own ``wait_for`` expired (callers translate it).
        """
        if self.closed:
            coro.close()
            raise HarnessError(f"{what}: the OPC UA event loop is closed")
        future = asyncio.run_coroutine_threadsafe(_bounded(coro, timeout), self._loop)
        try:
            return future.result(timeout + _LOOP_GRACE_S)
        except concurrent.futures.TimeoutError:  # the same class as TimeoutError since 3.11
            if future.done():
                raise  # the coroutine's own timeout: the caller says which step timed out
            future.cancel()
            raise NoAnswer(f"{what}: no answer within {timeout:g} s") from None

    def close(self) -> None:
        """Cancel every task left, stop the loop and join its thread (bounded)."""
        if self.closed:
            return
        self.closed = True

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=_LOOP_GRACE_S)
            for _ in range(3):  # let closed transports finish (their close is scheduled)
                await asyncio.sleep(0)

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(
                2 * _LOOP_GRACE_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(2 * _LOOP_GRACE_S)
        if not self._thread.is_alive():
            self._loop.close()


async def _bounded(coro: Coroutine[Any, Any, T], seconds: float) -> T:
    return await asyncio.wait_for(coro, seconds)


# --------------------------------------------------------------------------- tracing
class _Trace:
    """Evidence of one connection, and the stage it has reached (to say where it failed)."""

    def __init__(self, evidence: Evidence, channel: str, label: str) -> None:
        self.evidence = evidence
        self.channel = channel
        self.label = label
        self.stage = "TCP connect"
        #: The stage of the first request that failed (asyncua closes a session after a failed
        #: ActivateSession: that close must not hide where the refusal came).
        self.error_stage: str | None = None
        self.started = time.monotonic()
        self.failed: TargetError | None = None

    def enter(self, stage: str, summary: str, data: bytes | None = None) -> None:
        self.stage = stage
        self.evidence.sent(self.channel, data, f"{self.label}: {summary}")

    def got(self, summary: str, data: bytes | None = None) -> None:
        self.evidence.received(self.channel, data, f"{self.label}: {summary}")

    @property
    def elapsed_s(self) -> float:
        return round(time.monotonic() - self.started, 4)


def _describe_request(request: Any) -> str | None:
    """A one-line summary of a session-establishment request (no secrets), or None to skip."""
    name = type(request).__name__.removesuffix("Request")
    params = getattr(request, "Parameters", None)
    if name == "CreateSession" and params is not None:
        cert = bytes(params.ClientCertificate or b"")
        fp = pki.fingerprint(first_der_certificate(cert)) if cert else "no certificate"
        uri = params.ClientDescription.ApplicationUri if params.ClientDescription else None
        return (f"CreateSession (ApplicationUri {uri!r}, client certificate {fp}, requested "
                f"timeout {params.RequestedSessionTimeout:g} ms)")
    if name == "ActivateSession" and params is not None:
        token = params.UserIdentityToken
        kind = type(token).__name__
        user = getattr(token, "UserName", None)
        encrypted = getattr(token, "EncryptionAlgorithm", None)
        extra = f" user {user!r}" if user else ""
        if kind == "UserNameIdentityToken":
            extra += (f", password encrypted in the token ({encrypted})" if encrypted
                      else ", password NOT encrypted in the token (token policy None: only the "
                           "channel's encryption protects it)")
        return f"ActivateSession ({kind}{extra})"
    if name in ("CloseSession", "CreateSubscription"):
        return name
    return None


# --------------------------------------------------------------------------- asyncua glue
@functools.cache
def _client_class() -> type[Any]:
    """asyncua's Client with the bounded transport and the trace (built on first use, so that
    importing this module does not import asyncua)."""
    from asyncua import ua
    from asyncua.client.client import Client
    from asyncua.client.ua_client import UaClient, UASocketProtocol
    from asyncua.common.connection import TransportLimits
    from asyncua.common.shortcuts import Shortcuts
    from asyncua.common.utils import wait_for
    from asyncua.observer import Observer
    from asyncua.ua.status_codes import StatusCodes
    from asyncua.ua.ua_binary import uatcp_to_binary
    from asyncua.ua.uaerrors import UaStatusCodeError

    class BoundedProtocol(UASocketProtocol):
        """UASocketProtocol that announces and enforces small buffers, checks every chunk
        header before buffering its body, and tells a device's malformed message (a
        :class:`TransportViolation`) from its refusal (an Error message or a Bad status)."""

        def __init__(self, timeout: float, security_policy: Any, trace: _Trace) -> None:
            super().__init__(timeout, security_policy=security_policy,
                             limits=TransportLimits(RECEIVE_BUFFER_SIZE, RECEIVE_BUFFER_SIZE,
                                                    MAX_CHUNK_COUNT, MAX_MESSAGE_SIZE))
            self._trace = trace
            #: Inside asyncua's parsing of received bytes.
            self._in_receive = False
            #: The device sent an Error message, or a Bad status ended the pending requests.
            self._device_said_no = False

        def data_received(self, data: bytes) -> None:
            if self._trace.failed is not None:
                return
            pending = (self.receive_buffer or b"") + data
            problem = scan_headers(pending)
            if problem is not None:
                self._violate(problem, pending[:64])
                return
            self._in_receive = True
            try:
                super().data_received(data)
            finally:
                self._in_receive = False

        def _violate(self, problem: str, head: bytes) -> None:
            exc = TransportViolation(f"{self._trace.label}: the device broke OPC UA TCP "
                                     f"framing at {self._trace.stage}: {problem}")
            self._trace.failed = exc
            self._trace.got(f"transport violation: {problem}", head or None)
            self.receive_buffer = None
            super()._fail_all_pending(exc)
            super().disconnect_socket()

        def _process_received_message(self, msg: Any) -> None:
            if isinstance(msg, ua.ErrorMessage):
                self._device_said_no = True
                code = int(msg.Error.value) if msg.Error is not None else 0
                self._trace.got(f"Error message {status_name(code)}: {msg.Reason!r}")
            super()._process_received_message(msg)

        def _fail_all_pending(self, exc: Exception) -> None:
            if isinstance(exc, UaStatusCodeError) and self._trace.failed is None:
                if (self._in_receive and not self._device_said_no
                        and exc.code == StatusCodes.BadRequestTooLarge):
                    # our own limits (MAX_MESSAGE_SIZE, MAX_CHUNK_COUNT), not the device's word
                    self._violate(f"a message over {MAX_MESSAGE_SIZE} bytes or "
                                  f"{MAX_CHUNK_COUNT} chunks", b"")
                    return
                self._device_said_no = True
            super()._fail_all_pending(exc)

        def disconnect_socket(self) -> None:
            if self._in_receive and not self._device_said_no and self._trace.failed is None:
                # asyncua closes the socket itself when it cannot parse what arrived
                self._violate("a message the client could not parse", b"")
                return
            super().disconnect_socket()

        async def send_hello(self, url: str, max_messagesize: int = 0,
                             max_chunkcount: int = 0) -> Any:
            hello = ua.Hello()
            hello.EndpointUrl = ua.String(url)
            hello.ReceiveBufferSize = ua.UInt32(RECEIVE_BUFFER_SIZE)
            hello.SendBufferSize = ua.UInt32(RECEIVE_BUFFER_SIZE)
            hello.MaxMessageSize = ua.UInt32(MAX_MESSAGE_SIZE)
            hello.MaxChunkCount = ua.UInt32(MAX_CHUNK_COUNT)
            ack: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._callbackmap[0] = ack
            if self.transport is None:
                raise ConnectionError("connection is not open")
            raw = uatcp_to_binary(cast(Any, ua.MessageType.Hello), hello)
            self._trace.enter("Hello", f"Hello (ReceiveBufferSize {RECEIVE_BUFFER_SIZE}, "
                              f"MaxMessageSize {MAX_MESSAGE_SIZE}, MaxChunkCount "
                              f"{MAX_CHUNK_COUNT})", raw)
            self.transport.write(raw)
            answer = await wait_for(ack, self.timeout)
            self._trace.got(f"Acknowledge (ReceiveBufferSize {answer.ReceiveBufferSize}, "
                            f"SendBufferSize {answer.SendBufferSize}, MaxMessageSize "
                            f"{answer.MaxMessageSize}, MaxChunkCount {answer.MaxChunkCount})")
            problem = check_acknowledge(answer.ReceiveBufferSize, answer.SendBufferSize)
            if problem is not None:
                self._violate(problem, b"")
                assert self._trace.failed is not None
                raise self._trace.failed
            # asyncua takes the server's numbers as its own receive limits (0 = unlimited):
            # put ours back; we send chunks no larger than the server can take.
            limits = self._connection._limits
            limits.max_recv_buffer = RECEIVE_BUFFER_SIZE
            limits.max_send_buffer = min(int(answer.ReceiveBufferSize), RECEIVE_BUFFER_SIZE)
            limits.max_message_size = MAX_MESSAGE_SIZE
            limits.max_chunk_count = MAX_CHUNK_COUNT
            return answer

        async def open_secure_channel(self, params: Any) -> Any:
            policy = policy_name(self._connection.security_policy.URI)
            mode = _MODES.get(int(params.SecurityMode), str(params.SecurityMode))
            if params.RequestType == ua.SecurityTokenRequestType.Issue:
                self._trace.enter("OpenSecureChannel", f"OpenSecureChannel ({policy}/{mode})")
            result = await super().open_secure_channel(params)
            if params.RequestType == ua.SecurityTokenRequestType.Issue:
                self._trace.got(f"secure channel open ({policy}/{mode}, token lifetime "
                                f"{result.SecurityToken.RevisedLifetime} ms)")
            return result

    class BoundedUaClient(UaClient):
        """UaClient making :class:`BoundedProtocol` transports; TCP connects use the
        profile's connect timeout."""

        def __init__(self, request_timeout: float, connect_timeout: float,
                     trace: _Trace) -> None:
            super().__init__(request_timeout)
            self._request_timeout = request_timeout
            self._connect_timeout = connect_timeout
            self._trace = trace

        def _make_protocol(self) -> Any:
            # mirrors UaClient._make_protocol with the bounded protocol class
            self.protocol = BoundedProtocol(self._request_timeout, self.security_policy,
                                            self._trace)
            self.protocol.pre_request_hook = self._pre_request_hook
            self.protocol.on_connection_lost = self._on_transport_lost
            self.protocol.is_session_closing = self._is_session_closing
            return self.protocol

        async def connect_socket(self, host: str, port: int) -> None:
            self._trace.enter("TCP connect", f"TCP connect to {host}:{port}")
            self._timeout = self._connect_timeout
            try:
                await super().connect_socket(host, port)
            finally:
                self._timeout = self._request_timeout

    class TraceObserver(Observer):
        """Marks the stage of every service request; records session set-up requests."""

        def __init__(self, trace: _Trace) -> None:
            self._trace = trace

        @contextlib.contextmanager
        def observe_request(self, request: Any) -> Iterator[None]:
            stage = type(request).__name__.removesuffix("Request")
            summary = _describe_request(request)
            if summary is not None:
                self._trace.enter(stage, summary)
            else:
                self._trace.stage = stage
            try:
                yield
            except BaseException as exc:
                if self._trace.error_stage is None:
                    self._trace.error_stage = stage
                if summary is not None:
                    self._trace.got(f"{stage} failed: {_exc_summary(exc)}")
                raise
            if summary is not None:
                self._trace.got(f"{stage}: Good")

    class HarnessClient(Client):
        """asyncua's Client over the bounded transport, recording into a trace."""

        def __init__(self, url: str, *, timeouts: Timeouts, watchdog_s: float,
                     trace: _Trace) -> None:
            super().__init__(url, timeout=timeouts.request_s, watchdog_intervall=watchdog_s)
            # mirrors Client.__init__'s wiring of its UaClient
            self.uaclient = BoundedUaClient(timeouts.request_s, timeouts.connect_s, trace)
            self.uaclient.pre_request_hook = self._wait_until_ready
            self.uaclient.observer = TraceObserver(trace)
            self.nodes = Shortcuts(self.uaclient.session)
            self.max_messagesize = MAX_MESSAGE_SIZE
            self.max_chunkcount = MAX_CHUNK_COUNT
            self.name = self.description = "harness conformance client"
            self.product_uri = "urn:harness:conformance"
            self.harness_trace = trace

    return HarnessClient


def _exc_summary(exc: BaseException) -> str:
    from asyncua.ua.uaerrors import UaStatusCodeError

    if isinstance(exc, UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, TimeoutError):
        return "no answer (timeout)"
    return f"{type(exc).__name__}: {exc}".strip()


def _translate(exc: BaseException, trace: _Trace, what: str) -> TargetError | None:
    """The harness error for an exception from asyncua, or None for one we do not know."""
    from asyncua.ua.uaerrors import UaError, UaStatusCodeError

    stage = trace.error_stage or trace.stage
    if trace.failed is not None:
        return trace.failed
    if isinstance(exc, TargetError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        name = status_name(exc.code)
        return UaRefused(f"{what}: the device answered {name} to {stage}", status=name,
                         stage=stage)
    if isinstance(exc, TimeoutError):
        return NoAnswer(f"{what}: no answer to {stage} within the timeout")
    if isinstance(exc, OSError | ConnectionError):
        if stage in ("TCP connect", "Hello"):
            return TargetError(f"{what}: {stage} failed: {exc or type(exc).__name__}")
        return UaRefused(f"{what}: the device closed the connection at {stage}", status=None,
                         stage=stage)
    if isinstance(exc, UaError):
        return TargetError(f"{what}: unexpected reply at {stage}: {exc}")
    return None


def _node_id(node: str) -> Any:
    from asyncua import ua
    from asyncua.ua.uaerrors import UaError

    try:
        return ua.NodeId.from_string(node)
    except (ValueError, UaError, IndexError, TypeError) as exc:
        raise ProfileGap(f"profile gap: {node!r} is not an OPC UA node id "
                         "(e.g. ns=2;s=PLC.Scratch.0)") from exc


# --------------------------------------------------------------------------- operations
class UaConnection:
    """What every operation needs: the loop, the guard, the evidence, where, and how long."""

    def __init__(self, loop: UaLoop, guard: Guard, evidence: Evidence, target: Target,
                 timeouts: Timeouts) -> None:
        self.loop = loop
        self.guard = guard
        self.evidence = evidence
        self.target = target
        self.timeouts = timeouts

    def _client(self, label: str, watchdog_s: float) -> tuple[Any, _Trace]:
        self.guard.check_destination(self.target.host, self.target.port)
        trace = _Trace(self.evidence, self.target.url, label)
        client = _client_class()(self.target.url, timeouts=self.timeouts,
                                 watchdog_s=watchdog_s, trace=trace)
        return client, trace

    def _run(self, client: Any, trace: _Trace, coro: Coroutine[Any, Any, T],
             what: str) -> T:
        """Run a set-up coroutine; on any failure close the socket and translate the error."""

        async def guarded() -> T:
            try:
                return await coro
            except BaseException:
                client.disconnect_socket()
                raise

        try:
            return self.loop.run(guarded(), self.timeouts.session_s, what)
        except Exception as exc:
            translated = _translate(exc, trace, what)
            if translated is None:
                raise
            if translated is not exc:
                raise translated from exc
            raise

    # -- discovery --------------------------------------------------------------------
    def get_endpoints(self) -> list[EndpointInfo]:
        """GetEndpoints over a SecurityPolicy None channel (the discovery channel every server
        offers); the list is recorded in the evidence."""
        client, trace = self._client("discovery", NO_WATCHDOG)
        raw = self._run(client, trace, client.connect_and_get_server_endpoints(),
                        "GetEndpoints")
        infos = [_endpoint_info(e) for e in raw]
        trace.got(f"GetEndpoints: {len(infos)} endpoints: "
                  + "; ".join(e.describe() for e in infos[:40]))
        return infos

    # -- secure channel only ------------------------------------------------------------
    def open_channel(self, policy: str, mode: Mode, *, app_cert: AppCert | None,
                     server_cert_der: bytes, application_uri: str | None,
                     label: str) -> Attempt:
        """Open (and close again) a secure channel with ``policy``/``mode``; no session."""
        client, trace = self._client(label, NO_WATCHDOG)
        if application_uri:
            client.application_uri = application_uri

        async def go() -> None:
            await _set_security(client, policy, mode, app_cert, server_cert_der)
            await client.connect_sessionless()
            await client.disconnect_sessionless()

        try:
            self._run(client, trace, go(), f"{label}: OpenSecureChannel {policy}/{mode}")
        except UaRefused as exc:
            return Attempt(False, exc.stage, exc.status, str(exc), elapsed_s=trace.elapsed_s)
        return Attempt(True, "secure channel open", "Good",
                       f"the device opened a {policy}/{mode} secure channel",
                       elapsed_s=trace.elapsed_s)

    def probe_insecure_session(self, label: str = "None-channel session") -> Attempt:
        """CreateSession on a SecurityPolicy None channel without a client certificate (no
        ActivateSession: no credentials are sent). A created session is closed again."""
        from asyncua import ua

        client, trace = self._client(label, NO_WATCHDOG)

        async def go() -> Any:
            await client.connect_sessionless()
            desc = ua.ApplicationDescription()
            desc.ApplicationUri = client.application_uri
            desc.ApplicationType = ua.ApplicationType.Client
            params = ua.CreateSessionParameters()
            params.ClientNonce = bytes(32)
            params.ClientDescription = desc
            params.EndpointUrl = self.target.url
            params.SessionName = label
            params.RequestedSessionTimeout = 10_000
            params.MaxResponseMessageSize = MAX_MESSAGE_SIZE
            result = await client.uaclient.create_session(params)
            with contextlib.suppress(Exception):
                await client.uaclient.close_session(True)
            with contextlib.suppress(Exception):
                await client.disconnect_sessionless()
            return result

        try:
            result = self._run(client, trace, go(), label)
        except UaRefused as exc:
            return Attempt(False, exc.stage, exc.status, str(exc), elapsed_s=trace.elapsed_s)
        return Attempt(True, "session created", "Good",
                       f"CreateSession on a None channel was answered with session "
                       f"{result.SessionId}", elapsed_s=trace.elapsed_s)

    # -- sessions ---------------------------------------------------------------------
    def open_session(self, *, policy: str, mode: Mode, app_cert: AppCert | None,
                     server_cert_der: bytes, application_uri: str | None, identity: Identity,
                     label: str = "session", watchdog_s: float = 1.0) -> UaSession:
        """Open and activate a session.

        :param policy: short policy name (``Basic256Sha256``) or ``None``.
        :param app_cert: the client application certificate (needed unless ``policy`` is None).
        :param server_cert_der: the server certificate from the endpoint (so no second
            GetEndpoints is needed).
        :param application_uri: the ApplicationUri to announce.
        :param identity: who activates the session.
        :param watchdog_s: most seconds between asyncua's keep-alive reads (a third of the
            granted session timeout when that is shorter; :data:`NO_WATCHDOG` for a session
            that must stay idle).
        :raises UaRefused: the device refused (status and stage in the exception).
        :raises TargetError: no answer, no connection, malformed reply.
        """
        if policy != "None" and app_cert is None:
            raise ProfileGap("profile gap: a secured OPC UA session needs a client application "
                             "certificate (interfaces.opcua.client_cert and client_key)")
        client, trace = self._client(label, watchdog_s)
        if application_uri:
            client.application_uri = application_uri

        async def go() -> None:
            if policy != "None":
                await _set_security(client, policy, mode, app_cert, server_cert_der)
            if identity.kind == "username":
                client.set_user(identity.username or "")
                client.set_password(identity.password or "")
            elif identity.kind == "certificate":
                if identity.cert is None:
                    raise ProfileGap("a certificate identity needs a certificate")
                from cryptography import x509
                from cryptography.hazmat.primitives import serialization

                client.user_certificate = x509.load_der_x509_certificate(identity.cert.cert_der)
                client.user_private_key = serialization.load_der_private_key(
                    identity.cert.key_der, password=None)
            await client.connect()
            if watchdog_s < NO_WATCHDOG:
                # keep-alive well inside the session timeout the server granted (connect() has
                # just created the keep-alive task; it reads the interval when it first runs)
                client._watchdog_intervall = min(
                    watchdog_s, max(0.2, float(client.session_timeout) / 1000.0 / 3.0))

        what = f"{label} ({policy}/{mode}, {identity.describe()})"
        self._run(client, trace, go(), what)
        revised = float(client.session_timeout)
        trace.got(f"session activated ({policy}/{mode}, {identity.describe()}, revised "
                  f"session timeout {revised:g} ms)")
        trace.stage, trace.error_stage = "session", None
        return UaSession(self, client, trace, label, revised)

    def attempt(self, *, policy: str, mode: Mode, app_cert: AppCert | None,
                server_cert_der: bytes, application_uri: str | None, identity: Identity,
                label: str = "attempt", keep: bool = False, watchdog_s: float = 1.0) -> Attempt:
        """:meth:`open_session` as an observation: accepted (activated) or refused.

        :param keep: keep an accepted session open (in :attr:`Attempt.session`).
        """
        started = time.monotonic()
        try:
            session = self.open_session(policy=policy, mode=mode, app_cert=app_cert,
                                        server_cert_der=server_cert_der,
                                        application_uri=application_uri, identity=identity,
                                        label=label, watchdog_s=watchdog_s)
        except UaRefused as exc:
            return Attempt(False, exc.stage, exc.status, str(exc),
                           elapsed_s=round(time.monotonic() - started, 4))
        elapsed = round(time.monotonic() - started, 4)
        if not keep:
            session.close()
            return Attempt(True, "session activated", "Good", "session activated",
                           elapsed_s=elapsed)
        return Attempt(True, "session activated", "Good", "session activated", session=session,
                       elapsed_s=elapsed)


async def _set_security(client: Any, policy: str, mode: Mode, app_cert: AppCert | None,
                        server_cert_der: bytes) -> None:
    from asyncua import ua
    from asyncua.crypto import security_policies
    from asyncua.crypto.uacrypto import CertProperties

    if policy not in _POLICY_CLASSES:
        raise ProfileGap(f"the harness's OPC UA library does not implement policy {policy!r}")
    if app_cert is None:
        raise ProfileGap("profile gap: a secured OPC UA channel needs a client application "
                         "certificate (interfaces.opcua.client_cert and client_key)")
    if not server_cert_der:
        raise TargetError(f"the device's {policy}/{mode} endpoint carries no server certificate")
    await client.set_security(
        getattr(security_policies, _POLICY_CLASSES[policy]),
        CertProperties(app_cert.cert_der, extension="der"),
        CertProperties(app_cert.key_der, extension="der"),
        server_certificate=CertProperties(first_der_certificate(server_cert_der),
                                          extension="der"),
        mode=getattr(ua.MessageSecurityMode, mode))


def _endpoint_info(e: Any) -> EndpointInfo:
    uri = str(e.SecurityPolicyUri or "")
    policy = policy_name(uri)
    tokens = []
    for t in e.UserIdentityTokens or []:
        declared = str(t.SecurityPolicyUri or "")
        tokens.append(TokenPolicy(
            policy_id=str(t.PolicyId or ""),
            token_type=_TOKEN_TYPES.get(int(t.TokenType), f"type {int(t.TokenType)}"),
            security_policy_uri=declared,
            effective_policy=policy_name(declared) if declared else policy,
        ))
    der = first_der_certificate(bytes(e.ServerCertificate or b""))
    summary: dict[str, Any] | None = None
    error = ""
    if der:
        try:
            from cryptography import x509

            summary = pki.describe(x509.load_der_x509_certificate(der))
        except ValueError as exc:
            error = f"unreadable server certificate: {exc}"
    return EndpointInfo(
        url=str(e.EndpointUrl or ""), policy=policy, policy_uri=uri,
        mode=_MODES.get(int(e.SecurityMode), f"Invalid({int(e.SecurityMode)})"),
        security_level=int(e.SecurityLevel or 0), tokens=tuple(tokens), server_cert=summary,
        server_cert_der=der, cert_error=error)


def choose_security(endpoints: list[EndpointInfo]) -> EndpointInfo | None:
    """The endpoint a session should use: the first of :data:`PREFERRED_SECURITY` offered."""
    for policy, mode in PREFERRED_SECURITY:
        for ep in endpoints:
            if ep.policy == policy and ep.mode == mode and ep.server_cert_der:
                return ep
    return None


class UaSession:
    """An activated session (made by :meth:`UaConnection.open_session`)."""

    def __init__(self, conn: UaConnection, client: Any, trace: _Trace, label: str,
                 revised_timeout_ms: float) -> None:
        self._conn = conn
        self._client = client
        self._trace = trace
        self.label = label
        #: The session timeout the server granted (ms).
        self.revised_timeout_ms = revised_timeout_ms
        self.closed = False

    def _call(self, coro: Coroutine[Any, Any, T], stage: str, what: str,
              timeout: float | None = None) -> T:
        if self.closed:
            coro.close()
            raise HarnessError(f"{self.label}: session already closed")
        self._trace.stage = stage
        self._trace.error_stage = None
        try:
            return self._conn.loop.run(coro, timeout or self._conn.timeouts.request_s, what)
        except Exception as exc:
            translated = _translate(exc, self._trace, what)
            if translated is None:
                raise
            if translated is not exc:
                raise translated from exc
            raise

    def read(self, node: str) -> ReadResult:
        """Read the Value attribute of ``node``.

        :raises UaRefused: the service itself failed (e.g. ``BadSessionNotActivated``) or the
            connection is gone (status None).
        """
        from asyncua import ua
        from asyncua.ua.attribute_ids import AttributeIds

        nodeid = _node_id(node)
        self._trace.enter("Read", f"Read {node}")

        async def go() -> Any:
            rv = ua.ReadValueId()
            rv.NodeId = nodeid
            rv.AttributeId = AttributeIds.Value
            params = ua.ReadParameters()
            params.NodesToRead.append(rv)
            results = await self._client.uaclient.session.read(params)
            return results[0]

        dv = self._call(go(), "Read", f"{self.label}: Read {node}")
        status = status_name(int(dv.StatusCode.value)) if dv.StatusCode is not None else "Good"
        variant = dv.Value.VariantType.name if dv.Value is not None else None
        value = dv.Value.Value if dv.Value is not None else None
        self._trace.got(f"Read {node}: {status}, value {value!r} ({variant})")
        return ReadResult(status, value, variant)

    def read_value(self, node: str) -> ReadResult:
        """:meth:`read` that must be Good.

        :raises TargetError: the read's status was not Good.
        """
        result = self.read(node)
        if not result.good:
            raise TargetError(f"{self.label}: reading {node} gave {result.status}")
        return result

    def write(self, node: str, value: Any, variant: str) -> str:
        """Write the Value attribute of ``node`` (no timestamps); return the status name.

        :param variant: the variant type name (``UInt16``), usually what a read returned.
        """
        from asyncua import ua
        from asyncua.ua.attribute_ids import AttributeIds

        nodeid = _node_id(node)
        try:
            vtype = ua.VariantType[variant]
        except KeyError:
            raise ProfileGap(f"cannot write a {variant} variant to {node}") from None
        self._trace.enter("Write", f"Write {node} = {value!r} ({variant})")

        async def go() -> Any:
            wv = ua.WriteValue()
            wv.NodeId = nodeid
            wv.AttributeId = AttributeIds.Value
            wv.Value = ua.DataValue(ua.Variant(value, vtype))
            params = ua.WriteParameters()
            params.NodesToWrite.append(wv)
            results = await self._client.uaclient.session.write(params)
            return results[0]

        code = self._call(go(), "Write", f"{self.label}: Write {node}")
        status = status_name(int(code.value))
        self._trace.got(f"Write {node}: {status}")
        return status

    def server_auditing(self) -> bool | None:
        """The Server object's Auditing flag (i=2994): whether the server generates audit
        events; None when it cannot be read."""
        result = self.read("i=2994")
        return bool(result.value) if result.good and isinstance(result.value, bool) else None

    @property
    def connected(self) -> bool:
        """True while asyncua still considers the session usable."""
        from asyncua.client.ua_client import UaClientState

        return not self.closed and self._client.uaclient.state is UaClientState.CONNECTED

    def close(self) -> None:
        """CloseSession, close the channel and the socket (bounded; never raises)."""
        if self.closed:
            return
        self.closed = True
        client = self._client
        limit = 2 * self._conn.timeouts.request_s

        async def shutdown() -> None:
            try:
                with contextlib.suppress(Exception):  # best effort: the socket goes anyway
                    await asyncio.wait_for(client.disconnect(), limit)
            finally:
                client.disconnect_socket()

        with contextlib.suppress(TargetError, HarnessError, TimeoutError):
            self._conn.loop.run(shutdown(), limit + 1.0, f"{self.label}: close")
        self._trace.enter("closed", "session closed")

    def __enter__(self) -> UaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


    def subscribe_audit_events(self, node: str = SERVER_OBJECT) -> UaEventSubscription:
        """Subscribe to the audit events ``node`` reports (default: the Server object).

        The filter selects :data:`AUDIT_FIELDS` and keeps events of AuditEventType: ``OfType
        AuditEventType`` (which includes its subtypes, OPC UA Part 4, 7.7.3) or an EventType in
        the standard audit types (for servers whose ``OfType`` matches the exact type only).

        :raises UaRefused: CreateSubscription or the monitored item was refused (stage
            ``CreateSubscription`` / ``CreateMonitoredItems`` and the status name, e.g.
            ``BadEventFilterInvalid``, ``BadServiceUnsupported``).
        """
        from asyncua import ua
        from asyncua.common.subscription import OverflowPolicy
        from asyncua.ua.uaerrors import UaStatusCodeError

        nodeid = _node_id(node)
        keepalive = max(1, round(EVENT_KEEPALIVE_MS / EVENT_PUBLISHING_MS))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=EVENT_PUBLISHING_MS,
            RequestedLifetimeCount=keepalive * 30, RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=MAX_EVENTS, PublishingEnabled=True, Priority=0)
        self._trace.enter("CreateSubscription",
                          f"subscribe to AuditEventType events on {node} (publishing interval "
                          f"{EVENT_PUBLISHING_MS:g} ms, keep-alive {EVENT_KEEPALIVE_MS:g} ms; "
                          f"fields {', '.join(name for _, name in AUDIT_FIELDS)})")

        async def go() -> tuple[Any, int]:
            try:
                sub = await self._client.create_subscription(
                    params, None, queue_maxsize=MAX_EVENTS, overflow=OverflowPolicy.DROP_OLDEST)
            except UaStatusCodeError as exc:
                name = status_name(exc.code)
                raise UaRefused(f"{self.label}: CreateSubscription answered {name}",
                                status=name, stage="CreateSubscription") from exc
            try:
                handle = await sub.subscribe_events(self._client.get_node(nodeid),
                                                    evfilter=audit_event_filter(),
                                                    queuesize=MAX_EVENTS)
            except UaStatusCodeError as exc:
                with contextlib.suppress(Exception):
                    await sub.delete()
                name = status_name(exc.code)
                raise UaRefused(f"{self.label}: the audit-event monitored item on {node} was "
                                f"refused with {name}", status=name,
                                stage="CreateMonitoredItems") from exc
            return sub, int(handle)

        sub, handle = self._call(go(), "CreateSubscription",
                                 f"{self.label}: subscribe to audit events on {node}",
                                 timeout=3 * self._conn.timeouts.request_s)
        revised = float(sub.parameters.RequestedPublishingInterval)
        self._trace.got(f"subscription {sub.subscription_id} (publishing interval {revised:g} "
                        f"ms), monitored item {handle} on {node}: Good")
        return UaEventSubscription(self, sub, node, handle, revised)


def audit_event_filter() -> Any:
    """The EventFilter of :meth:`UaSession.subscribe_audit_events` (an asyncua object)."""
    from asyncua import ua
    from asyncua.ua.attribute_ids import AttributeIds

    def field(type_id: int, name: str) -> Any:
        return ua.SimpleAttributeOperand(TypeDefinitionId=ua.NodeId(ua.Int32(type_id)),
                                         BrowsePath=[ua.QualifiedName(name, 0)],
                                         AttributeId=AttributeIds.Value)

    def literal(type_id: int) -> Any:
        return ua.LiteralOperand(Value=ua.Variant(ua.NodeId(ua.Int32(type_id))))

    evfilter = ua.EventFilter()
    evfilter.SelectClauses = [field(t, n) for t, n in AUDIT_FIELDS]
    either = ua.ContentFilterElement(FilterOperator=ua.FilterOperator.Or,
                                     FilterOperands=[ua.ElementOperand(1), ua.ElementOperand(2)])
    of_type = ua.ContentFilterElement(FilterOperator=ua.FilterOperator.OfType,
                                      FilterOperands=[literal(AUDIT_EVENT_TYPE)])
    in_list = ua.ContentFilterElement(
        FilterOperator=ua.FilterOperator.InList,
        FilterOperands=[field(BASE_EVENT_TYPE, "EventType"),
                        *[literal(i) for i in sorted(audit_event_types())]])
    evfilter.WhereClause = ua.ContentFilter(Elements=[either, of_type, in_list])
    return evfilter


@functools.cache
def audit_event_types() -> dict[int, str]:
    """The standard audit event types (AuditEventType and the types OPC UA derives from it), by
    numeric id in namespace 0."""
    from asyncua.ua.object_ids import ObjectIds

    return {int(v): k for k, v in vars(ObjectIds).items()
            if k.endswith("EventType") and "Audit" in k and isinstance(v, int)}


@functools.cache
def _event_type_names() -> dict[int, str]:
    from asyncua.ua.object_ids import ObjectIds

    return {int(v): k for k, v in vars(ObjectIds).items()
            if k.endswith("EventType") and isinstance(v, int)}


def event_type_name(type_id: Any) -> str:
    """``AuditActivateSessionEventType`` for a standard event type's NodeId, else the id as a
    string (``ns=2;i=5001``)."""
    from asyncua import ua

    if isinstance(type_id, ua.NodeId):
        if type_id.NamespaceIndex == 0 and isinstance(type_id.Identifier, int):
            known = _event_type_names().get(type_id.Identifier)
            if known:
                return known
        return str(type_id.to_string())
    return str(type_id)


#: Longest text (characters) or byte string (bytes) an event field keeps in evidence.
_FIELD_LIMIT = 200


def event_value(value: Any) -> Any:
    """An event field as a JSON-ready value. Identity tokens keep their type and user name
    only, never a password, whatever the device put in them."""
    import datetime as dt

    from asyncua import ua

    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:_FIELD_LIMIT]
    if isinstance(value, bytes):
        return value[:_FIELD_LIMIT].hex()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, ua.NodeId):
        return str(value.to_string())
    if isinstance(value, ua.LocalizedText):
        return (value.Text or "")[:_FIELD_LIMIT]
    if isinstance(value, ua.StatusCode):
        return status_name(int(value.value))
    if isinstance(value, ua.QualifiedName):
        return str(value.Name or "")[:_FIELD_LIMIT]
    if isinstance(value, list | tuple):
        return [event_value(v) for v in value[:16]]
    if hasattr(value, "UserName") or hasattr(value, "Password") or hasattr(value, "PolicyId"):
        user = getattr(value, "UserName", None)
        return {"token": type(value).__name__,
                "user": user[:_FIELD_LIMIT] if isinstance(user, str) else None}
    return type(value).__name__


@dataclass(frozen=True)
class UaEvent:
    """One event notification (fields converted by :func:`event_value`)."""

    #: The event type's name (``AuditActivateSessionEventType``) or node id.
    event_type: str
    #: The selected fields by browse name (a field the server left empty is None).
    fields: dict[str, Any]
    #: ``time.monotonic()`` when the harness took it from the subscription.
    received: float

    @property
    def status(self) -> bool | None:
        """The audit event's Status (True: the action succeeded), None when not given."""
        value = self.fields.get("Status")
        return value if isinstance(value, bool) else None

    def mentions(self, text: str) -> bool:
        """True if ``text`` is the ClientUserId, the identity token's user name, or appears in
        the Message."""
        token = self.fields.get("UserIdentityToken")
        return bool(text) and (
            self.fields.get("ClientUserId") == text
            or (isinstance(token, dict) and token.get("user") == text)
            or text in str(self.fields.get("Message") or ""))

    def to_json(self) -> dict[str, Any]:
        """For evidence: type and fields (the EventId is left out)."""
        return {"event_type": self.event_type,
                **{k: v for k, v in self.fields.items() if k != "EventId"}}


class UaEventSubscription:
    """A subscription to a node's events (made by :meth:`UaSession.subscribe_audit_events`);
    closed with its session at the latest."""

    def __init__(self, session: UaSession, sub: Any, node: str, monitored_item: int,
                 publishing_interval_ms: float) -> None:
        self._session = session
        self._sub = sub
        self.node = node
        #: The server's SubscriptionId and MonitoredItemId.
        self.subscription_id = int(sub.subscription_id or 0)
        self.monitored_item = monitored_item
        #: The publishing interval the server granted (ms).
        self.publishing_interval_ms = publishing_interval_ms
        #: ``time.monotonic()`` when it was created.
        self.created = time.monotonic()
        #: A status change the server reported (``BadTimeout``: the subscription is gone).
        self.status_changes: list[str] = []
        self.closed = False

    def describe(self) -> dict[str, Any]:
        """For evidence: where, which filter, what the server granted."""
        return {"node": self.node, "subscription_id": self.subscription_id,
                "monitored_item": self.monitored_item,
                "publishing_interval_ms": self.publishing_interval_ms,
                "fields": [name for _, name in AUDIT_FIELDS],
                "where": "OfType AuditEventType, or EventType in the "
                         f"{len(audit_event_types())} standard audit event types"}

    def collect(self, wait_s: float) -> list[UaEvent]:
        """The events that arrived, waiting at most ``wait_s`` for the first one (at most
        :data:`MAX_EVENTS`); each is recorded in the evidence."""
        from asyncua.common.subscription import OpcEvent, StatusChangeEvent

        if self.closed:
            return []
        sub = self._sub

        async def take() -> list[Any]:
            got: list[Any] = []
            item = await sub.next_event(timeout=max(wait_s, 0.0))
            while item is not None and len(got) < MAX_EVENTS:
                got.append(item)
                item = await sub.next_event(timeout=0.05)
            return got

        session = self._session
        raw = session._call(take(), "Publish", f"{session.label}: wait for events",
                            timeout=wait_s + 2.0)
        events: list[UaEvent] = []
        for item in raw:
            if isinstance(item, StatusChangeEvent):
                code = item.notification.Status
                name = status_name(int(code.value)) if code is not None else "None"
                self.status_changes.append(name)
                session._trace.got(f"subscription {self.subscription_id}: status change "
                                   f"{name}")
            elif isinstance(item, OpcEvent):
                props = item.event.get_event_props_as_fields_dict()
                fields = {name: event_value(var.Value) for name, var in props.items()}
                event = UaEvent(event_type_name(props["EventType"].Value)
                                if "EventType" in props else "unknown", fields,
                                time.monotonic())
                events.append(event)
                session._trace.got(
                    f"event {event.event_type}: Status {fields.get('Status')!r}, "
                    f"ClientUserId {fields.get('ClientUserId')!r}, Message "
                    f"{fields.get('Message')!r}")
        return events

    def alive_since(self, since: float) -> bool:
        """True if the server answered a Publish for this subscription (a notification or a
        keep-alive) at or after ``since`` (a ``time.monotonic()`` value) and reported no
        status change since it was created."""
        last = self._sub.last_publish_at
        return last is not None and last >= since and not self.status_changes

    def close(self) -> None:
        """DeleteSubscriptions (bounded; never raises)."""
        if self.closed:
            return
        self.closed = True
        sub = self._sub

        async def delete() -> None:
            with contextlib.suppress(Exception):
                await sub.delete()

        session = self._session
        with contextlib.suppress(TargetError, HarnessError, TimeoutError):
            session._call(delete(), "DeleteSubscriptions",
                          f"{session.label}: delete subscription",
                          timeout=session._conn.timeouts.request_s)


def different_value(value: Any, variant: str | None) -> Any:
    """A value of the same type as ``value`` that differs from it (for write tests).

    :raises ProfileGap: the type is not one the harness can vary.
    """
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value - 1 if value > 0 else value + 1  # stays in range for unsigned types too
    if isinstance(value, float):
        return value + 1.0
    if isinstance(value, str):
        return value + "-harness" if len(value) < 64 else value[:-1]
    raise ProfileGap(f"profile gap: a scratch node holding {variant or type(value).__name__} "
                     "cannot be varied by the harness; declare a numeric or boolean scratch node")
