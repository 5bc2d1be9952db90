"""SSH simulator: hardened behaviour and each weakness, seen from independent clients.

The server's offer is read from its raw KEXINIT packet (a parser written here), logins and
shells go through paramiko's client Transport, and the SHA-1 algorithms paramiko's client no
longer speaks are negotiated with the OpenSSH client when it is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

pytestmark = pytest.mark.timeout(90)

#: Seconds anything that must answer has to answer.
TIMEOUT_S = 5.0

HARDENED_KEX = {
    "curve25519-sha256", "curve25519-sha256@libssh.org", "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384", "ecdh-sha2-nistp521", "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
}
HARDENED_CIPHERS = {"aes256-gcm@openssh.com", "aes128-gcm@openssh.com", "aes256-ctr",
                    "aes192-ctr", "aes128-ctr"}
HARDENED_MACS = {"hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com",
                 "hmac-sha2-256", "hmac-sha2-512"}
WEAK_KEX = {"diffie-hellman-group14-sha1", "diffie-hellman-group1-sha1"}
WEAK_CIPHERS = {"aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc"}
WEAK_MACS = {"hmac-sha1", "hmac-sha1-96", "hmac-md5", "hmac-md5-96"}

ADMIN = ("admin", "Adm1n-Sim-Pass!")
OPERATOR = ("operator", "Op3rator-Sim-Pass!")
VIEWER = ("viewer", "V1ewer-Sim-Pass!")
LOCKTEST = ("locktest", "L0ckTest-Sim-Pass!")
BANNER = "Authorized use only. Activity on this device is monitored and logged."


# -- an independent KEXINIT reader ----------------------------------------------------------
KEXINIT_FIELDS = ("kex", "host_key", "cipher_c2s", "cipher_s2c", "mac_c2s", "mac_s2c",
                  "compression_c2s", "compression_s2c")


def read_kexinit(ep: dict[str, Any]) -> tuple[str, dict[str, list[str]]]:
    """The server's version line and the name-lists of its (unencrypted) KEXINIT packet."""
    with socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S) as sock:
        sock.sendall(b"SSH-2.0-simtest_1.0\r\n")
        stream = sock.makefile("rb")
        version = b""
        for _ in range(20):  # RFC 4253 4.2: lines before the version line are allowed
            version = stream.readline(255)
            if version.startswith(b"SSH-") or not version:
                break
        length, padding = struct.unpack(">IB", stream.read(5))
        payload = stream.read(length - 1)[: length - 1 - padding]
    assert payload[0] == 20, f"first packet is not KEXINIT: {payload[:1]!r}"
    pos = 17  # message type + 16-byte cookie
    lists: dict[str, list[str]] = {}
    for name in KEXINIT_FIELDS:
        (size,) = struct.unpack_from(">I", payload, pos)
        pos += 4
        raw = payload[pos:pos + size].decode("ascii")
        pos += size
        lists[name] = raw.split(",") if raw else []
    # pseudo-algorithms announcing protocol extensions, not key exchanges
    lists["kex"] = [k for k in lists["kex"]
                    if not k.startswith(("ext-info-", "kex-strict-"))]
    return version.decode("ascii").strip(), lists


# -- paramiko client helpers ----------------------------------------------------------------
@contextlib.contextmanager
def transport(ep: dict[str, Any], **kwargs: Any) -> Iterator[paramiko.Transport]:
    """A started client transport (closed afterwards)."""
    sock = socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S)
    t = paramiko.Transport(sock, **kwargs)
    try:
        t.start_client(timeout=TIMEOUT_S)
        yield t
    finally:
        t.close()
        sock.close()


def try_password(ep: dict[str, Any], user: str, password: str) -> bool:
    """True if password auth succeeds."""
    with transport(ep) as t:
        try:
            t.auth_password(user, password)
        except paramiko.AuthenticationException:
            return False
        return bool(t.is_authenticated())


def try_publickey(ep: dict[str, Any], user: str) -> bool:
    """True if publickey auth with the simulator's client key succeeds."""
    key = paramiko.Ed25519Key(filename=ep["client_key"])
    with transport(ep) as t:
        try:
            t.auth_publickey(user, key)
        except paramiko.AuthenticationException:
            return False
        return bool(t.is_authenticated())


def run(t: paramiko.Transport, command: str) -> tuple[int, str]:
    """Run one ``exec`` command on an authenticated transport: (exit status, output)."""
    chan = t.open_session(timeout=TIMEOUT_S)
    chan.settimeout(TIMEOUT_S)
    chan.exec_command(command)
    out = b""
    while chunk := chan.recv(4096):
        out += chunk
    status = chan.recv_exit_status()
    chan.close()
    return status, out.decode()


class Shell:
    """An interactive shell channel (with a pty, as a terminal user would have)."""

    def __init__(self, t: paramiko.Transport) -> None:
        self.chan = t.open_session(timeout=TIMEOUT_S)
        self.chan.settimeout(TIMEOUT_S)
        self.chan.get_pty()
        self.chan.invoke_shell()
        self.buf = b""

    def read_until(self, marker: str, timeout: float = TIMEOUT_S) -> str:
        """Read until ``marker`` appears (fail on timeout or EOF); return and consume it."""
        deadline = time.monotonic() + timeout
        while marker.encode() not in self.buf:
            assert time.monotonic() < deadline, f"no {marker!r} in {self.buf!r}"
            self.chan.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = self.chan.recv(4096)
            assert chunk, f"channel closed before {marker!r}; got {self.buf!r}"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(marker.encode())
        return head.decode() + marker

    def command(self, line: str) -> str:
        """Type ``line`` and return everything up to the next prompt."""
        self.chan.sendall(line.encode() + b"\r")
        return self.read_until("plc> ")

    def read_to_eof(self, timeout: float) -> str:
        """Everything until the server closes the channel."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.chan.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.chan.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                return self.buf.decode()
            self.buf += chunk
        raise AssertionError(f"channel still open after {timeout} s; got {self.buf!r}")


def login(ep: dict[str, Any], account: tuple[str, str] = ADMIN) -> paramiko.Transport:
    """An authenticated transport (the caller closes it)."""
    sock = socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S)
    t = paramiko.Transport(sock)
    t.start_client(timeout=TIMEOUT_S)
    t.auth_password(*account)
    return t


def write_config(tmp_path: Path, **values: Any) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    return str(path)


def eventually(predicate: Callable[[], bool], timeout: float = TIMEOUT_S) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hardened(start_simulator_module: Any) -> dict[str, Any]:
    """A hardened SSH simulator shared by the read-only tests of this module."""
    ep: dict[str, Any] = start_simulator_module("ssh")["endpoints"]["ssh"]
    return ep


@pytest.fixture
def ssh_sim(start_simulator: Any, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """``ssh_sim(*weaknesses, **config) -> endpoint`` for a fresh simulator."""

    def start(*weaknesses: str, **config: Any) -> dict[str, Any]:
        args: list[str] = []
        for w in weaknesses:
            args += ["--weakness", w]
        if config:
            args += ["--config", write_config(tmp_path, **config)]
        ep: dict[str, Any] = start_simulator("ssh", *args)["endpoints"]["ssh"]
        return ep

    return start


# -- the ready line, host key, process contract ---------------------------------------------
def test_ready_line_names_the_host_key_and_a_private_client_key(hardened: dict[str, Any]) -> None:
    assert hardened["host"] == "127.0.0.1"
    assert hardened["port"] > 0
    with transport(hardened) as t:
        key = t.get_remote_server_key()
    assert key.get_name() == "ssh-ed25519"
    assert key.fingerprint == hardened["host_key_fingerprint"]
    assert hardened["host_key_fingerprints"] == {"ssh-ed25519": key.fingerprint}
    mode = stat.S_IMODE(os.stat(hardened["client_key"]).st_mode)
    assert mode == 0o600
    public = Path(hardened["client_key"] + ".pub").read_text().split()
    assert public[0] == "ssh-ed25519"


def test_sigterm_exits_zero_and_removes_generated_keys(start_simulator: Any,
                                                       tmp_path: Path) -> None:
    state = tmp_path / "state"
    event = start_simulator("ssh", "--state-dir", str(state), "--weakness", "ssh.weak_algorithms")
    assert sorted(p.name for p in state.iterdir()) == [
        "ssh_client_ed25519", "ssh_client_ed25519.pub", "ssh_host_ed25519_key",
        "ssh_host_rsa_key"]
    ep = event["endpoints"]["ssh"]
    t = login(ep)  # an open session must not hold the process up
    try:
        assert start_simulator.stop(event) == 0
    finally:
        t.close()
    assert list(state.iterdir()) == []
    default = start_simulator("ssh")
    default_dir = Path(default["endpoints"]["ssh"]["client_key"]).parent
    assert default_dir.is_dir()
    assert start_simulator.stop(default) == 0
    assert not default_dir.exists()


def test_taken_port_and_unknown_weakness_exit_2(start_simulator: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        event, rc = start_simulator.expect_error("ssh", "--port", str(port))
    assert rc == 2
    assert event is not None
    assert event["event"] == "error"
    assert str(port) in event["message"]
    event, rc = start_simulator.expect_error("ssh", "--weakness", "ssh.nonsense")
    assert rc == 2
    assert event is not None
    assert "ssh.nonsense" in event["message"]


# -- algorithms ------------------------------------------------------------------------------
def test_hardened_offers_only_modern_algorithms(hardened: dict[str, Any]) -> None:
    version, offer = read_kexinit(hardened)
    assert version.startswith("SSH-2.0-")
    assert HARDENED_KEX <= set(offer["kex"]) <= HARDENED_KEX | {"mlkem768x25519-sha256"}
    assert offer["host_key"] == ["ssh-ed25519"]
    for direction in ("c2s", "s2c"):
        assert set(offer[f"cipher_{direction}"]) == HARDENED_CIPHERS
        assert set(offer[f"mac_{direction}"]) == HARDENED_MACS
    assert offer["compression_c2s"] == ["none"]


def test_weak_algorithms_adds_exactly_the_sha1_cbc_and_md5_algorithms(
        hardened: dict[str, Any], ssh_sim: Callable[..., dict[str, Any]]) -> None:
    weak = ssh_sim("ssh.weak_algorithms")
    _, base = read_kexinit(hardened)
    _, offer = read_kexinit(weak)
    assert set(offer["kex"]) - set(base["kex"]) == WEAK_KEX
    assert set(offer["host_key"]) - set(base["host_key"]) == {
        "ssh-rsa", "rsa-sha2-512", "rsa-sha2-256"}
    assert set(offer["cipher_c2s"]) - set(base["cipher_c2s"]) == WEAK_CIPHERS
    assert set(offer["mac_s2c"]) - set(base["mac_s2c"]) == WEAK_MACS
    for name in ("kex", "host_key", "cipher_c2s", "mac_s2c"):
        assert set(base[name]) <= set(offer[name])
    # the extra RSA host key is a sound one: only the SHA-1 signature algorithm is weak
    with transport(weak, disabled_algorithms={"keys": ["ssh-ed25519"]}) as t:
        key = t.get_remote_server_key()
    assert (key.get_name(), key.get_bits()) == ("ssh-rsa", 3072)


def test_weak_ciphers_and_macs_really_negotiate(hardened: dict[str, Any],
                                                ssh_sim: Callable[..., dict[str, Any]]) -> None:
    only_weak = {
        "ciphers": sorted(set(paramiko.Transport._preferred_ciphers) - {"3des-cbc"}),
        "macs": sorted(set(paramiko.Transport._preferred_macs) - {"hmac-md5"}),
    }
    weak = ssh_sim("ssh.weak_algorithms")
    with transport(weak, disabled_algorithms=only_weak) as t:
        assert (t.local_cipher, t.local_mac) == ("3des-cbc", "hmac-md5")
        t.auth_password(*ADMIN)
        assert run(t, "whoami") == (0, "admin (role admin)\n")
    with pytest.raises(paramiko.SSHException), transport(hardened, disabled_algorithms=only_weak):
        pass


OPENSSH = shutil.which("ssh")


@pytest.mark.skipif(OPENSSH is None, reason="OpenSSH client not installed")
def test_sha1_kex_and_ssh_rsa_negotiate_with_openssh(
        hardened: dict[str, Any], ssh_sim: Callable[..., dict[str, Any]]) -> None:
    assert OPENSSH is not None

    def openssh(ep: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [OPENSSH, "-F", "/dev/null", "-p", str(ep["port"]), "-i", ep["client_key"],
             "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
             "-o", "UserKnownHostsFile=/dev/null",
             "-o", "ConnectTimeout=5",
             "-o", "KexAlgorithms=diffie-hellman-group1-sha1",
             "-o", "HostKeyAlgorithms=ssh-rsa", "-o", "Ciphers=aes128-cbc",
             "-o", "MACs=hmac-sha1", f"operator@{ep['host']}", "whoami"],
            capture_output=True, text=True, timeout=20, check=False)

    weak = openssh(ssh_sim("ssh.weak_algorithms"))
    assert (weak.returncode, weak.stdout) == (0, "operator (role operator)\n"), weak.stderr
    refused = openssh(hardened)
    assert refused.returncode == 255
    assert "no matching" in refused.stderr


def test_weak_host_key_is_rsa_1024_and_changes_nothing_else(
        hardened: dict[str, Any], ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim("ssh.weak_host_key")
    with transport(ep) as t:
        key = t.get_remote_server_key()
    assert (key.get_name(), key.get_bits()) == ("ssh-rsa", 1024)
    assert ep["host_key_fingerprint"] == key.fingerprint
    _, offer = read_kexinit(ep)
    _, base = read_kexinit(hardened)
    assert offer["host_key"] == ["rsa-sha2-512", "rsa-sha2-256"]  # no SHA-1 signatures
    assert offer["kex"] == base["kex"]
    assert offer["cipher_c2s"] == base["cipher_c2s"]


# -- authentication --------------------------------------------------------------------------
def allowed_methods(ep: dict[str, Any], user: str = "admin") -> list[str] | None:
    """The methods the server lists after a ``none`` request; None if ``none`` succeeded."""
    with transport(ep) as t:
        try:
            t.auth_none(user)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        assert t.is_authenticated()
        return None


def try_keyboard_interactive(ep: dict[str, Any], user: str, password: str) -> bool:
    """True if keyboard-interactive auth (answering every prompt with ``password``) works."""
    with transport(ep) as t:
        try:
            t.auth_interactive(user, lambda _title, _instr, prompts: [password] * len(prompts))
        except (paramiko.AuthenticationException, paramiko.SSHException):
            return False
        return bool(t.is_authenticated())


def test_hardened_offers_publickey_and_password_and_both_work(hardened: dict[str, Any]) -> None:
    assert allowed_methods(hardened) == ["publickey", "password"]
    assert try_publickey(hardened, "viewer")
    assert try_password(hardened, *VIEWER)
    assert not try_password(hardened, "viewer", "wrong")
    assert not try_keyboard_interactive(hardened, *VIEWER)
    assert not try_password(hardened, "root", "root")


def test_none_auth_lets_anyone_in(ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim("ssh.none_auth")
    assert allowed_methods(ep, "admin") is None
    assert allowed_methods(ep, "nobody-at-all") is None
    with transport(ep) as t:
        t.auth_none("nobody-at-all")
        assert run(t, "whoami") == (0, "nobody-at-all (role readonly)\n")


def test_extra_auth_methods_offers_and_accepts_keyboard_interactive(
        ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim("ssh.extra_auth_methods")
    assert allowed_methods(ep) == ["publickey", "password", "keyboard-interactive"]
    assert try_keyboard_interactive(ep, *OPERATOR)
    assert not try_keyboard_interactive(ep, "operator", "wrong")


def test_default_credentials_accepts_factory_logins(
        hardened: dict[str, Any], ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim("ssh.default_credentials", lockout_threshold=10)
    assert try_password(ep, "admin", "admin")
    assert try_password(ep, "root", "root")
    assert try_password(ep, *ADMIN)
    assert not try_password(hardened, "root", "root")


def test_banner_is_sent_before_authentication(
        hardened: dict[str, Any], ssh_sim: Callable[..., dict[str, Any]]) -> None:
    with transport(hardened) as t:
        with pytest.raises(paramiko.BadAuthenticationType):
            t.auth_none("admin")
        assert t.get_banner() == (BANNER + "\r\n").encode()
    with transport(ssh_sim("ssh.no_banner")) as t:
        with pytest.raises(paramiko.BadAuthenticationType):
            t.auth_none("admin")
        assert t.get_banner() is None


# -- lockout ---------------------------------------------------------------------------------
def test_failed_logins_lock_the_account_then_it_unlocks(
        ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim(lockout_threshold=2, lockout_duration_s=1.0)
    key = paramiko.Ed25519Key(filename=ep["client_key"])
    # one connection, several attempts: the checks land well inside the 1 s lockout
    with transport(ep) as t:
        for password in ("wrong-1", "wrong-2", LOCKTEST[1]):
            with pytest.raises(paramiko.AuthenticationException):
                t.auth_password("locktest", password)
        with pytest.raises(paramiko.AuthenticationException):
            t.auth_publickey("locktest", key)  # a locked account refuses the key too
    assert try_password(ep, *OPERATOR), "the lockout must only hit the account under attack"
    assert eventually(lambda: try_password(ep, *LOCKTEST)), "the account never unlocked"


def test_no_lockout_keeps_accepting_after_failures(
        ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim("ssh.no_lockout", lockout_threshold=2, lockout_duration_s=60.0)
    with transport(ep) as t:
        for attempt in range(4):
            with pytest.raises(paramiko.AuthenticationException):
                t.auth_password("locktest", f"wrong-{attempt}")
        t.auth_password(*LOCKTEST)
        assert t.is_authenticated()
    assert not try_password(ep, "locktest", "wrong-again")
    assert try_password(ep, *LOCKTEST)


# -- shell -----------------------------------------------------------------------------------
def test_shell_reads_writes_scratch_and_refuses_protected(hardened: dict[str, Any]) -> None:
    t = login(hardened, OPERATOR)
    try:
        shell = Shell(t)
        assert "operator logged in" in shell.read_until("plc> ")
        status = shell.command("status")
        assert "state: running" in status
        beats = [int(line.split(":")[1]) for line in status.splitlines()
                 if line.startswith("heartbeat:")]
        assert len(beats) == 1
        assert "status" in status  # typed characters are echoed on a pty
        assert "HR 101 = 4242" in shell.command("write hr 101 4242")
        assert "HR 101 = 4242" in shell.command("read hr 101")
        assert "refused: HR 200 is protected" in shell.command("write hr 200 1")
        assert "not a scratch address" in shell.command("write hr 1 1")
        assert "unknown command" in shell.command("reboot")
        shell.chan.sendall(b"exit\r")
        assert "logged out" in shell.read_to_eof(TIMEOUT_S)
    finally:
        t.close()
    t = login(hardened, VIEWER)
    try:
        code, out = run(t, "write hr 102 1")
        assert (code, out) == (1, "permission denied: role readonly may not write\n")
        assert run(t, "read hr 200 2") == (0, "HR 200 = 4000\nHR 201 = 4001\n")
    finally:
        t.close()


def test_heartbeat_advances_between_status_calls(hardened: dict[str, Any]) -> None:
    t = login(hardened, VIEWER)
    try:
        def heartbeat() -> int:
            _, out = run(t, "read hr 0")
            return int(out.split("=")[1])

        first = heartbeat()
        assert eventually(lambda: heartbeat() != first)
    finally:
        t.close()


# -- sessions --------------------------------------------------------------------------------
def open_shell(ep: dict[str, Any]) -> tuple[paramiko.Transport, Shell]:
    t = login(ep, VIEWER)
    shell = Shell(t)
    shell.read_until("plc> ")
    return t, shell


def test_session_limit_refuses_the_session_past_the_limit(
        ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim(session_limit=2)
    held = [open_shell(ep), open_shell(ep)]
    extra = login(ep, VIEWER)  # the credentials are fine ...
    try:
        with pytest.raises(paramiko.SSHException):  # ... but no session is granted
            extra.open_session(timeout=TIMEOUT_S)
        assert eventually(lambda: not extra.is_active()), "over-limit connection not dropped"
        assert "role readonly" in held[0][1].command("whoami")  # the held ones still work
        held[0][0].close()
        # a freed slot is given to the next login
        assert eventually(lambda: _session_works(ep))
    finally:
        extra.close()
        for t, _ in held:
            t.close()


def _session_works(ep: dict[str, Any]) -> bool:
    try:  # refused while the storm's half-open connections still hold the handshake slots
        t = login(ep, VIEWER)
    except (paramiko.SSHException, OSError, EOFError):
        return False
    try:
        return run(t, "whoami")[0] == 0
    except paramiko.SSHException:
        return False
    finally:
        t.close()


def test_no_session_limit_grants_every_session(ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim("ssh.no_session_limit", session_limit=2)
    held = [open_shell(ep) for _ in range(4)]
    try:
        for _, shell in held:
            assert "role readonly" in shell.command("whoami")
    finally:
        for t, _ in held:
            t.close()


def test_idle_session_is_closed(ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim(idle_timeout_s=1.0)
    t, shell = open_shell(ep)
    try:
        assert "idle timeout, logged out" in shell.read_to_eof(TIMEOUT_S)
        assert eventually(lambda: not t.is_active())
    finally:
        t.close()


def test_no_idle_timeout_keeps_the_session(ssh_sim: Callable[..., dict[str, Any]]) -> None:
    ep = ssh_sim("ssh.no_idle_timeout", idle_timeout_s=1.0)
    t, shell = open_shell(ep)
    try:
        time.sleep(2.0)  # twice the configured idle timeout, without input
        assert t.is_active()
        assert "role readonly" in shell.command("whoami")
    finally:
        t.close()


# -- robustness and load ------------------------------------------------------------------------
def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def test_connection_storm_is_bounded_and_service_survives(start_simulator: Any) -> None:
    event = start_simulator("ssh")
    ep = event["endpoints"]["ssh"]
    for _ in range(150):  # connect and drop at once
        with socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S):
            pass
    idle: list[socket.socket] = []
    try:
        for _ in range(40):  # connections that never authenticate
            idle.append(socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S))
        answered = dropped = 0
        for sock in idle:
            sock.settimeout(TIMEOUT_S)
            first = sock.recv(64)
            if first.startswith(b"SSH-2.0-"):
                answered += 1
            elif first == b"":
                dropped += 1
        assert answered <= 32, "more handshakes in progress than the cap allows"
        assert answered + dropped == 40
        assert dropped >= 8
        assert _threads(event["pid"]) < 80
    finally:
        for sock in idle:
            sock.close()
    assert eventually(lambda: _session_works(ep)), "no service after the storm"
    assert start_simulator.stderr(event) == ""  # failed handshakes are not logged to stderr


def _held_handshake(ep: dict[str, Any]) -> socket.socket:
    """A connection that read the server's identification and sent an unfinished one."""
    sock = socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S)
    assert sock.recv(64).startswith(b"SSH-2.0-")
    sock.sendall(b"SSH-2.0-")
    return sock


def _closed_while_trickling(sock: socket.socket, seconds: float) -> bool:
    """Trickle one byte every 0.2 s for at most ``seconds``; True once the server closed."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if sock.recv(64) == b"":
                return True
        except TimeoutError:
            pass
        except ConnectionResetError:
            return True  # closed with our trickled bytes unread: the kernel resets instead
        try:
            sock.sendall(b"x")
        except OSError:
            return True
    return False


def _greeted(ep: dict[str, Any]) -> bytes:
    """What a fresh connection receives first (b"" when the server closes it at once)."""
    with socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S) as sock:
        try:
            return sock.recv(64)
        except ConnectionResetError:
            return b""


def test_login_grace_drops_unfinished_handshakes_only(start_simulator: Any,
                                                      tmp_path: Path) -> None:
    config = write_config(tmp_path, connection_limit=2)
    event = start_simulator("ssh", "--config", config, "--login-grace-s", "0.5")
    ep = event["endpoints"]["ssh"]
    assert ep["login_grace_s"] == 0.5
    held = [_held_handshake(ep), _held_handshake(ep)]
    try:
        assert _greeted(ep) == b"", "a third handshake was allowed past a cap of 2"
        assert all(_closed_while_trickling(sock, TIMEOUT_S) for sock in held)
    finally:
        for sock in held:
            sock.close()
    assert eventually(lambda: _greeted(ep).startswith(b"SSH-2.0-"))
    # a finished key exchange is out of the grace: it stays to authenticate
    with transport(ep) as t:
        time.sleep(1.0)
        assert t.is_active()
        t.auth_password(*VIEWER)
        assert t.is_authenticated()


def test_no_login_grace_lets_held_handshakes_lock_clients_out(start_simulator: Any,
                                                              tmp_path: Path) -> None:
    config = write_config(tmp_path, connection_limit=2)
    event = start_simulator("ssh", "--config", config, "--login-grace-s", "0.3",
                            "--weakness", "ssh.no_login_grace")
    ep = event["endpoints"]["ssh"]
    assert ep["login_grace_s"] is None
    held = [_held_handshake(ep), _held_handshake(ep)]
    try:
        assert not any(_closed_while_trickling(sock, 1.5) for sock in held)
        assert _greeted(ep) == b"", "a fresh client was served while the cap was held"
    finally:
        for sock in held:
            sock.close()
    assert eventually(lambda: _greeted(ep).startswith(b"SSH-2.0-"))


def test_login_grace_must_be_positive(start_simulator: Any) -> None:
    event, rc = start_simulator.expect_error("ssh", "--login-grace-s", "0")
    assert rc == 2
    assert event is not None and "--login-grace-s" in event["message"], event


def test_fragile_plc_stalls_under_a_connection_burst(start_simulator: Any,
                                                     tmp_path: Path) -> None:
    config = write_config(tmp_path, fragile_threshold_rps=20, fragile_recovery_s=3.0)

    def burst_then_state(*extra: str) -> str:
        ep = start_simulator("ssh", "--config", config, *extra)["endpoints"]["ssh"]
        for _ in range(40):
            with socket.create_connection((ep["host"], ep["port"]), timeout=TIMEOUT_S):
                pass
        t = login(ep, VIEWER)
        try:
            _, out = run(t, "status")
        finally:
            t.close()
        return out.splitlines()[0]

    assert burst_then_state("--weakness", "load.fragile") == "state: stalled"
    assert burst_then_state() == "state: running"


# -- each weakness changes only its own behaviour ----------------------------------------------
def observe(ep: dict[str, Any]) -> dict[str, Any]:
    """The quickly observable behaviours of an SSH server (a fingerprint to compare)."""
    _, offer = read_kexinit(ep)
    with transport(ep) as t:
        key = t.get_remote_server_key()
        try:
            t.auth_none("viewer")
            methods: Any = "none accepted"
        except paramiko.BadAuthenticationType as exc:
            methods = list(exc.allowed_types)
        banner = t.get_banner()
    return {
        "kex": sorted(offer["kex"]), "host_key_algorithms": sorted(offer["host_key"]),
        "ciphers": sorted(offer["cipher_c2s"]), "macs": sorted(offer["mac_c2s"]),
        "host_key": (key.get_name(), key.get_bits()), "auth": methods, "banner": banner,
        "keyboard_interactive": try_keyboard_interactive(ep, *OPERATOR),
        "factory_login": try_password(ep, "root", "root"),
        "publickey": try_publickey(ep, "operator"),
    }


EXPECTED_DIFFERENCES = {
    "ssh.weak_algorithms": {"kex", "host_key_algorithms", "ciphers", "macs"},
    "ssh.weak_host_key": {"host_key_algorithms", "host_key"},
    "ssh.none_auth": {"auth"},
    "ssh.extra_auth_methods": {"auth", "keyboard_interactive"},
    "ssh.default_credentials": {"factory_login"},
    "ssh.no_banner": {"banner"},
    "ssh.no_lockout": set(),
    "ssh.no_session_limit": set(),
    "ssh.no_idle_timeout": set(),
    "ssh.no_login_grace": set(),
    "load.fragile": set(),
}


@pytest.fixture(scope="module")
def hardened_behaviour(hardened: dict[str, Any]) -> dict[str, Any]:
    """:func:`observe` of the hardened simulator, taken once."""
    return observe(hardened)


@pytest.mark.parametrize("weakness", sorted(EXPECTED_DIFFERENCES))
def test_each_weakness_changes_only_its_own_behaviour(
        weakness: str, hardened_behaviour: dict[str, Any],
        ssh_sim: Callable[..., dict[str, Any]]) -> None:
    base = hardened_behaviour
    seen = observe(ssh_sim(weakness))
    changed = {name for name in base if base[name] != seen[name]}
    assert changed == EXPECTED_DIFFERENCES[weakness], {n: (base[n], seen[n]) for n in changed}


def test_weak_posture_switches_every_weakness_on(start_simulator: Any) -> None:
    event = start_simulator("ssh", "--posture", "weak")
    assert event["weaknesses"] == sorted(EXPECTED_DIFFERENCES)
    seen = observe(event["endpoints"]["ssh"])
    assert seen["host_key"] == ("ssh-rsa", 1024)
    assert "ssh-rsa" in seen["host_key_algorithms"]
    assert seen["auth"] == "none accepted"
    assert seen["factory_login"]
