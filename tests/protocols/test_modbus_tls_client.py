"""Tests of the Modbus/TCP Security client: who refused what, bounded failure on bad devices.

The wire is faked by a small in-process TLS server (a thread; certificates from
:mod:`harness.pki`) whose behaviour per connection is scripted: answer Modbus, stay silent,
send garbage, require a certificate, speak an older TLS only, or not speak TLS at all.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import pki
from harness.errors import SafetyViolation, TargetError
from harness.evidence import Evidence
from harness.protocols import mbap
from harness.protocols import modbus_tls as m
from harness.safety import Guard

pytestmark = pytest.mark.timeout(60)

TIMEOUTS = m.Timeouts(connect_s=2.0, request_s=0.5)
Behaviour = Callable[[socket.socket], None]


@dataclass
class Material:
    """A test PKI: the CA the fake device trusts, its server certificate, client identities."""

    ca: pki.Issued
    server_cert: Path
    server_key: Path
    readwrite: m.ClientIdentity
    stranger: m.ClientIdentity
    folder: Path


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    folder = tmp_path_factory.mktemp("mbtls-pki")
    ca = pki.make_ca("fake device CA")
    server = pki.issue("fake device", issuer=ca, san_ips=["127.0.0.1"], client=False,
                       server=True)
    server_cert, server_key = server.write(folder, "server")
    rw = m.ClientIdentity.from_issued(
        pki.issue("rw", issuer=ca, modbus_role="ReadWrite"), folder, "rw", "readwrite test")
    stranger = m.ClientIdentity.from_issued(pki.issue("stranger"), folder, "stranger",
                                            "self-signed test")
    return Material(ca, server_cert, server_key, rw, stranger, folder)


def answer_modbus(conn: socket.socket) -> None:
    """Answer every FC 3 read of one register with the value 0x1234 (bounded)."""
    for _ in range(8):
        header = conn.recv(7)
        if len(header) < 7:
            return
        tid, _, length, unit = struct.unpack(">HHHB", header)
        pdu = conn.recv(length - 1)
        if pdu[:1] == b"\x03":
            conn.sendall(mbap.adu(tid, unit, b"\x03\x02\x12\x34"))
        else:
            conn.sendall(mbap.adu(tid, unit, bytes([pdu[0] | 0x80, 1])))


def silent(conn: socket.socket) -> None:
    """Read whatever comes, never answer (until the client gives up or 2 s pass)."""
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass


def garbage(conn: socket.socket) -> None:
    """Answer a request with bytes that are no MBAP reply (protocol id 0x4142)."""
    conn.recv(260)
    conn.sendall(b"ABABABABABABABAB")


class FakeDevice:
    """A TLS server on 127.0.0.1 (port from the OS) serving at most ``max_conns`` connections.

    :param context: the server context, or None to speak plain TCP.
    :param behaviour: what to do with each accepted (and handshaken) connection.
    """

    def __init__(self, context: ssl.SSLContext | None, behaviour: Behaviour,
                 max_conns: int = 4) -> None:
        self.context = context
        self.behaviour = behaviour
        self.max_conns = max_conns
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.handshake_errors: list[str] = []
        #: Set when the device recorded a handshake/connection error.
        self.refused = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.accepted < self.max_conns:
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            raw.settimeout(2.0)
            conn: socket.socket = raw
            try:
                if self.context is not None:
                    conn = self.context.wrap_socket(raw, server_side=True)
                self.behaviour(conn)
            except (ssl.SSLError, OSError) as exc:
                self.handshake_errors.append(str(exc))
                self.refused.set()
            finally:
                with contextlib.suppress(OSError):
                    conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.listener.close()
        assert not self._thread.is_alive()


@pytest.fixture
def device(material: Material) -> Iterator[Callable[..., FakeDevice]]:
    started: list[FakeDevice] = []

    def start(behaviour: Behaviour = answer_modbus, *, require_cert: bool = True,
              versions: tuple[ssl.TLSVersion, ssl.TLSVersion] | None = None,
              tls: bool = True, cert: tuple[Path, Path] | None = None) -> FakeDevice:
        ctx: ssl.SSLContext | None = None
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*(cert or (material.server_cert, material.server_key)))
            if versions is not None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    ctx.minimum_version, ctx.maximum_version = versions
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            if require_cert:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(cafile=str(material.folder / "ca.pem"))
        dev = FakeDevice(ctx, behaviour)
        started.append(dev)
        return dev

    (material.folder / "ca.pem").write_bytes(material.ca.cert_pem())
    yield start
    for dev in started:
        dev.stop()


def endpoint(material: Material, dev: FakeDevice) -> m.Endpoint:
    return m.Endpoint("127.0.0.1", dev.port, 1, material.folder / "ca.pem")


GUARD = Guard(["127.0.0.1"])


def test_trusted_client_is_accepted_and_evidence_is_recorded(
        material: Material, device: Callable[..., FakeDevice]) -> None:
    dev = device()
    ev = Evidence("t")
    result = m.attempt(GUARD, ev, endpoint(material, dev), identity=material.readwrite,
                       timeouts=TIMEOUTS, probe_address=7)
    assert result.accepted
    assert result.handshake is not None
    assert result.handshake.version in ("TLSv1.2", "TLSv1.3")
    assert result.handshake.server_fingerprint is not None
    assert result.handshake.server_fingerprint.startswith("SHA256:")
    hexes = [e.get("hex") for e in ev.entries]
    assert mbap.adu(1, 1, mbap.read_pdu(3, 7, 1)).hex() in hexes
    summaries = " ".join(e["summary"] for e in ev.entries)
    assert material.readwrite.fingerprint in summaries
    assert "handshake complete" in summaries
    notes = [e for e in ev.entries if e["summary"] == "device certificate"]
    assert len(notes) == 1
    assert notes[0]["data"]["fingerprint"] == result.handshake.server_fingerprint


def test_connect_gives_a_modbus_client(material: Material,
                                       device: Callable[..., FakeDevice]) -> None:
    dev = device()
    with m.connect(GUARD, Evidence("t"), endpoint(material, dev), identity=material.readwrite,
                   timeouts=TIMEOUTS) as client:
        assert client.read_registers(3) == [0x1234]
        assert client.answered
        ex = client.exchange(mbap.write_single_register_pdu(3, 1))
        assert ex.exception_code == 1
    assert client.closed


@pytest.mark.parametrize("versions", [None, ssl.TLSVersion.TLSv1_2])
def test_missing_certificate_is_a_refusal(material: Material,
                                          device: Callable[..., FakeDevice],
                                          versions: ssl.TLSVersion | None) -> None:
    # TLS 1.3 (default offer): refused after the handshake; TLS 1.2: refused in the handshake
    dev = device()
    result = m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=None,
                       versions=versions, timeouts=TIMEOUTS)
    assert not result.accepted
    expected = "before first reply" if versions is None else "handshake"
    assert result.stage == expected, result.detail
    assert dev.refused.wait(5), "the fake device never refused"
    assert dev.handshake_errors


def test_untrusted_certificate_is_a_refusal(material: Material,
                                            device: Callable[..., FakeDevice]) -> None:
    dev = device()
    result = m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=material.stranger,
                       versions=ssl.TLSVersion.TLSv1_2, timeouts=TIMEOUTS)
    assert not result.accepted
    assert result.alert is not None
    assert "ALERT" in result.alert.upper()


def test_device_not_asking_for_a_certificate_accepts(material: Material,
                                                     device: Callable[..., FakeDevice]) -> None:
    dev = device(require_cert=False)
    result = m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=material.stranger,
                       timeouts=TIMEOUTS)
    assert result.accepted
    assert "FC 3 normal response" in result.detail


def test_exception_reply_counts_as_accepted(material: Material,
                                            device: Callable[..., FakeDevice]) -> None:
    def refuse_reads(conn: socket.socket) -> None:
        header = conn.recv(7)
        tid = struct.unpack(">H", header[:2])[0]
        conn.recv(260)
        conn.sendall(mbap.adu(tid, 1, b"\x83\x02"))

    dev = device(refuse_reads, require_cert=False)
    result = m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=None,
                       timeouts=TIMEOUTS)
    assert result.accepted
    assert "exception 02" in result.detail


def test_legacy_only_device_refuses_modern_offer_and_accepts_legacy(
        material: Material, device: Callable[..., FakeDevice]) -> None:
    if not m.can_offer(ssl.TLSVersion.TLSv1_1).can_offer:
        pytest.skip("this OpenSSL cannot offer TLS 1.1")
    dev = device(versions=(ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_1))
    ep = endpoint(material, dev)
    modern = m.attempt(GUARD, Evidence("t"), ep, identity=material.readwrite, timeouts=TIMEOUTS)
    assert not modern.accepted
    assert modern.stage == "handshake"
    legacy = m.attempt(GUARD, Evidence("t"), ep, identity=material.readwrite,
                       versions=ssl.TLSVersion.TLSv1_1, timeouts=TIMEOUTS)
    assert legacy.accepted
    assert legacy.handshake is not None
    assert legacy.handshake.version == "TLSv1.1"


@pytest.mark.parametrize("pinned", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_hello_probe_reads_the_selected_version(material: Material,
                                                device: Callable[..., FakeDevice],
                                                pinned: ssl.TLSVersion) -> None:
    dev = device(versions=(pinned, pinned))
    ev = Evidence("t")
    probe = m.probe_server_hello(GUARD, ev, endpoint(material, dev), None, timeouts=TIMEOUTS)
    assert probe.outcome == "server_hello"
    assert probe.selected == m.version_name(pinned)
    assert probe.server_bytes.startswith("16")
    sent = [e for e in ev.entries if e["kind"] == "sent"]
    assert sent[0]["hex"].startswith("16")  # the ClientHello itself is in the evidence


def test_hello_probe_sees_the_alert_of_a_modern_device(material: Material,
                                                       device: Callable[..., FakeDevice]) -> None:
    if not m.can_offer(ssl.TLSVersion.TLSv1).can_offer:
        pytest.skip("this OpenSSL cannot offer TLS 1.0")
    dev = device()
    probe = m.probe_server_hello(GUARD, Evidence("t"), endpoint(material, dev),
                                 ssl.TLSVersion.TLSv1, timeouts=TIMEOUTS)
    assert probe.outcome == "alert"
    assert probe.alert == "70 (protocol_version)"
    assert probe.selected is None


def test_hello_probe_sees_a_legacy_device_select_legacy(
        material: Material, device: Callable[..., FakeDevice]) -> None:
    if not m.can_offer(ssl.TLSVersion.TLSv1_1).can_offer:
        pytest.skip("this OpenSSL cannot offer TLS 1.1")
    dev = device(versions=(ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1))
    probe = m.probe_server_hello(GUARD, Evidence("t"), endpoint(material, dev),
                                 ssl.TLSVersion.TLSv1_1, timeouts=TIMEOUTS)
    assert probe.outcome == "server_hello"
    assert probe.selected == "TLSv1.1"
    assert probe.selected_wire == 0x0302


def test_hello_probe_closed_silent_and_plaintext(material: Material,
                                                 device: Callable[..., FakeDevice]) -> None:
    def hang_up(conn: socket.socket) -> None:
        conn.recv(512)

    def talk_plain(conn: socket.socket) -> None:
        conn.recv(512)
        conn.sendall(mbap.adu(0, 1, b"\x83\x01"))

    closed = m.probe_server_hello(GUARD, Evidence("t"), endpoint(material, device(hang_up,
                                  tls=False)), None, timeouts=TIMEOUTS)
    assert closed.outcome == "closed"
    with pytest.raises(TargetError, match="not TLS"):
        m.probe_server_hello(GUARD, Evidence("t"), endpoint(material, device(talk_plain,
                             tls=False)), None, timeouts=TIMEOUTS)
    with pytest.raises(TargetError, match="no answer"):
        m.probe_server_hello(GUARD, Evidence("t"), endpoint(material, device(silent,
                             tls=False)), None, timeouts=TIMEOUTS)


def test_server_hello_parser_prefers_supported_versions() -> None:
    body = bytes.fromhex("0303") + bytes(32) + b"\x00" + b"\x13\x01" + b"\x00"
    ext = bytes.fromhex("002b00020304")
    with_ext = body + len(ext).to_bytes(2, "big") + ext
    assert m._server_hello_version(with_ext) == 0x0304
    assert m._server_hello_version(body) == 0x0303
    with pytest.raises(ValueError, match="too short"):
        m._server_hello_version(b"\x03\x01")


def test_device_certificate_from_another_ca_is_our_refusal(
        material: Material, device: Callable[..., FakeDevice]) -> None:
    other = pki.issue("impostor device", san_ips=["127.0.0.1"], client=False, server=True)
    dev = device(cert=other.write(material.folder, "impostor"))
    with pytest.raises(TargetError, match="did not verify") as info:
        m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=material.readwrite,
                  timeouts=TIMEOUTS)
    assert not isinstance(info.value, m.TlsRefused)


def test_plaintext_port_is_an_error_not_a_refusal(material: Material,
                                                  device: Callable[..., FakeDevice]) -> None:
    def talk_plain(conn: socket.socket) -> None:
        conn.recv(512)
        conn.sendall(mbap.adu(0, 1, b"\x83\x01") * 4)

    dev = device(talk_plain, tls=False)
    with pytest.raises(TargetError) as info:
        m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=material.readwrite,
                  timeouts=TIMEOUTS)
    assert not isinstance(info.value, m.TlsRefused)


def test_silent_device_is_an_error_within_the_timeout(material: Material,
                                                      device: Callable[..., FakeDevice]) -> None:
    dev = device(silent)
    with pytest.raises(TargetError, match="neither accepted nor refused"):
        m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=material.readwrite,
                  timeouts=TIMEOUTS)


def test_garbage_reply_is_an_error(material: Material,
                                   device: Callable[..., FakeDevice]) -> None:
    dev = device(garbage)
    with pytest.raises(TargetError) as info:
        m.attempt(GUARD, Evidence("t"), endpoint(material, dev), identity=material.readwrite,
                  timeouts=TIMEOUTS)
    assert not isinstance(info.value, m.TlsRefused)


def test_closed_port_is_an_error(material: Material,
                                device: Callable[..., FakeDevice]) -> None:
    device()  # writes ca.pem
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(TargetError, match="TCP connect failed"):
        m.connect(GUARD, Evidence("t"), m.Endpoint("127.0.0.1", port, 1,
                                                   material.folder / "ca.pem"),
                  identity=None, timeouts=TIMEOUTS)


def test_guard_refuses_before_any_connection(material: Material,
                                             device: Callable[..., FakeDevice]) -> None:
    dev = device()
    ev = Evidence("t")
    with pytest.raises(SafetyViolation):
        m.connect(Guard(["192.0.2.7"]), ev, endpoint(material, dev), identity=None,
                  timeouts=TIMEOUTS)
    assert dev.accepted == 0
    assert ev.entries == []


def test_missing_files_are_a_profile_gap(material: Material, tmp_path: Path) -> None:
    with pytest.raises(m.MissingTestMaterial):
        m.ClientIdentity.from_files(tmp_path / "no.pem", tmp_path / "no.key", "profile x")
    with pytest.raises(m.MissingTestMaterial, match="not the private key"):
        m.ClientIdentity.from_files(material.readwrite.cert, material.stranger.key, "profile y")
    with pytest.raises(m.MissingTestMaterial, match="ca_cert"):
        m.client_context(tmp_path / "no-ca.pem", None)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_can_offer_modern_versions(version: ssl.TLSVersion) -> None:
    cap = m.can_offer(version)
    assert cap.can_offer, cap.detail
    assert cap.client_hello.startswith("16")  # a TLS handshake record


@pytest.mark.parametrize(("version", "hello"), [(ssl.TLSVersion.TLSv1, "0301"),
                                                (ssl.TLSVersion.TLSv1_1, "0302")])
def test_can_offer_legacy_reads_the_client_hello(version: ssl.TLSVersion, hello: str) -> None:
    cap = m.can_offer(version)
    if cap.can_offer:
        # record header (5 bytes) + handshake type and length (4) -> client_version
        assert cap.client_hello[18:22] == hello
        assert "SECLEVEL=0" in cap.detail
    else:
        assert cap.detail  # says why: the check reports it instead of passing


def test_version_range_normalises() -> None:
    assert m.version_range(None) == m.DEFAULT_VERSIONS
    assert m.version_range(ssl.TLSVersion.TLSv1) == (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1)
    pair = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)
    assert m.version_range(pair) == pair
    assert m.version_name(ssl.TLSVersion.TLSv1_1) == "TLSv1.1"
