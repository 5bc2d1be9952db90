"""SSH simulator: a PLC's management shell over SSH (paramiko server, one thread per connection).

``python -m simulators.ssh [--host H] [--port P] [--posture hardened|weak] [--weakness NAME]...
[--config FILE.json] [--state-dir D] [--scan-period-ms N] [--login-grace-s S]``

Ready line endpoints::

    {"ssh": {"host": H, "port": P,
             "login_grace_s": S,                          # None with ssh.no_login_grace
             "host_key_fingerprint": "SHA256:...",        # the preferred host key
             "host_key_fingerprints": {"ssh-ed25519": "SHA256:...", ...},  # by key type
             "client_key": "/state/dir/ssh_client_ed25519"}}  # private key, OpenSSH format

Every account accepts publickey auth with ``client_key`` (its public half is next to it as
``client_key + ".pub"``) and password auth with its configured password.

Hardened posture
----------------
- Host key Ed25519 (``ssh-ed25519``), generated at start in the state folder.
- kex: ``mlkem768x25519-sha256`` (when paramiko has it), ``curve25519-sha256``,
  ``curve25519-sha256@libssh.org``, ``ecdh-sha2-nistp256/384/521``,
  ``diffie-hellman-group16-sha512``, ``diffie-hellman-group14-sha256``; ciphers
  ``aes256-gcm@openssh.com``, ``aes128-gcm@openssh.com``, ``aes256/192/128-ctr``; MACs
  ``hmac-sha2-256/512(-etm@openssh.com)``; no group exchange, no SHA-1 anywhere.
- Auth methods ``publickey,password``; the pre-auth banner (SSH_MSG_USERAUTH_BANNER) is
  ``config.banner``; failed password logins lock the account (``config.lockout_threshold``
  failures lock it for ``config.lockout_duration_s``; a locked account is refused even with the
  right password or key).
- A *session* is an authenticated connection. At most ``config.session_limit`` at once: a
  connection authenticating past the limit has every channel open refused
  (SSH_OPEN_ADMINISTRATIVELY_PROHIBITED) and is disconnected within about a second.
- A connection with no channel input for ``config.idle_timeout_s`` seconds gets
  ``idle timeout, logged out`` on its shell channels and is disconnected (0 disables).
- Robustness: at most ``min(32, config.connection_limit)`` connections may be in the
  handshake/auth phase (like sshd MaxStartups) and 64 in total; extra connections are closed at
  once. Login grace (like sshd LoginGraceTime, counted from the connect): a connection must
  complete its identification line and key exchange within ``--login-grace-s`` (default
  :data:`LOGIN_GRACE_S`, 2 s: both take milliseconds on a LAN; trickling bytes of an
  unfinished identification line does not extend it) and authenticate within
  :data:`AUTH_GRACE_S` (20 s); else it is disconnected.
- Channels: ``session`` only (at most 4 per connection), with ``shell`` (prompt ``plc> ``,
  see :mod:`simulators.shell`; echo when a pty was requested) and ``exec`` (one shell command;
  exit status 0, or 1 when the command failed).

Weaknesses
----------
``ssh.weak_algorithms``
    additionally offers kex ``diffie-hellman-group14-sha1``, ``diffie-hellman-group1-sha1``;
    ciphers ``aes128-cbc``, ``aes192-cbc``, ``aes256-cbc``, ``3des-cbc``; MACs ``hmac-sha1``,
    ``hmac-sha1-96``, ``hmac-md5``, ``hmac-md5-96``; host-key algorithm ``ssh-rsa`` (SHA-1
    signatures) on an extra RSA 3072 host key (also offered as ``rsa-sha2-512/256``). All of
    them really negotiate: paramiko 5 dropped the SHA-1 kex and ``ssh-rsa`` signatures, so the
    simulator adds them back on its own transport. Not offered (paramiko has no cipher for
    them): ``arcfour*``, ``blowfish-cbc``, ``ssh-dss``, SHA-1 group exchange.
``ssh.weak_host_key``
    the host key is RSA 1024 (``rsa-sha2-512/256``) instead of Ed25519.
``ssh.none_auth``
    auth method ``none`` succeeds for any user name (known users get their role,
    others ``readonly``).
``ssh.extra_auth_methods``
    ``keyboard-interactive`` is offered and accepted (one ``Password: `` prompt).
``ssh.default_credentials``
    factory defaults ``admin/admin`` and ``root/root`` are accepted.
``ssh.no_lockout``, ``ssh.no_banner``, ``ssh.no_session_limit``, ``ssh.no_idle_timeout``
    switch off lockout, the banner, the session limit, the idle timeout.
``ssh.no_login_grace``
    no login grace timer at all: a connection that never finishes its identification line,
    key exchange or authentication is kept for as long as the client holds it, so a few
    held pre-auth connections fill the handshake cap and every fresh client is closed at once
    (slowloris).
``load.fragile``
    every new TCP connection counts against the PLC's fragile threshold.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import paramiko
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from paramiko.common import MSG_CHANNEL_REQUEST
from paramiko.kex_curve25519 import KexCurve25519
from paramiko.kex_group14 import KexGroup14SHA256

from simulators import common
from simulators.common import Account, SimArgs
from simulators.login import IDLE_MESSAGE, PASSWORD_PROMPT, LoginPolicy, welcome
from simulators.plc import PLC, FragileConfig
from simulators.shell import PROMPT, Control, DeviceShell, LineEditor, crlf

NAME = "ssh"

WEAKNESSES = (
    "ssh.weak_algorithms",
    "ssh.weak_host_key",
    "ssh.none_auth",
    "ssh.extra_auth_methods",
    "ssh.default_credentials",
    "ssh.no_lockout",
    "ssh.no_banner",
    "ssh.no_session_limit",
    "ssh.no_idle_timeout",
    "ssh.no_login_grace",
    "load.fragile",
)

#: Connections allowed in the handshake/authentication phase at once (like sshd MaxStartups).
MAX_STARTUPS = 32
#: Connections allowed at once in total (bounds the thread count).
MAX_CONNECTIONS = 64
#: Session channels allowed per connection.
MAX_CHANNELS_PER_CONNECTION = 4
#: Seconds a connection has, from its connect, to complete its identification line and key
#: exchange (``--login-grace-s``; like sshd LoginGraceTime, for the unauthenticated phase).
LOGIN_GRACE_S = 2.0
#: Seconds a connection has, from its connect, to authenticate.
AUTH_GRACE_S = 20.0
#: Seconds an over-limit connection is kept before it is disconnected.
OVER_LIMIT_GRACE_S = 0.5
#: Housekeeping period of the reaper thread.
REAPER_PERIOD_S = 0.1

# paramiko's answers, typed (paramiko ships no type information)
_AUTH_OK: int = paramiko.AUTH_SUCCESSFUL
_AUTH_FAILED: int = paramiko.AUTH_FAILED
_OPEN_OK: int = paramiko.OPEN_SUCCEEDED
_OPEN_PROHIBITED: int = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
_OPEN_SHORTAGE: int = paramiko.OPEN_FAILED_RESOURCE_SHORTAGE

HARDENED_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group14-sha256",
)
HARDENED_CIPHERS = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
HARDENED_MACS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
HARDENED_HOST_KEY_ALGORITHMS = ("ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256")

WEAK_KEX = ("diffie-hellman-group14-sha1", "diffie-hellman-group1-sha1")
WEAK_CIPHERS = ("aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc")
WEAK_MACS = ("hmac-sha1", "hmac-sha1-96", "hmac-md5", "hmac-md5-96")
WEAK_HOST_KEY_ALGORITHMS = ("ssh-rsa",)


# -- algorithms paramiko 5 no longer ships, added back for the weak posture ---------------

class _KexGroup14SHA1(KexGroup14SHA256):
    """``diffie-hellman-group14-sha1`` (RFC 4253): the 2048-bit MODP group, SHA-1 hash."""

    name = "diffie-hellman-group14-sha1"
    hash_algo = hashlib.sha1


class _KexGroup1SHA1(KexGroup14SHA256):
    """``diffie-hellman-group1-sha1`` (RFC 4253): the 1024-bit Oakley group 2, SHA-1 hash."""

    # RFC 2409 section 6.2, Oakley group 2.
    P = int(
        "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08"
        "798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637"
        "ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
        16,
    )
    name = "diffie-hellman-group1-sha1"
    hash_algo = hashlib.sha1


class _KexCurve25519RFC(KexCurve25519):
    """``curve25519-sha256`` (RFC 8731): the standard name of ``curve25519-sha256@libssh.org``."""


class _SHA1CapableRSAKey(paramiko.RSAKey):
    """An RSA host key that can also sign with ``ssh-rsa`` (PKCS#1 v1.5 over SHA-1)."""

    HASHES: ClassVar[dict[str, Any]] = {**paramiko.RSAKey.HASHES, "ssh-rsa": hashes.SHA1}


_EXTRA_KEX: dict[str, Any] = {
    "curve25519-sha256": _KexCurve25519RFC,
    "diffie-hellman-group14-sha1": _KexGroup14SHA1,
    "diffie-hellman-group1-sha1": _KexGroup1SHA1,
}


@dataclass(frozen=True)
class AlgorithmSet:
    """What the server offers in its KEXINIT."""

    #: Key exchange methods.
    kex: tuple[str, ...]
    #: Host-key (signature) algorithms; only those with a matching host key are offered.
    host_key_algorithms: tuple[str, ...]
    #: Ciphers (both directions).
    ciphers: tuple[str, ...]
    #: MACs (both directions).
    macs: tuple[str, ...]


def algorithm_set(weak: bool) -> AlgorithmSet:
    """The algorithms offered with or without ``ssh.weak_algorithms``."""
    kex_known = set(paramiko.Transport._kex_info) | set(_EXTRA_KEX)
    if "curve25519-sha256@libssh.org" not in paramiko.Transport._kex_info:
        kex_known.discard("curve25519-sha256")
    kex = tuple(k for k in HARDENED_KEX if k in kex_known)
    if weak:
        return AlgorithmSet(kex + WEAK_KEX, HARDENED_HOST_KEY_ALGORITHMS + WEAK_HOST_KEY_ALGORITHMS,
                            HARDENED_CIPHERS + WEAK_CIPHERS, HARDENED_MACS + WEAK_MACS)
    return AlgorithmSet(kex, HARDENED_HOST_KEY_ALGORITHMS, HARDENED_CIPHERS, HARDENED_MACS)


def _make_transport(sock: socket.socket, algorithms: AlgorithmSet) -> paramiko.Transport:
    """A server transport that offers exactly ``algorithms``."""
    transport = paramiko.Transport(sock)
    # Transport reads these through ``self``; instance attributes override the class defaults.
    transport._kex_info = {**paramiko.Transport._kex_info, **_EXTRA_KEX}
    transport._preferred_kex = algorithms.kex
    transport._preferred_keys = algorithms.host_key_algorithms
    transport._preferred_ciphers = algorithms.ciphers
    transport._preferred_macs = algorithms.macs
    transport.banner_timeout = 10
    transport.handshake_timeout = 15
    return transport


def _after_channel_requests(transport: paramiko.Transport,
                            hook: Callable[[paramiko.Channel], None]) -> None:
    """Call ``hook(channel)`` after paramiko has answered each channel request.

    A shell or exec thread started from inside ``check_channel_*_request`` can close its
    channel before paramiko sends the request's success reply, and the client then sees the
    channel closed under it. Starting the thread from here keeps the order right.
    """
    table = dict(transport._channel_handler_table)
    answer = table[MSG_CHANNEL_REQUEST]

    def handle_request(channel: paramiko.Channel, message: paramiko.Message) -> None:
        answer(channel, message)
        hook(channel)

    table[MSG_CHANNEL_REQUEST] = handle_request
    transport._channel_handler_table = table


# -- keys -----------------------------------------------------------------------------------

def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _ed25519_key(path: str) -> paramiko.Ed25519Key:
    """Generate an Ed25519 key, store it in OpenSSH format at ``path`` and load it."""
    private = ed25519.Ed25519PrivateKey.generate()
    _write_private(path, private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    return paramiko.Ed25519Key(filename=path)


def _rsa_key(path: str, bits: int, *, sha1: bool) -> paramiko.RSAKey:
    """Generate an RSA key of ``bits``, store it (PEM) at ``path``."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    _write_private(path, private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    cls = _SHA1CapableRSAKey if sha1 else paramiko.RSAKey
    return cls(key=private)


@dataclass
class Keys:
    """The generated host keys and the accounts' client key."""

    #: Host keys, preferred first.
    host_keys: list[paramiko.PKey]
    #: Public half of the client key every account accepts.
    client_public: paramiko.PKey
    #: Path of the client private key (OpenSSH format).
    client_key_path: str
    #: Every file written (removed at stop).
    files: list[str]


def generate_keys(state_dir: str, weaknesses: frozenset[str]) -> Keys:
    """Create the host keys for the posture and the client key pair in ``state_dir``."""
    files: list[str] = []
    host_keys: list[paramiko.PKey] = []
    weak_algs = "ssh.weak_algorithms" in weaknesses
    if "ssh.weak_host_key" in weaknesses:
        path = os.path.join(state_dir, "ssh_host_rsa1024_key")
        host_keys.append(_rsa_key(path, 1024, sha1=weak_algs))
        files.append(path)
    else:
        path = os.path.join(state_dir, "ssh_host_ed25519_key")
        host_keys.append(_ed25519_key(path))
        files.append(path)
        if weak_algs:  # ssh-rsa needs an RSA key to sign with
            path = os.path.join(state_dir, "ssh_host_rsa_key")
            host_keys.append(_rsa_key(path, 3072, sha1=True))
            files.append(path)
    client_path = os.path.join(state_dir, "ssh_client_ed25519")
    client = _ed25519_key(client_path)
    with open(client_path + ".pub", "w", encoding="ascii") as fh:
        fh.write(f"{client.get_name()} {client.get_base64()} harness-simulator-client\n")
    files += [client_path, client_path + ".pub"]
    public = paramiko.Ed25519Key(data=client.asbytes())
    return Keys(host_keys, public, client_path, files)


# -- connections ------------------------------------------------------------------------------

@dataclass(eq=False)
class _Connection:
    """Book-keeping for one TCP connection."""

    #: The accepted socket.
    sock: socket.socket
    #: Its paramiko transport (server mode).
    transport: paramiko.Transport
    #: monotonic time of accept.
    started: float
    #: monotonic time of the last channel input (or of authentication).
    last_input: float
    #: The account of the last accepted auth request (meaningful once authenticated).
    account: Account | None = None
    #: None until the session limit was applied, then whether this connection got a slot.
    has_slot: bool | None = None
    #: monotonic time the connection was found over the session limit.
    over_limit_at: float = 0.0
    #: Open session channels.
    channels: list[paramiko.Channel] = field(default_factory=list)
    #: Channels with a shell (get the idle message).
    shells: list[paramiko.Channel] = field(default_factory=list)
    #: Channels that asked for a pty (echo typed characters).
    ptys: set[int] = field(default_factory=set)
    #: User name of a pending keyboard-interactive login.
    interactive_user: str = ""
    #: Accepted shell (None) and exec (command) requests whose thread has not started yet.
    pending: dict[int, str | None] = field(default_factory=dict)


class _DeviceServer(paramiko.ServerInterface):
    """The paramiko callbacks for one connection (called on its transport thread)."""

    def __init__(self, sim: SSHSimulator, conn: _Connection) -> None:
        self.sim = sim
        self.conn = conn

    # -- authentication --------------------------------------------------------------
    def get_allowed_auths(self, username: str) -> str:
        methods = ["publickey", "password"]
        if self.sim.args.has("ssh.extra_auth_methods"):
            methods.append("keyboard-interactive")
        return ",".join(methods)

    def get_banner(self) -> tuple[str | None, str | None]:
        banner = self.sim.policy.banner
        if not banner:
            return (None, None)
        return (banner + "\r\n", "en-US")

    def _granted(self, account: Account) -> int:
        self.conn.account = account
        self.conn.last_input = time.monotonic()
        return _AUTH_OK

    def check_auth_none(self, username: str) -> int:
        if not self.sim.args.has("ssh.none_auth"):
            return _AUTH_FAILED
        account = self.sim.config.account(username) or Account(username, "", "readonly")
        return self._granted(account)

    def check_auth_password(self, username: str, password: str) -> int:
        account = self.sim.policy.authenticate(username, password)
        return _AUTH_FAILED if account is None else self._granted(account)

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        account = self.sim.config.account(username)
        if (account is None or self.sim.policy.lockout.is_locked(username)
                or key.get_name() != self.sim.keys.client_public.get_name()
                or key.asbytes() != self.sim.keys.client_public.asbytes()):
            return _AUTH_FAILED
        return self._granted(account)

    def check_auth_interactive(self, username: str, submethods: str) -> Any:
        if not self.sim.args.has("ssh.extra_auth_methods"):
            return _AUTH_FAILED
        self.conn.interactive_user = username
        query = paramiko.InteractiveQuery("", "")
        query.add_prompt(PASSWORD_PROMPT, echo=False)
        return query

    def check_auth_interactive_response(self, responses: list[str]) -> int:
        user = self.conn.interactive_user
        if not user or not self.sim.args.has("ssh.extra_auth_methods") or len(responses) != 1:
            return _AUTH_FAILED
        account = self.sim.policy.authenticate(user, responses[0])
        return _AUTH_FAILED if account is None else self._granted(account)

    # -- channels --------------------------------------------------------------------
    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session" or not self.sim.take_slot(self.conn):
            return _OPEN_PROHIBITED
        # ``_channels`` is paramiko's map of this transport's open channels.
        if len(self.conn.transport._channels) >= MAX_CHANNELS_PER_CONNECTION:
            return _OPEN_SHORTAGE
        return _OPEN_OK

    def check_channel_pty_request(  # noqa: PLR0917 (paramiko's signature)
            self, channel: paramiko.Channel, term: bytes, width: int, height: int,
            pixelwidth: int, pixelheight: int, modes: bytes) -> bool:
        self.conn.ptys.add(channel.get_id())
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self.sim.start_channel(self.conn, channel, None)

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self.sim.start_channel(self.conn, channel,
                                      command.decode("utf-8", "replace"))


class SSHSimulator:
    """The SSH front end of the PLC.

    :param args: the parsed command line.
    :param plc: the PLC the shell reads and writes.
    :param keys: the generated host and client keys.
    """

    def __init__(self, args: SimArgs, plc: PLC, keys: Keys) -> None:
        self.args = args
        self.config = args.config
        #: Seconds to finish identification and key exchange; None: no login grace timer.
        self.login_grace_s: float | None = (
            None if args.has("ssh.no_login_grace")
            else float(args.extra.get("login_grace_s", LOGIN_GRACE_S)))
        #: Connections allowed in the handshake/authentication phase at once.
        self.max_startups = min(MAX_STARTUPS, self.config.connection_limit)
        self.plc = plc
        self.keys = keys
        self.algorithms = algorithm_set(args.has("ssh.weak_algorithms"))
        self.policy = LoginPolicy.from_args(args, "ssh", idle_switch="no_idle_timeout",
                                            known=WEAKNESSES)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.listener: socket.socket | None = None
        self._conns: list[_Connection] = []
        self._threads: list[threading.Thread] = []
        self._reaper = threading.Thread(target=self._reap_loop, name="ssh-reaper", daemon=True)

    # -- set-up ------------------------------------------------------------------------
    def bind(self) -> tuple[str, int]:
        """Open the listening socket; raises OSError (e.g. a taken port)."""
        family, _, _, _, addr = socket.getaddrinfo(self.args.host, self.args.port,
                                                   type=socket.SOCK_STREAM)[0]
        self.listener = socket.create_server(addr[:2], family=family, backlog=64)
        self.listener.setblocking(False)
        host, port = self.listener.getsockname()[:2]
        return host, port

    def endpoints(self) -> dict[str, Any]:
        """The ``endpoints`` of the ready line."""
        assert self.listener is not None
        host, port = self.listener.getsockname()[:2]
        return {"ssh": {
            "host": host,
            "port": port,
            "login_grace_s": self.login_grace_s,
            "host_key_fingerprint": self.keys.host_keys[0].fingerprint,
            "host_key_fingerprints": {k.get_name(): k.fingerprint for k in self.keys.host_keys},
            "client_key": self.keys.client_key_path,
        }}

    # -- policy helpers used by the callbacks -----------------------------------------
    def take_slot(self, conn: _Connection) -> bool:
        """Apply the session limit to an authenticated connection; True if it may proceed."""
        if not conn.transport.is_authenticated():
            return False
        with self.lock:
            if conn.has_slot is None:
                self._prune_locked()  # slots of connections that just ended are free
                in_use = sum(1 for c in self._conns if c.has_slot)
                limited = not self.args.has("ssh.no_session_limit")
                conn.has_slot = not (limited and in_use >= self.config.session_limit)
                if not conn.has_slot:
                    conn.over_limit_at = time.monotonic()
            return conn.has_slot

    def start_channel(self, conn: _Connection, channel: paramiko.Channel,
                      command: str | None) -> bool:
        """Accept a shell (``command`` None) or exec request; its thread starts once
        paramiko has sent the reply (see :func:`_after_channel_requests`)."""
        if conn.account is None or self.stopping.is_set():
            return False
        with self.lock:
            if channel in conn.channels or channel.get_id() in conn.pending:
                return False  # a second shell/exec on the same channel
            conn.pending[channel.get_id()] = command
        return True

    def _start_pending(self, conn: _Connection, channel: paramiko.Channel) -> None:
        with self.lock:
            if channel.get_id() not in conn.pending:
                return
            command = conn.pending.pop(channel.get_id())
            if self.stopping.is_set():
                return
            conn.channels = [c for c in conn.channels if not c.closed] + [channel]
            conn.shells = [c for c in conn.shells if not c.closed]
            if command is None:
                conn.shells.append(channel)
            conn.ptys &= {c.get_id() for c in conn.channels}
            self._threads = [t for t in self._threads if t.is_alive()]
            thread = threading.Thread(target=self._serve_channel,
                                      args=(conn, channel, command),
                                      name=f"ssh-chan-{channel.get_id()}", daemon=True)
            self._threads.append(thread)
        thread.start()

    # -- channel service -----------------------------------------------------------------
    def _serve_channel(self, conn: _Connection, channel: paramiko.Channel,
                       command: str | None) -> None:
        assert conn.account is not None
        shell = DeviceShell(self.plc, conn.account)
        pty = channel.get_id() in conn.ptys
        status = 0
        try:
            channel.settimeout(0.25)
            if command is not None:
                reply = shell.execute(command)
                _send(channel, crlf(reply.text) if pty else reply.text.encode())
                status = 1 if reply.error else 0
            else:
                self._interactive(conn, channel, shell, pty)
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            with contextlib.suppress(Exception):
                channel.send_exit_status(status)
            with contextlib.suppress(Exception):
                channel.close()

    def _interactive(self, conn: _Connection, channel: paramiko.Channel, shell: DeviceShell,
                     pty: bool) -> None:
        assert conn.account is not None
        editor = LineEditor()
        editor.echo = pty
        _send(channel, crlf(welcome(conn.account)) + PROMPT.encode())
        while not self.stopping.is_set() and not channel.closed:
            try:
                data = channel.recv(1024)
            except TimeoutError:
                continue
            if not data:
                return
            conn.last_input = time.monotonic()
            echo, events = editor.feed(data)
            out = bytearray(echo)
            for event in events:
                if event is Control.EOF:
                    _send(channel, bytes(out) + b"logged out\r\n")
                    return
                if event is Control.INTERRUPT:
                    out += PROMPT.encode()
                    continue
                reply = shell.execute(event)
                out += crlf(reply.text)
                if reply.logout:
                    _send(channel, bytes(out))
                    return
                out += PROMPT.encode()
            _send(channel, bytes(out))

    # -- accept loop ------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Accept connections until :meth:`request_stop` (runs on the main thread)."""
        assert self.listener is not None
        self._reaper.start()
        while not self.stopping.is_set():
            try:
                readable, _, _ = select.select([self.listener], [], [], 0.25)
            except (OSError, ValueError):
                break
            if not readable:
                continue
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionError):
                continue
            except OSError:
                break
            self._accept(sock)

    def _accept(self, sock: socket.socket) -> None:
        self.plc.note_request()
        with self.lock:
            self._prune_locked()
            pending = sum(1 for c in self._conns if not c.transport.is_authenticated())
            full = pending >= self.max_startups or len(self._conns) >= MAX_CONNECTIONS
        if full or self.stopping.is_set():
            _close_socket(sock)
            return
        now = time.monotonic()
        try:
            sock.setblocking(True)
            transport = _make_transport(sock, self.algorithms)
            for key in self.keys.host_keys:
                transport.add_server_key(key)
            conn = _Connection(sock, transport, now, now)
            _after_channel_requests(transport, lambda chan: self._start_pending(conn, chan))
            with self.lock:
                self._conns.append(conn)
            transport.start_server(event=threading.Event(), server=_DeviceServer(self, conn))
        except (OSError, EOFError, paramiko.SSHException):
            _close_socket(sock)

    # -- housekeeping -----------------------------------------------------------------
    def _prune_locked(self) -> None:
        """Drop finished connections (caller holds :attr:`lock`)."""
        alive = []
        for conn in self._conns:
            if conn.transport.is_active():
                alive.append(conn)
            else:
                _close_socket(conn.sock)
        self._conns = alive

    def _reap_loop(self) -> None:
        idle_s = self.policy.idle_timeout_s
        idle_enabled = idle_s > 0
        grace_s = self.login_grace_s
        while not self.stopping.wait(REAPER_PERIOD_S):
            now = time.monotonic()
            to_close: list[tuple[_Connection, str | None]] = []
            with self.lock:
                self._prune_locked()
                conns = list(self._conns)
            for conn in conns:
                if not conn.transport.is_authenticated():
                    if grace_s is not None and (
                            now - conn.started > AUTH_GRACE_S
                            or (now - conn.started > grace_s
                                and not conn.transport.initial_kex_done)):
                        to_close.append((conn, None))
                    continue
                self.take_slot(conn)
                if conn.has_slot is False and now - conn.over_limit_at > OVER_LIMIT_GRACE_S:
                    to_close.append((conn, None))
                elif idle_enabled and now - conn.last_input > idle_s:
                    to_close.append((conn, IDLE_MESSAGE))
            for conn, message in to_close:
                self._disconnect(conn, message)

    def _disconnect(self, conn: _Connection, message: str | None) -> None:
        if message:
            for channel in list(conn.shells):
                with contextlib.suppress(Exception):
                    channel.settimeout(0.25)  # a client that does not read must not stall us
                    _send(channel, crlf(f"\n{message}\n"))
                    channel.send_exit_status(0)
        with contextlib.suppress(Exception):
            conn.transport.close()
        _close_socket(conn.sock)

    # -- stop ---------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the accept loop to end (safe from a signal handler)."""
        self.stopping.set()

    def close(self) -> None:
        """Close the listener and every connection; wait briefly for the threads."""
        self.stopping.set()
        if self.listener is not None:
            _close_socket(self.listener)
        with self.lock:
            conns, self._conns = self._conns, []
            threads = list(self._threads)
        for conn in conns:
            self._disconnect(conn, None)
        if self._reaper.is_alive():
            self._reaper.join(timeout=1)
        deadline = time.monotonic() + 2
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for path in self.keys.files:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _send(channel: paramiko.Channel, data: bytes) -> None:
    """Send all of ``data`` unless the channel closes or stalls past its timeout."""
    if data:
        channel.sendall(data)


def _close_socket(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def _quiet_paramiko() -> None:
    """Handshake failures during connection storms are normal; keep stderr quiet."""
    logger = logging.getLogger("paramiko")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    logger.setLevel(logging.CRITICAL + 1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--login-grace-s S``."""
    parser.add_argument(
        "--login-grace-s",
        type=float,
        default=LOGIN_GRACE_S,
        help="seconds a connection has to finish its identification and key exchange",
    )


def main(argv: list[str] | None = None) -> None:
    """Run the SSH simulator until SIGTERM or SIGINT."""
    args = common.parse_args(NAME, WEAKNESSES, argv, add_arguments=add_arguments)
    grace = float(args.extra["login_grace_s"])
    if not (grace > 0 and math.isfinite(grace)):
        common.fail(NAME, f"--login-grace-s must be a finite number > 0, got {grace:g}")
    _quiet_paramiko()
    fragile = (FragileConfig(args.config.fragile_threshold_rps, args.config.fragile_recovery_s)
               if args.has("load.fragile") else None)
    plc = PLC(args.scan_period_s, fragile)
    try:
        keys = generate_keys(args.state_dir, args.weaknesses)
    except (OSError, ValueError) as exc:
        common.fail(NAME, f"cannot create keys in {args.state_dir}: {exc}")
    sim = SSHSimulator(args, plc, keys)
    try:
        sim.bind()
    except OSError as exc:
        sim.close()
        common.fail(NAME, f"cannot listen on {args.host}:{args.port}: {exc}")
    common.serve_until_stopped(NAME, sim, args.weaknesses, plc)


if __name__ == "__main__":
    main()
