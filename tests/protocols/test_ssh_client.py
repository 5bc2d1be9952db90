"""Tests of the SSH client: KEXINIT parsing, bounded reads against lying servers, the guard, and
real sessions against the SSH simulator.

Fake servers are in-process threads on 127.0.0.1 (port 0) that send scripted bytes; the
simulator is started through the ``lab`` fixture.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import SafetyViolation, TargetError
from harness.evidence import Evidence
from harness.protocols import ssh as s
from harness.safety import Guard

pytestmark = pytest.mark.timeout(60)

TIMEOUTS = s.Timeouts(connect_s=2.0, request_s=1.0)
GUARD = Guard(["127.0.0.1"])
Script = Callable[[socket.socket], None]


# --------------------------------------------------------------------------- hand-made bytes
def name_list(names: list[str]) -> bytes:
    raw = ",".join(names).encode()
    return struct.pack(">I", len(raw)) + raw


def kexinit_payload(lists: dict[str, list[str]] | None = None, *, follows: bool = False,
                    extra: bytes = b"") -> bytes:
    """An SSH_MSG_KEXINIT payload built by hand, field by field (RFC 4253 7.1)."""
    values = {name: ["none"] if "compression" in name else [] for name in s.KEXINIT_LISTS}
    values.update({"kex": ["curve25519-sha256"], "host_key": ["ssh-ed25519"],
                   "ciphers_c2s": ["aes128-ctr"], "ciphers_s2c": ["aes256-ctr"],
                   "macs_c2s": ["hmac-sha2-256"], "macs_s2c": ["hmac-sha2-512"]})
    values.update(lists or {})
    body = bytes([20]) + bytes(range(16))
    for name in s.KEXINIT_LISTS:
        body += name_list(values[name])
    return body + bytes([1 if follows else 0]) + struct.pack(">I", 0) + extra


def packet(payload: bytes, padding: int = 4) -> bytes:
    """An unencrypted binary packet around ``payload``."""
    length = 1 + len(payload) + padding
    return struct.pack(">IB", length, padding) + payload + b"\0" * padding


def test_kexinit_parses_every_list() -> None:
    payload = kexinit_payload({"kex": ["a-1", "b-2@example.org"],
                               "languages_s2c": ["en-US"]}, follows=True)
    k = s.KexInit.parse(payload)
    assert k.cookie == bytes(range(16))
    assert k.kex == ("a-1", "b-2@example.org")
    assert k.ciphers == ("aes128-ctr", "aes256-ctr")
    assert k.macs == ("hmac-sha2-256", "hmac-sha2-512")
    assert k.compression == ("none",)
    assert k.languages_s2c == ("en-US",)
    assert k.languages_c2s == ()
    assert k.first_kex_packet_follows is True
    assert k.lists()["host_key"] == ["ssh-ed25519"]


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "expected SSH_MSG_KEXINIT"),
    (bytes([21]) + bytes(40), "got message 21"),
    (bytes([20]) + bytes(8), "shorter than its cookie"),
    (bytes([20]) + bytes(16) + struct.pack(">I", 1000) + b"abc", "says 1000 bytes"),
    (kexinit_payload()[:-3], "truncated before first_kex_packet_follows"),
    (kexinit_payload(extra=b"xx"), "2 bytes after its reserved field"),
    (kexinit_payload({"kex": ["caf\u00e9"]}), "not US-ASCII"),
    (kexinit_payload({"kex": ["a", ""]}), "invalid name"),
    (kexinit_payload({"kex": ["has space"]}), "invalid name"),
])
def test_malformed_kexinit_is_refused(payload: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s.KexInit.parse(payload)


@pytest.mark.parametrize(("line", "expected"), [
    ("SSH-2.0-OpenSSH_9.6 Ubuntu-3", ("2.0", False, True, "OpenSSH_9.6", "Ubuntu-3")),
    ("SSH-1.99-OpenSSH_3.9p1", ("1.99", True, True, "OpenSSH_3.9p1", "")),
    ("SSH-1.5-Cisco-1.25", ("1.5", True, False, "Cisco-1.25", "")),
])
def test_identification_fields(line: str, expected: tuple[Any, ...]) -> None:
    ident = s.Identification(line)
    assert (ident.protocol_version, ident.speaks_ssh1, ident.speaks_ssh2, ident.software,
            ident.comments) == expected


# --------------------------------------------------------------------------- fake servers
class FakeServer:
    """Serves ``script`` to each connection (one thread), until closed."""

    def __init__(self, script: Script) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.received = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(script,), daemon=True)
        self._thread.start()

    def _run(self, script: Script) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(0.2)
            with contextlib.suppress(OSError), conn:
                script(conn)
                self._drain(conn)

    def _drain(self, conn: socket.socket) -> None:
        """Keep reading (and record) until the client closes or the server stops."""
        while not self._stop.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return
            self.received += data[:4096]

    def send_until_stopped(self, conn: socket.socket, chunk: bytes) -> None:
        """Send ``chunk`` again and again until the client stops reading or we stop."""
        while not self._stop.is_set():
            try:
                conn.sendall(chunk)
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()


@pytest.fixture
def fake() -> Iterator[Callable[[Script], FakeServer]]:
    servers: list[FakeServer] = []

    def make(script: Script) -> FakeServer:
        server = FakeServer(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def probe(server: FakeServer, guard: Guard = GUARD) -> tuple[s.ServerHello, Evidence]:
    ev = Evidence("test")
    return s.probe_server(guard, ev, s.Endpoint("127.0.0.1", server.port), TIMEOUTS), ev


def test_probe_reads_pre_version_lines_and_kexinit(fake: Callable[[Script], FakeServer]) -> None:
    payload = kexinit_payload({"kex": ["diffie-hellman-group1-sha1"]})

    def script(conn: socket.socket) -> None:
        conn.sendall(b"Welcome to the device\r\nsecond line\r\nSSH-2.0-Fake_1.0 test\r\n")
        conn.sendall(packet(bytes([2]) + bytes(8)))  # SSH_MSG_IGNORE first: skipped
        conn.sendall(packet(payload)[:7])  # the KEXINIT in two pieces
        conn.sendall(packet(payload)[7:])

    server = fake(script)
    hello, ev = probe(server)
    assert hello.identification.version_line == "SSH-2.0-Fake_1.0 test"
    assert hello.identification.pre_version_lines == ("Welcome to the device", "second line")
    assert hello.kexinit is not None
    assert hello.kexinit.kex == ("diffie-hellman-group1-sha1",)
    summaries = [e["summary"] for e in ev.entries]
    assert f"identification {s.CLIENT_VERSION}" in summaries
    assert any(x.startswith("KEXINIT: 1 kex") for x in summaries)
    assert any(e["summary"] == "server KEXINIT" and e["data"]["kex"] == [
        "diffie-hellman-group1-sha1"] for e in ev.entries)


def test_ssh1_server_gives_no_kexinit(fake: Callable[[Script], FakeServer]) -> None:
    server = fake(lambda conn: conn.sendall(b"SSH-1.5-OldDevice\n"))
    hello, _ = probe(server)
    assert hello.kexinit is None
    assert hello.identification.speaks_ssh1


def _megabyte_of_lines(server: list[FakeServer]) -> Script:
    def script(conn: socket.socket) -> None:
        server[0].send_until_stopped(conn, (b"x" * 1022 + b"\r\n") * 64)
    return script


def test_a_megabyte_of_pre_version_lines_is_refused(fake: Callable[[Script], FakeServer]) -> None:
    holder: list[FakeServer] = []
    holder.append(fake(_megabyte_of_lines(holder)))
    with pytest.raises(TargetError, match=f"more than {s.MAX_PRE_VERSION_BYTES} bytes of lines"):
        probe(holder[0])


def test_a_line_without_end_is_refused(fake: Callable[[Script], FakeServer]) -> None:
    holder: list[FakeServer] = []

    def script(conn: socket.socket) -> None:
        holder[0].send_until_stopped(conn, b"y" * 65536)

    holder.append(fake(script))
    with pytest.raises(TargetError, match=f"longer than {s.MAX_PRE_VERSION_LINE} bytes"):
        probe(holder[0])


def test_a_version_line_over_255_bytes_is_refused(fake: Callable[[Script], FakeServer]) -> None:
    server = fake(lambda conn: conn.sendall(b"SSH-2.0-" + b"v" * 300 + b"\r\n"))
    with pytest.raises(TargetError, match="version line of 310 bytes"):
        probe(server)


@pytest.mark.parametrize("length", [2**31 - 1, 35001, 3])
def test_a_lying_packet_length_is_refused_before_reading(
        fake: Callable[[Script], FakeServer], length: int) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(b"SSH-2.0-Liar\r\n" + struct.pack(">I", length) + bytes(12))

    server = fake(script)
    with pytest.raises(TargetError, match=f"packet_length {length}"):
        probe(server)


def test_silence_and_close_are_target_errors(fake: Callable[[Script], FakeServer]) -> None:
    silent = fake(lambda conn: None)
    with pytest.raises(TargetError, match="no complete answer within 1 s"):
        probe(silent)

    def bye(conn: socket.socket) -> None:
        conn.sendall(b"SSH-2.0-Bye\r\n")
        conn.shutdown(socket.SHUT_WR)

    closing = fake(bye)
    with pytest.raises(TargetError, match="closed the connection"):
        probe(closing)


def test_disconnect_before_kexinit(fake: Callable[[Script], FakeServer]) -> None:
    text = b"too many connections"
    disconnect = bytes([1]) + struct.pack(">II", 11, len(text)) + text + struct.pack(">I", 0)
    server = fake(lambda conn: conn.sendall(b"SSH-2.0-Busy\r\n" + packet(disconnect)))
    with pytest.raises(TargetError, match="code 11: too many connections"):
        probe(server)


def test_guard_refuses_before_connecting(fake: Callable[[Script], FakeServer]) -> None:
    server = fake(lambda conn: conn.sendall(b"SSH-2.0-Never\r\n"))
    with pytest.raises(SafetyViolation, match="not in the profile's targets"):
        probe(server, Guard(["192.0.2.0/24"]))
    with pytest.raises(SafetyViolation):
        s.SshSession.connect(Guard(["192.0.2.0/24"]), Evidence("t"),
                             s.Endpoint("127.0.0.1", server.port), TIMEOUTS)
    assert server.accepted == 0


def test_session_refuses_a_lying_packet_inside_paramiko(
        fake: Callable[[Script], FakeServer]) -> None:
    def script(conn: socket.socket) -> None:
        conn.sendall(b"SSH-2.0-Liar\r\n" + packet(kexinit_payload())
                     + struct.pack(">IB", 2**31 - 1, 4) + bytes(11))

    server = fake(script)
    with pytest.raises(TargetError, match="plaintext packet_length 2147483647"):
        s.SshSession.connect(GUARD, Evidence("t"), s.Endpoint("127.0.0.1", server.port),
                             TIMEOUTS)


def test_device_socket_tracks_plaintext_packets_across_chunks() -> None:
    a, b = socket.socketpair()
    try:
        first = packet(bytes([20]) + bytes(30))
        newkeys = packet(bytes([21]))
        after = struct.pack(">I", 2**31 - 1) + bytes(8)  # encrypted from here: not checked
        wrapped = s._DeviceSocket(a, b"SSH-2.0-x\r\n", first[:3])
        b.sendall(first[3:] + newkeys + after)
        got = bytearray()
        a.settimeout(1.0)
        while len(got) < len(b"SSH-2.0-x\r\n") + len(first) + len(newkeys) + len(after):
            chunk = wrapped.recv(5)
            assert chunk
            got += chunk
        assert wrapped.violation is None
        assert bytes(got).startswith(b"SSH-2.0-x\r\n" + first)
        liar = s._DeviceSocket(a, b"", b"")
        b.sendall(struct.pack(">IBB", 40000, 4, 20))
        assert liar.recv(4096) == b""
        assert liar.violation is not None and "40000" in liar.violation
        capped = s._DeviceSocket(a, b"", b"", max_bytes=10)
        capped._tracking = False
        b.sendall(bytes(20))
        while capped.recv(4096):
            pass
        assert capped.violation is not None and "more than 10 bytes" in capped.violation
    finally:
        a.close()
        b.close()


# --------------------------------------------------------------------------- the simulator
def test_against_the_ssh_simulator(lab: Callable[..., Any]) -> None:
    running = lab(["ssh"], policy={"idle_timeout_s": 30})
    profile = running.profile()
    iface = profile["interfaces"]["ssh"]
    endpoint = s.Endpoint(iface["host"], iface["port"])
    guard = Guard(profile["targets"])
    ev = Evidence("sim")
    hello = s.probe_server(guard, ev, endpoint, TIMEOUTS)
    assert hello.identification.speaks_ssh2 and not hello.identification.speaks_ssh1
    assert hello.kexinit is not None
    assert "mlkem768x25519-sha256" in hello.kexinit.kex
    assert "diffie-hellman-group14-sha256" in hello.kexinit.kex
    assert hello.kexinit.host_key[0] == "ssh-ed25519"
    assert not [c for c in hello.kexinit.ciphers if c.endswith("-cbc")]

    admin = profile["accounts"]["admin"]
    password = Path(admin["password"].removeprefix("file:")).read_text().strip()
    key = s.load_private_key(Path(admin["private_key"].removeprefix("file:")).read_text(), "k")
    session = s.SshSession.connect(guard, ev, endpoint, TIMEOUTS)
    try:
        host_key = session.host_key
        expected = running.endpoints("ssh")["ssh"]["host_key_fingerprint"]
        assert (host_key.key_type, host_key.fingerprint) == ("ssh-ed25519", expected)
        none = session.authenticate("none", admin["username"])
        assert not none.accepted and none.allowed == ("publickey", "password")
        assert session.banner and "Authorized use only" in session.banner
        wrong = session.authenticate("password", admin["username"], password="not-it")
        assert not wrong.accepted and wrong.allowed == ("publickey", "password")
        ok = session.authenticate("password", admin["username"], password=password)
        assert ok.accepted and session.authenticated
        shell = session.shell()
        assert shell.read_until(r"plc> $", 3).matched
        shell.send("whoami\r")
        assert "admin (role admin)" in shell.read_until(r"plc> $", 3).text
        text, status = session.exec("status")
        assert "heartbeat:" in text and status == 0
    finally:
        session.close()
    assert not session.alive
    keyed = s.SshSession.connect(guard, ev, endpoint, TIMEOUTS, host_keys=["ssh-ed25519"])
    try:
        assert keyed.authenticate("publickey", admin["username"], key=key).accepted
        stranger = s.SshSession.connect(guard, ev, endpoint, TIMEOUTS)
        refused = stranger.authenticate("publickey", admin["username"], key=s.throwaway_key())
        stranger.close()
        assert not refused.accepted and refused.allowed == ("publickey", "password")
    finally:
        keyed.close()
    # the client never records a password, even one nobody registered as a secret
    assert password not in json.dumps(ev.entries)


@pytest.mark.parametrize("bits", [1024, 2048])
def test_group_exchange_probe_reports_the_modulus(bits: int) -> None:
    """A paramiko server offering only group exchange, with one group of ``bits``."""
    import paramiko
    from paramiko.kex_gex import KexGexSHA256
    from paramiko.kex_group14 import KexGroup14SHA256
    from paramiko.primes import ModulusPack

    class Permissive(KexGexSHA256):  # type: ignore[misc]
        """paramiko's server clamps the client's request to 2048 bits but hashes the clamped
        values, so a request for 1024 fails verification; let the server take it as sent."""

        min_bits = 1024

    prime = s._OAKLEY_GROUP2 if bits == 1024 else KexGroup14SHA256.P
    pack = ModulusPack()
    pack.pack = {bits: [(2, prime)]}
    host_key = s.throwaway_key()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    served: list[Any] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            server = paramiko.Transport(conn)
            server._preferred_kex = ("diffie-hellman-group-exchange-sha256",)
            server._kex_info = {"diffie-hellman-group-exchange-sha256": Permissive}
            server._modulus_pack = pack
            server.add_server_key(host_key)
            served.append(server)
            server.start_server(event=threading.Event(), server=paramiko.ServerInterface())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    session = None
    try:
        session = s.SshSession.connect(GUARD, Evidence("gex"), s.Endpoint("127.0.0.1", port),
                                       TIMEOUTS, kex=["diffie-hellman-group-exchange-sha256"],
                                       gex_bits=s.GEX_PROBE_BITS)
        assert session.kex_name == "diffie-hellman-group-exchange-sha256"
        assert session.gex_modulus_bits == bits
    finally:
        if session is not None:
            session.close()
        thread.join(timeout=5)
        for server in served:
            server.close()
        listener.close()
