"""The OPC UA client: against the simulator (one hardened lab for the module), against fake
servers that lie about sizes or send garbage, and the guard.

The fake servers speak just enough OPC UA TCP (a scripted answer to the Hello) to show that the
client's transport bounds hold: an Acknowledge declaring absurd buffer sizes, a chunk header
declaring 2 GiB, a message of endless intermediate chunks, garbage, silence, a closed connection
and an Error message each end in a :class:`~harness.errors.TargetError` (a
:class:`~harness.protocols.opcua.TransportViolation` where the device broke the framing) long
before the fake server gives up, never in a hang.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import SafetyViolation, TargetError
from harness.evidence import Evidence
from harness.profile import LoadedProfile, load_profile
from harness.protocols.opcua import (
    MAX_MESSAGE_SIZE,
    NO_WATCHDOG,
    RECEIVE_BUFFER_SIZE,
    AppCert,
    Identity,
    ProfileGap,
    Target,
    Timeouts,
    TransportViolation,
    UaConnection,
    UaLoop,
    UaRefused,
    check_acknowledge,
    choose_security,
    different_value,
    first_der_certificate,
    scan_headers,
    status_name,
)
from harness.safety import Guard

pytestmark = pytest.mark.timeout(90)

#: Seconds a fake server holds its connection open (or keeps sending): far beyond the client's
#: timeouts, so a client that returns earlier did not wait for the server to give up.
HOLD_S = 10.0
FAST = Timeouts(connect_s=1.0, request_s=1.0)
NONE_URI = b"http://opcfoundation.org/UA/SecurityPolicy#None"
SCRATCH = "ns=2;s=PLC.Scratch.0"
HEARTBEAT = "ns=2;s=PLC.Heartbeat"


# --------------------------------------------------------------------------- the simulator
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedProfile]:
    """One hardened OPC UA simulator for the module (idle timeout 1 s)."""
    from harness.lab import LabDefinition, lab_down, lab_up

    state = tmp_path_factory.mktemp("opcua-client") / "state"
    lab_up(LabDefinition.model_validate({
        "name": "opcua-client", "simulators": ["opcua"],
        "policy": {"idle_timeout_s": 1.0, "session_limit": 3, "lockout_threshold": 3,
                   "lockout_duration_s": 1.0},
    }), state)
    try:
        yield load_profile(state / "profile.yaml")
    finally:
        lab_down(state)


@pytest.fixture
def evidence() -> Evidence:
    return Evidence("test")


@pytest.fixture
def loop() -> Iterator[UaLoop]:
    ua_loop = UaLoop()
    try:
        yield ua_loop
    finally:
        ua_loop.close()
        assert ua_loop.closed


@pytest.fixture
def conn(sim: LoadedProfile, loop: UaLoop, evidence: Evidence) -> UaConnection:
    prof = sim.profile
    iface = prof.interfaces.opcua
    assert iface is not None
    return UaConnection(loop, Guard(prof.allow_list()), evidence, Target.from_interface(iface),
                        Timeouts(3.0, 3.0))


def _app(sim: LoadedProfile) -> tuple[AppCert, str]:
    iface = sim.profile.interfaces.opcua
    assert iface is not None and iface.client_cert and iface.client_key
    assert iface.application_uri is not None
    return (AppCert.from_files(iface.client_cert, iface.client_key, "profile client_cert"),
            iface.application_uri)


def _account(sim: LoadedProfile, role: str) -> Identity:
    creds = getattr(sim.profile.accounts, role)
    return Identity("username", creds.username, sim.secret(creds.password), label=role)


def _session_kwargs(sim: LoadedProfile, conn: UaConnection) -> dict[str, Any]:
    endpoint = choose_security(conn.get_endpoints())
    assert endpoint is not None
    app, uri = _app(sim)
    return {"policy": endpoint.policy, "mode": endpoint.mode, "app_cert": app,
            "server_cert_der": endpoint.server_cert_der, "application_uri": uri}


def test_endpoints_are_listed_with_their_certificates(conn: UaConnection,
                                                      evidence: Evidence) -> None:
    endpoints = conn.get_endpoints()
    assert sorted((e.policy, e.mode) for e in endpoints) == sorted(
        (p, m) for p in ("Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss")
        for m in ("Sign", "SignAndEncrypt"))
    for e in endpoints:
        assert e.secured and e.server_cert is not None
        assert (e.server_cert["key_type"], e.server_cert["key_bits"],
                e.server_cert["signature_hash"]) == ("RSA", 2048, "sha256")
        assert str(e.server_cert["fingerprint"]).startswith("SHA256:")
        assert {t.token_type for t in e.tokens} == {"UserName", "Certificate"}
        # the password is protected by the token (Sign) or by the channel (SignAndEncrypt)
        assert e.plaintext_password_tokens() == []
        username = e.tokens_of("UserName")[0]
        assert username.effective_policy == ("None" if e.mode == "SignAndEncrypt" else e.policy)
    chosen = choose_security(endpoints)
    assert chosen is not None and (chosen.policy, chosen.mode) == ("Basic256Sha256",
                                                                  "SignAndEncrypt")
    summaries = [e["summary"] for e in evidence.entries]
    assert any("Hello (ReceiveBufferSize 65535" in s for s in summaries)
    assert any("GetEndpoints: 6 endpoints" in s for s in summaries)
    hello = next(e for e in evidence.entries if "Hello (" in e["summary"])
    assert bytes.fromhex(hello["hex"])[:4] == b"HELF"  # the plaintext Hello, in hex


def test_sessions_read_write_and_report_status_names(sim: LoadedProfile, conn: UaConnection,
                                                     evidence: Evidence) -> None:
    kwargs = _session_kwargs(sim, conn)
    with conn.open_session(identity=_account(sim, "readonly"), label="ro", **kwargs) as ro:
        assert ro.revised_timeout_ms == 1000.0  # the server's idle timeout
        heartbeat = ro.read_value(HEARTBEAT)
        assert heartbeat.variant == "UInt16" and isinstance(heartbeat.value, int)
        before = ro.read_value(SCRATCH)
        assert ro.write(SCRATCH, different_value(before.value, before.variant),
                        before.variant or "") == "BadUserAccessDenied"
        assert ro.read_value(SCRATCH).value == before.value
        assert ro.read("ns=2;s=PLC.NoSuchNode").status == "BadNodeIdUnknown"
    assert ro.closed
    with conn.open_session(identity=_account(sim, "operator"), label="rw", **kwargs) as rw:
        assert rw.write(SCRATCH, before.value + 1, "UInt16") == "Good"
        assert rw.read_value(SCRATCH).value == before.value + 1
        assert rw.write(SCRATCH, before.value, "UInt16") == "Good"
        with pytest.raises(ProfileGap):
            rw.read("not a node id")
    text = repr(evidence.entries)
    assert "Write ns=2;s=PLC.Scratch.0: BadUserAccessDenied" in text
    for role in ("readonly", "operator"):
        assert str(_account(sim, role).password) not in text


def test_refusals_carry_stage_and_status(sim: LoadedProfile, conn: UaConnection) -> None:
    kwargs = _session_kwargs(sim, conn)
    anonymous = conn.attempt(identity=Identity.anonymous(), **kwargs)
    assert (anonymous.accepted, anonymous.stage, anonymous.status) == (
        False, "ActivateSession", "BadIdentityTokenRejected")
    ghost = conn.attempt(identity=Identity("username", "harness-nobody", "x" * 12), **kwargs)
    assert (ghost.stage, ghost.status) == ("ActivateSession", "BadUserAccessDenied")
    good = conn.attempt(identity=_account(sim, "readonly"), **kwargs)
    assert (good.accepted, good.status, good.session) == (True, "Good", None)
    channel = conn.open_channel("Basic128Rsa15", "SignAndEncrypt", app_cert=kwargs["app_cert"],
                                server_cert_der=kwargs["server_cert_der"],
                                application_uri=kwargs["application_uri"], label="deprecated")
    assert (channel.accepted, channel.stage, channel.status) == (
        False, "OpenSecureChannel", "BadSecurityPolicyRejected")
    insecure = conn.probe_insecure_session()
    assert (insecure.accepted, insecure.stage, insecure.status) == (
        False, "CreateSession", "BadSecurityChecksFailed")


def test_idle_session_is_reported_closed(sim: LoadedProfile, conn: UaConnection) -> None:
    kwargs = _session_kwargs(sim, conn)
    kept = conn.open_session(identity=_account(sim, "readonly"), label="kept alive", **kwargs)
    idle = conn.open_session(identity=_account(sim, "readonly"), label="idle",
                             watchdog_s=NO_WATCHDOG, **kwargs)
    try:
        idle.read_value(HEARTBEAT)
        time.sleep(2.5)  # idle timeout 1 s; the kept session's keep-alive reads run meanwhile
        assert kept.read_value(HEARTBEAT).good
        with pytest.raises(UaRefused) as info:
            idle.read(HEARTBEAT)
        assert (info.value.status, info.value.stage) == ("BadSessionNotActivated", "Read")
    finally:
        idle.close()
        kept.close()


def test_loop_thread_ends_with_close() -> None:
    ua_loop = UaLoop(name="harness-opcua-test")
    assert any(t.name == "harness-opcua-test" for t in threading.enumerate())
    ua_loop.close()
    assert not any(t.name == "harness-opcua-test" for t in threading.enumerate())
    with pytest.raises(Exception, match="closed"):
        ua_loop.run(_nothing(), 1.0, "after close")


async def _nothing() -> None:
    return None


# --------------------------------------------------------------------------- the guard
def test_guard_refuses_before_any_connection(loop: UaLoop, evidence: Evidence) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]
    try:
        conn = UaConnection(loop, Guard(["127.0.0.2"]), evidence,
                            Target(f"opc.tcp://127.0.0.1:{port}", "127.0.0.1", port), FAST)
        with pytest.raises(SafetyViolation, match="not in the profile's targets"):
            conn.get_endpoints()
        with pytest.raises(SafetyViolation):
            conn.probe_insecure_session()
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing connected
    finally:
        listener.close()
    assert evidence.entries == []


# --------------------------------------------------------------------------- fake servers
def _ack(receive: int, send: int, message: int = 0, chunks: int = 0) -> bytes:
    body = struct.pack("<IIIII", 0, receive, send, message, chunks)
    return b"ACKF" + struct.pack("<I", 8 + len(body)) + body


def _secure_channel(conn: socket.socket) -> int:
    """Answer the client's OpenSecureChannel (None policy) on channel 7, token 1; return the
    request id of the client's next message (its GetEndpoints)."""
    from asyncua import ua
    from asyncua.ua.ua_binary import struct_to_binary

    request = conn.recv(4096)
    pos = 12
    for _ in range(3):  # policy URI, sender certificate, receiver thumbprint
        (length,) = struct.unpack_from("<i", request, pos)
        pos += 4 + max(length, 0)
    _seq, request_id = struct.unpack_from("<II", request, pos)
    response = ua.OpenSecureChannelResponse()
    response.Parameters.SecurityToken.ChannelId = 7
    response.Parameters.SecurityToken.TokenId = 1
    response.Parameters.SecurityToken.RevisedLifetime = 600_000
    security = struct.pack("<i", len(NONE_URI)) + NONE_URI + struct.pack("<ii", -1, -1)
    body = security + struct.pack("<II", 1, request_id) + struct_to_binary(response)
    conn.sendall(b"OPNF" + struct.pack("<II", 12 + len(body), 7) + body)
    message = conn.recv(4096)  # GetEndpoints: header, channel, token, sequence, request id
    (next_id,) = struct.unpack_from("<I", message, 20)
    return int(next_id)


def _message_chunk(sequence: int, request_id: int, payload: int) -> bytes:
    """An intermediate chunk of a response on channel 7 (never followed by a final one)."""
    body = struct.pack("<III", 1, sequence, request_id) + b"\0" * payload
    return b"MSGC" + struct.pack("<II", 12 + len(body), 7) + body


def _hold(conn: socket.socket) -> None:
    deadline = time.monotonic() + HOLD_S
    conn.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if not conn.recv(4096):
                return
        except TimeoutError:
            continue


def _stream(conn: socket.socket, first: bytes, more: Callable[[int], bytes]) -> None:
    """Send ``first``, then ``more(i)`` until the client hangs up or HOLD_S passes."""
    deadline = time.monotonic() + HOLD_S
    conn.sendall(first)
    i = 0
    while time.monotonic() < deadline:
        i += 1
        conn.sendall(more(i))


def _absurd_ack(conn: socket.socket) -> None:
    conn.sendall(_ack(0xFFFFFFFF, 0xFFFFFFFF, 0, 0))
    _hold(conn)


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"\x16\x03\x01\x02\x00 this is not OPC UA at all")
    _hold(conn)


def _huge_chunk(conn: socket.socket) -> None:
    conn.sendall(_ack(65535, 65535))
    conn.recv(4096)  # the OpenSecureChannel request
    _stream(conn, b"OPNF" + struct.pack("<II", 0x7FFFFFF0, 0), lambda i: b"\0" * 65536)


def _endless_message(conn: socket.socket) -> None:
    conn.sendall(_ack(65535, 65535, 0, 0))  # 0 = "no limit" from the server's side
    request_id = _secure_channel(conn)
    _stream(conn, b"", lambda i: _message_chunk(1 + i, request_id, 60000))


def _silence(conn: socket.socket) -> None:
    _hold(conn)


def _close_after_hello(conn: socket.socket) -> None:
    return None


def _error_message(conn: socket.socket) -> None:
    from asyncua.ua.status_codes import StatusCodes

    reason = b"go away"
    body = struct.pack("<Ii", StatusCodes.BadConnectionRejected, len(reason)) + reason
    conn.sendall(b"ERRF" + struct.pack("<I", 8 + len(body)) + body)
    _hold(conn)


class FakeServer:
    """Accepts one connection, reads the Hello, then runs ``behaviour``."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.behaviour = behaviour
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(HOLD_S)
            try:
                conn.recv(4096)
                self.behaviour(conn)
            except OSError:
                return  # the client hung up: what the test wants

    def close(self) -> None:
        self.listener.close()
        self.thread.join(HOLD_S + 2)
        assert not self.thread.is_alive()


@pytest.fixture
def fake(loop: UaLoop, evidence: Evidence) -> Iterator[Callable[..., UaConnection]]:
    servers: list[FakeServer] = []

    def start(behaviour: Callable[[socket.socket], None]) -> UaConnection:
        server = FakeServer(behaviour)
        servers.append(server)
        url = f"opc.tcp://127.0.0.1:{server.port}/fake"
        return UaConnection(loop, Guard(["127.0.0.1"]), evidence,
                            Target(url, "127.0.0.1", server.port), FAST)

    yield start
    loop.close()  # hang up on every fake so their threads end
    for server in servers:
        server.close()


@pytest.mark.parametrize(("behaviour", "error", "match"), [
    (_absurd_ack, TransportViolation, "SendBufferSize 4294967295 is larger than the "
                                      "ReceiveBufferSize we announced"),
    (_garbage, TransportViolation, "unknown message type"),
    (_huge_chunk, TransportViolation, "OPN chunk declares 2147483632 bytes"),
    (_endless_message, TransportViolation, f"a message over {MAX_MESSAGE_SIZE} bytes"),
    (_silence, TargetError, "no answer to Hello"),
    (_close_after_hello, TargetError, "Hello failed"),
    (_error_message, UaRefused, "BadConnectionRejected"),
], ids=["absurd-ack", "garbage", "huge-chunk", "endless-message", "silence", "closed",
        "error-message"])
def test_hostile_servers_end_in_target_errors(fake: Callable[..., UaConnection],
                                              evidence: Evidence,
                                              behaviour: Callable[[socket.socket], None],
                                              error: type[TargetError], match: str) -> None:
    conn = fake(behaviour)
    started = time.monotonic()
    with pytest.raises(error, match=match) as info:
        conn.get_endpoints()
    assert time.monotonic() - started < HOLD_S  # it did not wait for the server to give up
    if isinstance(info.value, UaRefused):
        assert (info.value.status, info.value.stage) == ("BadConnectionRejected", "Hello")
    if error is TransportViolation:
        assert any("transport violation" in e["summary"] for e in evidence.entries)


# --------------------------------------------------------------------------- helpers
def test_scan_headers() -> None:
    ok = b"ACKF" + struct.pack("<I", 28) + b"\0" * 20
    assert scan_headers(ok + ok[:5]) is None  # an incomplete header waits for more
    assert scan_headers(b"MSGF" + struct.pack("<I", RECEIVE_BUFFER_SIZE)) is None
    assert "declares 65536 bytes" in str(scan_headers(b"MSGF" + struct.pack("<I", 65536)))
    assert "less than its own header" in str(scan_headers(b"MSGF" + struct.pack("<I", 4)))
    assert "chunk type" in str(scan_headers(b"MSGX" + struct.pack("<I", 16)))
    assert "at offset 28" in str(scan_headers(ok + b"XYZF" + struct.pack("<I", 16)))


def test_check_acknowledge() -> None:
    assert check_acknowledge(65535, 65535) is None
    assert check_acknowledge(8192, 8192) is None
    assert "below the minimum" in str(check_acknowledge(100, 65535))
    assert "below the minimum" in str(check_acknowledge(65535, 100))
    assert "larger than" in str(check_acknowledge(65535, 65536))


def test_status_names_and_values() -> None:
    assert status_name(0) == "Good"
    assert status_name(0x801F0000) == "BadUserAccessDenied"
    assert status_name(0x801F0400) == "BadUserAccessDenied"  # info bits set
    assert status_name(0x80FF0000).startswith("Bad(0x")
    assert different_value(5, "UInt16") == 4
    assert different_value(0, "UInt16") == 1
    assert different_value(True, "Boolean") is False
    assert different_value(1.5, "Double") == 2.5
    with pytest.raises(ProfileGap):
        different_value(b"raw", "ByteString")


def test_first_certificate_of_a_chain(tmp_path: Path) -> None:
    from harness import pki

    ca = pki.make_ca("chain test CA", bits=1024)
    leaf = pki.issue("chain test leaf", issuer=ca, bits=1024)
    assert first_der_certificate(leaf.cert_der() + ca.cert_der()) == leaf.cert_der()
    assert first_der_certificate(b"") == b""


def test_identity_never_shows_the_password() -> None:
    ident = Identity("username", "viewer", "s3cret-pass", label="readonly")
    assert "s3cret-pass" not in repr(ident)
    assert "s3cret-pass" not in ident.describe()
    assert Identity.anonymous().describe() == "anonymous"
