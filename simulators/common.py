"""What every simulator process shares: command line, configuration, postures, the ready line,
accounts and failed-login lockout.

The process contract (the lab launcher in ``harness`` relies on it, and imports none of this):

``python -m simulators.<name> [--host H] [--port P] [--posture hardened|weak]
[--weakness NAME]... [--config FILE.json] [--scan-period-ms N]``

- binds ``--port`` (default 0: the OS picks) on ``--host`` (default 127.0.0.1);
- when ready, prints exactly one JSON line on stdout:
  ``{"event": "ready", "simulator": NAME, "pid": PID, "endpoints": {...}, "weaknesses": [...]}``
- on a start-up failure prints ``{"event": "error", "simulator": NAME, "message": "..."}``
  and exits 2 (a taken port, a bad weakness name, a bad config);
- stops cleanly on SIGTERM or SIGINT with exit status 0, leaving no temporary file behind.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

POSTURES = ("hardened", "weak")


class SimulatorConfigError(ValueError):
    """A bad command line or configuration; the simulator prints it and exits 2."""


@dataclass(frozen=True)
class Account:
    """One login of a simulated device."""

    #: Login name.
    user: str
    #: Password (simulators are test devices; the lab generates these per run).
    password: str
    #: ``admin`` (read-write), ``operator`` (read-write process values), ``readonly``.
    role: str = "readonly"

    def __post_init__(self) -> None:
        if self.role not in ("admin", "operator", "readonly"):
            raise SimulatorConfigError(
                f"account {self.user!r}: role must be admin, operator or readonly, "
                f"got {self.role!r}"
            )

    @property
    def can_write(self) -> bool:
        """Admins and operators may write scratch points."""
        return self.role in ("admin", "operator")


#: Accounts used when no --config is given (for running a simulator by hand).
DEFAULT_ACCOUNTS = (
    Account("admin", "Adm1n-Sim-Pass!", "admin"),
    Account("operator", "Op3rator-Sim-Pass!", "operator"),
    Account("viewer", "V1ewer-Sim-Pass!", "readonly"),
    Account("locktest", "L0ckTest-Sim-Pass!", "operator"),
)

#: Factory defaults a weak device still accepts (``*.default_credentials`` weaknesses).
FACTORY_DEFAULTS = (Account("admin", "admin", "admin"), Account("root", "root", "admin"))


@dataclass
class SimConfig:
    """Everything a simulator is configured with; unknown keys in the JSON are refused."""

    accounts: list[Account] = field(default_factory=lambda: list(DEFAULT_ACCOUNTS))
    #: Failed logins before an account locks.
    lockout_threshold: int = 3
    #: Seconds an account stays locked.
    lockout_duration_s: float = 5.0
    #: Idle seconds before a session is closed.
    idle_timeout_s: float = 5.0
    #: Concurrent sessions (SSH, OPC UA, console logins) allowed.
    session_limit: int = 4
    #: Concurrent TCP connections (Modbus) allowed.
    connection_limit: int = 8
    #: Pre-authentication banner (system-use notification).
    banner: str = "Authorized use only. Activity on this device is monitored and logged."
    #: Request rate (per second) above which a ``load.fragile`` device starves its scan cycle.
    fragile_threshold_rps: float = 300.0
    #: Seconds a starved fragile device needs to recover once the load drops.
    fragile_recovery_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("lockout_threshold", "session_limit", "connection_limit"):
            if getattr(self, name) < 1:
                raise SimulatorConfigError(f"config {name} must be >= 1, got {getattr(self, name)}")
        for name in ("lockout_duration_s", "idle_timeout_s", "fragile_recovery_s"):
            if getattr(self, name) < 0:
                raise SimulatorConfigError(f"config {name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_json(cls, path: str) -> SimConfig:
        """Load a JSON config; name the file and the bad key on error."""
        try:
            with open(path, encoding="utf-8") as fh:
                raw = json.load(fh)
        except (OSError, ValueError) as exc:
            raise SimulatorConfigError(f"{path}: cannot read config: {exc}") from exc
        if not isinstance(raw, dict):
            raise SimulatorConfigError(f"{path}: config must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SimulatorConfigError(
                f"{path}: unknown config keys {unknown}; known: {sorted(known)}"
            )
        if "accounts" in raw:
            try:
                raw["accounts"] = [Account(**a) for a in raw["accounts"]]
            except TypeError as exc:
                raise SimulatorConfigError(f"{path}: bad account entry: {exc}") from exc
        return cls(**raw)

    def account(self, user: str) -> Account | None:
        """The account named ``user``, if any."""
        return next((a for a in self.accounts if a.user == user), None)


class Lockout:
    """Failed-login accounting per user: ``threshold`` failures lock for ``duration_s``.

    Thread-safe. With ``enabled=False`` (a ``*.no_lockout`` weakness) nothing ever locks.
    """

    def __init__(self, threshold: int, duration_s: float, *, enabled: bool = True) -> None:
        self.threshold = threshold
        self.duration_s = duration_s
        self.enabled = enabled
        self._failures: dict[str, int] = {}
        self._locked_until: dict[str, float] = {}
        self._lock = threading.Lock()

    def is_locked(self, user: str) -> bool:
        """True while ``user`` is locked out."""
        with self._lock:
            until = self._locked_until.get(user, 0.0)
            if until and time.monotonic() >= until:
                del self._locked_until[user]
                self._failures.pop(user, None)
                return False
            return bool(until)

    def failure(self, user: str) -> None:
        """Record one failed login for ``user``."""
        if not self.enabled:
            return
        with self._lock:
            n = self._failures.get(user, 0) + 1
            self._failures[user] = n
            if n >= self.threshold:
                self._locked_until[user] = time.monotonic() + self.duration_s

    def success(self, user: str) -> None:
        """A good login clears the failure count."""
        with self._lock:
            self._failures.pop(user, None)


def authenticate(
    config: SimConfig, lockout: Lockout, user: str, password: str, *, factory_defaults: bool
) -> Account | None:
    """Check a login against the accounts (and the factory defaults on a weak device).

    A locked account is refused even with the right password.
    """
    if lockout.is_locked(user):
        return None
    candidates: list[Account] = list(config.accounts)
    if factory_defaults:
        candidates.extend(FACTORY_DEFAULTS)
    for acc in candidates:
        if acc.user == user and acc.password == password:
            lockout.success(user)
            return acc
    lockout.failure(user)
    return None


@dataclass
class SimArgs:
    """Parsed command line of a simulator."""

    name: str
    host: str
    port: int
    weaknesses: frozenset[str]
    config: SimConfig
    scan_period_s: float
    #: Folder for generated keys and certificates (removed at exit if the simulator made it).
    state_dir: str
    extra: dict[str, Any]

    def has(self, weakness: str) -> bool:
        """True if ``weakness`` (e.g. ``"modbus.unprotected_writes"``) is switched on."""
        return weakness in self.weaknesses


def parse_args(
    name: str,
    known_weaknesses: Iterable[str],
    argv: list[str] | None = None,
    *,
    default_port: int = 0,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> SimArgs:
    """Parse a simulator's command line; on error print the error line and exit 2.

    ``--posture weak`` switches on every weakness in ``known_weaknesses``; ``--weakness``
    (repeatable) switches on single ones over ``hardened``. Unknown weakness names are refused.
    """
    known = tuple(sorted(known_weaknesses))
    parser = argparse.ArgumentParser(prog=f"python -m simulators.{name}", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--posture", choices=POSTURES, default="hardened")
    parser.add_argument(
        "--weakness",
        action="append",
        default=[],
        metavar="NAME",
        help=f"one of: {', '.join(known)}",
    )
    parser.add_argument("--config", help="JSON file with accounts and device policy")
    parser.add_argument("--scan-period-ms", type=float, default=10.0)
    parser.add_argument(
        "--state-dir",
        help="folder for generated keys and certificates "
        "(default: a private temporary folder removed at exit)",
    )
    if add_arguments is not None:
        add_arguments(parser)
    ns = parser.parse_args(argv)
    try:
        unknown = sorted(set(ns.weakness) - set(known))
        if unknown:
            raise SimulatorConfigError(f"unknown weakness {unknown}; known: {list(known)}")
        if ns.scan_period_ms <= 0:
            raise SimulatorConfigError("--scan-period-ms must be > 0")
        config = SimConfig.from_json(ns.config) if ns.config else SimConfig()
    except SimulatorConfigError as exc:
        fail(name, str(exc))
    weaknesses = frozenset(known) if ns.posture == "weak" else frozenset(ns.weakness)
    extra = {
        k: v
        for k, v in vars(ns).items()
        if k not in {"host", "port", "posture", "weakness", "config", "scan_period_ms", "state_dir"}
    }
    if ns.state_dir:
        os.makedirs(ns.state_dir, exist_ok=True)
        state_dir = ns.state_dir
    else:
        state_dir = tempfile.mkdtemp(prefix=f"sim-{name}-")
        atexit.register(shutil.rmtree, state_dir, True)
    return SimArgs(
        name, ns.host, ns.port, weaknesses, config, ns.scan_period_ms / 1000.0, state_dir, extra
    )


def emit(event: dict[str, Any]) -> None:
    """Write one JSON line to stdout and flush it."""
    sys.stdout.write(json.dumps(event, sort_keys=True) + "\n")
    sys.stdout.flush()


def ready(name: str, endpoints: dict[str, Any], weaknesses: Iterable[str]) -> None:
    """Announce that the simulator is serving."""
    emit(
        {
            "event": "ready",
            "simulator": name,
            "pid": os.getpid(),
            "endpoints": endpoints,
            "weaknesses": sorted(weaknesses),
        }
    )


def fail(name: str, message: str) -> None:
    """Announce a start-up failure and exit 2."""
    emit({"event": "error", "simulator": name, "message": message})
    raise SystemExit(2)


def install_stop_handler(on_stop: Callable[[], None]) -> None:
    """Call ``on_stop`` once on the first SIGTERM or SIGINT, from a thread of its own.

    A Python signal handler runs on the main thread between two bytecodes, possibly while that
    thread holds a lock (inside ``threading.Event.wait``, say); a handler that takes the same
    lock (``Event.set``) then waits for itself forever. So the handler only writes a byte to a
    pipe, which takes no lock, and a watcher thread reading that pipe calls ``on_stop``.
    """
    read_fd, write_fd = os.pipe()
    fired = False

    def handler(signum: int, frame: object) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        # a repeated signal while shutting down must not kill us with the default action
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.write(write_fd, b"!")

    def watch() -> None:
        if os.read(read_fd, 1):
            on_stop()

    threading.Thread(target=watch, name="stop-signal", daemon=True).start()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Server(Protocol):
    """A simulator front end that :func:`serve_until_stopped` can run."""

    def endpoints(self) -> dict[str, Any]:
        """The ``endpoints`` of the ready line."""

    def serve_forever(self) -> None:
        """Serve on the calling thread until :meth:`request_stop`."""

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to return (called from the stop-signal thread)."""

    def close(self) -> None:
        """Release everything the server holds."""


class Background(Protocol):
    """Something that runs beside the server for its whole life (the PLC's scan cycle)."""

    def start(self) -> None:
        """Start running."""

    def stop(self) -> None:
        """Stop running."""


def serve_until_stopped(
    name: str, server: Server, weaknesses: Iterable[str], background: Background | None = None
) -> None:
    """Announce ``server`` ready and serve until SIGTERM or SIGINT, then close it.

    Installs the stop handler (:func:`install_stop_handler`), starts ``background``, prints
    the ready line and runs :meth:`Server.serve_forever` on the calling thread; whatever way
    that ends, the server is closed and ``background`` stopped.

    :param name: the simulator's name, for the ready line.
    :param server: a server whose set-up (binding, opening its device) has succeeded.
    :param weaknesses: the weaknesses reported in the ready line.
    :param background: started before the ready line, stopped after the server is closed.
    """
    install_stop_handler(server.request_stop)
    if background is not None:
        background.start()
    try:
        ready(name, server.endpoints(), weaknesses)
        server.serve_forever()
    finally:
        server.close()
        if background is not None:
            background.stop()
