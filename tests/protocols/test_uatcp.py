"""The OPC UA TCP codec: what it encodes is what asyncua parses, what asyncua encodes it
parses, its own encodings round-trip through its own decoders, and garbage is a FrameError.

The encoders are checked against asyncua's parser (``asyncua.ua.ua_binary``) and the decoders
against asyncua's encoder, so the codec is never only checked against itself.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.protocols import uatcp

pytestmark = pytest.mark.timeout(60)

ENDPOINT = "opc.tcp://127.0.0.1:4840/harness/plc"


# --------------------------------------------------------------------------- against asyncua
def _asyncua_parse(raw: bytes) -> tuple[Any, Any]:
    from asyncua.common.utils import Buffer
    from asyncua.ua import ua_binary

    buf = Buffer(raw)
    header = ua_binary.header_from_binary(buf)
    assert header.packet_size == len(raw)
    return header, buf


def test_hello_is_what_asyncua_parses() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    header, buf = _asyncua_parse(uatcp.hello(ENDPOINT))
    hello = ua_binary.struct_from_binary(ua.Hello, buf)
    assert header.MessageType == b"HEL"
    assert (hello.ReceiveBufferSize, hello.MaxMessageSize, hello.EndpointUrl) == (
        uatcp.RECEIVE_BUFFER_SIZE, uatcp.MAX_MESSAGE_SIZE, ENDPOINT)


def test_open_secure_channel_is_what_asyncua_parses() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    header, buf = _asyncua_parse(uatcp.open_secure_channel_none(5, 7, handle=9))
    algorithm = ua_binary.struct_from_binary(ua.AsymmetricAlgorithmHeader, buf)
    sequence = ua_binary.struct_from_binary(ua.SequenceHeader, buf)
    request = ua_binary.struct_from_binary(ua.OpenSecureChannelRequest, buf)
    assert header.MessageType == b"OPN"
    assert algorithm.SecurityPolicyURI == uatcp.POLICY_NONE_URI
    assert algorithm.SenderCertificate is None
    assert (sequence.SequenceNumber, sequence.RequestId) == (5, 7)
    assert request.RequestHeader.RequestHandle == 9
    params = request.Parameters
    assert params.RequestType == ua.SecurityTokenRequestType.Issue
    assert params.SecurityMode == ua.MessageSecurityMode.None_
    assert params.RequestedLifetime == uatcp.CHANNEL_LIFETIME_MS


def _symmetric(raw: bytes, mtype: bytes) -> Any:
    from asyncua import ua
    from asyncua.ua import ua_binary

    header, buf = _asyncua_parse(raw)
    assert header.MessageType == mtype
    assert header.ChannelId == 11
    token = ua_binary.struct_from_binary(ua.SymmetricAlgorithmHeader, buf)
    sequence = ua_binary.struct_from_binary(ua.SequenceHeader, buf)
    assert (token.TokenId, sequence.SequenceNumber, sequence.RequestId) == (22, 3, 4)
    return buf


def test_close_secure_channel_is_what_asyncua_parses() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    buf = _symmetric(uatcp.close_secure_channel(11, 22, 3, 4), b"CLO")
    request = ua_binary.struct_from_binary(ua.CloseSecureChannelRequest, buf)
    assert request.TypeId == ua.NodeId(uatcp.CLOSE_SECURE_CHANNEL_REQUEST)


def test_create_session_is_what_asyncua_parses() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    raw = uatcp.secure_message(b"MSG", 11, 22, 3, 4, service=uatcp.create_session_service(
        8, ENDPOINT, "flood", application_uri="urn:test"))
    buf = _symmetric(raw, b"MSG")
    # as asyncua's server reads it (UaProcessor.process_message)
    assert ua_binary.nodeid_from_binary(buf) == ua.NodeId(uatcp.CREATE_SESSION_REQUEST)
    header = ua_binary.struct_from_binary(ua.RequestHeader, buf)
    params = ua_binary.struct_from_binary(ua.CreateSessionParameters, buf)
    assert header.RequestHandle == 8
    assert header.AuthenticationToken == ua.NodeId(0)
    assert params.ClientDescription.ApplicationUri == "urn:test"
    assert params.ClientDescription.ApplicationType == ua.ApplicationType.Client
    assert params.EndpointUrl == ENDPOINT
    assert params.SessionName == "flood"
    assert params.ClientCertificate is None
    assert len(params.ClientNonce) == 32
    assert params.RequestedSessionTimeout == uatcp.SESSION_TIMEOUT_MS


def test_activate_and_close_session_are_what_asyncua_parses() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    token = ua.NodeId("session-token-1", 1)
    encoded = ua_binary.nodeid_to_binary(token)
    raw = uatcp.secure_message(b"MSG", 11, 22, 3, 4,
                               service=uatcp.activate_session_service(5, encoded, "anon-policy"))
    buf = _symmetric(raw, b"MSG")
    assert ua_binary.nodeid_from_binary(buf) == ua.NodeId(uatcp.ACTIVATE_SESSION_REQUEST)
    header = ua_binary.struct_from_binary(ua.RequestHeader, buf)
    params = ua_binary.struct_from_binary(ua.ActivateSessionParameters, buf)
    assert header.AuthenticationToken == token
    assert isinstance(params.UserIdentityToken, ua.AnonymousIdentityToken)
    assert params.UserIdentityToken.PolicyId == "anon-policy"

    raw = uatcp.secure_message(b"MSG", 11, 22, 3, 4,
                               service=uatcp.close_session_service(6, encoded))
    buf = _symmetric(raw, b"MSG")
    assert ua_binary.nodeid_from_binary(buf) == ua.NodeId(uatcp.CLOSE_SESSION_REQUEST)
    header = ua_binary.struct_from_binary(ua.RequestHeader, buf)
    assert header.AuthenticationToken == token
    assert ua_binary.Primitives.Boolean.unpack(buf) is True


def _msg(response: Any, request_id: int = 4, ctype: bytes = b"F") -> uatcp.Chunk:
    """A MSG chunk carrying ``response`` (encoded by asyncua)."""
    from asyncua.ua import ua_binary

    body = struct.pack("<IIII", 11, 22, 3, request_id) + ua_binary.struct_to_binary(response)
    return uatcp.Chunk(b"MSG", ctype, b"MSG" + ctype + struct.pack("<I", 8 + len(body)) + body)


def test_responses_encoded_by_asyncua_are_parsed() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    created = ua.CreateSessionResponse()
    created.Parameters.SessionId = ua.NodeId(77, 3)
    created.Parameters.AuthenticationToken = ua.NodeId(b"\x01\x02opaque", 0,
                                                       ua.NodeIdType.ByteString)
    created.ResponseHeader.ServiceDiagnostics = ua.DiagnosticInfo(
        AdditionalInfo="diag", InnerStatusCode=ua.StatusCode(5))
    created.ResponseHeader.StringTable = ["a", "bc"]
    head = uatcp.parse_response(_msg(created))
    assert (head.type_id, head.status, head.request_id) == (uatcp.CREATE_SESSION_RESPONSE, 0, 4)
    assert head.auth_token == ua_binary.nodeid_to_binary(created.Parameters.AuthenticationToken)

    fault = ua.ServiceFault()
    fault.ResponseHeader.ServiceResult = ua.StatusCode(ua.StatusCodes.BadSecurityChecksFailed)
    head = uatcp.parse_response(_msg(fault))
    assert (head.type_id, head.status) == (uatcp.SERVICE_FAULT,
                                           ua.StatusCodes.BadSecurityChecksFailed)


def test_acknowledge_and_error_encoded_by_asyncua_are_parsed() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    ack = ua.Acknowledge()
    ack.ReceiveBufferSize, ack.SendBufferSize = 8192, 16384
    buf = bytearray(ua_binary.uatcp_to_binary(ua.MessageType.Acknowledge, ack))
    err = ua.ErrorMessage(ua.StatusCode(ua.StatusCodes.BadTcpServerTooBusy), "busy")
    buf += ua_binary.uatcp_to_binary(ua.MessageType.Error, err)
    buf += b"MSGF\x40"  # the start of a next chunk stays in the buffer
    chunks = uatcp.split_chunks(buf)
    assert [c.mtype for c in chunks] == [b"ACK", b"ERR"]
    assert bytes(buf) == b"MSGF\x40"
    got = uatcp.parse_acknowledge(chunks[0])
    assert (got.receive_buffer_size, got.send_buffer_size) == (8192, 16384)
    assert uatcp.parse_error(chunks[1]) == (ua.StatusCodes.BadTcpServerTooBusy, "busy")


@pytest.mark.parametrize("head", [b"XYZF\x10\x00\x00\x00", b"MSGQ\x10\x00\x00\x00",
                                  b"MSGF\x04\x00\x00\x00", b"MSGF\xff\xff\xff\x7f"])
def test_bad_chunk_headers_are_refused_before_their_body(head: bytes) -> None:
    with pytest.raises(uatcp.FrameError):
        uatcp.split_chunks(bytearray(head))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_a_frame_error_never_a_crash(data: bytes) -> None:
    buf = bytearray(b"MSGF" + (8 + 16 + len(data)).to_bytes(4, "little") + bytes(16) + data)
    try:
        for chunk in uatcp.split_chunks(buf):
            uatcp.parse_response(chunk)
    except uatcp.FrameError:
        pass


def test_hello_encoded_by_asyncua_is_parsed() -> None:
    from asyncua import ua
    from asyncua.ua import ua_binary

    msg = ua.Hello()
    msg.ReceiveBufferSize, msg.SendBufferSize = 8192, 16384
    msg.MaxMessageSize, msg.MaxChunkCount = 0, 7
    msg.EndpointUrl = "opc.tcp://[::1]:4840/ü"
    (chunk,) = uatcp.split_chunks(bytearray(ua_binary.uatcp_to_binary(ua.MessageType.Hello,
                                                                       msg)))
    assert uatcp.parse_hello(chunk) == uatcp.Hello(0, 8192, 16384, 0, 7, "opc.tcp://[::1]:4840/ü")


def test_datetime_and_node_ids_are_what_asyncua_parses() -> None:
    from datetime import UTC, datetime

    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua import ua_binary

    stamp = ua_binary.Primitives.DateTime.unpack(Buffer(uatcp.ua_datetime(86_400.5)))
    assert stamp.replace(tzinfo=UTC) == datetime(1970, 1, 2, 0, 0, 0, 500_000, tzinfo=UTC)
    for ident in (0, 255, 256, 65535, 65536, 0xFFFFFFFF):
        assert ua_binary.nodeid_from_binary(Buffer(uatcp.numeric_node(ident))) == ua.NodeId(ident)


# --------------------------------------------------------------------------- own round trips
@pytest.mark.parametrize("limits", [{}, {"receive_buffer_size": 65536, "send_buffer_size": 8192,
                                         "max_message_size": 0, "max_chunk_count": 0}])
def test_hello_decodes_with_the_codecs_own_parser(limits: dict[str, int]) -> None:
    buf = bytearray(uatcp.hello(ENDPOINT, **limits) + b"ACK")
    (chunk,) = uatcp.split_chunks(buf)
    assert bytes(buf) == b"ACK"  # the start of the next message stays
    got = uatcp.parse_hello(chunk)
    want = {"receive_buffer_size": uatcp.RECEIVE_BUFFER_SIZE,
            "send_buffer_size": uatcp.RECEIVE_BUFFER_SIZE,
            "max_message_size": uatcp.MAX_MESSAGE_SIZE,
            "max_chunk_count": uatcp.MAX_CHUNK_COUNT} | limits
    assert got == uatcp.Hello(0, endpoint_url=ENDPOINT, **want)


def test_the_connection_storms_hello_is_the_codecs() -> None:
    from harness.load.connflood import opcua_hello

    assert opcua_hello(ENDPOINT) == uatcp.hello(ENDPOINT)


@pytest.mark.parametrize("value", ["", "plc ü", b"\x00\xff", None])
def test_strings_round_trip(value: str | bytes | None) -> None:
    r = uatcp.Reader(uatcp.ua_string(value) + b"rest")
    expected = value.encode() if isinstance(value, str) else value
    assert r.string() == expected
    assert r.take(4) == b"rest"


@pytest.mark.parametrize("ident", [0, 255, 256, 65535, 65536, 0xFFFFFFFF])
def test_numeric_node_ids_round_trip(ident: int) -> None:
    encoded = uatcp.numeric_node(ident)
    r = uatcp.Reader(encoded + b"\x99")
    assert r.node_id() == encoded
    assert uatcp.numeric_identifier(encoded) == ident
    assert r.u8() == 0x99


def test_other_node_ids_have_no_numeric_identifier() -> None:
    string_node = b"\x03\x01\x00" + uatcp.ua_string("x")
    assert uatcp.Reader(string_node).node_id() == string_node
    assert uatcp.numeric_identifier(string_node) == -1
    assert uatcp.numeric_identifier(b"") == -1


def test_a_none_channel_round_trips_through_parse_response() -> None:
    # the server side of an OPN None answer, written with the codec's own pieces
    response_header = (uatcp.ua_datetime(0) + struct.pack("<II", 5, 0) + b"\x00"  # no diagnostics
                       + struct.pack("<i", -1) + uatcp.NULL_NODE + b"\x00")
    body = (struct.pack("<I", 0) + uatcp.ua_string(uatcp.POLICY_NONE_URI) + uatcp.ua_string(None)
            + uatcp.ua_string(None) + struct.pack("<II", 1, 4)
            + uatcp.numeric_node(uatcp.OPEN_SECURE_CHANNEL_RESPONSE) + response_header
            + struct.pack("<IIIqI", 0, 42, 9, 0, 60_000) + uatcp.ua_string(b""))
    (chunk,) = uatcp.split_chunks(bytearray(uatcp.frame(b"OPN", body)))
    head = uatcp.parse_response(chunk)
    assert (head.channel_id, head.token_id, head.request_id, head.type_id, head.status) == (
        42, 9, 4, uatcp.OPEN_SECURE_CHANNEL_RESPONSE, 0)


def test_an_intermediate_chunk_keeps_its_type() -> None:
    buf = bytearray(uatcp.frame(b"MSG", b"abc", b"C") + uatcp.frame(b"MSG", b"de"))
    chunks = uatcp.split_chunks(buf)
    assert [(c.ctype, c.data[8:]) for c in chunks] == [(b"C", b"abc"), (b"F", b"de")]
    assert not buf


# --------------------------------------------------------------------------- framing limits
def test_check_headers_names_the_fault_and_consumes_nothing() -> None:
    ack = uatcp.frame(b"ACK", bytes(20))
    buf = bytearray(ack + ack[:5])
    uatcp.check_headers(buf)  # an incomplete header waits for more
    assert bytes(buf) == ack + ack[:5]
    uatcp.check_headers(b"MSGF" + struct.pack("<I", uatcp.RECEIVE_BUFFER_SIZE))
    cases = {
        b"MSGF" + struct.pack("<I", 65536): "declares 65536 bytes",
        b"MSGF" + struct.pack("<I", 4): "less than its own header",
        b"MSGX" + struct.pack("<I", 16): "unknown chunk type",
        ack + b"XYZF" + struct.pack("<I", 16): "at offset 28",
    }
    for data, message in cases.items():
        with pytest.raises(uatcp.FrameError, match=message):
            uatcp.check_headers(data)


def test_the_chunk_size_limit_is_the_callers() -> None:
    big = uatcp.frame(b"MSG", bytes(8192))
    with pytest.raises(uatcp.FrameError, match="at most 8192"):
        uatcp.split_chunks(bytearray(big), max_size=8192)
    with pytest.raises(uatcp.FrameError, match="at most 8192"):
        uatcp.check_headers(big[:8], max_size=8192)  # refused before the body is there
    assert len(uatcp.split_chunks(bytearray(big))) == 1


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"MSGF", b"ACKF", b"ERRC", b"OPNA", b"HELQ", b"XYZF"]),
                max_size=4), st.lists(st.integers(0, 70_000), max_size=4), st.binary(max_size=64))
def test_check_headers_and_split_chunks_agree(types: list[bytes], sizes: list[int],
                                              tail: bytes) -> None:
    data = b"".join(t + struct.pack("<I", n) + bytes(max(0, min(n, 64) - 8))
                    for t, n in zip(types, sizes, strict=False)) + tail
    try:
        uatcp.check_headers(data)
    except uatcp.FrameError as exc:
        with pytest.raises(uatcp.FrameError, match="^" + re.escape(str(exc)) + "$"):
            uatcp.split_chunks(bytearray(data))
    else:
        buf = bytearray(data)
        chunks = uatcp.split_chunks(buf)
        assert b"".join(c.data for c in chunks) + bytes(buf) == data


@pytest.mark.parametrize(("receive", "send", "announced", "problem"), [
    (8192, 8192, 65535, None),
    (65535, 65535, 65535, None),
    (8191, 65535, 65535, "ReceiveBufferSize 8191 is below the minimum 8192"),
    (65535, 100, 65535, "SendBufferSize 100 is below the minimum 8192"),
    (65535, 16385, 16384, "SendBufferSize 16385 is larger than the ReceiveBufferSize we "
                          "announced (16384)"),
])
def test_acknowledge_limits(receive: int, send: int, announced: int,
                            problem: str | None) -> None:
    assert uatcp.acknowledge_problem(receive, send, announced) == (
        None if problem is None else f"Acknowledge {problem}")


def test_decoders_refuse_the_wrong_message() -> None:
    (hel,) = uatcp.split_chunks(bytearray(uatcp.hello(ENDPOINT)))
    with pytest.raises(uatcp.FrameError, match="expected an Acknowledge"):
        uatcp.parse_acknowledge(hel)
    with pytest.raises(uatcp.FrameError, match="expected OPN or MSG"):
        uatcp.parse_response(hel)
    (ack,) = uatcp.split_chunks(bytearray(uatcp.frame(b"ACK", bytes(20))))
    with pytest.raises(uatcp.FrameError, match="expected a Hello"):
        uatcp.parse_hello(ack)
    short = uatcp.Chunk(b"HEL", b"F", uatcp.frame(b"HEL", bytes(12)))
    with pytest.raises(uatcp.FrameError, match="more needed"):
        uatcp.parse_hello(short)
