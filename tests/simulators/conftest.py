"""Fixtures for the simulator tests: start a simulator as a process, and mint client certificates.

``start_simulator(name, *args) -> dict`` runs ``python -m simulators.<name> *args``, waits (with
a timeout) for its ready JSON line and returns that event; at teardown every simulator it
started gets SIGTERM and must exit 0 within 10 s (else it is killed and the test errors).
``start_simulator.expect_error(name, *args)`` returns the error event and the exit status of a
simulator that must fail to start; ``start_simulator.stop(event)`` SIGTERMs one simulator and
returns its exit status. ``start_simulator_module`` is the same factory with module scope, for
a simulator shared by a whole test module.

``mint_client_cert(ca_cert, ca_key, role=...)`` writes a client certificate (and key) signed by
a simulator's test CA, with the Modbus/TCP Security role extension; ``ca_cert=None`` makes a
self-signed (untrusted) one. It is the reference for what the harness must do at run time.
"""

from __future__ import annotations

import datetime
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Seconds a simulator has to print its ready (or error) line.
READY_TIMEOUT_S = 20.0
#: Seconds a simulator has to exit after SIGTERM.
STOP_TIMEOUT_S = 10.0
#: The Modbus/TCP Security role extension.
ROLE_OID = x509.ObjectIdentifier("1.3.6.1.4.1.50316.802.1")


class SimulatorFactory:
    """Starts simulator processes and stops every one of them at :meth:`close`.

    :param log_dir: where each simulator's stderr goes (``<name>-<n>.stderr``).
    """

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._logs: dict[int, Path] = {}
        self._count = 0

    def __call__(self, name: str, *args: str, timeout: float = READY_TIMEOUT_S) -> dict[str, Any]:
        """Start ``simulators.<name>`` and return its ready event (fail the test otherwise)."""
        event, proc = self._spawn(name, args, timeout)
        if event is None or event.get("event") != "ready":
            rc = self._terminate(proc)
            pytest.fail(
                f"simulator {name} {' '.join(args)} did not get ready: event={event!r} "
                f"exit={rc} stderr={self._stderr(proc.pid)!r}"
            )
        return event

    def expect_error(
        self, name: str, *args: str, timeout: float = READY_TIMEOUT_S
    ) -> tuple[dict[str, Any] | None, int]:
        """Start a simulator that must fail: its first event (None if none) and exit status."""
        event, proc = self._spawn(name, args, timeout)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = self._terminate(proc)
            pytest.fail(f"simulator {name} did not exit after its error: event={event!r}")
        return event, rc

    def process(self, event: dict[str, Any]) -> subprocess.Popen[bytes]:
        """The process behind a ready event."""
        return self._procs[int(event["pid"])]

    def stderr(self, event: dict[str, Any]) -> str:
        """What the simulator wrote on stderr so far."""
        return self._stderr(int(event["pid"]))

    def stop(self, event: dict[str, Any]) -> int:
        """SIGTERM the simulator of ``event``, wait for it and return its exit status."""
        return self._terminate(self._procs[int(event["pid"])])

    def close(self) -> None:
        """Stop every simulator still running; raise if one did not exit 0 on SIGTERM."""
        problems = []
        for proc in list(self._procs.values()):
            if proc.poll() is None:
                rc = self._terminate(proc)
                if rc != 0:
                    problems.append(
                        f"pid {proc.pid} exited {rc} on SIGTERM: {self._stderr(proc.pid)!r}"
                    )
        self._procs.clear()
        if problems:
            raise AssertionError("; ".join(problems))

    # -- internals -------------------------------------------------------------------------
    def _spawn(
        self, name: str, args: tuple[str, ...], timeout: float
    ) -> tuple[dict[str, Any] | None, subprocess.Popen[bytes]]:
        self._count += 1
        log = self._log_dir / f"{name}-{self._count}.stderr"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"simulators.{name}", *args],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
            )
        self._procs[proc.pid] = proc
        self._logs[proc.pid] = log
        return _read_event(proc, timeout), proc

    def _terminate(self, proc: subprocess.Popen[bytes]) -> int:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if proc.stdout is not None:
            proc.stdout.close()
        return int(proc.returncode)

    def _stderr(self, pid: int) -> str:
        log = self._logs.get(pid)
        return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""


def _read_event(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any] | None:
    """The first JSON line on the process's stdout, or None on timeout or EOF."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            buf += chunk
    event = json.loads(buf.split(b"\n", 1)[0])
    assert isinstance(event, dict)
    return event


@pytest.fixture
def start_simulator(tmp_path: Path) -> Iterator[SimulatorFactory]:
    """Factory: ``start_simulator(name, *args) -> ready event``; all stopped at teardown."""
    factory = SimulatorFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def start_simulator_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorFactory]:
    """Module-scoped :func:`start_simulator`, for a simulator shared by a test module."""
    factory = SimulatorFactory(tmp_path_factory.mktemp("sims"))
    try:
        yield factory
    finally:
        factory.close()


# -- client certificates for Modbus/TCP Security -------------------------------------------
def der_utf8string(text: str) -> bytes:
    """DER encoding of a UTF8String (short or long length form)."""
    raw = text.encode("utf-8")
    if len(raw) < 0x80:
        return b"\x0c" + bytes((len(raw),)) + raw
    size = len(raw).to_bytes((len(raw).bit_length() + 7) // 8, "big")
    return b"\x0c" + bytes((0x80 | len(size),)) + size + raw


def mint_cert(
    ca_cert: str | None,
    ca_key: str | None,
    out_dir: Path,
    *,
    role: str | None,
    common_name: str = "harness-client",
) -> tuple[str, str]:
    """Write a client certificate and key (PEM) into ``out_dir``.

    :param ca_cert: PEM path of the issuing CA; None makes a self-signed certificate.
    :param ca_key: PEM path of the CA's private key (None with ``ca_cert=None``).
    :param role: value of the role extension (``ReadOnly``, ``ReadWrite``, anything to test
        unknown roles), or None for no role extension.
    :returns: ``(cert_path, key_path)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    if ca_cert is None:
        issuer, signing_key = subject, key
    else:
        assert ca_key is not None, "ca_key is needed with ca_cert"
        issuer_cert = x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
        loaded = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        issuer, signing_key = issuer_cert.subject, loaded
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if role is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ROLE_OID, der_utf8string(role)), critical=False
        )
    cert = builder.sign(signing_key, hashes.SHA256())
    stem = f"{common_name}-{x509.random_serial_number():x}"[:60]
    cert_path, key_path = out_dir / f"{stem}.pem", out_dir / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture
def mint_client_cert(tmp_path: Path) -> Callable[..., tuple[str, str]]:
    """``mint_client_cert(ca_cert, ca_key, role=..., common_name=...) -> (cert, key)``."""

    def mint(
        ca_cert: str | None,
        ca_key: str | None,
        *,
        role: str | None,
        common_name: str = "harness-client",
    ) -> tuple[str, str]:
        return mint_cert(ca_cert, ca_key, tmp_path, role=role, common_name=common_name)

    return mint
