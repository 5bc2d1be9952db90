"""Guarded SSH client for the conformance checks: a raw KEXINIT probe and paramiko sessions.

Two ways in, both guarded (:meth:`~harness.safety.Guard.check_destination` before any socket
opens), both bounded in time and bytes, both recorded in the check's evidence (channel
``ssh://host:port``):

- :func:`probe_server` reads what a server offers without negotiating anything: the
  identification lines (RFC 4253 section 4.2) and the server's first binary packet, its
  SSH_MSG_KEXINIT (section 7.1), which is sent in the clear. It parses the ten name-lists itself
  (:class:`KexInit`), so the algorithm check judges what the server *offers*, not what one
  client happened to negotiate. Bounds: a version line longer than 255 bytes (RFC 4253) is
  refused; pre-version lines are accepted up to :data:`MAX_PRE_VERSION_LINE` bytes each and
  :data:`MAX_PRE_VERSION_BYTES` in total; a ``packet_length`` above :data:`MAX_PACKET` (the
  35000 bytes every implementation must handle) is refused before its body is read; the whole
  exchange has one deadline (``request_timeout_s``). Any breach is a
  :class:`~harness.errors.TargetError`.
- :class:`SshSession` is a paramiko client transport on a socket we opened and wrapped
  (:class:`_DeviceSocket`): the server's identification is read by the same bounded reader
  first, every plaintext packet up to the server's NEWKEYS is length-checked as it arrives, and
  the connection may deliver at most :data:`MAX_CONNECTION_BYTES`. paramiko's timeouts (banner,
  handshake, auth, channel) come from the profile. Authentication goes through
  :meth:`SshSession.authenticate`, which records the method list the server sends with every
  failure (paramiko keeps it only for some failures), the pre-authentication banner
  (SSH_MSG_USERAUTH_BANNER) and how long the answer took.

For legacy devices the client also speaks ``diffie-hellman-group14-sha1``,
``diffie-hellman-group1-sha1`` and ``ssh-rsa`` host-key signatures, which paramiko 5 dropped; they
are offered *after* every modern algorithm, so they are only negotiated with a device that offers
nothing better (the algorithm check judges the offer separately, from the raw KEXINIT).

Outcomes a check judges are values: :class:`AuthResult` (accepted or refused, with the methods
listed), :class:`ChannelRefused` (a TargetError subclass the session checks catch), a
:class:`ReadResult` (matched, closed, or timed out). Everything else unexpected raises
:class:`~harness.errors.TargetError` (ERROR).

paramiko is imported only inside functions; this module is imported only by the ``ssh``
fixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from harness import __version__
from harness.errors import HarnessError, TargetError
from harness.safety import Deadline

if TYPE_CHECKING:
    import paramiko

    from harness.evidence import Evidence
    from harness.safety import Guard

#: Our identification string (RFC 4253 4.2: printable ASCII, no spaces or minus in the version).
CLIENT_VERSION = f"SSH-2.0-harness_{__version__}"
#: RFC 4253 4.2: the identification line is at most 255 bytes including CR LF.
MAX_VERSION_LINE = 255
#: Longest pre-version line accepted (RFC 4253 allows lines before the version line).
MAX_PRE_VERSION_LINE = 4096
#: Most bytes of pre-version lines accepted in total.
MAX_PRE_VERSION_BYTES = 64 * 1024
#: RFC 4253 6.1: every implementation must handle packets of 35000 bytes; we accept no more.
MAX_PACKET = 35000
#: Non-KEXINIT packets (IGNORE, DEBUG) skipped before the KEXINIT.
MAX_SKIPPED_PACKETS = 8
#: Most bytes one paramiko connection may receive from the device.
MAX_CONNECTION_BYTES = 16 * 1024 * 1024
#: Most bytes one channel read keeps.
MAX_CHANNEL_BYTES = 256 * 1024
#: Bytes of received channel text kept per evidence entry summary.
SUMMARY_CHARS = 200

MSG_DISCONNECT, MSG_IGNORE, MSG_DEBUG, MSG_KEXINIT, MSG_NEWKEYS = 1, 2, 4, 20, 21
#: paramiko's code for SSH_OPEN_ADMINISTRATIVELY_PROHIBITED (RFC 4254 5.1).
OPEN_ADMINISTRATIVELY_PROHIBITED = 1

#: Key exchange methods, modern first, then legacy ones only for devices offering nothing else.
CLIENT_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group-exchange-sha256",
    "diffie-hellman-group14-sha256",
    "diffie-hellman-group14-sha1",
    "diffie-hellman-group1-sha1",
)
#: Host-key algorithms, modern first; ``ssh-rsa`` (SHA-1) last.
CLIENT_HOST_KEYS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
)
#: Ciphers, AEAD first; CBC and 3DES last (legacy devices only).
CLIENT_CIPHERS = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
    "aes256-cbc",
    "aes192-cbc",
    "aes128-cbc",
    "3des-cbc",
)
#: MACs, encrypt-then-MAC SHA-2 first; SHA-1 and MD5 last (legacy devices only).
CLIENT_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
    "hmac-sha1",
    "hmac-sha1-96",
    "hmac-md5",
    "hmac-md5-96",
)
#: Group-exchange request of the modulus probe: (min, preferred, max) bits. A server that
#: answers a client asking for 1024 bits with a 1024-bit group would do so for an attacker too.
GEX_PROBE_BITS = (1024, 1024, 8192)

# RFC 2409 6.2 (Oakley group 2), for diffie-hellman-group1-sha1 with legacy devices.
_OAKLEY_GROUP2 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
    16,
)


class ProfileGap(HarnessError):
    """The profile lacks what a check needs to decide (an account, a key, an expectation):
    the check is an ERROR naming the gap, never a PASS."""


class ChannelRefused(TargetError):
    """The device refused to open a channel (SSH_MSG_CHANNEL_OPEN_FAILURE).

    A :class:`~harness.errors.TargetError`, so a check that does not expect it reports ERROR;
    the session-limit check catches it as its observation.
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"channel open refused by the device: code {code} ({text})")
        #: RFC 4254 reason code (1: administratively prohibited, 4: resource shortage).
        self.code = code
        #: The device's description.
        self.text = text


# --------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Endpoint:
    """Where the device's SSH server is."""

    host: str
    port: int

    @property
    def url(self) -> str:
        """``ssh://host:port`` (the evidence channel)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{host}:{self.port}"


@dataclass(frozen=True)
class Timeouts:
    """The profile's timeouts (``safety.connect_timeout_s``, ``safety.request_timeout_s``)."""

    connect_s: float = 3.0
    request_s: float = 3.0


# --------------------------------------------------------------------------- wire format
@dataclass(frozen=True)
class Identification:
    """The server's identification string and the lines it sent before it."""

    #: ``SSH-protoversion-softwareversion[ SP comments]`` without CR LF.
    version_line: str
    #: Lines before the version line (RFC 4253 allows them; clients usually hide them).
    pre_version_lines: tuple[str, ...] = ()

    @property
    def protocol_version(self) -> str:
        """``2.0``, ``1.99`` (both 1 and 2), ``1.5``... or what the server wrote."""
        parts = self.version_line.split(" ", 1)[0].split("-", 2)
        return parts[1] if len(parts) > 1 else ""

    @property
    def software(self) -> str:
        """The software version field."""
        parts = self.version_line.split(" ", 1)[0].split("-", 2)
        return parts[2] if len(parts) > 2 else ""

    @property
    def comments(self) -> str:
        """The optional comments after the software version."""
        return self.version_line.split(" ", 1)[1] if " " in self.version_line else ""

    @property
    def speaks_ssh1(self) -> bool:
        """True when the server offers SSH protocol 1 (``1.x``, including ``1.99``)."""
        return self.protocol_version.startswith("1.")

    @property
    def speaks_ssh2(self) -> bool:
        """True when the server offers SSH protocol 2 (``2.0`` or ``1.99``)."""
        return self.protocol_version in ("2.0", "1.99")


#: Field names of the ten name-lists of SSH_MSG_KEXINIT, in wire order.
KEXINIT_LISTS = (
    "kex",
    "host_key",
    "ciphers_c2s",
    "ciphers_s2c",
    "macs_c2s",
    "macs_s2c",
    "compression_c2s",
    "compression_s2c",
    "languages_c2s",
    "languages_s2c",
)


@dataclass(frozen=True)
class KexInit:
    """A parsed SSH_MSG_KEXINIT (RFC 4253 7.1)."""

    cookie: bytes
    kex: tuple[str, ...]
    host_key: tuple[str, ...]
    ciphers_c2s: tuple[str, ...]
    ciphers_s2c: tuple[str, ...]
    macs_c2s: tuple[str, ...]
    macs_s2c: tuple[str, ...]
    compression_c2s: tuple[str, ...]
    compression_s2c: tuple[str, ...]
    languages_c2s: tuple[str, ...]
    languages_s2c: tuple[str, ...]
    first_kex_packet_follows: bool
    reserved: int = 0

    @classmethod
    def parse(cls, payload: bytes) -> KexInit:
        """Parse the payload of a KEXINIT packet (message number included).

        :raises ValueError: not a KEXINIT, truncated, a name-list longer than what is left, a
            name that is not printable US-ASCII, or bytes after the reserved field.
        """
        if not payload or payload[0] != MSG_KEXINIT:
            got = payload[0] if payload else "nothing"
            raise ValueError(f"expected SSH_MSG_KEXINIT (20), got message {got}")
        if len(payload) < 17:
            raise ValueError(f"KEXINIT of {len(payload)} bytes is shorter than its cookie")
        cookie = payload[1:17]
        pos = 17
        lists: dict[str, tuple[str, ...]] = {}
        for name in KEXINIT_LISTS:
            if pos + 4 > len(payload):
                raise ValueError(f"KEXINIT truncated before the {name} name-list")
            (length,) = struct.unpack_from(">I", payload, pos)
            pos += 4
            if length > len(payload) - pos:
                raise ValueError(f"KEXINIT {name} name-list says {length} bytes, "
                                 f"{len(payload) - pos} are left")
            raw = payload[pos:pos + length]
            pos += length
            lists[name] = _name_list(raw, name)
        if pos + 5 > len(payload):
            raise ValueError("KEXINIT truncated before first_kex_packet_follows/reserved")
        follows = payload[pos] != 0
        (reserved,) = struct.unpack_from(">I", payload, pos + 1)
        pos += 5
        if pos != len(payload):
            raise ValueError(f"KEXINIT has {len(payload) - pos} bytes after its reserved field")
        return cls(cookie=cookie, **lists, first_kex_packet_follows=follows, reserved=reserved)

    def lists(self) -> dict[str, list[str]]:
        """The ten name-lists by field name (for evidence)."""
        return {name: list(getattr(self, name)) for name in KEXINIT_LISTS}

    @property
    def ciphers(self) -> tuple[str, ...]:
        """Ciphers of both directions, each once, in offer order."""
        return _union(self.ciphers_c2s, self.ciphers_s2c)

    @property
    def macs(self) -> tuple[str, ...]:
        """MACs of both directions, each once, in offer order."""
        return _union(self.macs_c2s, self.macs_s2c)

    @property
    def compression(self) -> tuple[str, ...]:
        """Compression methods of both directions, each once."""
        return _union(self.compression_c2s, self.compression_s2c)


def _union(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    out = list(a)
    out.extend(x for x in b if x not in out)
    return tuple(out)


_NAME = re.compile(r"^[\x21-\x7e]{1,64}$")


def _name_list(raw: bytes, field_name: str) -> tuple[str, ...]:
    if not raw:
        return ()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"KEXINIT {field_name} name-list is not US-ASCII") from None
    names = tuple(text.split(","))
    for n in names:
        if not _NAME.match(n) or "," in n:
            raise ValueError(f"KEXINIT {field_name} name-list holds an invalid name {n[:80]!r}")
    return names


@dataclass(frozen=True)
class ServerHello:
    """What :func:`probe_server` read: the identification and, for SSH 2, the KEXINIT."""

    identification: Identification
    #: None when the server speaks only SSH 1 (it sends no KEXINIT to an SSH 2 client).
    kexinit: KexInit | None


class _WireReader:
    """Bounded reads from a socket under one deadline."""

    def __init__(self, sock: socket.socket, deadline: Deadline, what: str) -> None:
        self.sock = sock
        self.deadline = deadline
        self.what = what
        self.buffer = bytearray()

    def _fill(self, cap: int) -> None:
        """Receive at least one more byte (at most ``cap`` in the buffer)."""
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise TargetError(f"{self.what}: no complete answer within {self.deadline.seconds:g} s "
                              f"({len(self.buffer)} bytes so far)")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(max(1, min(4096, cap - len(self.buffer))))
        except TimeoutError:
            raise TargetError(f"{self.what}: no complete answer within "
                              f"{self.deadline.seconds:g} s ({len(self.buffer)} bytes so far)"
                              ) from None
        except OSError as exc:
            raise TargetError(f"{self.what}: connection error: {exc}") from exc
        if not chunk:
            raise TargetError(f"{self.what}: the device closed the connection "
                              f"({len(self.buffer)} bytes so far)")
        self.buffer += chunk

    def read_line(self, max_len: int) -> bytes:
        """One line including its LF, at most ``max_len`` bytes."""
        while True:
            end = self.buffer.find(b"\n", 0, max_len)
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if len(self.buffer) >= max_len:
                raise TargetError(f"{self.what}: a line longer than {max_len} bytes "
                                  f"(starts {bytes(self.buffer[:40])!r})")
            self._fill(max_len)

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes (the caller has bounded ``n``)."""
        while len(self.buffer) < n:
            self._fill(n)
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


def read_identification(reader: _WireReader) -> tuple[Identification, bytes]:
    """Read pre-version lines and the version line; return it and the raw version line."""
    pre: list[str] = []
    total = 0
    while True:
        line = reader.read_line(MAX_PRE_VERSION_LINE)
        if line.startswith(b"SSH-"):
            if len(line) > MAX_VERSION_LINE:
                raise TargetError(f"{reader.what}: version line of {len(line)} bytes (RFC 4253 "
                                  f"allows {MAX_VERSION_LINE}): {line[:60]!r}...")
            try:
                text = line.rstrip(b"\r\n").decode("ascii")
            except UnicodeDecodeError:
                raise TargetError(f"{reader.what}: version line is not US-ASCII: "
                                  f"{line[:80]!r}") from None
            return Identification(text, tuple(pre)), line
        total += len(line)
        if total > MAX_PRE_VERSION_BYTES:
            raise TargetError(f"{reader.what}: more than {MAX_PRE_VERSION_BYTES} bytes of lines "
                              f"before the version line ({len(pre)} lines)")
        pre.append(line.rstrip(b"\r\n").decode("utf-8", "replace"))


def read_packet(reader: _WireReader) -> bytes:
    """Read one unencrypted binary packet (RFC 4253 6) and return its payload."""
    (length,) = struct.unpack(">I", reader.read_exact(4))
    if length > MAX_PACKET:
        raise TargetError(f"{reader.what}: packet_length {length} exceeds {MAX_PACKET} "
                          "(RFC 4253 6.1); refused before reading it")
    if length < 5:
        raise TargetError(f"{reader.what}: packet_length {length} is too short for a packet")
    body = reader.read_exact(length)
    padding = body[0]
    if padding + 1 >= length:
        raise TargetError(f"{reader.what}: padding_length {padding} does not fit a packet of "
                          f"{length} bytes")
    return body[1:length - padding]


def open_socket(guard: Guard, evidence: Evidence, endpoint: Endpoint,
                timeouts: Timeouts) -> socket.socket:
    """Ask the guard, then connect a TCP socket within ``connect_s``.

    :raises harness.errors.SafetyViolation: the destination is not allowed.
    :raises TargetError: the connection failed.
    """
    address = guard.check_destination(endpoint.host, endpoint.port)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeouts.connect_s)
    try:
        sock.connect((address, endpoint.port))
    except OSError as exc:
        sock.close()
        evidence.received(endpoint.url, None, f"TCP connect to {address}:{endpoint.port} "
                                              f"failed: {exc}")
        raise TargetError(f"cannot connect to {endpoint.url}: {exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    evidence.sent(endpoint.url, None, f"TCP connect {address}:{endpoint.port}")
    return sock


def probe_server(guard: Guard, evidence: Evidence, endpoint: Endpoint,
                 timeouts: Timeouts) -> ServerHello:
    """Read the server's identification and KEXINIT (no key exchange is started).

    :raises TargetError: unreachable, too slow, too long, or not SSH.
    """
    sock = open_socket(guard, evidence, endpoint, timeouts)
    try:
        reader = _WireReader(sock, Deadline(timeouts.request_s), f"{endpoint.url} handshake")
        ours = (CLIENT_VERSION + "\r\n").encode()
        sock.sendall(ours)
        evidence.sent(endpoint.url, ours, f"identification {CLIENT_VERSION}")
        ident, raw_line = read_identification(reader)
        if ident.pre_version_lines:
            evidence.note("lines before the version line", lines=list(ident.pre_version_lines))
        evidence.received(endpoint.url, raw_line, f"identification {ident.version_line}")
        if not ident.speaks_ssh2:
            return ServerHello(ident, None)
        try:
            kexinit = _read_kexinit(reader, evidence, endpoint)
        except TargetError as exc:
            if not ident.speaks_ssh1:
                raise
            # SSH 1 is a finding of its own; a 1.99 server that then fails SSH 2 still shows it
            evidence.note("no KEXINIT from a server that also speaks SSH 1", detail=str(exc))
            return ServerHello(ident, None)
        return ServerHello(ident, kexinit)
    finally:
        sock.close()


def _read_kexinit(reader: _WireReader, evidence: Evidence, endpoint: Endpoint) -> KexInit:
    """Read packets until the KEXINIT (skipping IGNORE and DEBUG, at most a few)."""
    for _ in range(MAX_SKIPPED_PACKETS + 1):
        payload = read_packet(reader)
        kind = payload[0] if payload else -1
        if kind in (MSG_IGNORE, MSG_DEBUG):
            evidence.received(endpoint.url, payload, f"message {kind} before KEXINIT")
            continue
        if kind == MSG_DISCONNECT:
            evidence.received(endpoint.url, payload, "SSH_MSG_DISCONNECT")
            raise TargetError(f"{endpoint.url}: the device disconnected before its KEXINIT: "
                              f"{_disconnect_text(payload)}")
        try:
            kexinit = KexInit.parse(payload)
        except ValueError as exc:
            evidence.received(endpoint.url, payload, f"not a valid KEXINIT: {exc}")
            raise TargetError(f"{endpoint.url}: {exc}") from None
        evidence.received(endpoint.url, payload,
                          f"KEXINIT: {len(kexinit.kex)} kex, {len(kexinit.host_key)} "
                          f"host-key, {len(kexinit.ciphers)} cipher, {len(kexinit.macs)} MAC "
                          "algorithms")
        evidence.note("server KEXINIT", **kexinit.lists(),
                      first_kex_packet_follows=kexinit.first_kex_packet_follows)
        return kexinit
    raise TargetError(f"{endpoint.url}: no KEXINIT among the first "
                      f"{MAX_SKIPPED_PACKETS + 1} packets")


def _disconnect_text(payload: bytes) -> str:
    if len(payload) < 9:
        return "(truncated)"
    code, length = struct.unpack_from(">II", payload, 1)
    text = payload[9:9 + min(length, 512)].decode("utf-8", "replace")
    return f"code {code}: {text}"


# --------------------------------------------------------------------------- paramiko glue
class _DeviceSocket:
    """The socket paramiko reads from.

    Replays the bytes our bounded reader took (the version line and whatever followed it),
    checks the length of every plaintext packet up to the server's NEWKEYS, and ends the
    connection (EOF to paramiko) once the device has sent :data:`MAX_CONNECTION_BYTES`.
    :attr:`violation` says why it cut the device off.
    """

    def __init__(self, sock: socket.socket, prefix: bytes, first_packet_bytes: bytes,
                 max_bytes: int = MAX_CONNECTION_BYTES) -> None:
        self._sock = sock
        self._prefix = bytearray(prefix + first_packet_bytes)
        self._max = max_bytes
        self.received = 0
        self.violation: str | None = None
        self._tracking = True
        self._head = bytearray()
        self._skip = 0
        self._last_packet = False
        self._track(first_packet_bytes)

    # -- what paramiko calls -------------------------------------------------------
    @property
    def _closed(self) -> bool:  # paramiko's Transport.stop_thread looks at it
        return bool(getattr(self._sock, "_closed", False))

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def gettimeout(self) -> float | None:
        return self._sock.gettimeout()

    def recv(self, n: int) -> bytes:
        if self.violation is not None:
            return b""
        if self._prefix:
            chunk = bytes(self._prefix[:n])
            del self._prefix[:n]
            return chunk
        data = self._sock.recv(min(n, 65536))
        self.received += len(data)
        if self.received > self._max:
            self.violation = f"the device sent more than {self._max} bytes on one connection"
            return b""
        if self._tracking and data:
            self._track(data)
            if self.violation is not None:
                return b""
        return data

    def send(self, data: bytes) -> int:
        return self._sock.send(data)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)

    def getpeername(self) -> Any:
        return self._sock.getpeername()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    # -- plaintext packet lengths --------------------------------------------------
    def _track(self, data: bytes) -> None:
        i = 0
        while i < len(data) and self._tracking and self.violation is None:
            if self._skip:
                take = min(self._skip, len(data) - i)
                self._skip -= take
                i += take
                if not self._skip and self._last_packet:
                    self._tracking = False
                continue
            take = min(6 - len(self._head), len(data) - i)
            self._head += data[i:i + take]
            i += take
            if len(self._head) < 6:
                continue
            (length,) = struct.unpack_from(">I", self._head)
            kind = self._head[5]
            self._head.clear()
            if length > MAX_PACKET or length < 5:
                self.violation = (f"plaintext packet_length {length} outside 5..{MAX_PACKET} "
                                  "(RFC 4253 6.1)")
                return
            self._skip = length - 2
            self._last_packet = kind == MSG_NEWKEYS


def _paramiko_kex_table(record: list[Any], gex_bits: tuple[int, int, int] | None
                        ) -> dict[str, Callable[[Any], Any]]:
    """paramiko's kex table plus the legacy SHA-1 groups; every engine built is recorded."""
    import paramiko
    from paramiko.kex_gex import KexGexSHA256
    from paramiko.kex_group14 import KexGroup14SHA256

    class KexGroup14Sha1(KexGroup14SHA256):  # type: ignore[misc]
        """diffie-hellman-group14-sha1 (RFC 4253 8.2): group 14 with SHA-1 (legacy devices)."""

        name = "diffie-hellman-group14-sha1"
        hash_algo = hashlib.sha1

    class KexGroup1Sha1(KexGroup14Sha1):
        """diffie-hellman-group1-sha1 (RFC 4253 8.1): Oakley group 2 with SHA-1."""

        name = "diffie-hellman-group1-sha1"
        P = _OAKLEY_GROUP2

    table: dict[str, Any] = dict(paramiko.Transport._kex_info)
    table["diffie-hellman-group14-sha1"] = KexGroup14Sha1
    table["diffie-hellman-group1-sha1"] = KexGroup1Sha1

    def recording(cls: Any) -> Callable[[Any], Any]:
        def build(transport: Any) -> Any:
            engine = cls(transport)
            if gex_bits is not None and isinstance(engine, KexGexSHA256):
                engine.min_bits, engine.preferred_bits, engine.max_bits = gex_bits
            record.append(engine)
            return engine
        return build

    return {name: recording(cls) for name, cls in table.items()}


def _paramiko_key_table() -> dict[str, Any]:
    """paramiko's host-key table plus ``ssh-rsa`` (SHA-1) signatures, for legacy devices."""
    import paramiko
    from cryptography.hazmat.primitives import hashes

    class LegacyRSAKey(paramiko.RSAKey):  # type: ignore[misc]
        """An RSA key that also verifies ``ssh-rsa`` (SHA-1) signatures."""

        HASHES: ClassVar[dict[str, Any]] = {**paramiko.RSAKey.HASHES, "ssh-rsa": hashes.SHA1}

    table: dict[str, Any] = dict(paramiko.Transport._key_info)
    table["ssh-rsa"] = LegacyRSAKey
    return table


def load_private_key(text: str, label: str) -> paramiko.PKey:
    """Load a private key (OpenSSH or PEM format, unencrypted) from its text.

    :raises ProfileGap: the text is not a key paramiko can use.
    """
    import paramiko

    data = text if text.endswith("\n") else text + "\n"
    problems = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(data))
        except (paramiko.SSHException, ValueError, TypeError) as exc:
            problems.append(f"{cls.__name__}: {exc}")
    raise ProfileGap(f"{label}: not an unencrypted Ed25519, ECDSA or RSA private key "
                     f"({'; '.join(problems)[:300]})")


def throwaway_key() -> paramiko.PKey:
    """A fresh Ed25519 key no device knows (to ask for the method list without a password)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    text = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()
    return load_private_key(text, "throwaway key")


@dataclass(frozen=True)
class HostKey:
    """The host key a key exchange proved."""

    #: The key's type as paramiko names it (``ssh-ed25519``, ``ssh-rsa`` for every RSA key).
    key_type: str
    #: Size in bits (RSA modulus, curve size).
    bits: int
    #: ``SHA256:...``.
    fingerprint: str
    #: The signature algorithm negotiated (``rsa-sha2-512`` for an RSA key, for instance).
    algorithm: str

    def to_json(self) -> dict[str, Any]:
        """For evidence."""
        return {"type": self.key_type, "bits": self.bits, "fingerprint": self.fingerprint,
                "algorithm": self.algorithm}


@dataclass(frozen=True)
class AuthResult:
    """The outcome of one authentication request."""

    method: str
    username: str
    #: True when the server answered SSH_MSG_USERAUTH_SUCCESS.
    accepted: bool
    #: Methods the server listed in its failure message (None: no failure message came).
    allowed: tuple[str, ...] | None = None
    #: The server accepted this step but wants more (partial success).
    partial: bool = False
    #: Why it was refused (empty when accepted).
    detail: str = ""
    #: Seconds from request to answer.
    elapsed_s: float = 0.0

    def describe(self) -> str:
        """One line for evidence and messages."""
        if self.accepted:
            return f"{self.method} as {self.username!r}: accepted"
        listed = f"; server lists {','.join(self.allowed)}" if self.allowed is not None else ""
        return f"{self.method} as {self.username!r}: refused ({self.detail}){listed}"


@dataclass
class ReadResult:
    """What a bounded channel read got."""

    #: Text received (UTF-8, undecodable bytes replaced).
    text: str
    #: True when the pattern was seen.
    matched: bool
    #: True when the channel or connection ended.
    closed: bool
    #: Seconds the read took.
    elapsed_s: float


# --------------------------------------------------------------------------- sessions
class SshSession:
    """One SSH connection after its key exchange: authenticate, open channels, close.

    Build it with :meth:`connect`. Closing is idempotent; the fixture closes every session a
    check opened.
    """

    def __init__(self, transport: paramiko.Transport, *, device_socket: _DeviceSocket,
                 endpoint: Endpoint, evidence: Evidence, timeouts: Timeouts,
                 identification: Identification, kex_engines: list[Any], label: str) -> None:
        self.transport = transport
        self.device_socket = device_socket
        self.endpoint = endpoint
        self.evidence = evidence
        self.timeouts = timeouts
        self.identification = identification
        self.label = label
        self._kex_engines = kex_engines
        #: The pre-authentication banner (SSH_MSG_USERAUTH_BANNER), once one came.
        self.banner: str | None = None
        self.username: str | None = None
        self._channels: list[ShellChannel] = []

    @property
    def channel(self) -> str:
        """The evidence channel name."""
        return f"{self.endpoint.url} [{self.label}]"

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def connect(cls, guard: Guard, evidence: Evidence, endpoint: Endpoint, timeouts: Timeouts,
                *, kex: Sequence[str] | None = None, host_keys: Sequence[str] | None = None,
                gex_bits: tuple[int, int, int] | None = None, label: str = "session"
                ) -> SshSession:
        """Connect and run the key exchange.

        :param kex: offer only these key-exchange methods (default :data:`CLIENT_KEX`).
        :param host_keys: accept only these host-key algorithms (default
            :data:`CLIENT_HOST_KEYS`).
        :param gex_bits: (min, preferred, max) of a group-exchange request.
        :param label: names the connection in the evidence (``session 3``...).
        :raises TargetError: no connection, no common algorithm, a bad or slow handshake.
        """
        import paramiko

        sock = open_socket(guard, evidence, endpoint, timeouts)
        transport: paramiko.Transport | None = None
        try:
            reader = _WireReader(sock, Deadline(timeouts.request_s), f"{endpoint.url} handshake")
            ident, raw_line = read_identification(reader)
            evidence.received(f"{endpoint.url} [{label}]", raw_line,
                              f"identification {ident.version_line}")
            if not ident.speaks_ssh2:
                raise TargetError(f"{endpoint.url}: the server speaks SSH {ident.protocol_version} "
                                  "only; no SSH 2 session possible")
            device_sock = _DeviceSocket(sock, raw_line, bytes(reader.buffer))
            engines: list[Any] = []
            transport = paramiko.Transport(device_sock)
            transport._kex_info = _paramiko_kex_table(engines, gex_bits)
            transport._key_info = _paramiko_key_table()
            transport.local_version = CLIENT_VERSION
            options = transport.get_security_options()
            options.kex = [k for k in (kex or CLIENT_KEX) if k in transport._kex_info]
            options.key_types = [k for k in (host_keys or CLIENT_HOST_KEYS)
                                 if k in transport._key_info]
            options.ciphers = [c for c in CLIENT_CIPHERS if c in transport._cipher_info]
            options.digests = [m for m in CLIENT_MACS if m in transport._mac_info]
            transport.banner_timeout = timeouts.request_s
            transport.handshake_timeout = timeouts.connect_s + timeouts.request_s
            transport.auth_timeout = timeouts.request_s
            transport.channel_timeout = timeouts.request_s
            session = cls(transport, device_socket=device_sock, endpoint=endpoint,
                          evidence=evidence, timeouts=timeouts, identification=ident,
                          kex_engines=engines, label=label)
            evidence.sent(session.channel, None,
                          f"key exchange offering kex {list(options.kex)}, host keys "
                          f"{list(options.key_types)}")
            session._handshake()
            return session
        except BaseException:
            if transport is not None:
                transport.close()
            sock.close()
            raise

    def _handshake(self) -> None:
        done = threading.Event()
        deadline = Deadline(self.timeouts.connect_s + self.timeouts.request_s)
        self.transport.start_client(event=done)
        while not done.wait(0.05):
            if not self.transport.is_active() or deadline.expired:
                break
        if not done.is_set() or not self.transport.is_active():
            exc = self.transport.get_exception()
            why = self.device_socket.violation or (
                f"{type(exc).__name__}: {exc}" if exc is not None
                else f"no key exchange within {deadline.seconds:g} s")
            self.evidence.received(self.channel, None, f"key exchange failed: {why}")
            raise TargetError(f"{self.endpoint.url}: key exchange failed: {why}")
        key = self.host_key
        self.evidence.received(self.channel, None,
                               f"key exchange done: kex {self.kex_name}, host key "
                               f"{key.algorithm} {key.key_type} {key.bits} bits "
                               f"{key.fingerprint}, cipher {self.transport.remote_cipher}, "
                               f"MAC {self.transport.remote_mac}")

    # -- what the key exchange gave -------------------------------------------------------
    @property
    def kex_name(self) -> str:
        """The negotiated key-exchange method."""
        return str(getattr(self._kex_engines[-1], "name", "?")) if self._kex_engines else "?"

    @property
    def gex_modulus_bits(self) -> int | None:
        """The group-exchange modulus size, when group exchange was negotiated."""
        for engine in reversed(self._kex_engines):
            p = getattr(engine, "p", None)
            if isinstance(p, int) and p:
                return p.bit_length()
        return None

    @property
    def host_key(self) -> HostKey:
        """The host key the server proved in the key exchange."""
        key = self.transport.get_remote_server_key()
        return HostKey(key.get_name(), int(key.get_bits()), key.fingerprint,
                       str(self.transport.host_key_type))

    @property
    def alive(self) -> bool:
        """True while the connection is up."""
        return bool(self.transport.is_active())

    @property
    def authenticated(self) -> bool:
        """True once an authentication succeeded."""
        return bool(self.transport.is_authenticated())

    # -- authentication ---------------------------------------------------------------
    def authenticate(self, method: str, username: str, *, password: str | None = None,
                     key: paramiko.PKey | None = None) -> AuthResult:
        """Send one authentication request and wait for the answer.

        :param method: ``none``, ``password``, ``publickey`` or ``keyboard-interactive``
            (answers every prompt that asks for a password with ``password``).
        :raises TargetError: the connection is down, or no answer within ``request_s``.
        """
        import paramiko
        from paramiko.auth_handler import AuthHandler
        from paramiko.message import Message

        if method not in ("none", "password", "publickey", "keyboard-interactive"):
            raise ValueError(f"unknown method {method!r}")
        if (method in ("password", "keyboard-interactive") and password is None) or \
                (method == "publickey" and key is None):
            raise ValueError(f"method {method} needs its secret")
        if not self.alive:
            raise TargetError(f"{self.endpoint.url}: connection closed before authentication")
        handler = AuthHandler(self.transport)
        listed: dict[str, Any] = {}
        original = handler._parse_userauth_failure

        def on_failure(message: Any) -> None:
            copy = Message(message.asbytes())
            listed["allowed"] = tuple(x for x in copy.get_list() if x)
            listed["partial"] = copy.get_boolean()
            original(message)

        # paramiko builds its handler table from the instance's bound methods on each message
        handler._parse_userauth_failure = on_failure
        self.transport.auth_handler = handler
        event = threading.Event()
        what = f"userauth {method} as {username!r}"
        if method == "publickey" and key is not None:
            what += f" with {key.get_name()} {key.fingerprint}"
        self.evidence.sent(self.channel, None, what)
        started = time.monotonic()
        if method == "none":
            handler.auth_none(username, event)
        elif method == "password":
            handler.auth_password(username, password, event)
        elif method == "publickey":
            handler.auth_publickey(username, key, event)
        else:
            def answer(title: str, instructions: str, prompts: list[tuple[str, bool]]
                       ) -> list[str]:
                return [(password or "") if re.search(r"pass(word|code|phrase)", p, re.I)
                        else "" for p, _echo in prompts]
            handler.auth_interactive(username, answer, event, "")
        accepted = False
        detail = ""
        try:
            remaining = handler.wait_for_response(event)
            accepted = bool(handler.is_authenticated())
            if not accepted:
                detail = f"partial success; continue with {remaining}"
        except paramiko.BadAuthenticationType as exc:
            detail = f"method not allowed; allowed {exc.allowed_types}"
        except paramiko.AuthenticationException as exc:
            text = str(exc)
            if "timeout" in text.lower():
                self.evidence.received(self.channel, None, f"{what}: no answer")
                raise TargetError(f"{self.endpoint.url}: no answer to {what} within "
                                  f"{self.timeouts.request_s:g} s") from None
            detail = "connection closed by the device" if not self.alive else "failed"
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TargetError(f"{self.endpoint.url}: {what}: {exc}") from exc
        elapsed = time.monotonic() - started
        banner = handler.banner
        if banner is not None and self.banner is None:
            self.banner = (banner.decode("utf-8", "replace") if isinstance(banner, bytes)
                           else str(banner))
            self.evidence.received(self.channel, self.banner.encode(),
                                   f"pre-authentication banner: {self.banner[:SUMMARY_CHARS]!r}")
        allowed = listed.get("allowed")
        result = AuthResult(method, username, accepted, allowed,
                            partial=bool(listed.get("partial")), detail=detail,
                            elapsed_s=round(elapsed, 3))
        if accepted:
            self.username = username
        self.evidence.received(self.channel, None, f"{result.describe()} after "
                                                   f"{elapsed * 1000:.0f} ms")
        return result

    # -- channels -----------------------------------------------------------------------
    def open_channel(self) -> paramiko.Channel:
        """Open a ``session`` channel.

        :raises ChannelRefused: the device refused it.
        :raises TargetError: the connection is down or the device did not answer.
        """
        import paramiko

        self.evidence.sent(self.channel, None, "open session channel")
        try:
            chan = self.transport.open_session(timeout=self.timeouts.request_s)
        except paramiko.ChannelException as exc:
            self.evidence.received(self.channel, None,
                                   f"channel open refused: code {exc.code} ({exc.text})")
            raise ChannelRefused(int(exc.code), str(exc.text)) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            state = "connection closed" if not self.alive else str(exc)
            self.evidence.received(self.channel, None, f"channel open failed: {state}")
            raise TargetError(f"{self.endpoint.url}: channel open failed: {state}") from exc
        self.evidence.received(self.channel, None, f"channel {chan.get_id()} open")
        return chan

    def shell(self, *, pty: bool = True) -> ShellChannel:
        """Open a channel with an interactive shell (and a pty by default)."""
        import paramiko

        chan = self.open_channel()
        try:
            if pty:
                chan.get_pty(term="vt100", width=120, height=40)
            chan.invoke_shell()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            chan.close()
            raise TargetError(f"{self.endpoint.url}: shell request failed: {exc}") from exc
        self.evidence.sent(self.channel, None, f"shell request on channel {chan.get_id()}"
                                               f"{' with a pty' if pty else ''}")
        shell = ShellChannel(self, chan)
        self._channels.append(shell)
        return shell

    def exec(self, command: str, *, timeout_s: float | None = None,
             max_bytes: int = MAX_CHANNEL_BYTES) -> tuple[str, int | None]:
        """Run one command; return its output and exit status (None: none came in time)."""
        import paramiko

        chan = self.open_channel()
        shell = ShellChannel(self, chan)
        try:
            chan.exec_command(command)
            self.evidence.sent(self.channel, command.encode(), f"exec {command!r}")
            deadline = Deadline(timeout_s or self.timeouts.request_s)
            result = shell.read_until(None, deadline.remaining(), max_bytes=max_bytes)
            while not chan.exit_status_ready() and not deadline.expired and self.alive:
                time.sleep(0.01)
            status = chan.recv_exit_status() if chan.exit_status_ready() else None
            return result.text, status
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TargetError(f"{self.endpoint.url}: exec {command!r} failed: {exc}") from exc
        finally:
            chan.close()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        for shell in self._channels:
            shell.close()
        if self.transport.is_active():
            self.evidence.sent(self.channel, None, "close")
        self.transport.close()
        self.device_socket.close()


class ShellChannel:
    """An open channel with bounded, deadline-driven reads."""

    def __init__(self, session: SshSession, chan: paramiko.Channel) -> None:
        self.session = session
        self.chan = chan
        self.evidence = session.evidence
        self.name = f"{session.channel} ch{chan.get_id()}"

    def send(self, text: str) -> None:
        """Send ``text`` (recorded; registered secrets are scrubbed from the record)."""
        data = text.encode()
        try:
            self.chan.sendall(data)
        except OSError as exc:
            raise TargetError(f"{self.session.endpoint.url}: send failed: {exc}") from exc
        self.evidence.sent(self.name, data, f"typed {text!r}")

    @property
    def closed(self) -> bool:
        """True once the channel or the connection ended."""
        return bool(self.chan.closed or self.chan.eof_received or not self.session.alive)

    def read_until(self, pattern: str | re.Pattern[str] | None, timeout_s: float, *,
                   max_bytes: int = MAX_CHANNEL_BYTES) -> ReadResult:
        """Read until ``pattern`` matches the text so far, the channel closes, ``timeout_s``
        passes or ``max_bytes`` arrived (``pattern`` None: read until closed or timeout)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = Deadline(timeout_s)
        started = time.monotonic()
        data = bytearray()
        closed = False
        matched = False
        while True:
            if regex is not None and regex.search(data.decode("utf-8", "replace")):
                matched = True
                break
            if len(data) >= max_bytes or deadline.expired:
                break
            self.chan.settimeout(max(0.01, min(0.1, deadline.remaining())))
            try:
                chunk = self.chan.recv(min(4096, max_bytes - len(data)))
            except TimeoutError:
                if not self.session.alive or self.chan.closed:
                    closed = True
                    break
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        text = data.decode("utf-8", "replace")
        elapsed = time.monotonic() - started
        if data:
            self.evidence.received(self.name, bytes(data), f"{text[-SUMMARY_CHARS:]!r}")
        if closed:
            self.evidence.received(self.name, None, f"channel closed after {elapsed:.2f} s")
        return ReadResult(text, matched, closed, round(elapsed, 3))

    def close(self) -> None:
        """Close the channel (idempotent)."""
        with contextlib.suppress(Exception):
            self.chan.close()
