"""The asyncua server of the OPC UA PLC simulator: endpoints, identities, trust list, sessions,
and the process image as nodes.

asyncua 2.1 does most of the protocol; this module adds what a hardened device needs on top
(see :mod:`simulators.opcua` for the contract):

- **Authentication** (:class:`_UserManager`): accounts from the config through
  :func:`simulators.common.authenticate` with failed-login lockout; X.509 user tokens judged by the
  trust list; anonymous only with ``opcua.anonymous``.
- **Client certificates**: every CreateSession's certificate is judged by :class:`TrustList`, and
  ActivateSession checks the certificate that secured the channel is the one CreateSession
  presented (asyncua alone checks neither). asyncua also accepts SecurityPolicy None channels when
  no None endpoint is offered; :class:`_Session` refuses such sessions.
- **Session limit and idle timeout** (:class:`_Session`): asyncua has only a process-wide
  connection cap answering BadMaxConnectionsReached; the simulator counts its own sessions and
  answers BadTooManySessions at CreateSession. The idle timeout uses asyncua's own watchdog with
  the server's minimum and maximum session timeout both set from the config.
- **Connection start-up** (:class:`_Protocol`): asyncua waits for a Hello for ever and caps
  only the total number of connections; the simulator caps the connections without a secure
  channel (closed at once beyond it) and closes a connection whose Hello and OpenSecureChannel
  have not both arrived within the Hello timeout (a slowloris defence).
- **Refused security policies** (:class:`_Processor`): asyncua ignores an OpenSecureChannel
  for a policy it does not offer, and the client waits for its timeout; the simulator answers
  with an Error message, BadSecurityPolicyRejected, and closes the connection, as the
  specification asks.
- **Authorization** (:meth:`_Session.write`): asyncua gives every non-admin user the node's
  static access level; the simulator decides per role, and reports the per-user
  UserAccessLevel on reads.
- **Auditing** (:meth:`OpcuaPlc.audit_activation`): asyncua keeps ``Server.Auditing`` False and
  generates no audit events; the simulator sets the flag and reports every ActivateSession,
  refused or accepted, as an AuditActivateSessionEventType event on the Server object.
  asyncua's event filter treats ``OfType`` as "exactly this type"; the simulator's
  (:class:`_WhereClause`) follows OPC UA Part 4 and matches subtypes too, so a subscription to
  AuditEventType receives them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import fcntl
import importlib.metadata
import logging
import os
import shutil
import stat
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from asyncua import Server, ua
from asyncua.common import event_objects
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.monitored_item_service import WhereClauseEvaluator
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary
from cryptography import x509

from simulators import common
from simulators import plc as plcmod
from simulators.opcua_sim import (
    APPLICATION_URI,
    CLIENT_APPLICATION_URI,
    ENDPOINT_PATH,
    HELLO_TIMEOUT_S,
    MAX_STARTUPS,
    NAME,
    NAMESPACE_URI,
)
from simulators.opcua_sim.certs import CertBundle, TrustList

_P = ua.SecurityPolicyType
#: Endpoints of the hardened server: no None, no deprecated policy.
HARDENED_POLICIES = (
    _P.Basic256Sha256_Sign, _P.Basic256Sha256_SignAndEncrypt,
    _P.Aes128Sha256RsaOaep_Sign, _P.Aes128Sha256RsaOaep_SignAndEncrypt,
    _P.Aes256Sha256RsaPss_Sign, _P.Aes256Sha256RsaPss_SignAndEncrypt,
)
#: Added by ``opcua.deprecated_policies`` (asyncua 2.1 still implements both).
DEPRECATED_POLICIES = (
    _P.Basic128Rsa15_Sign, _P.Basic128Rsa15_SignAndEncrypt,
    _P.Basic256_Sign, _P.Basic256_SignAndEncrypt,
)
#: Session timeout the server grants with ``opcua.no_session_timeout``, whatever is asked (24 h).
NO_TIMEOUT_MS = 86_400_000.0
#: Seconds between pushes of the process image into the nodes.
SYNC_PERIOD_S = 0.05
#: Role of an identity proven by a trusted X.509 user certificate.
X509_ROLE = "operator"
#: The Server object: every audit event is reported on it (OPC UA Part 5, 6.4.2).
SERVER_OBJECT = ua.NodeId(ua.ObjectIds.Server)
#: Server_Auditing: whether the server generates audit events.
SERVER_AUDITING = ua.NodeId(ua.ObjectIds.Server_Auditing)
#: Severity of the audit event of a refused / an accepted ActivateSession.
AUDIT_SEVERITY_FAILED = 500
AUDIT_SEVERITY_OK = 100
#: Most HasSubtype steps an ``OfType`` test follows up the type tree.
MAX_TYPE_DEPTH = 32

_INTEGER_VARIANTS = frozenset({
    ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
    ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64,
})

_logger = logging.getLogger(__name__)


#: Name of the address-space cache folder: it holds pickles of asyncua objects, so it is tied
#: to the asyncua and Python versions.
ASPACE_CACHE_NAME = (f"opcua-aspace-asyncua{importlib.metadata.version('asyncua')}"
                     f"-py{sys.version_info[0]}{sys.version_info[1]}")


def default_aspace_cache() -> str:
    """The per-user cache folder of the address-space shelf (``$XDG_CACHE_HOME/harness``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "harness")


def cache_is_private(folder: Path) -> bool:
    """True if ``folder`` and its files are ours and writable by nobody else (they are
    unpickled, so a file someone else could write would let them run code in the simulator)."""
    uid = os.getuid()
    for path in (folder, *folder.iterdir()):
        st = path.lstat()
        if st.st_uid != uid or st.st_mode & 0o022 or stat.S_ISLNK(st.st_mode):
            return False
    return True


def _cached_shelf(root: str) -> Path | None:
    """The shelf path to give ``Server.init`` if a usable cache exists under ``root``."""
    folder = Path(root) / ASPACE_CACHE_NAME
    shelf = folder / "aspace"
    if folder.is_dir() and shelf.is_file() and cache_is_private(folder):
        return shelf
    return None


def _lock_cache(root: str) -> int | None:
    """Take the cache-making lock (released when the descriptor closes, or the process dies);
    None if another process holds it."""
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(root, ASPACE_CACHE_NAME + ".lock"),
                     os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as exc:  # no writable cache folder: build in memory
        _logger.warning("no address space cache under %s: %s", root, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _new_build_folder(root: str) -> Path:
    """A fresh private folder to make the cache in (under the lock)."""
    for stale in Path(root).glob(".build-*"):  # left by a builder that was killed
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=".build-", dir=root))


def _publish_cache(build: Path, final: Path) -> None:
    """Move a finished cache into place in one rename, so readers never see half of it."""
    (build / "aspace").touch()  # asyncua checks this name exists (dbm.dumb adds suffixes)
    with contextlib.suppress(OSError):  # lost a race: the cache exists already
        os.rename(build, final)


class StartupError(Exception):
    """The server could not start (e.g. the port is taken); the message says why."""


@dataclass(frozen=True)
class Point:
    """One process-image value exposed as a node."""

    #: String identifier of the NodeId, e.g. ``PLC.Scratch.0``.
    name: str
    #: Holding register in the PLC image.
    address: int
    #: Whether a client with write rights may write it.
    writable: bool


def _points() -> tuple[Point, ...]:
    points = [
        Point("PLC.Heartbeat", plcmod.HEARTBEAT, False),
        Point("PLC.Setpoint", plcmod.SETPOINT, True),
        Point("PLC.ProcessValue", plcmod.PROCESS_VALUE, False),
        Point("PLC.Output", plcmod.OUTPUT, False),
    ]
    points += [Point(f"PLC.Scratch.{i}", a, True) for i, a in enumerate(plcmod.SCRATCH_REGISTERS)]
    points += [Point(f"PLC.Protected.{i}", a, False)
               for i, a in enumerate(plcmod.PROTECTED_REGISTERS)]
    return tuple(points)


#: Every node of the process image, in a fixed order.
POINTS = _points()


def _token_kind(token: Any) -> str:
    if isinstance(token, ua.UserNameIdentityToken):
        return "username"
    if isinstance(token, ua.X509IdentityToken):
        return "x509"
    if token is None or isinstance(token, ua.AnonymousIdentityToken):
        return "anonymous"
    if isinstance(token, ua.ExtensionObject) and token.TypeId == ua.NodeId(ua.ObjectIds.Null):
        return "anonymous"
    return "other"


def _claimed_user(token: Any) -> str:
    """Who an identity token claims to be (for audit events): the user name, the user
    certificate's common name, or ``anonymous``."""
    kind = _token_kind(token)
    if kind == "username":
        return str(token.UserName or "")
    if kind == "x509":
        try:
            cert = x509.load_der_x509_certificate(bytes(token.CertificateData or b""))
        except ValueError:
            return "x509:?"
        cn = [a.value for a in cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
              if isinstance(a.value, str)]
        return f"x509:{cn[0] if cn else '?'}"
    return kind


def _token_without_secret(token: Any) -> Any:
    """The identity token to put in an audit event: a user name token loses its password."""
    if isinstance(token, ua.UserNameIdentityToken):
        return ua.UserNameIdentityToken(PolicyId=token.PolicyId, UserName=token.UserName)
    if isinstance(token, ua.AnonymousIdentityToken | ua.X509IdentityToken):
        return token
    return None


def _is_subtype(aspace: Any, type_id: Any, base: Any) -> bool:
    """True if ``type_id`` is ``base`` or (through HasSubtype references) one of its subtypes."""
    has_subtype = ua.NodeId(ua.ObjectIds.HasSubtype)
    if not isinstance(type_id, ua.NodeId) or not isinstance(base, ua.NodeId):
        return False
    for _ in range(MAX_TYPE_DEPTH):
        if type_id == base:
            return True
        if type_id not in aspace:
            return False
        parent = next((ref.NodeId for ref in aspace[type_id].references
                       if ref.ReferenceTypeId == has_subtype and not ref.IsForward), None)
        if parent is None:
            return False
        type_id = parent
    return False


class _WhereClause(WhereClauseEvaluator):
    """asyncua's event filter with ``OfType`` as OPC UA Part 4 defines it (the type or any
    subtype; asyncua tests for the exact type only)."""

    def _eval_el(self, index: int, event: Any) -> Any:
        element = self.elements[index]
        if element.FilterOperator == ua.FilterOperator.OfType:
            return _is_subtype(self._aspace, event.EventType,
                               self._eval_op(element.FilterOperands[0], event))
        return super()._eval_el(index, event)


class _UserManager:
    """Maps an identity token to a user (asyncua's ``UserManager`` interface).

    asyncua passes no token type to :meth:`get_user`, so :meth:`_Session.activate_session` sets
    :attr:`pending_kind` just before and reads :attr:`granted_role` just after; ActivateSession
    is synchronous in asyncua, so no other session can run in between.
    """

    def __init__(self, sim: OpcuaPlc) -> None:
        self.sim = sim
        self.pending_kind: str | None = None
        self.granted_role: str | None = None

    def get_user(self, iserver: InternalServer, username: str | None = None,
                 password: str | None = None, certificate: Any = None) -> User | None:
        """Return the user for the pending token, None (BadUserAccessDenied) or raise."""
        sim = self.sim
        kind = self.pending_kind
        if kind == "anonymous":
            if not sim.anonymous:
                return None
            self.granted_role = "readonly"
            return User(role=UserRole.User, name="anonymous")
        if kind == "username":
            name = username or ""
            account = common.authenticate(sim.config, sim.lockout, name, password or "",
                                          factory_defaults=False)
            if account is None:
                if sim.user_enumeration and sim.config.account(name) is None:
                    raise ServiceError(ua.StatusCodes.BadIdentityTokenInvalid)
                return None
            self.granted_role = account.role
            return User(role=UserRole.User, name=account.user)
        if kind == "x509" and certificate:
            cert = x509.load_der_x509_certificate(bytes(certificate))
            if sim.validate_certs and sim.trust.check(cert, None) is not None:
                return None
            cn = [a.value for a in cert.subject.get_attributes_for_oid(
                x509.oid.NameOID.COMMON_NAME) if isinstance(a.value, str)]
            self.granted_role = X509_ROLE
            return User(role=UserRole.User, name=f"x509:{cn[0] if cn else '?'}")
        return None


class _Session(InternalSession):
    """A client session with the simulator's limits, checks and authorization."""

    def __init__(self, sim: OpcuaPlc, *args: Any, **kwargs: Any) -> None:
        self.sim = sim
        #: The certificate CreateSession presented (DER), if any.
        self.client_certificate: bytes | None = None
        #: Role of the activated identity: admin, operator, readonly (or none yet).
        self.role = "none"
        #: The ApplicationUri CreateSession announced (for audit events).
        self.client_application_uri = ""
        super().__init__(*args, **kwargs)

    def may_write(self) -> bool:
        """True if this session's identity may write scratch points."""
        return self.role in ("admin", "operator") or not self.sim.enforce_authz

    async def create_session(self, params: ua.CreateSessionParameters,
                             sockname: tuple[str, int] | None = None) -> ua.CreateSessionResult:
        sim = self.sim
        sim.plc.note_request()
        try:
            if sim.session_limit is not None and len(sim.sessions) >= sim.session_limit:
                raise ServiceError(ua.StatusCodes.BadTooManySessions)
            if not sim.offers_none and not params.ClientCertificate:
                # Every offered endpoint needs a client certificate.
                raise ServiceError(ua.StatusCodes.BadSecurityChecksFailed)
            result = await super().create_session(params, sockname)
        except BaseException:
            await self.close_session()
            raise
        self.client_certificate = bytes(params.ClientCertificate or b"") or None
        description = params.ClientDescription
        self.client_application_uri = str(description.ApplicationUri or "") if description else ""
        sim.sessions.add(self)
        return result

    async def close_session(self, delete_subs: bool = True) -> None:
        self.sim.sessions.discard(self)
        await super().close_session(delete_subs)

    def activate_session(self, params: ua.ActivateSessionParameters,
                         peer_certificate: bytes | None) -> ua.ActivateSessionResult:
        try:
            result = self._activate(params, peer_certificate)
        except (ServiceError, ua.UaStatusCodeError) as exc:
            self.sim.audit_activation(self, params, exc.code)
            raise
        self.sim.audit_activation(self, params, ua.StatusCodes.Good)
        return result

    def _activate(self, params: ua.ActivateSessionParameters,
                  peer_certificate: bytes | None) -> ua.ActivateSessionResult:
        sim = self.sim
        if not sim.offers_none and not peer_certificate:
            # A SecurityPolicy None channel although no None endpoint is offered.
            raise ServiceError(ua.StatusCodes.BadSecurityPolicyRejected)
        if sim.validate_certs and peer_certificate and peer_certificate != self.client_certificate:
            # The channel was secured with another certificate than CreateSession presented.
            raise ServiceError(ua.StatusCodes.BadCertificateInvalid)
        manager = sim.user_manager
        manager.pending_kind = _token_kind(params.UserIdentityToken)
        manager.granted_role = None
        try:
            result = super().activate_session(params, peer_certificate)
        finally:
            manager.pending_kind = None
        self.role = manager.granted_role or "readonly"
        return result

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        self.sim.plc.note_request()
        results = await super().read(params)
        if not self.may_write():
            for i, item in enumerate(params.NodesToRead):
                if (item.AttributeId == ua.AttributeIds.UserAccessLevel
                        and item.NodeId in self.sim.writable_ids):
                    results[i] = ua.DataValue(
                        ua.Variant(ua.AccessLevel.CurrentRead.mask, ua.VariantType.Byte))
        return results

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        sim = self.sim
        sim.plc.note_request()
        results: list[ua.StatusCode | None] = [None] * len(params.NodesToWrite)
        others: list[tuple[int, ua.WriteValue]] = []
        for i, item in enumerate(params.NodesToWrite):
            point = sim.points.get(item.NodeId)
            if point is None:
                others.append((i, item))
            else:
                results[i] = await sim.write_point(point, item, self.may_write())
        if others:
            rest = await super().write(ua.WriteParameters(NodesToWrite=[w for _, w in others]))
            for (i, _), status in zip(others, rest, strict=True):
                results[i] = status
        return [r if r is not None else ua.StatusCode(ua.StatusCodes.BadInternalError)
                for r in results]

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        self.sim.plc.note_request()
        return await super().browse(params)

    async def create_monitored_items(self, params: ua.CreateMonitoredItemsParameters
                                     ) -> list[ua.MonitoredItemCreateResult]:
        results = await super().create_monitored_items(params)
        subscription = self.subscription_service.subscriptions.get(params.SubscriptionId)
        if subscription is None:
            return results
        items = subscription.monitored_item_srv._monitored_items
        for result in results:
            data = items.get(result.MonitoredItemId) if result.StatusCode.is_good() else None
            if data is not None and data.where_clause_evaluator is not None:
                data.where_clause_evaluator = _WhereClause(
                    data.where_clause_evaluator.logger, self.aspace, data.filter.WhereClause)
        return results


class _InternalServer(InternalServer):
    """asyncua's internal server, making :class:`_Session` objects."""

    def __init__(self, sim: OpcuaPlc) -> None:
        self.sim = sim
        super().__init__(user_manager=sim.user_manager)  # type: ignore[arg-type]

    def create_session(self, name: str, user: User | None = None,
                       external: bool = False) -> InternalSession:
        return _Session(self.sim, self, self.aspace, self.subscription_service, name,
                        user=user or User(role=UserRole.Anonymous), external=external)


class _Processor(UaProcessor):
    """asyncua's message processor, refusing OpenSecureChannel for policies not offered."""

    def __init__(self, sim: OpcuaPlc, *args: Any) -> None:
        self.sim = sim
        super().__init__(*args)

    def _refuse(self, status: int, reason: str) -> bool:
        err = ua.ErrorMessage(ua.StatusCode(status), reason)
        self._transport.write(uatcp_to_binary(ua.MessageType.Error, err))
        return False  # the protocol closes the connection

    async def process(self, header: Any, body: Any) -> bool:
        opening = (header.MessageType == ua.MessageType.SecureOpen
                   and not self._connection.is_open())
        if opening:
            algorithm = struct_from_binary(ua.AsymmetricAlgorithmHeader,
                                           body.copy(header.body_size))
            if algorithm.SecurityPolicyURI not in self.sim.channel_policy_uris:
                return self._refuse(ua.StatusCodes.BadSecurityPolicyRejected,
                                    f"security policy not offered: {algorithm.SecurityPolicyURI}")
        try:
            return bool(await super().process(header, body))
        except ua.UaError as exc:
            if not opening:
                raise
            return self._refuse(ua.StatusCodes.BadSecurityChecksFailed, str(exc))


class _Protocol(OPCUAProtocol):
    """One client connection, processed by :class:`_Processor`, with the start-up cap and the
    Hello timeout."""

    def __init__(self, sim: OpcuaPlc, **kwargs: Any) -> None:
        self.sim = sim
        super().__init__(**kwargs)
        self._hello_timer: asyncio.TimerHandle | None = None
        #: ``opcua.no_hello_timeout``: asyncua's activation watchdog waits for the first
        #: complete message.
        self._watchdog_deferred = False

    def channel_open(self) -> bool:
        """True once the connection has opened its secure channel."""
        processor = self.processor
        # ``_connection``: asyncua's SecureConnection of this processor
        return processor is not None and bool(processor._connection.is_open())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sim.plc.note_request()  # a connection costs a fragile device as a request does
        starting = sum(1 for c in self.clients if not (isinstance(c, _Protocol)
                                                       and c.channel_open()))
        if starting >= self.sim.max_startups:
            self.peer_name = transport.get_extra_info("peername")
            self.sim.startups_refused += 1
            transport.close()  # processor stays None: connection_lost has nothing to undo
            return
        super().connection_made(transport)
        if self.processor is None:  # None when refused at asyncua's connection cap
            return
        self.processor = _Processor(self.sim, self.iserver, self.transport, self.limits)
        self.processor.set_policies(self.policies)
        timeout = self.sim.hello_timeout_s
        if timeout is not None:
            self._hello_timer = asyncio.get_running_loop().call_later(timeout,
                                                                      self._hello_expired)
        elif self._activation_watchdog_task is not None:
            self._activation_watchdog_task.cancel()
            self._activation_watchdog_task = None
            self._watchdog_deferred = True

    def _hello_expired(self) -> None:
        self._hello_timer = None
        if self.transport is not None and not self.channel_open():
            self.sim.hello_timeouts += 1
            self.transport.close()

    async def _process_one_msg(self, header: Any, buf: Any) -> bool:
        if self._watchdog_deferred:
            self._watchdog_deferred = False
            self._activation_watchdog_task = asyncio.create_task(self._activation_watchdog())
        return bool(await super()._process_one_msg(header, buf))

    def connection_lost(self, ex: BaseException | None) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self._watchdog_deferred = False
        super().connection_lost(ex)


class _BinaryServer(BinaryServer):
    """asyncua's TCP server, making :class:`_Protocol` objects."""

    def __init__(self, sim: OpcuaPlc, *args: Any) -> None:
        self.sim = sim
        super().__init__(*args)

    def _make_protocol(self) -> OPCUAProtocol:
        return _Protocol(self.sim, iserver=self.iserver, policies=self._policies,
                         clients=self.clients, closing_tasks=self.closing_tasks,
                         limits=self.limits)


class _Server(Server):
    """asyncua's server with :class:`_BinaryServer` as its TCP front."""

    def __init__(self, sim: OpcuaPlc) -> None:
        self.sim = sim
        super().__init__(iserver=sim.iserver)

    async def start(self) -> None:
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            self.bserver = _BinaryServer(self.sim, self.iserver, host, port, self.limits)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except BaseException:
            await self.iserver.stop()
            raise


class OpcuaPlc:
    """The simulator: a PLC core behind an asyncua server.

    :param args: the parsed command line (weaknesses, config, host, port).
    """

    def __init__(self, args: common.SimArgs) -> None:
        self.args = args
        self.config = args.config
        has = args.has
        fragile = (plcmod.FragileConfig(self.config.fragile_threshold_rps,
                                        self.config.fragile_recovery_s)
                   if has("load.fragile") else None)
        self.plc = plcmod.PLC(args.scan_period_s, fragile)
        self.offers_none = has("opcua.policy_none")
        self.validate_certs = not has("opcua.accepts_untrusted_certs")
        self.anonymous = has("opcua.anonymous")
        self.enforce_authz = not has("opcua.no_authz")
        self.user_enumeration = has("opcua.user_enumeration")
        #: ``Server.Auditing`` (``--auditing off``: a device without audit events, not a
        #: weakness).
        self.auditing = args.extra.get("auditing", "on") != "off"
        #: Whether audit events are really generated (``opcua.no_audit``: the flag lies).
        self.audit_events = self.auditing and not has("opcua.no_audit")
        self._audit_tasks: set[asyncio.Task[None]] = set()
        self.session_limit: int | None = (None if has("opcua.no_session_limit")
                                          else self.config.session_limit)
        #: Seconds to send a complete Hello and open the secure channel; None: no timeout.
        self.hello_timeout_s: float | None = (
            None if has("opcua.no_hello_timeout")
            else float(args.extra.get("hello_timeout_s", HELLO_TIMEOUT_S)))
        #: Connections allowed at once without a secure channel.
        self.max_startups = min(MAX_STARTUPS, self.config.connection_limit)
        #: Connections closed by the Hello timeout, and refused beyond the start-up cap.
        self.hello_timeouts = 0
        self.startups_refused = 0
        self.lockout = common.Lockout(self.config.lockout_threshold,
                                      self.config.lockout_duration_s,
                                      enabled=not has("opcua.no_lockout"))
        self.trust = TrustList([])
        self.sessions: set[_Session] = set()
        self.points: dict[ua.NodeId, Point] = {}
        self.writable_ids: frozenset[ua.NodeId] = frozenset()
        self.namespace_index = 0
        self.url = ""
        self._pushed: dict[ua.NodeId, int] = {}
        self.user_manager = _UserManager(self)
        #: SecurityPolicy URIs an OpenSecureChannel may ask for (None always, for discovery).
        self.channel_policy_uris: frozenset[str] = frozenset()
        self.iserver = _InternalServer(self)
        self.server = _Server(self)

    # -- the standard address space, from the cache when there is one ------------------
    async def _init_address_space(self) -> None:
        """``Server.init()``: build asyncua's standard address space (~1.4 s of CPU), or load it
        lazily from the shelf cache (~0.1 s), making the cache when there is none yet."""
        root = self.args.extra.get("aspace_cache") or default_aspace_cache()
        if root == "none":
            await self.server.init()
            return
        shelf = _cached_shelf(root)
        if shelf is None and (Path(root) / ASPACE_CACHE_NAME).exists():
            _logger.warning("ignoring the address space cache under %s: not private", root)
            await self.server.init()
            return
        if shelf is not None:
            try:
                await self.server.init(shelf)
                return
            except Exception:  # a damaged cache: fall back to building in memory
                _logger.exception("cannot load the address space cache %s", shelf)
                self.iserver = _InternalServer(self)
                self.server = _Server(self)
            await self.server.init()
            return
        lock_fd = _lock_cache(root)
        if lock_fd is None:  # another simulator is making the cache, or no folder for it
            await self.server.init()
            return
        try:
            build = _new_build_folder(root)
            try:
                # asyncua fills the address space, writes the shelf, and goes on in memory.
                await self.server.init(build / "aspace")
                _publish_cache(build, Path(root) / ASPACE_CACHE_NAME)
            finally:
                shutil.rmtree(build, ignore_errors=True)
        finally:
            os.close(lock_fd)  # releases the lock

    # -- set-up -----------------------------------------------------------------------
    async def _configure(self, certs: CertBundle) -> None:
        args, server, iserver = self.args, self.server, self.iserver
        has = args.has
        await server.set_application_uri(APPLICATION_URI)
        server.set_server_name("harness OPC UA PLC simulator")
        server.product_uri = "urn:harness:simulator"
        server.manufacturer_name = "harness"
        server.application_type = ua.ApplicationType.Server
        await server.set_build_info(server.product_uri, server.manufacturer_name, server.name,
                                    "0.1.0", "0", dt.datetime.now(dt.UTC))
        iserver.certificate = certs.server_cert
        iserver.private_key = certs.server_key
        self.trust = TrustList([certs.ca_cert])

        policies = list(HARDENED_POLICIES)
        if has("opcua.deprecated_policies"):
            policies += DEPRECATED_POLICIES
        if self.offers_none:
            policies.insert(0, _P.NoSecurity)
        server.set_security_policy(policies)
        self.channel_policy_uris = frozenset(
            [cast(type[security_policies.SecurityPolicy],
                  security_policies.SECURITY_POLICY_TYPE_MAP[p][0]).URI for p in policies]
            + [security_policies.SecurityPolicyNone.URI])
        tokens: list[type] = [ua.UserNameIdentityToken, ua.X509IdentityToken]
        if self.anonymous:
            tokens.insert(0, ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if self.validate_certs:
            server.set_certificate_validator(self._validate_client_certificate)

        if has("opcua.no_session_timeout"):
            iserver.min_session_timeout_ms = iserver.max_session_timeout_ms = NO_TIMEOUT_MS
        else:
            timeout_ms = max(self.config.idle_timeout_s * 1000.0, 100.0)
            iserver.max_session_timeout_ms = timeout_ms
            iserver.min_session_timeout_ms = min(timeout_ms, 1000.0)
            # A connection that never activates a session is idle too.
            iserver.max_pending_activation_seconds = max(timeout_ms / 1000.0, 1.0)

        host = args.host
        netloc = f"[{host}]" if ":" in host else host
        server.set_endpoint(f"opc.tcp://{netloc}:{args.port}{ENDPOINT_PATH}")
        await self._add_nodes()
        await server.write_attribute_value(SERVER_AUDITING, ua.DataValue(
            ua.Variant(self.auditing, ua.VariantType.Boolean)))

    async def _add_nodes(self) -> None:
        idx = await self.server.register_namespace(NAMESPACE_URI)
        self.namespace_index = idx
        plc_obj = await self.server.nodes.objects.add_object(
            ua.NodeId("PLC", idx), ua.QualifiedName("PLC", idx))
        with self.plc.image.lock:
            values = [self.plc.image.holding[p.address] for p in POINTS]
        for point, value in zip(POINTS, values, strict=True):
            nodeid = ua.NodeId(point.name, idx)
            var = await plc_obj.add_variable(
                nodeid, ua.QualifiedName(point.name.removeprefix("PLC."), idx),
                ua.Variant(value, ua.VariantType.UInt16))
            if point.writable:
                await var.set_writable()
            self.points[nodeid] = point
            self._pushed[nodeid] = value
        self.writable_ids = frozenset(n for n, p in self.points.items() if p.writable)

    def _fix_endpoints(self, port: int) -> None:
        """Put the real port in the endpoint descriptions (asyncua keeps the configured 0), and
        with ``opcua.policy_none`` let the None endpoint take a plaintext password."""
        self.server.endpoint = self.server.endpoint._replace(
            netloc=f"{self.server.endpoint.netloc.rpartition(':')[0]}:{port}")
        self.url = self.server.endpoint.geturl()
        for edp in self.iserver.endpoints:
            edp.EndpointUrl = self.url
            edp.Server.DiscoveryUrls = [self.url]
            if edp.SecurityMode == ua.MessageSecurityMode.None_:
                for token in edp.UserIdentityTokens:
                    if token.TokenType == ua.UserTokenType.UserName:
                        token.SecurityPolicyUri = security_policies.SecurityPolicyNone.URI

    async def _validate_client_certificate(self, cert: x509.Certificate,
                                           description: ua.ApplicationDescription) -> None:
        uri = description.ApplicationUri if description is not None else ""
        status = self.trust.check(cert, uri or "")
        if status is not None:
            raise ServiceError(getattr(ua.StatusCodes, status))

    # -- auditing ---------------------------------------------------------------------
    def audit_activation(self, session: _Session, params: ua.ActivateSessionParameters,
                         status: int) -> None:
        """Report one ActivateSession (``status`` Good: accepted) as an audit event on the
        Server object, unless this device generates none. Called from the synchronous
        ActivateSession service; the event is sent from a task of the running loop."""
        if not self.audit_events:
            return
        event = self._activation_event(session, params, status)
        task = asyncio.get_running_loop().create_task(
            self.iserver.subscription_service.trigger_event(event))
        self._audit_tasks.add(task)
        task.add_done_callback(self._audit_tasks.discard)

    def _activation_event(self, session: _Session, params: ua.ActivateSessionParameters,
                          status: int) -> event_objects.AuditActivateSessionEvent:
        ok = status == ua.StatusCodes.Good
        user = _claimed_user(params.UserIdentityToken)
        name = ua.StatusCode(status).name
        now = dt.datetime.now(dt.UTC)
        event = event_objects.AuditActivateSessionEvent(
            sourcenode=session.session_id,
            message=f"ActivateSession {'accepted' if ok else 'refused'} for {user!r}: {name}",
            severity=AUDIT_SEVERITY_OK if ok else AUDIT_SEVERITY_FAILED)
        event.emitting_node = SERVER_OBJECT
        event.EventId = uuid.uuid4().bytes
        event.SourceName = "Session/ActivateSession"  # OPC UA Part 5, AuditSessionEventType
        event.Time = event.ReceiveTime = now
        # asyncua types these three by their DataType node, which a Variant cannot carry
        event.add_property("ActionTimeStamp", now, ua.VariantType.DateTime)
        event.add_property("UserIdentityToken", _token_without_secret(params.UserIdentityToken),
                           ua.VariantType.ExtensionObject)
        event.add_property("ClientSoftwareCertificates", None, ua.VariantType.ExtensionObject)
        event.Status = ok
        event.ServerId = APPLICATION_URI
        event.ClientUserId = user
        event.ClientApplicationUri = session.client_application_uri
        event.StatusCodeId = ua.StatusCode(status)
        event.SessionId = session.session_id
        return event

    # -- process image ----------------------------------------------------------------
    async def write_point(self, point: Point, item: ua.WriteValue,
                          may_write: bool) -> ua.StatusCode:
        """Write one client value into the image (and the node); return the status."""
        if item.AttributeId != ua.AttributeIds.Value or not point.writable:
            return ua.StatusCode(ua.StatusCodes.BadNotWritable)
        if not may_write:
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        variant = item.Value.Value if item.Value is not None else None
        if variant is None or variant.VariantType not in _INTEGER_VARIANTS \
                or not isinstance(variant.Value, int):
            return ua.StatusCode(ua.StatusCodes.BadTypeMismatch)
        value = variant.Value
        if not 0 <= value <= 0xFFFF:
            return ua.StatusCode(ua.StatusCodes.BadOutOfRange)
        with self.plc.image.lock:
            self.plc.image.holding[point.address] = value
        await self._push(item.NodeId, value)
        return ua.StatusCode(ua.StatusCodes.Good)

    async def _push(self, nodeid: ua.NodeId, value: int) -> None:
        now = dt.datetime.now(dt.UTC)
        self._pushed[nodeid] = value
        await self.server.write_attribute_value(nodeid, ua.DataValue(
            ua.Variant(value, ua.VariantType.UInt16), SourceTimestamp=now, ServerTimestamp=now))

    async def _sync_loop(self) -> None:
        """Push changed image values into the nodes every :data:`SYNC_PERIOD_S`."""
        ids = list(self.points)
        while True:
            with self.plc.image.lock:
                values = [self.plc.image.holding[self.points[n].address] for n in ids]
            for nodeid, value in zip(ids, values, strict=True):
                if self._pushed.get(nodeid) != value:
                    await self._push(nodeid, value)
            await asyncio.sleep(SYNC_PERIOD_S)

    # -- life cycle -------------------------------------------------------------------
    def endpoints(self, certs: CertBundle, port: int) -> dict[str, Any]:
        """The ``endpoints`` object of the ready line."""
        idx = self.namespace_index

        def node(name: str) -> str:
            return f"ns={idx};s={name}"

        return {"opcua": {
            "url": self.url,
            "host": self.args.host,
            "port": port,
            "application_uri": APPLICATION_URI,
            "client_application_uri": CLIENT_APPLICATION_URI,
            "namespace_uri": NAMESPACE_URI,
            "namespace_index": idx,
            "server_cert": certs.paths["server_cert"],
            "client_cert": certs.paths["client_cert"],
            "client_key": certs.paths["client_key"],
            "ca_cert": certs.paths["ca_cert"],
            "ca_key": certs.paths["ca_key"],
            "hello_timeout_s": self.hello_timeout_s,
            "nodes": {
                "heartbeat": node("PLC.Heartbeat"),
                "setpoint": node("PLC.Setpoint"),
                "process_value": node("PLC.ProcessValue"),
                "output": node("PLC.Output"),
                "scratch": [node(p.name) for p in POINTS if p.name.startswith("PLC.Scratch.")],
                "protected": [node(p.name) for p in POINTS
                              if p.name.startswith("PLC.Protected.")],
            },
        }}

    async def serve(self, certs_future: concurrent.futures.Future[CertBundle],
                    stop: asyncio.Event) -> int:
        """Start, announce readiness, serve until ``stop`` is set, shut down; return 0.

        :raises StartupError: when the server cannot start.
        """
        await self._init_address_space()
        try:
            certs = await asyncio.wrap_future(certs_future)
        except OSError as exc:
            raise StartupError(f"cannot write certificates into {self.args.state_dir}: "
                               f"{exc}") from exc
        await self._configure(certs)
        if stop.is_set():
            return 0
        try:
            await self.server.start()
        except OSError as exc:
            raise StartupError(f"cannot listen on {self.args.host}:{self.args.port}: "
                               f"{exc.strerror or exc}") from exc
        bserver = self.server.bserver
        port = bserver.port if bserver is not None and bserver.port else self.args.port
        self._fix_endpoints(port)
        self.plc.start()
        sync = asyncio.create_task(self._sync_loop())
        try:
            common.ready(NAME, self.endpoints(certs, port), self.args.weaknesses)
            await stop.wait()
        finally:
            sync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sync
            # asyncua's clock task sleeps 1 s between ticks; cancel it rather than wait.
            clock = self.iserver.time_task
            if clock is not None:
                clock.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await clock
                self.iserver.time_task = None
            await self.server.stop()
            self.plc.stop()
        return 0
