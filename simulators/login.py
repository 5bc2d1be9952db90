"""What the serial-console and SSH front ends share about logging in.

Both front ends check passwords against the same accounts, count failed logins the same way,
show the same banner, log idle sessions out, and greet a user with the same line. Each names
its weakness switches with its own prefix; :meth:`LoginPolicy.from_args` reads them once:

``<prefix>.no_lockout``
    failed logins never lock an account;
``<prefix>.default_credentials``
    the factory defaults (``admin/admin``, ``root/root``) are accepted too;
``<prefix>.no_banner``
    no system-use banner;
the idle switch (``console.no_idle_logout``, ``ssh.no_idle_timeout``)
    idle sessions are never logged out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from simulators import common
from simulators.common import Account, Lockout, SimArgs, SimConfig

#: The password prompt (the console's, and SSH keyboard-interactive's).
PASSWORD_PROMPT = "Password: "  # noqa: S105 (a prompt, not a password)
#: Printed to a session that is logged out for being idle.
IDLE_MESSAGE = "idle timeout, logged out"


def welcome(account: Account) -> str:
    """The line printed once ``account`` is logged in, before the first shell prompt."""
    return f"{account.user} logged in (role {account.role}). Type 'help' for commands.\n"


@dataclass(frozen=True)
class LoginPolicy:
    """The login rules of one front end, with its weakness switches applied.

    Build it with :meth:`from_args`; the fields are what the switches leave in force.
    """

    #: The accounts (and the rest of the device configuration).
    config: SimConfig
    #: Failed-login accounting (disabled by ``<prefix>.no_lockout``).
    lockout: Lockout
    #: Whether the factory default logins are accepted too.
    factory_defaults: bool
    #: The system-use banner; empty when none is shown.
    banner: str
    #: Idle seconds before a session is logged out; 0 when idle sessions are never logged out.
    idle_timeout_s: float

    def __post_init__(self) -> None:
        if self.idle_timeout_s < 0:
            raise ValueError(f"idle_timeout_s must be >= 0, got {self.idle_timeout_s}")

    @classmethod
    def from_args(
        cls,
        args: SimArgs,
        prefix: str,
        *,
        idle_switch: str = "no_idle_logout",
        known: Iterable[str] | None = None,
    ) -> LoginPolicy:
        """Read the ``<prefix>.*`` switches from a simulator's command line.

        :param args: the parsed command line (its weaknesses and config).
        :param prefix: the front end's weakness prefix (``"console"``, ``"ssh"``).
        :param idle_switch: the name (after the prefix) of the switch that stops idle logout.
        :param known: the front end's weakness names; when given, each switch read here must
            be one of them (a misspelt switch would otherwise never turn on).
        :raises ValueError: when a switch is not in ``known``.
        """
        switches = {
            name: f"{prefix}.{name}"
            for name in ("no_lockout", "default_credentials", "no_banner", idle_switch)
        }
        if known is not None:
            missing = sorted(set(switches.values()) - set(known))
            if missing:
                raise ValueError(f"weakness switches {missing} are not known to {prefix!r}")
        config = args.config
        lockout = Lockout(config.lockout_threshold, config.lockout_duration_s,
                          enabled=not args.has(switches["no_lockout"]))
        return cls(
            config=config,
            lockout=lockout,
            factory_defaults=args.has(switches["default_credentials"]),
            banner="" if args.has(switches["no_banner"]) else config.banner,
            idle_timeout_s=0.0 if args.has(switches[idle_switch]) else config.idle_timeout_s,
        )

    def authenticate(self, user: str, password: str) -> Account | None:
        """Password check with lockout (and the factory defaults when they are on).

        A locked account is refused even with the right password.
        """
        return common.authenticate(self.config, self.lockout, user, password,
                                   factory_defaults=self.factory_defaults)
