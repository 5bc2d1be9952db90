"""OPC UA TCP binary codec: the few messages the harness writes by hand, and their answers.

Pure bytes in, bytes or dataclasses out: no sockets, no asyncua (the load generators use this to
open hundreds of channels a second; asyncua's full client costs milliseconds per connection).

What it encodes (OPC 10000-6):

- the chunk header (section 7.1.2.2: MessageType, chunk type ``F``/``C``/``A``, MessageSize):
  :func:`frame`; :func:`split_chunks` and :func:`check_headers` check every header as soon as
  its 8 bytes are there, before the body is buffered;
- Hello (7.1.2.3): :func:`hello` / :func:`parse_hello`; Acknowledge (7.1.2.4):
  :func:`parse_acknowledge` and :func:`acknowledge_problem` (the Part 6 limits an Acknowledge
  must keep); Error (7.1.2.5): :func:`parse_error`;
- the secure channel messages with SecurityPolicy None (6.7.2: the asymmetric security header
  of OPN, the symmetric one of MSG and CLO, the sequence header): :func:`open_secure_channel_none`,
  :func:`secure_message`, :func:`close_secure_channel`, and :func:`parse_response` for the head
  of an OPN or MSG answer;
- the built-in types of the binary encoding they need (5.2.2: String, ByteString, DateTime,
  NodeId, ExtensionObject, DiagnosticInfo): :func:`ua_string`, :func:`ua_datetime`,
  :func:`numeric_node`, :class:`Reader`;
- the service bodies (OPC 10000-4 request types, encoded per 5.2.6 behind their encoding
  NodeId): :func:`request_header`, :func:`create_session_service`,
  :func:`activate_session_service` (anonymous token), :func:`close_session_service`.

Malformed input is a :class:`FrameError` (a :class:`ValueError`), never an unbounded read: every
length is checked against the bytes that are there.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

#: ReceiveBufferSize and SendBufferSize (largest chunk) a Hello announces by default; bigger
#: chunks are refused by :func:`split_chunks`.
RECEIVE_BUFFER_SIZE = 65535
#: MaxMessageSize a Hello announces by default (and CreateSession's MaxResponseMessageSize).
MAX_MESSAGE_SIZE = 1 << 20
#: MaxChunkCount a Hello announces by default.
MAX_CHUNK_COUNT = 32
#: Smallest buffer size OPC 10000-6 (7.1.2.3, 7.1.2.4) allows in a Hello or Acknowledge.
MIN_BUFFER_SIZE = 8192
#: URI of SecurityPolicy None.
POLICY_NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"
#: RequestedLifetime of a channel (ms) unless told otherwise.
CHANNEL_LIFETIME_MS = 60_000
#: RequestedSessionTimeout of a session (ms) unless told otherwise.
SESSION_TIMEOUT_MS = 10_000.0

#: Binary encoding ids (namespace 0) of the service types used here.
OPEN_SECURE_CHANNEL_REQUEST = 446
OPEN_SECURE_CHANNEL_RESPONSE = 449
CLOSE_SECURE_CHANNEL_REQUEST = 452
CREATE_SESSION_REQUEST = 461
CREATE_SESSION_RESPONSE = 464
ACTIVATE_SESSION_REQUEST = 467
ACTIVATE_SESSION_RESPONSE = 470
CLOSE_SESSION_REQUEST = 473
CLOSE_SESSION_RESPONSE = 476
SERVICE_FAULT = 397
ANONYMOUS_IDENTITY_TOKEN = 321

#: The null NodeId (``i=0``), encoded: the AuthenticationToken before a session exists.
NULL_NODE = b"\x00\x00"
#: Message types of OPC UA TCP.
MESSAGE_TYPES = frozenset({b"HEL", b"ACK", b"ERR", b"RHE", b"OPN", b"CLO", b"MSG"})
#: Chunk types: final, intermediate, abort.
CHUNK_TYPES = frozenset({b"F", b"C", b"A"})

#: 100 ns ticks from 1601-01-01 (OPC UA DateTime) to 1970-01-01.
_EPOCH_TICKS = 116_444_736_000_000_000
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_HEADER = struct.Struct("<3scI")
_LIMITS = struct.Struct("<IIIII")
#: An ExtensionObject with no body (TypeId null, encoding 0).
_NULL_EXTENSION = b"\x00\x00\x00"
#: MessageSecurityMode None, SecurityTokenRequestType Issue.
_MODE_NONE = 1
_REQUEST_ISSUE = 0


class FrameError(ValueError):
    """Bytes that are not the OPC UA TCP message they claim to be."""


# --------------------------------------------------------------------------- encoding
def ua_string(value: str | bytes | None) -> bytes:
    """A String or ByteString: Int32 length (-1 for null) and the bytes (UTF-8 for a str)."""
    if value is None:
        return _I32.pack(-1)
    raw = value.encode() if isinstance(value, str) else value
    return _I32.pack(len(raw)) + raw


def ua_datetime(when: float | None = None) -> bytes:
    """A DateTime (100 ns ticks since 1601) for a POSIX time (default now)."""
    seconds = time.time() if when is None else when
    return struct.pack("<q", _EPOCH_TICKS + int(seconds * 10_000_000))


def numeric_node(identifier: int) -> bytes:
    """A namespace-0 numeric NodeId in its shortest encoding (two-byte, four-byte, numeric)."""
    if identifier < 256:
        return bytes((0, identifier))
    if identifier < 65536:
        return struct.pack("<BBH", 1, 0, identifier)
    return struct.pack("<BHI", 2, 0, identifier)


def numeric_identifier(node: bytes) -> int:
    """The identifier of an encoded numeric NodeId (as :meth:`Reader.node_id` returns it), or
    -1 for any other kind (string, GUID, opaque)."""
    kind = node[0] & 0x3F if node else -1
    if kind == 0 and len(node) >= 2:
        return node[1]
    if kind == 1 and len(node) >= 4:
        return int(struct.unpack_from("<H", node, 2)[0])
    if kind == 2 and len(node) >= 7:
        return int(_U32.unpack_from(node, 3)[0])
    return -1


def frame(mtype: bytes, body: bytes, ctype: bytes = b"F") -> bytes:
    """One chunk: the 8-byte header (type, chunk type, size including the header) and
    ``body``."""
    return _HEADER.pack(mtype, ctype, 8 + len(body)) + body


def hello(endpoint_url: str, *, receive_buffer_size: int = RECEIVE_BUFFER_SIZE,
          send_buffer_size: int = RECEIVE_BUFFER_SIZE, max_message_size: int = MAX_MESSAGE_SIZE,
          max_chunk_count: int = MAX_CHUNK_COUNT) -> bytes:
    """A Hello (protocol version 0) for ``endpoint_url`` announcing these limits (0 for the
    last two means no limit)."""
    body = _LIMITS.pack(0, receive_buffer_size, send_buffer_size, max_message_size,
                        max_chunk_count) + ua_string(endpoint_url)
    return frame(b"HEL", body)


def request_header(handle: int, auth_token: bytes = NULL_NODE, timeout_hint_ms: int = 0,
                   stamp: bytes | None = None) -> bytes:
    """A RequestHeader (OPC 10000-4, 7.33) with ``auth_token`` (an encoded NodeId)."""
    return (auth_token + (stamp or ua_datetime()) + _U32.pack(handle) + _U32.pack(0)
            + ua_string(None) + _U32.pack(timeout_hint_ms) + _NULL_EXTENSION)


def open_secure_channel_none(sequence: int, request_id: int, handle: int = 1,
                             lifetime_ms: int = CHANNEL_LIFETIME_MS) -> bytes:
    """An OpenSecureChannel (Issue) with SecurityPolicy None, security mode None."""
    body = (_U32.pack(0) + ua_string(POLICY_NONE_URI) + ua_string(None) + ua_string(None)
            + _U32.pack(sequence) + _U32.pack(request_id)
            + numeric_node(OPEN_SECURE_CHANNEL_REQUEST) + request_header(handle)
            + _U32.pack(0) + _U32.pack(_REQUEST_ISSUE) + _U32.pack(_MODE_NONE)
            + ua_string(b"") + _U32.pack(lifetime_ms))
    return frame(b"OPN", body)


def secure_message(mtype: bytes, channel_id: int, token_id: int, sequence: int, request_id: int,
                   *, service: bytes) -> bytes:
    """A MSG or CLO chunk on a None channel: symmetric header, sequence header, ``service``
    (its encoding NodeId and body)."""
    body = struct.pack("<IIII", channel_id, token_id, sequence, request_id) + service
    return frame(mtype, body)


def close_secure_channel(channel_id: int, token_id: int, sequence: int, request_id: int,
                         handle: int = 0) -> bytes:
    """A CloseSecureChannel."""
    service = numeric_node(CLOSE_SECURE_CHANNEL_REQUEST) + request_header(handle)
    return secure_message(b"CLO", channel_id, token_id, sequence, request_id, service=service)


def create_session_service(handle: int, endpoint_url: str, session_name: str,
                           application_uri: str = "urn:harness:load",
                           timeout_ms: float = SESSION_TIMEOUT_MS) -> bytes:
    """A CreateSessionRequest (encoding NodeId and body) with no client certificate."""
    description = (ua_string(application_uri) + ua_string("urn:harness")
                   + b"\x02" + ua_string("harness load")          # LocalizedText, text only
                   + _U32.pack(1)                                 # ApplicationType Client
                   + ua_string(None) + ua_string(None) + _I32.pack(-1))
    body = (request_header(handle) + description + ua_string(None) + ua_string(endpoint_url)
            + ua_string(session_name) + ua_string(bytes(32)) + ua_string(None)
            + struct.pack("<d", timeout_ms) + _U32.pack(MAX_MESSAGE_SIZE))
    return numeric_node(CREATE_SESSION_REQUEST) + body


def activate_session_service(handle: int, auth_token: bytes, policy_id: str) -> bytes:
    """An ActivateSessionRequest with an anonymous identity token (no credentials)."""
    token_body = ua_string(policy_id)
    token = numeric_node(ANONYMOUS_IDENTITY_TOKEN) + b"\x01" + _I32.pack(len(token_body)) \
        + token_body
    no_signature = ua_string(None) + ua_string(None)
    body = (request_header(handle, auth_token) + no_signature + _I32.pack(-1) + _I32.pack(-1)
            + token + no_signature)
    return numeric_node(ACTIVATE_SESSION_REQUEST) + body


def close_session_service(handle: int, auth_token: bytes) -> bytes:
    """A CloseSessionRequest (DeleteSubscriptions true)."""
    return numeric_node(CLOSE_SESSION_REQUEST) + request_header(handle, auth_token) + b"\x01"


# --------------------------------------------------------------------------- decoding
class Reader:
    """Bounded reads from one message; any overrun is a :class:`FrameError`."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise FrameError(f"message ends at {len(self.data)} bytes, {n} more needed at "
                             f"offset {self.pos}")
        out = bytes(self.data[self.pos:end])
        self.pos = end
        return out

    def u8(self) -> int:
        """A Byte."""
        return self.take(1)[0]

    def u32(self) -> int:
        """A UInt32."""
        return int(_U32.unpack(self.take(4))[0])

    def i32(self) -> int:
        """An Int32."""
        return int(_I32.unpack(self.take(4))[0])

    def string(self) -> bytes | None:
        """A String or ByteString (None when null)."""
        n = self.i32()
        if n < 0:
            return None
        return self.take(n)

    def node_id(self) -> bytes:
        """A NodeId (or ExpandedNodeId), returned as its encoded bytes."""
        start = self.pos
        kind = self.u8()
        encoding = kind & 0x3F
        if encoding == 0:
            self.take(1)
        elif encoding == 1:
            self.take(3)
        elif encoding == 2:
            self.take(6)
        elif encoding in (3, 5):
            self.take(2)
            self.string()
        elif encoding == 4:
            self.take(18)
        else:
            raise FrameError(f"NodeId encoding {encoding} unknown")
        if kind & 0x80:
            self.string()
        if kind & 0x40:
            self.take(4)
        return bytes(self.data[start:self.pos])

    def diagnostic_info(self, depth: int = 0) -> None:
        """Skip a DiagnosticInfo."""
        if depth > 8:
            raise FrameError("DiagnosticInfo nested too deep")
        mask = self.u8()
        for bit in (0x01, 0x02, 0x04, 0x08):
            if mask & bit:
                self.take(4)
        if mask & 0x10:
            self.string()
        if mask & 0x20:
            self.take(4)
        if mask & 0x40:
            self.diagnostic_info(depth + 1)

    def extension_object(self) -> None:
        """Skip an ExtensionObject."""
        self.node_id()
        if self.u8() in (1, 2):
            self.string()

    def response_header(self) -> int:
        """Skip a ResponseHeader; return its ServiceResult."""
        self.take(12)  # Timestamp, RequestHandle
        status = self.u32()
        self.diagnostic_info()
        count = self.i32()
        if count > len(self.data):
            raise FrameError(f"StringTable of {count} strings in a {len(self.data)}-byte message")
        for _ in range(max(0, count)):
            self.string()
        self.extension_object()
        return status


@dataclass(frozen=True)
class Chunk:
    """One OPC UA TCP chunk."""

    #: ``HEL``, ``ACK``, ``ERR``, ``OPN``, ``CLO``, ``MSG``, ``RHE``.
    mtype: bytes
    #: ``F`` (final), ``C`` (intermediate) or ``A`` (abort).
    ctype: bytes
    #: The whole chunk, header included.
    data: bytes


def _header_at(buf: bytes | bytearray, pos: int, max_size: int) -> tuple[bytes, bytes, int]:
    """(message type, chunk type, size) of the header at ``pos`` (8 bytes must be there)."""
    mtype, ctype, size = _HEADER.unpack_from(buf, pos)
    if mtype not in MESSAGE_TYPES:
        raise FrameError(f"unknown message type {mtype!r} at offset {pos}")
    if ctype not in CHUNK_TYPES:
        raise FrameError(f"unknown chunk type {ctype!r} in a {mtype.decode()} message")
    if size < 8:
        raise FrameError(f"{mtype.decode()} chunk declares {size} bytes, less than its own "
                         "header")
    if size > max_size:
        raise FrameError(f"{mtype.decode()} chunk declares {size} bytes; we announced chunks of "
                         f"at most {max_size} (ReceiveBufferSize)")
    return mtype, ctype, size


def check_headers(buf: bytes | bytearray, max_size: int = RECEIVE_BUFFER_SIZE) -> None:
    """Check every chunk header in ``buf`` without consuming anything: those of the complete
    chunks and that of an incomplete last one (a header cut short waits for more bytes).

    :param max_size: the largest chunk allowed (the ReceiveBufferSize announced).
    :raises FrameError: an unknown message or chunk type, a size under 8 or over ``max_size``.
    """
    pos = 0
    while len(buf) - pos >= 8:
        pos += _header_at(buf, pos, max_size)[2]


def split_chunks(buf: bytearray, max_size: int = RECEIVE_BUFFER_SIZE) -> list[Chunk]:
    """Remove the complete chunks at the start of ``buf`` and return them.

    :param max_size: the largest chunk allowed (the ReceiveBufferSize announced).
    :raises FrameError: as :func:`check_headers`, checked as soon as a header is there.
    """
    out: list[Chunk] = []
    pos = 0
    size_all = len(buf)
    while size_all - pos >= 8:
        mtype, ctype, size = _header_at(buf, pos, max_size)
        if size_all - pos < size:
            break
        out.append(Chunk(mtype, ctype, bytes(buf[pos:pos + size])))
        pos += size
    if pos:
        del buf[:pos]
    return out


@dataclass(frozen=True)
class Hello:
    """A Hello's fields."""

    protocol_version: int
    receive_buffer_size: int
    send_buffer_size: int
    max_message_size: int
    max_chunk_count: int
    #: The EndpointUrl (empty when null).
    endpoint_url: str


def parse_hello(chunk: Chunk) -> Hello:
    """The fields of a HEL chunk."""
    if chunk.mtype != b"HEL":
        raise FrameError(f"expected a Hello, got {chunk.mtype!r}")
    r = Reader(chunk.data, 8)
    version, receive, send, max_message, max_chunks = _LIMITS.unpack(r.take(_LIMITS.size))
    url = r.string() or b""
    return Hello(version, receive, send, max_message, max_chunks, url.decode("utf-8", "replace"))


@dataclass(frozen=True)
class Acknowledge:
    """An Acknowledge's limits."""

    protocol_version: int
    receive_buffer_size: int
    send_buffer_size: int
    max_message_size: int
    max_chunk_count: int


def parse_acknowledge(chunk: Chunk) -> Acknowledge:
    """The limits of an ACK chunk."""
    if chunk.mtype != b"ACK" or len(chunk.data) < 8 + _LIMITS.size:
        raise FrameError(f"expected an Acknowledge, got {chunk.mtype!r} of {len(chunk.data)} "
                         "bytes")
    return Acknowledge(*_LIMITS.unpack_from(chunk.data, 8))


def acknowledge_problem(receive: int, send: int,
                        announced_receive: int = RECEIVE_BUFFER_SIZE) -> str | None:
    """What is wrong with an Acknowledge's buffer sizes (7.1.2.4), or None.

    :param receive: its ReceiveBufferSize (the largest chunk the server takes from us).
    :param send: its SendBufferSize (the largest chunk it will send us).
    :param announced_receive: the ReceiveBufferSize our Hello announced.
    """
    if receive < MIN_BUFFER_SIZE:
        return f"Acknowledge ReceiveBufferSize {receive} is below the minimum {MIN_BUFFER_SIZE}"
    if send < MIN_BUFFER_SIZE:
        return f"Acknowledge SendBufferSize {send} is below the minimum {MIN_BUFFER_SIZE}"
    if send > announced_receive:
        return (f"Acknowledge SendBufferSize {send} is larger than the ReceiveBufferSize we "
                f"announced ({announced_receive})")
    return None


def parse_error(chunk: Chunk) -> tuple[int, str]:
    """(status code, reason: at most 200 characters) of an ERR chunk."""
    r = Reader(chunk.data, 8)
    code = r.u32()
    reason = r.string() or b""
    return code, reason[:200].decode("utf-8", "replace")


@dataclass(frozen=True)
class Response:
    """The head of a service response (OPN or MSG)."""

    #: Secure channel id from the message header.
    channel_id: int
    #: RequestId of the sequence header.
    request_id: int
    #: Encoding id of the response type (``SERVICE_FAULT`` for a fault).
    type_id: int
    #: ServiceResult of the ResponseHeader.
    status: int
    #: OpenSecureChannel only: the token id; CreateSession only: the encoded
    #: AuthenticationToken.
    token_id: int = 0
    auth_token: bytes = b""


def parse_response(chunk: Chunk) -> Response:
    """Parse an OPN or MSG chunk's headers and, for OpenSecureChannel and CreateSession
    responses, the fields a client needs next (only the first chunk of a message carries them).

    :raises FrameError: malformed, or an OPN answered with a policy other than None.
    """
    r = Reader(chunk.data, 8)
    channel_id = r.u32()
    if chunk.mtype == b"OPN":
        policy = r.string()
        r.string()
        r.string()
        if policy is not None and policy.decode("utf-8", "replace") != POLICY_NONE_URI:
            raise FrameError(f"OpenSecureChannel answered with policy {policy!r}")
    elif chunk.mtype == b"MSG":
        r.u32()  # token id
    else:
        raise FrameError(f"expected OPN or MSG, got {chunk.mtype!r}")
    r.u32()  # sequence number
    request_id = r.u32()
    type_id = numeric_identifier(r.node_id())
    status = r.response_header()
    token_id = 0
    auth = b""
    if status < 0x80000000:
        if type_id == OPEN_SECURE_CHANNEL_RESPONSE:
            r.u32()  # server protocol version
            channel_id = r.u32()
            token_id = r.u32()
        elif type_id == CREATE_SESSION_RESPONSE:
            r.node_id()  # SessionId
            auth = r.node_id()
    return Response(channel_id, request_id, type_id, status, token_id, auth)
