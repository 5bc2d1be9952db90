"""Modbus/TCP Security client: MBAP over mutually authenticated TLS, every step guarded and logged.

Python's :mod:`ssl` does the TLS; the Modbus/TCP client of :mod:`harness.protocols.modbus` runs
over the TLS socket. The client is built for conformance checks, so it reports *who refused
what*:

- :func:`connect` asks the guard first, opens TCP (``connect_timeout_s``), and runs the handshake
  (``request_timeout_s`` per step). A handshake the **device** ends (a TLS alert from it, or it
  closes the connection) raises :class:`TlsRefused`; a handshake **our** side ends (the device's
  certificate does not verify against the profile's ``ca_cert``, a plaintext port, no common
  protocol version in our own library) raises :class:`~harness.errors.TargetError`, because the
  device was not given the chance to decide.
- TLS 1.3 moves client-certificate verification after the client's handshake is complete, so a
  device rejecting our certificate shows up only when we read: a connection the device closes
  or alerts on **before its first Modbus reply** also raises :class:`TlsRefused`
  (``stage="before first reply"``). Once a reply has come, a closure is what the Modbus client
  makes of it (an :class:`~harness.protocols.modbus.Exchange` with outcome ``closed``, or a
  :class:`~harness.errors.TargetError` from the strict helpers).
- :func:`attempt` wraps both into one observation for the authentication checks: accepted (a
  Modbus reply came, normal or exception) or refused (and where).
- :func:`probe_server_hello` sends one ClientHello (no certificate) and reports the version the
  device's ServerHello selects, or its alert: the protocol-version check rests on what the
  device chose, not on whether a whole handshake happened to complete.
- :func:`can_offer` asks the local OpenSSL, without any network traffic, whether it can build a
  ClientHello for a protocol version (TLS 1.0/1.1 need ``@SECLEVEL=0`` and may be compiled out),
  so a check never passes on an inability to test.

Evidence (channel ``modbus+tls://host:port?unit=N``): the offer (versions, client certificate
fingerprint and role), the outcome (negotiated version and cipher, or the alert), the device's
certificate fingerprint and summary, and every MBAP frame in hex (the plaintext inside TLS).

The server's certificate chain is verified against the profile's ``ca_cert`` (host name checking
is off: a device certificate often names neither the IP nor the name the bench uses; the
checks here judge the device, not its naming).
"""

from __future__ import annotations

import socket
import ssl
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509

from harness import pki
from harness.errors import HarnessError, TargetError
from harness.protocols import mbap
from harness.protocols.modbus import Exchange, ModbusTcpClient, Outcome, describe_pdu
from harness.safety import Deadline

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.safety import Guard

#: What a well-behaved client offers: TLS 1.2 up to whatever the library supports.
DEFAULT_VERSIONS: tuple[ssl.TLSVersion, ssl.TLSVersion] = (
    ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED)
#: Cipher string for offers below TLS 1.2 (OpenSSL 3 refuses their SHA-1 signatures otherwise).
LEGACY_CIPHERS = "DEFAULT:@SECLEVEL=0"
#: ClientHello ``client_version`` each pinned version writes (TLS 1.3 writes 0x0303 plus an
#: extension, so it is not listed).
_HELLO_VERSION = {
    ssl.TLSVersion.TLSv1: 0x0301,
    ssl.TLSVersion.TLSv1_1: 0x0302,
    ssl.TLSVersion.TLSv1_2: 0x0303,
}
#: Errors that mean "the peer closed or reset the connection".
_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError, BrokenPipeError,
           ConnectionAbortedError)

#: Device certificates already described in each check's evidence (noted once per check).
_described: weakref.WeakKeyDictionary[Evidence, set[str]] = weakref.WeakKeyDictionary()

Stage = Literal["handshake", "before first reply"]
Versions = ssl.TLSVersion | tuple[ssl.TLSVersion, ssl.TLSVersion] | None


class TlsRefused(TargetError):
    """The device refused this TLS client: it ended the handshake, or it closed or alerted on the
    connection before any Modbus reply.

    A subclass of :class:`~harness.errors.TargetError`, so a check that does not expect a
    refusal reports ERROR; the authentication checks catch it as their observation.
    """

    def __init__(self, message: str, *, stage: Stage, alert: str | None) -> None:
        super().__init__(message)
        #: ``handshake`` or ``before first reply``.
        self.stage: Stage = stage
        #: The TLS alert the device sent (OpenSSL's reason text), or None if it just closed.
        self.alert = alert


class MissingTestMaterial(HarnessError):
    """The profile lacks what a check needs to decide (client certificates, a CA key, a scratch
    point): the check is an ERROR naming the gap, never a PASS."""


class ClientCapabilityError(HarnessError):
    """The harness's own TLS library cannot do what a check needs (e.g. offer TLS 1.0)."""


# --------------------------------------------------------------------------- identities
@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate and key on disk, as the TLS library needs them."""

    #: Certificate (PEM).
    cert: Path
    #: Private key (PEM).
    key: Path
    #: Where it came from, for evidence (``profile client_certs.readonly``, ``minted ...``).
    label: str
    #: ``SHA256:<hex>`` of the certificate.
    fingerprint: str
    #: The Modbus/TCP Security role in the certificate, if any.
    role: str | None = None
    #: Certificate summary (:func:`harness.pki.describe`).
    summary: dict[str, object] = field(default_factory=dict, compare=False)

    @classmethod
    def from_files(cls, cert: Path, key: Path, label: str) -> ClientIdentity:
        """Load (and check) a certificate/key pair given as files.

        :raises MissingTestMaterial: unreadable files, or a key that is not the certificate's.
        """
        try:
            issued = pki.load_issued(cert, key)
        except (OSError, ValueError, TypeError) as exc:
            raise MissingTestMaterial(f"{label}: cannot use {cert} / {key}: {exc}") from exc
        return cls(cert, key, label, issued.fingerprint(), issued.role, pki.describe(issued.cert))

    @classmethod
    def from_issued(cls, issued: pki.Issued, folder: Path, stem: str,
                    label: str) -> ClientIdentity:
        """Write ``issued`` into ``folder`` (key mode 0600) and describe it."""
        cert, key = issued.write(folder, stem)
        return cls(cert, key, label, issued.fingerprint(), issued.role, pki.describe(issued.cert))

    def describe(self) -> str:
        """One line for evidence."""
        role = f", role {self.role}" if self.role else ", no role extension"
        return f"{self.label} ({self.fingerprint}{role})"


@dataclass(frozen=True)
class Endpoint:
    """Where the device's Modbus/TCP Security service is and whom it trusts."""

    host: str
    port: int
    #: Unit id of the MBAP header.
    unit: int
    #: CA that signs the device's certificate (used to verify it).
    ca_cert: Path

    @property
    def url(self) -> str:
        """``modbus+tls://host:port?unit=N``."""
        return f"modbus+tls://{self.host}:{self.port}?unit={self.unit}"


@dataclass(frozen=True)
class Timeouts:
    """The profile's timeouts (``safety.connect_timeout_s``, ``safety.request_timeout_s``)."""

    connect_s: float = 3.0
    request_s: float = 3.0


@dataclass(frozen=True)
class Handshake:
    """What one handshake offered and, when it completed, negotiated."""

    #: The version range offered, e.g. ``TLSv1.2..TLSv1.3`` or ``TLSv1`` when pinned.
    offered: str
    #: The client certificate shown, or None.
    identity: ClientIdentity | None
    #: Negotiated protocol version (``TLSv1.3``), None if the handshake failed.
    version: str | None = None
    #: Negotiated cipher suite name.
    cipher: str | None = None
    #: Fingerprint of the device's certificate.
    server_fingerprint: str | None = None


# --------------------------------------------------------------------------- TLS helpers
def version_name(version: ssl.TLSVersion) -> str:
    """``TLSv1``, ``TLSv1.1``, ``TLSv1.2``, ``TLSv1.3`` (OpenSSL's spelling), or ``max``."""
    if version is ssl.TLSVersion.MAXIMUM_SUPPORTED:
        return "max"
    if version is ssl.TLSVersion.MINIMUM_SUPPORTED:
        return "min"
    return {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1",
            ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}.get(
                version, version.name)


def version_range(versions: Versions) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """Normalise ``None`` (the default offer), one pinned version, or a ``(min, max)`` pair."""
    if versions is None:
        return DEFAULT_VERSIONS
    if isinstance(versions, ssl.TLSVersion):
        return versions, versions
    low, high = versions
    return low, high


def _describe_range(low: ssl.TLSVersion, high: ssl.TLSVersion) -> str:
    return version_name(low) if low is high else f"{version_name(low)}..{version_name(high)}"


def _is_legacy(low: ssl.TLSVersion) -> bool:
    return low is not ssl.TLSVersion.MINIMUM_SUPPORTED and low < ssl.TLSVersion.TLSv1_2


def client_context(ca_cert: Path | None, identity: ClientIdentity | None,
                   versions: Versions = None) -> ssl.SSLContext:
    """A client context offering ``versions`` and showing ``identity``.

    :param ca_cert: verify the device's certificate chain against it; None verifies nothing
        (only for :func:`can_offer`, which never connects).
    :raises ClientCapabilityError: the library refuses the version range.
    :raises MissingTestMaterial: the identity files cannot be loaded.
    """
    low, high = version_range(versions)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = low
            ctx.maximum_version = high
        if _is_legacy(low):
            ctx.set_ciphers(LEGACY_CIPHERS)
    except (ValueError, ssl.SSLError) as exc:
        raise ClientCapabilityError(
            f"this OpenSSL ({ssl.OPENSSL_VERSION}) cannot offer "
            f"{_describe_range(low, high)}: {exc}") from exc
    if ca_cert is None:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cafile=str(ca_cert))
        except (OSError, ssl.SSLError) as exc:
            raise MissingTestMaterial(f"modbus_tls.ca_cert {ca_cert}: cannot load: {exc}") from exc
    if identity is not None:
        try:
            ctx.load_cert_chain(str(identity.cert), str(identity.key))
        except (OSError, ssl.SSLError) as exc:
            raise MissingTestMaterial(f"{identity.label}: cannot load {identity.cert}: {exc}"
                                      ) from exc
    return ctx


@dataclass(frozen=True)
class Capability:
    """Whether the local TLS library can offer one protocol version."""

    version: str
    #: True if it produced a ClientHello carrying that version.
    can_offer: bool
    #: Why not, or what the ClientHello said.
    detail: str
    #: The ClientHello it produced (hex, first bytes), for evidence.
    client_hello: str = ""


def can_offer(version: ssl.TLSVersion) -> Capability:
    """Ask the local OpenSSL to build a ClientHello pinned to ``version`` (no network traffic).

    The handshake runs on memory buffers: if OpenSSL writes a TLS handshake record whose
    ClientHello ``client_version`` is the one asked for, the library can offer it.
    """
    name = version_name(version)
    try:
        ctx = client_context(None, None, version)
    except ClientCapabilityError as exc:
        return Capability(name, False, str(exc))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass  # the ClientHello is written and OpenSSL waits for a ServerHello: expected
    except ssl.SSLError as exc:
        return Capability(name, False, f"OpenSSL {ssl.OPENSSL_VERSION} refused to build a "
                                       f"{name} ClientHello: {exc.reason or exc}")
    hello = outgoing.read()
    # record: type(1) version(2) length(2) | handshake: type(1) length(3) client_version(2)
    if len(hello) < 11 or hello[0] != 0x16 or hello[5] != 0x01:
        return Capability(name, False, "OpenSSL wrote no ClientHello", hello[:64].hex())
    offered = int.from_bytes(hello[9:11], "big")
    expected = _HELLO_VERSION.get(version)
    if expected is not None and offered != expected:
        return Capability(name, False, f"ClientHello carries client_version 0x{offered:04x}, "
                                       f"not 0x{expected:04x}", hello[:64].hex())
    return Capability(name, True, f"ClientHello with client_version 0x{offered:04x} "
                                  f"({len(hello)} bytes) under {LEGACY_CIPHERS!r}"
                      if _is_legacy(version) else
                      f"ClientHello with client_version 0x{offered:04x}", hello[:64].hex())


def _refusal(exc: BaseException) -> tuple[bool, str | None, str]:
    """Classify a TLS/socket error: (the device refused, its alert, text)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False, None, f"the device's certificate did not verify: {exc.verify_message}"
    if isinstance(exc, _CLOSED):
        return True, None, f"connection closed by the device ({type(exc).__name__})"
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or exc)
        if "ALERT" in reason.upper():
            return True, reason, f"TLS alert from the device: {reason}"
        return False, None, f"TLS error on our side: {reason}"
    return False, None, f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- ServerHello probe
#: TLS record content types and the alert descriptions worth naming in evidence.
_ALERT, _HANDSHAKE = 0x15, 0x16
ALERT_NAMES = {0: "close_notify", 10: "unexpected_message", 20: "bad_record_mac",
               40: "handshake_failure", 42: "bad_certificate", 43: "unsupported_certificate",
               45: "certificate_expired", 46: "certificate_unknown", 47: "illegal_parameter",
               48: "unknown_ca", 50: "decode_error", 51: "decrypt_error",
               70: "protocol_version", 71: "insufficient_security", 80: "internal_error",
               86: "inappropriate_fallback", 116: "certificate_required"}
#: Wire version -> OpenSSL's name.
WIRE_VERSIONS = {0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLSv1.1", 0x0303: "TLSv1.2",
                 0x0304: "TLSv1.3"}
#: Most bytes of server records the probe reads before it gives up on finding a ServerHello.
MAX_HELLO_BYTES = 64 * 1024


@dataclass(frozen=True)
class HelloProbe:
    """What the device answered to one ClientHello."""

    #: The version range offered.
    offered: str
    #: ``server_hello``, ``alert`` or ``closed``.
    outcome: Literal["server_hello", "alert", "closed"]
    #: The version the ServerHello selected (``TLSv1``...), when there was one.
    selected: str | None = None
    #: The alert description number and name, when the device sent an alert.
    alert: str | None = None
    #: The first server bytes (hex, bounded), for evidence.
    server_bytes: str = ""

    @property
    def selected_wire(self) -> int | None:
        """The selected version as its wire number (0x0301...)."""
        return next((k for k, v in WIRE_VERSIONS.items() if v == self.selected), None)

    def describe(self) -> str:
        """One line for evidence and messages."""
        if self.outcome == "server_hello":
            return f"ServerHello selecting {self.selected}"
        if self.outcome == "alert":
            return f"TLS alert {self.alert}"
        return "connection closed without a ServerHello"


def _server_hello_version(body: bytes) -> int:
    """The version a ServerHello body selects (supported_versions extension first).

    :raises ValueError: the body is not a parseable ServerHello.
    """
    if len(body) < 38:
        raise ValueError("ServerHello too short")
    legacy = int.from_bytes(body[0:2], "big")
    pos = 2 + 32
    pos += 1 + body[pos]  # session id
    pos += 2 + 1  # cipher suite, compression method
    if pos + 2 > len(body):
        return legacy  # no extensions
    end = min(len(body), pos + 2 + int.from_bytes(body[pos:pos + 2], "big"))
    pos += 2
    while pos + 4 <= end:
        ext_type = int.from_bytes(body[pos:pos + 2], "big")
        ext_len = int.from_bytes(body[pos + 2:pos + 4], "big")
        if ext_type == 0x002B and ext_len == 2:  # supported_versions: the real choice
            return int.from_bytes(body[pos + 4:pos + 6], "big")
        pos += 4 + ext_len
    return legacy


def probe_server_hello(guard: Guard, evidence: Evidence, endpoint: Endpoint,
                       versions: Versions, *, timeouts: Timeouts | None = None) -> HelloProbe:
    """Send one ClientHello offering ``versions`` and read what the device answers.

    No certificate is shown and the handshake is never completed: the question is only which
    protocol version the device *selects* (a ServerHello), or whether it refuses the offer (an
    alert, or closing the connection). The ClientHello is OpenSSL's own (built on memory
    buffers, as :func:`can_offer` does), so the offer is exactly what a TLS client would send.

    :raises ClientCapabilityError: the local library cannot build that ClientHello.
    :raises TargetError: unreachable, silent, or bytes that are not TLS.
    """
    timeouts = timeouts or Timeouts()
    low, high = version_range(versions)
    offered = _describe_range(low, high)
    ctx = client_context(None, None, versions)
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                       server_hostname=endpoint.host)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLError as exc:
        raise ClientCapabilityError(f"OpenSSL cannot build a {offered} ClientHello: "
                                    f"{exc.reason or exc}") from exc
    hello = outgoing.read()
    address = guard.check_destination(endpoint.host, endpoint.port)
    evidence.sent(endpoint.url, hello, f"TLS ClientHello offering {offered} (probe: which "
                                       "version does the device select?)")
    try:
        sock = socket.create_connection((address, endpoint.port), timeout=timeouts.connect_s)
    except OSError as exc:
        evidence.received(endpoint.url, summary=f"TCP connect failed: {exc}")
        raise TargetError(f"{endpoint.url}: TCP connect failed: {exc}") from exc
    data = bytearray()
    try:
        sock.settimeout(timeouts.request_s)
        sock.sendall(hello)
        probe = _read_hello(sock, data, offered, timeouts)
    except TimeoutError as exc:
        evidence.received(endpoint.url, bytes(data[:512]) or None,
                          f"no ServerHello within {timeouts.request_s:g} s")
        raise TargetError(f"{endpoint.url}: no answer to a {offered} ClientHello within "
                          f"{timeouts.request_s:g} s") from exc
    except ValueError as exc:
        evidence.received(endpoint.url, bytes(data[:512]), f"not a TLS answer: {exc}")
        raise TargetError(f"{endpoint.url}: answer to a ClientHello is not TLS: {exc} "
                          f"({bytes(data[:16]).hex()})") from exc
    finally:
        sock.close()
    evidence.received(endpoint.url, bytes(data[:512]) or None, probe.describe())
    return probe


def _read_hello(sock: socket.socket, data: bytearray, offered: str,
                timeouts: Timeouts) -> HelloProbe:
    """Read server records until a ServerHello, an alert, or the end (bounded)."""
    deadline = Deadline(timeouts.request_s)
    handshake = bytearray()
    pos = 0
    while True:
        while len(data) - pos >= 5:
            ctype, length = data[pos], int.from_bytes(data[pos + 3:pos + 5], "big")
            if ctype not in (_ALERT, _HANDSHAKE, 0x14) or data[pos + 1] != 0x03 \
                    or length > 18432:
                raise ValueError(f"record type 0x{ctype:02x}, version "
                                 f"{bytes(data[pos + 1:pos + 3]).hex()}, length {length}")
            if len(data) - pos - 5 < length:
                break
            fragment = bytes(data[pos + 5:pos + 5 + length])
            pos += 5 + length
            if ctype == _ALERT and len(fragment) >= 2:
                name = ALERT_NAMES.get(fragment[1], "unknown")
                return HelloProbe(offered, "alert", alert=f"{fragment[1]} ({name})",
                                  server_bytes=bytes(data[:64]).hex())
            if ctype == _HANDSHAKE:
                handshake += fragment
                if len(handshake) >= 4:
                    if handshake[0] != 0x02:
                        raise ValueError(f"first handshake message is type {handshake[0]}, "
                                         "not ServerHello")
                    size = int.from_bytes(handshake[1:4], "big")
                    if len(handshake) >= 4 + size:
                        wire = _server_hello_version(bytes(handshake[4:4 + size]))
                        return HelloProbe(offered, "server_hello",
                                          selected=WIRE_VERSIONS.get(wire, f"0x{wire:04x}"),
                                          server_bytes=bytes(data[:64]).hex())
        if len(data) > MAX_HELLO_BYTES:
            raise ValueError(f"over {MAX_HELLO_BYTES} bytes without a ServerHello")
        if deadline.expired:
            raise TimeoutError
        sock.settimeout(max(0.001, deadline.remaining()))
        try:
            chunk = sock.recv(4096)
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            chunk = b""
        if not chunk:
            if len(data) > pos:
                raise ValueError(f"connection closed inside a record ({len(data) - pos} bytes)")
            return HelloProbe(offered, "closed", server_bytes=bytes(data[:64]).hex())
        data += chunk


# --------------------------------------------------------------------------- the client
class MbtlsClient(ModbusTcpClient):
    """One Modbus/TCP Security connection (use :func:`connect`).

    The Modbus/TCP client of :mod:`harness.protocols.modbus` over the TLS socket (its
    ``exchange``, ``request``, ``read_registers``, ``read_bits``, ``write_registers``...), with
    one difference: until the device has sent its first reply, a closed connection or a TLS
    alert raises :class:`TlsRefused` (TLS 1.3 rejects a client certificate only after the
    client's handshake is complete, so this is where such a refusal shows).
    """

    def __init__(self, tls: ssl.SSLSocket, *, endpoint: Endpoint, handshake: Handshake,
                 evidence: Evidence, timeouts: Timeouts, label: str) -> None:
        super().__init__(tls, channel=endpoint.url, unit=endpoint.unit, evidence=evidence,
                         request_timeout=timeouts.request_s)
        self.endpoint = endpoint
        self.handshake = handshake
        self.label = label
        #: True once the device has sent one Modbus reply on this connection.
        self.answered = False

    def __enter__(self) -> MbtlsClient:
        return self

    def exchange(self, pdu: bytes, *, unit: int | None = None, summary: str = "",
                 timeout: float | None = None) -> Exchange:
        """As :meth:`ModbusTcpClient.exchange`, raising :class:`TlsRefused` for a closure or an
        alert before the first reply."""
        what = f"{summary or describe_pdu(pdu)} [{self.label}]"
        try:
            ex = super().exchange(pdu, unit=unit, summary=what, timeout=timeout)
        except TargetError as exc:
            cause = exc.__cause__
            if not self.answered and cause is not None:
                refused, alert, text = _refusal(cause)
                if refused:
                    self.close()
                    raise TlsRefused(f"{self.channel} [{self.label}]: {text} in reply to "
                                     f"{describe_pdu(pdu)}, before any Modbus reply",
                                     stage="before first reply", alert=alert) from exc
            raise
        if ex.outcome is Outcome.CLOSED and not self.answered:
            raise TlsRefused(f"{self.channel} [{self.label}]: connection closed by the device "
                             f"in reply to {describe_pdu(pdu)}, before any Modbus reply",
                             stage="before first reply", alert=None)
        if ex.answered:
            self.answered = True
        return ex


# --------------------------------------------------------------------------- connecting
def connect(guard: Guard, evidence: Evidence, endpoint: Endpoint, *,
            identity: ClientIdentity | None, versions: Versions = None,
            timeouts: Timeouts | None = None, label: str = "") -> MbtlsClient:
    """Open a guarded TCP connection and complete a TLS handshake.

    :param identity: the client certificate to show, or None for none.
    :param versions: None (TLS 1.2 and newer), one pinned version, or ``(min, max)``.
    :param label: how the connection is named in evidence (default: the identity's label).
    :raises TlsRefused: the device ended the handshake.
    :raises TargetError: unreachable, timeout, or a handshake our side ended.
    :raises harness.errors.SafetyViolation: the destination is not allowed.
    """
    timeouts = timeouts or Timeouts()
    address = guard.check_destination(endpoint.host, endpoint.port)
    low, high = version_range(versions)
    offered = _describe_range(low, high)
    label = label or (identity.label if identity else "no client certificate")
    ctx = client_context(endpoint.ca_cert, identity, versions)
    shown = identity.describe() if identity else "no client certificate"
    evidence.sent(endpoint.url, summary=f"TLS ClientHello to {endpoint.url} offering {offered}"
                                   f"{' (' + LEGACY_CIPHERS + ')' if _is_legacy(low) else ''}; "
                                   f"client certificate: {shown}")
    try:
        raw = socket.create_connection((address, endpoint.port), timeout=timeouts.connect_s)
    except TimeoutError as exc:
        evidence.received(endpoint.url,
                          summary=f"TCP connect timed out after {timeouts.connect_s:g} s")
        raise TargetError(f"{endpoint.url}: TCP connect timed out after "
                          f"{timeouts.connect_s:g} s") from exc
    except OSError as exc:
        evidence.received(endpoint.url, summary=f"TCP connect failed: {exc.strerror or exc}")
        raise TargetError(f"{endpoint.url}: TCP connect failed: {exc.strerror or exc}") from exc
    try:
        raw.settimeout(timeouts.request_s)
        tls = ctx.wrap_socket(raw, server_hostname=endpoint.host)
    except TimeoutError as exc:
        raw.close()
        evidence.received(endpoint.url, summary=f"TLS handshake timed out after "
                                           f"{timeouts.request_s:g} s")
        raise TargetError(f"{endpoint.url}: TLS handshake timed out after "
                          f"{timeouts.request_s:g} s ({label})") from exc
    except (ssl.SSLError, OSError) as exc:
        raw.close()
        refused, alert, text = _refusal(exc)
        evidence.received(endpoint.url, summary=f"handshake failed: {text}")
        if refused:
            raise TlsRefused(f"{endpoint.url}: handshake refused ({label}): {text}",
                             stage="handshake", alert=alert) from exc
        raise TargetError(f"{endpoint.url}: handshake failed on our side ({label}): {text}"
                          ) from exc
    der = tls.getpeercert(binary_form=True)
    cipher = tls.cipher()
    handshake = Handshake(offered, identity, tls.version(), cipher[0] if cipher else None,
                          pki.fingerprint(der) if der else None)
    evidence.received(endpoint.url, summary=f"handshake complete: {handshake.version} "
                                       f"{handshake.cipher}; device certificate "
                                       f"{handshake.server_fingerprint}")
    seen = _described.setdefault(evidence, set())
    if der and handshake.server_fingerprint not in seen:
        seen.add(handshake.server_fingerprint or "")
        evidence.note("device certificate", **pki.describe(x509.load_der_x509_certificate(der)))
    return MbtlsClient(tls, endpoint=endpoint, handshake=handshake, evidence=evidence,
                       timeouts=timeouts, label=label)


@dataclass(frozen=True)
class Attempt:
    """The outcome of one connection attempt judged by the authentication checks."""

    #: True when the device sent a Modbus reply (normal or exception): it accepted the client.
    accepted: bool
    #: Where a refusal happened (``handshake``, ``before first reply``), or ``replied``.
    stage: str
    #: Observation in words (alert, negotiated version, reply).
    detail: str
    #: The completed handshake, if it completed.
    handshake: Handshake | None = None
    #: The TLS alert of a refusal, if any.
    alert: str | None = None


def attempt(guard: Guard, evidence: Evidence, endpoint: Endpoint, *,
            identity: ClientIdentity | None, versions: Versions = None,
            timeouts: Timeouts | None = None, label: str = "",
            probe_address: int = 0) -> Attempt:
    """Connect and send one read (FC 3, one holding register at ``probe_address``).

    Accepted = a Modbus reply came (even an exception reply). Refused = the device ended the
    handshake or closed/alerted before replying. Anything else (unreachable, timeout without
    closure, our side refusing the device's certificate) raises :class:`TargetError`.
    """
    try:
        client = connect(guard, evidence, endpoint, identity=identity, versions=versions,
                         timeouts=timeouts, label=label)
    except TlsRefused as exc:
        return Attempt(False, exc.stage, str(exc), None, exc.alert)
    with client:
        try:
            ex = client.exchange(mbap.read_pdu(3, probe_address, 1),
                                 summary=f"probe read HR {probe_address}")
        except TlsRefused as exc:
            return Attempt(False, exc.stage, str(exc), client.handshake, exc.alert)
    hs = client.handshake
    if ex.outcome is not Outcome.REPLY:
        raise TargetError(f"{endpoint.url} [{client.label}]: handshake {hs.version} completed, "
                          f"then {ex.describe()} to a read: neither accepted nor refused")
    return Attempt(True, "replied", f"handshake {hs.version} {hs.cipher}, then the device "
                                    f"answered a Modbus read: {ex.describe()}", hs)
