"""The device profile: what the device is, how to reach it, what it claims and what we may do.

One pydantic model is the source of truth. Unknown keys are refused everywhere (a typo must not
pass silently). :func:`load_profile` reports every problem at once as
``FILE:LINE: path.to.field: message`` by mapping each validation error back to its YAML line.

Secrets are never stored in the model as text: account credentials are :class:`SecretRef`
(``env:NAME`` or ``file:PATH``; inline only under ``allow_insecure_inline_secrets``) and are
resolved only when a check needs them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import ProfileError, SecretError

FRS = ("FR1", "FR2", "FR3", "FR4", "FR5", "FR6", "FR7")

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_ALL_DIGITS_AND_DOTS = re.compile(r"^[0-9.]+$")


def check_host(value: str) -> str:
    """Accept an IPv4/IPv6 address or an RFC 1123 host name; refuse anything else."""
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _ALL_DIGITS_AND_DOTS.match(text) or not _HOSTNAME.match(text):
        raise ValueError(f"{value!r} is not a valid IP address or host name")
    return text


Host = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
SL = Annotated[int, Field(ge=0, le=4)]


class Strict(BaseModel):
    """Base: unknown keys are errors, and models are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ComponentKind(StrEnum):
    """The component types of IEC 62443-4-2, as a profile names them."""

    embedded = "embedded"
    host = "host"
    network = "network"
    software_application = "software_application"


class SecretRef(str):
    """A reference to a secret: ``env:NAME``, ``file:PATH`` or (insecure) an inline value.

    ``str()`` and ``repr()`` show the reference, never the value; :meth:`resolve` reads it.
    """

    __slots__ = ()

    @property
    def scheme(self) -> str:
        """``env``, ``file`` or ``inline``."""
        head, sep, _ = self.partition(":")
        return head if sep and head in ("env", "file") else "inline"

    def resolve(self, base_dir: Path | None = None) -> str:
        """Return the secret's value.

        :param base_dir: folder that relative ``file:`` paths are resolved against.
        :raises SecretError: the variable is unset or the file cannot be read.
        """
        scheme = self.scheme
        if scheme == "env":
            name = self[4:]
            if name not in os.environ:
                raise SecretError(f"secret env:{name}: environment variable {name} is not set")
            return os.environ[name]
        if scheme == "file":
            path = Path(self[5:]).expanduser()
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SecretError(f"secret file:{path}: cannot read: {exc.strerror}") from exc
        return str.__str__(self)

    def __repr__(self) -> str:
        return (
            "SecretRef(<inline>)"
            if self.scheme == "inline"
            else f"SecretRef({str.__str__(self)!r})"
        )

    def __str__(self) -> str:
        return "<inline secret>" if self.scheme == "inline" else str.__str__(self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.no_info_after_validator_function(
            cls,
            core_schema.str_schema(min_length=1),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda v: str.__str__(v) if v.scheme != "inline" else "<inline secret>"
            ),
        )


# --------------------------------------------------------------------------- identity
class DeviceIdentity(Strict):
    """What the component is."""

    vendor: str = Field(min_length=1)
    model: str = Field(min_length=1)
    firmware: str = Field(min_length=1)
    serial: str | None = None
    component_type: ComponentKind
    description: str | None = None


class ClaimedSL(Strict):
    """The supplier's capability level per foundational requirement (SL-C vector)."""

    FR1: SL = 0
    FR2: SL = 0
    FR3: SL = 0
    FR4: SL = 0
    FR5: SL = 0
    FR6: SL = 0
    FR7: SL = 0

    def of(self, fr: str) -> int:
        """Claimed SL of ``fr`` (e.g. ``"FR3"``)."""
        return int(getattr(self, fr))


# --------------------------------------------------------------------------- interfaces
class _Networked(Strict):
    host: Host

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)


class ModbusTcp(_Networked):
    """Plain Modbus/TCP."""

    port: Port = 502
    unit_id: int = Field(default=1, ge=0, le=255)


class CertPair(Strict):
    """A client certificate and its key (PEM files)."""

    cert: Path
    key: Path


class ModbusTls(_Networked):
    """Modbus/TCP Security (TLS with mutual authentication and roles)."""

    port: Port = 802
    unit_id: int = Field(default=1, ge=0, le=255)
    #: CA certificate the device trusts for clients (and that signs the device's certificate).
    ca_cert: Path
    #: CA key, when the test PKI is ours: lets the harness mint role and expired certificates.
    ca_key: Path | None = None
    #: Ready-made client certificates per role (``readwrite``, ``readonly``).
    client_certs: dict[Literal["readwrite", "readonly"], CertPair] = Field(default_factory=dict)


class OpcUa(Strict):
    """OPC UA server endpoint."""

    endpoint: str
    #: Application instance certificate the device trusts (PEM or DER) and its key.
    client_cert: Path | None = None
    client_key: Path | None = None
    #: ApplicationUri the client announces (it must match the client certificate's
    #: SubjectAltName URI).
    application_uri: str | None = None
    #: CA certificate the device trusts for client application certificates, when the test PKI
    #: is ours (e.g. a test CA installed on the device for the test).
    ca_cert: Path | None = None
    #: That CA's key: lets the harness mint certificates the device would trust but must refuse
    #: (expired, not yet valid, wrong ApplicationUri). Without it those checks are ERROR.
    ca_key: Path | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        m = re.match(r"^opc\.tcp://(\[[^\]]+\]|[^:/\[\]]+)(?::(\d+))?(/.*)?$", v)
        if not m:
            raise ValueError(f"{v!r} is not an opc.tcp://HOST[:PORT][/PATH] URL")
        check_host(m.group(1).strip("[]"))
        if m.group(2) and not 1 <= int(m.group(2)) <= 65535:
            raise ValueError(f"port {m.group(2)} out of range 1..65535")
        return v

    @property
    def host(self) -> str:
        """Host part of the endpoint URL."""
        m = re.match(r"^opc\.tcp://(\[[^\]]+\]|[^:/\[\]]+)", self.endpoint)
        assert m is not None  # validated above
        return check_host(m.group(1).strip("[]"))

    @property
    def port(self) -> int:
        """Port of the endpoint URL (4840 when absent)."""
        m = re.match(r"^opc\.tcp://(?:\[[^\]]+\]|[^:/\[\]]+):(\d+)", self.endpoint)
        return int(m.group(1)) if m else 4840


class Ssh(_Networked):
    """SSH server."""

    port: Port = 22


def _check_serial_device(v: str) -> str:
    if (
        v.startswith("/")
        or re.match(r"^(socket|rfc2217|loop|spy|alt|hwgrep)://", v)
        or re.match(r"^COM\d+$", v)
    ):
        return v
    raise ValueError(f"{v!r} is neither a device path (/dev/...) nor a pyserial URL (socket://...)")


class ModbusRtu(Strict):
    """Modbus RTU on a serial line."""

    device: str
    baud: int = Field(default=19200, gt=0)
    parity: Literal["N", "E", "O"] = "E"
    unit_id: int = Field(default=1, ge=1, le=247)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _check_serial_device(v)


class Console(Strict):
    """Serial (maintenance) console."""

    device: str
    baud: int = Field(default=115200, gt=0)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return _check_serial_device(v)


class Ethernet(Strict):
    """The Ethernet link the harness shares with the device, for layer-2 checks (ARP and
    broadcast storms). Declare it only for a link that reaches the device under test and
    nothing else (a bench switch port, or a lab's veth): every frame goes to all its hosts."""

    #: The harness-side interface (on the machine running the harness) the harness may send
    #: raw frames on; the guard refuses layer-2 sends on any other.
    ifname: str = Field(pattern=r"^[A-Za-z0-9_.:@-]{1,15}$")
    #: The device's MAC address on that link, when known (``aa:bb:cc:dd:ee:ff``).
    device_mac: str | None = Field(default=None,
                                   pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


class Interfaces(Strict):
    """The device's interfaces; each is optional."""

    modbus_tcp: ModbusTcp | None = None
    modbus_tls: ModbusTls | None = None
    opcua: OpcUa | None = None
    ssh: Ssh | None = None
    modbus_rtu: ModbusRtu | None = None
    console: Console | None = None
    #: The Ethernet link for layer-2 checks (absent: they are NOT APPLICABLE).
    ethernet: Ethernet | None = None

    def present(self) -> list[str]:
        """Names of the declared interfaces."""
        return [name for name in type(self).model_fields if getattr(self, name) is not None]

    def hosts(self) -> list[str]:
        """Every network host the interfaces name."""
        out: list[str] = []
        for name in ("modbus_tcp", "modbus_tls", "opcua", "ssh"):
            iface = getattr(self, name)
            if iface is not None and iface.host not in out:
                out.append(iface.host)
        return out


# --------------------------------------------------------------------------- accounts
class Credentials(Strict):
    """One account: a user name and a secret (password and/or private key)."""

    username: str = Field(min_length=1)
    password: SecretRef | None = None
    #: Private key for SSH public-key authentication (a secret reference to a key file).
    private_key: SecretRef | None = None

    @model_validator(mode="after")
    def _some_secret(self) -> Credentials:
        if self.password is None and self.private_key is None:
            raise ValueError("an account needs a password or a private_key")
        return self


class Accounts(Strict):
    """Accounts by role."""

    admin: Credentials | None = None
    operator: Credentials | None = None
    readonly: Credentials | None = None
    #: A dedicated account the lockout checks may lock (never a real operator's account).
    lockout_test: Credentials | None = None


# --------------------------------------------------------------------------- points
class ModbusPoints(Strict):
    """A range of Modbus points."""

    protocol: Literal["modbus"] = "modbus"
    table: Literal["holding", "coil"]
    address: int = Field(ge=0, le=65535)
    count: int = Field(default=1, ge=1, le=125)


class OpcUaPoint(Strict):
    """An OPC UA node."""

    protocol: Literal["opcua"] = "opcua"
    node: str = Field(min_length=3)


Point = Annotated[ModbusPoints | OpcUaPoint, Field(discriminator="protocol")]


class ModbusCounter(Strict):
    """A 32-bit counter the device keeps in two consecutive Modbus registers and only counts up
    (wrapping at 2**32): a scan counter, a microsecond clock, an energy or flow totaliser.

    Read only, never written. CR 3.6 reads it many times under load: a whole read of its two
    registers must never give a value below the one read before it.
    """

    protocol: Literal["modbus"] = "modbus"
    #: ``holding`` (FC 3) or ``input`` (FC 4) registers.
    table: Literal["holding", "input"] = "holding"
    #: Address of the first of its two registers.
    address: int = Field(ge=0, le=65534)
    #: ``high_first``: the most significant word at ``address`` (the usual order);
    #: ``low_first``: the least significant word there.
    word_order: Literal["high_first", "low_first"] = "high_first"


class Points(Strict):
    """Where the harness may write (scratch), where writes must be refused (protected), and the
    multi-register values it reads to judge the process image's consistency (counters)."""

    scratch: list[Point] = Field(default_factory=list)
    protected: list[Point] = Field(default_factory=list)
    #: 32-bit counters the device keeps in register pairs (CR 3.6).
    counters: list[ModbusCounter] = Field(default_factory=list)


# --------------------------------------------------------------------------- monitor
class ModbusHeartbeat(Strict):
    """A holding register the device increments; it must keep counting."""

    kind: Literal["modbus_heartbeat"]
    #: Holding register address of the counter.
    address: int = Field(ge=0, le=65535)
    #: Longest time the counter may stand still.
    max_stall_ms: int = Field(default=500, gt=0)


class OpcUaRead(Strict):
    """A node read that must answer within the bound."""

    kind: Literal["opcua_read"]
    node: str
    max_latency_ms: int = Field(default=200, gt=0)
    #: For a node that counts (a heartbeat): longest time its value may stand still. A device
    #: whose scan has stopped may still answer reads at once, with a stale value.
    max_stall_ms: int | None = Field(default=None, gt=0)


class TcpProbe(Strict):
    """A TCP connect that must succeed within the bound."""

    kind: Literal["tcp_connect"]
    host: Host
    port: Port
    max_latency_ms: int = Field(default=200, gt=0)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return check_host(v)


class SshBanner(Strict):
    """The SSH service answers a new connection with its identification line within the bound.

    More than a TCP connect (which the kernel completes even for a hung daemon): the SSH server
    itself must be scheduled to say ``SSH-2.0-...``. Host and port are the ``ssh`` interface's.
    """

    kind: Literal["ssh_banner"]
    max_latency_ms: int = Field(default=500, gt=0)


EssentialFunction = Annotated[
    ModbusHeartbeat | OpcUaRead | TcpProbe | SshBanner, Field(discriminator="kind")
]


# --------------------------------------------------------------------------- safety
class AbortThreshold(Strict):
    """When the monitor sees this much degradation, load stops at once."""

    #: Consecutive failed monitor samples.
    failed_samples: int = Field(default=25, ge=1)
    #: Heartbeat stall (ms).
    stall_ms: int = Field(default=2000, gt=0)


class Safety(Strict):
    """What the harness may do to the device, and how hard."""

    allow_disruptive: bool = False
    max_request_rate: float = Field(default=200.0, gt=0, description="requests/s")
    max_connection_rate: float = Field(default=20.0, gt=0, description="connections/s")
    max_packet_rate: float = Field(default=1000.0, gt=0, description="packets/s")
    max_connections: int = Field(default=16, ge=1)
    max_load_duration_s: float = Field(default=5.0, gt=0, le=3600)
    recovery_wait_s: float = Field(default=5.0, ge=0)
    abort: AbortThreshold = Field(default_factory=AbortThreshold)
    #: Timeouts for a single exchange.
    connect_timeout_s: float = Field(default=3.0, gt=0, le=120)
    request_timeout_s: float = Field(default=3.0, gt=0, le=120)


# --------------------------------------------------------------------------- expectations
class LockoutPolicy(Strict):
    """The device's own failed-login policy."""

    threshold: int = Field(ge=1, le=100)
    duration_s: float = Field(ge=0, le=3600)


SshAuthMethod = Literal["publickey", "password", "keyboard-interactive"]


class Expectations(Strict):
    """Pass lines set by the device's own policy."""

    lockout: LockoutPolicy | None = None
    session_limit: int | None = Field(default=None, ge=1)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    banner_required: bool = True
    #: Open TCP ports the device is documented to have (anything else is a finding).
    open_ports: list[Port] = Field(default_factory=list)
    #: UDP ports the device is documented to answer on (SNMP 161, BACnet 47808...; anything
    #: else that answers a probe is a finding).
    open_udp_ports: list[Port] = Field(default_factory=list)
    #: Seconds within which the device closes a Modbus/TCP connection whose request does not
    #: arrive whole (its frame timeout; CR 7.2 assumes 2 s when not declared).
    modbus_frame_timeout_s: float | None = Field(default=None, gt=0)
    #: Seconds within which the device closes an SSH connection that has not completed its
    #: identification line and key exchange (its login grace time; CR 7.2 assumes 2 s when not
    #: declared).
    ssh_login_grace_s: float | None = Field(default=None, gt=0)
    #: Seconds within which the device closes an OPC UA connection that has not sent a complete
    #: Hello and opened its secure channel (its Hello timeout; CR 7.2 assumes 2 s when not
    #: declared).
    opcua_hello_timeout_s: float | None = Field(default=None, gt=0)
    #: Modbus function codes the device is documented to support.
    modbus_function_codes: list[Annotated[int, Field(ge=1, le=127)]] = Field(
        default_factory=lambda: [1, 2, 3, 4, 5, 6, 15, 16, 22, 23]
    )
    #: SSH authentication methods the device is documented to offer.
    ssh_auth_methods: list[SshAuthMethod] = Field(
        default_factory=lambda: list[SshAuthMethod](["publickey", "password"])
    )
    #: What a Modbus RTU broadcast write should do: be ignored, or be executed.
    rtu_broadcast: Literal["ignore", "execute"] = "ignore"
    #: Vendor default credentials to try (user names must be declared accounts' names).
    default_credentials: list[tuple[str, SecretRef]] = Field(default_factory=list)


class Waiver(Strict):
    """A requirement waived with a compensating countermeasure, until an expiry date."""

    requirement: str
    justification: str = Field(min_length=10)
    expires: dt.date

    def active(self, today: dt.date | None = None) -> bool:
        """True until (and including) the expiry date."""
        return (today or dt.date.today()) <= self.expires


class Profile(Strict):
    """A device profile: the one input of a run."""

    schema_version: Literal[1] = 1
    device: DeviceIdentity
    claimed_sl: ClaimedSL
    interfaces: Interfaces = Field(default_factory=Interfaces)
    #: Allow-list of addresses (IPs or CIDRs) the harness may contact; derived when absent.
    targets: list[str] | None = None
    accounts: Accounts = Field(default_factory=Accounts)
    allow_insecure_inline_secrets: bool = False
    points: Points = Field(default_factory=Points)
    essential_functions: list[EssentialFunction] = Field(default_factory=list)
    safety: Safety = Field(default_factory=Safety)
    expectations: Expectations = Field(default_factory=Expectations)
    waivers: list[Waiver] = Field(default_factory=list)

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        out = []
        for item in v:
            try:
                out.append(str(ipaddress.ip_network(item.strip(), strict=False)))
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or CIDR network") from None
        return out

    @model_validator(mode="after")
    def _consistency(self) -> Profile:
        problems = []
        if not self.allow_insecure_inline_secrets:
            for role, creds in self.iter_accounts():
                for field_name in ("password", "private_key"):
                    ref = getattr(creds, field_name)
                    if ref is not None and ref.scheme == "inline":
                        problems.append(
                            f"accounts.{role}.{field_name}: inline secret refused (use env:NAME or "
                            "file:PATH, or set allow_insecure_inline_secrets: true)"
                        )
        needs = {"modbus_heartbeat": "modbus_tcp", "opcua_read": "opcua", "ssh_banner": "ssh"}
        for i, ef in enumerate(self.essential_functions):
            iface = needs.get(ef.kind)
            if iface is not None and getattr(self.interfaces, iface) is None:
                problems.append(f"essential_functions.{i}: {ef.kind} needs interfaces.{iface}")
        if self.targets is not None:
            nets = [ipaddress.ip_network(t) for t in self.targets]
            for host in self.interfaces.hosts():
                try:
                    ip = ipaddress.ip_address(host)
                except ValueError:
                    continue  # names are resolved and checked by the guard at connect time
                if not any(ip in n for n in nets):
                    problems.append(f"targets: interface host {host} is not in the allow-list")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- derived views ----------------------------------------------------------------
    def iter_accounts(self) -> list[tuple[str, Credentials]]:
        """Declared accounts as (role, credentials)."""
        return [
            (r, c) for r in Accounts.model_fields if (c := getattr(self.accounts, r)) is not None
        ]

    def allow_list(self) -> list[str]:
        """The targets, or the interface hosts when no explicit list is given."""
        return list(self.targets) if self.targets is not None else self.interfaces.hosts()

    def waiver_for(self, requirement: str) -> Waiver | None:
        """The waiver naming ``requirement`` (active or expired), if any."""
        return next((w for w in self.waivers if w.requirement == requirement), None)

    def inline_secret_warnings(self) -> list[str]:
        """Warnings for inline secrets allowed by the insecure flag."""
        return [
            f"accounts.{role}.{f}: inline secret (allowed by allow_insecure_inline_secrets)"
            for role, c in self.iter_accounts()
            for f in ("password", "private_key")
            if (ref := getattr(c, f)) is not None and ref.scheme == "inline"
        ]


class LoadedProfile:
    """A validated profile plus where it came from (for relative paths, hashes, warnings)."""

    def __init__(self, profile: Profile, path: Path, raw: bytes, warnings: list[str]) -> None:
        self.profile = profile
        self.path = path
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.warnings = warnings

    @property
    def base_dir(self) -> Path:
        """Folder that relative paths in the profile are resolved against."""
        return self.path.parent

    def resolve_path(self, p: Path) -> Path:
        """A profile path made absolute."""
        return p if p.is_absolute() else (self.base_dir / p)

    def secret(self, ref: SecretRef) -> str:
        """Resolve a secret reference relative to the profile (and scrub it from evidence)."""
        from harness.evidence import register_secret

        value = ref.resolve(self.base_dir)
        register_secret(value)
        return value


# --------------------------------------------------------------------------- loading
def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[(*path, k)] = key.start_mark.line + 1
            _line_index(value, (*path, k), out)
            # also index the key line as the location for "extra key" errors
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), out)


def _locate(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    path = tuple(str(p) if not isinstance(p, int) else p for p in loc)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get((), 1)


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts a discriminated union's tag right after the list index: drop it.
    out: list[Any] = []
    for p in loc:
        if out and isinstance(out[-1], int) and isinstance(p, str) and p in _UNION_TAGS:
            continue
        out.append(p)
    return tuple(out)


_UNION_TAGS = {"modbus", "opcua", "modbus_heartbeat", "opcua_read", "tcp_connect"}


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key (not part of the profile schema; check the spelling)"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _dotted(loc: tuple[Any, ...]) -> str:
    """``a.b.0.c``; a key that is not a plain word is quoted (``a.' '``) so it stays visible."""
    parts = [
        str(p) if isinstance(p, int) or _PLAIN_KEY.match(str(p)) else repr(str(p)) for p in loc
    ]
    return ".".join(parts) or "(top level)"


#: The C parser when PyYAML has it (several times faster), else the pure-Python one.
_YamlLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_profile(path: str | os.PathLike[str]) -> LoadedProfile:
    """Load and validate a profile, reporting every problem with its file and line.

    :raises ProfileError: with one ``FILE:LINE: path: message`` line per problem.
    """
    p = Path(path)
    name = str(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ProfileError(name, [f"{name}: cannot read profile: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
        loader = _YamlLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError:
        raise ProfileError(name, [f"{name}:1: not a UTF-8 text file"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ProfileError(name, [f"{name}:{line}: not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise ProfileError(name, [f"{name}:1: a profile must be a YAML mapping, got {kind}"])
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _clean_loc(tuple(err["loc"]))
            if not loc and err.get("type") == "value_error":
                # whole-profile consistency problems carry their own "path: message" parts
                for part in _message(dict(err)).split("; "):
                    dotted, _, msg = part.partition(": ")
                    where = tuple(int(x) if x.isdigit() else x for x in dotted.split("."))
                    problems.append(f"{name}:{_locate(lines, where)}: {dotted}: {msg}")
                continue
            dotted = _dotted(loc)
            problems.append(f"{name}:{_locate(lines, loc)}: {dotted}: {_message(dict(err))}")
        raise ProfileError(name, problems) from None
    return LoadedProfile(profile, p.resolve(), raw, profile.inline_secret_warnings())


def json_schema() -> str:
    """The profile's JSON Schema, for editors."""
    schema = Profile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "harness device profile"
    return json.dumps(schema, indent=2, sort_keys=True)
