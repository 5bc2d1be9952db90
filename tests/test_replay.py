"""``harness replay``: last_inputs.json resent exactly, guarded, and the device's health probed."""

from __future__ import annotations

import json
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.evidence import register_secret
from harness.protocols import mbap
from harness.replay import FORMAT, LastInputs, load_plan

pytestmark = pytest.mark.timeout(60)

CRASH = b"\xde\xad\xbe\xef"
#: The read replay sends afterwards to see whether the Modbus interface still works.
HEALTH_READ = mbap.adu(0x7FFF, 7, mbap.read_pdu(3, 0, 1))


class FakeDevice:
    """A loopback TCP device: records what each connection sent, echoes it, and dies (closes
    every socket, listener included) when it receives :data:`CRASH`."""

    def __init__(self, *, hang: bool = False) -> None:
        #: On CRASH, stop answering but keep accepting connections (a hung application).
        self.hang = hang
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.received: list[bytearray] = []  # per data-carrying connection, in accept order
        self.connections = 0
        self.crashed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ)
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while not self._stop.is_set() and (self.hang or not self.crashed.is_set()):
                for key, _ in sel.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        conn, _ = self.listener.accept()
                        self.connections += 1
                        buffers[conn] = bytearray()
                        sel.register(conn, selectors.EVENT_READ)
                        continue
                    data = sock.recv(4096)
                    if not data:
                        sel.unregister(sock)
                        sock.close()
                        continue
                    buf = buffers[sock]
                    if not buf:
                        self.received.append(buf)
                    buf += data
                    if CRASH in buf and not self.crashed.is_set():
                        self.crashed.set()
                        if not self.hang:
                            break
                    if not self.crashed.is_set():
                        sock.sendall(data)
        finally:
            for sock in buffers:
                sock.close()
            self.listener.close()
            sel.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    dev = FakeDevice()
    yield dev
    dev.close()


def write_profile(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(
        "device: {vendor: ACME, model: Fake PLC, firmware: '1.0', component_type: embedded}\n"
        "claimed_sl: {FR3: 1}\n"
        f"interfaces:\n  modbus_tcp: {{host: 127.0.0.1, port: {port}, unit_id: 7}}\n"
        "safety: {connect_timeout_s: 1.0, request_timeout_s: 0.3}\n"
    )
    return path


def write_inputs(folder: Path, data: list[bytes], **fields: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "format": FORMAT,
        "protocol": "modbus_tcp",
        "target": "127.0.0.1:502",
        "frames": [{"hex": f.hex(), "note": f"frame {i}"} for i, f in enumerate(data)],
        **fields,
    }
    (folder / "last_inputs.json").write_text(json.dumps(doc))
    return folder


FRAMES = [
    mbap.adu(1, 7, mbap.read_pdu(3, 0, 1)),
    mbap.adu(2, 7, b"\x03\x00"),  # truncated request
    mbap.adu(3, 7, mbap.read_pdu(3, 0, 1), length=0),  # MBAP length lies
]


def test_replay_resends_exactly_the_frames_in_order(
    device: FakeDevice, tmp_path: Path, capsys: Any
) -> None:
    evidence = write_inputs(tmp_path / "ev", FRAMES)
    profile = write_profile(tmp_path, device.port)
    code = main(["replay", str(evidence), "--profile", str(profile), "--allow-disruptive"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert bytes(device.received[0]) == b"".join(FRAMES)
    # then the health check: a new connection with one Modbus read
    assert [bytes(b) for b in device.received[1:]] == [HEALTH_READ]
    assert "sent 3 of 3 frames" in out and "received after #" in out
    assert "answered a Modbus read" in out


def test_replay_reports_a_reproduced_crash(device: FakeDevice, tmp_path: Path, capsys: Any) -> None:
    evidence = write_inputs(tmp_path / "ev", [FRAMES[0], CRASH])
    profile = write_profile(tmp_path, device.port)
    code = main(["replay", str(evidence), "--profile", str(profile), "--allow-disruptive"])
    out = capsys.readouterr().out
    assert device.crashed.is_set()
    assert code == 1, out
    assert "REPRODUCED" in out


def test_replay_reports_a_hung_modbus_application(tmp_path: Path, capsys: Any) -> None:
    device = FakeDevice(hang=True)
    try:
        evidence = write_inputs(tmp_path / "ev", [CRASH])
        profile = write_profile(tmp_path, device.port)
        code = main(["replay", str(evidence), "--profile", str(profile), "--allow-disruptive"])
    finally:
        device.close()
    out = capsys.readouterr().out
    assert code == 1, out
    assert "accepts connections but did not answer a Modbus read" in out


def test_mbap_framing_and_a_connection_per_frame(
    device: FakeDevice, tmp_path: Path, capsys: Any
) -> None:
    pdus = [mbap.read_pdu(3, 0, 1), mbap.read_pdu(4, 10, 2)]
    evidence = write_inputs(tmp_path / "ev", pdus, framing="mbap", connection="per_frame")
    profile = write_profile(tmp_path, device.port)
    assert main(["replay", str(evidence), "--profile", str(profile), "--allow-disruptive"]) == 0
    assert [bytes(b) for b in device.received] == [
        mbap.adu(1, 7, pdus[0]),
        mbap.adu(2, 7, pdus[1]),
        HEALTH_READ,
    ]
    capsys.readouterr()


def test_nothing_is_sent_without_permission_or_in_a_dry_run(
    device: FakeDevice, tmp_path: Path, capsys: Any
) -> None:
    evidence = write_inputs(tmp_path / "ev", FRAMES)
    profile = write_profile(tmp_path, device.port)
    assert main(["replay", str(evidence), "--profile", str(profile)]) == 2
    assert "--allow-disruptive" in capsys.readouterr().err
    assert main(["replay", str(evidence), "--profile", str(profile), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would send #3" in out and "nothing was sent" in out
    assert device.connections == 0


def test_guard_refuses_a_target_outside_the_allow_list(
    device: FakeDevice, tmp_path: Path, capsys: Any
) -> None:
    evidence = write_inputs(tmp_path / "ev", [b"\x01"], protocol="network", target="192.0.2.1:502")
    profile = write_profile(tmp_path, device.port)
    code = main(["replay", str(evidence), "--profile", str(profile), "--allow-disruptive"])
    assert code == 2
    assert "safety guard" in capsys.readouterr().err


def test_unreachable_device_is_an_error(tmp_path: Path, capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    evidence = write_inputs(tmp_path / "ev", FRAMES)
    profile = write_profile(tmp_path, port)
    assert main(["replay", str(evidence), "--profile", str(profile), "--allow-disruptive"]) == 3
    assert "cannot connect" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"format": "other"}, "not a last-inputs file"),
        ({"frames": []}, "frames must be a non-empty list"),
        ({"frames": [{"hex": "zz"}]}, "frames[0]: not hex"),
        ({"framing": "rtu"}, "framing 'rtu' is for modbus_rtu"),
        ({"protocol": "network", "target": "nohost"}, "needs target HOST:PORT"),
        ({"transport": "udp"}, "transport 'udp' not possible for modbus_tcp"),
        ({"connection": "many"}, "connection must be"),
    ],
)
def test_malformed_files_are_usage_errors(
    tmp_path: Path, capsys: Any, fields: dict[str, Any], message: str
) -> None:
    evidence = write_inputs(tmp_path / "ev", FRAMES, **fields)
    profile = write_profile(tmp_path, 502)
    assert main(["replay", str(evidence), "--profile", str(profile), "--allow-disruptive"]) == 2
    assert message in capsys.readouterr().err


def test_recorder_keeps_the_last_frames_and_scrubs_secrets(tmp_path: Path) -> None:
    register_secret("hunter2-replay")
    rec = LastInputs("modbus_tcp", "127.0.0.1:502", keep=3)
    for i in range(10):
        rec.add(bytes([i]) * 4, note=f"#{i}")
    rec.add(b"PASS hunter2-replay")
    (tmp_path / "last_inputs.json").write_text(rec.to_json(check="x::y", monitor={"t": 1.5}))
    plan = load_plan(tmp_path)
    assert plan.frames == [b"\x08" * 4, b"\x09" * 4, b"PASS <redacted>"]
    assert plan.notes[:2] == ["#8", "#9"] and plan.redacted == [2]
    assert plan.check == "x::y" and plan.connection == "single"
    with pytest.raises(ValueError, match="unknown protocol"):
        LastInputs("http", "x")
