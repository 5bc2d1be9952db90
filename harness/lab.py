"""The lab: bundled PLC simulators started as processes, and the device profile that points at them.

A *lab definition* (YAML, ``lab/labs/*.yaml``) names the simulators, the posture, the single
weaknesses to switch on and the device policy. :func:`lab_up` starts every simulator at once
(``python -m simulators.<name>``; the harness never imports a simulator), waits for each one's
ready line, and writes into the state folder:

- ``state.json``: pids, endpoints, pty paths, the lab definition;
- ``profile.yaml``: a device profile for the running lab (secrets as ``file:`` references);
- ``secrets/``: generated passwords (mode 0600), ``sim-config.json`` for the simulators;
- ``logs/``: each simulator's output.

A simulator that does not come up, or a taken port, is a :class:`~harness.errors.LabError` and
nothing is left running. :func:`lab_down` stops only the pids its own state file names, and only
if they still look like our simulators.

Network: by default (``network: {kind: loopback}``) the simulators serve on a fresh loopback
address. With ``network: {kind: netns}`` (root only) the lab gets a network namespace and a
veth pair of its own (:mod:`harness.netns`, addresses from 198.18.0.0/15): every simulator runs
inside the namespace (``ip netns exec``) on the device-side address, the generated profile
targets that address and declares the harness-side veth as ``interfaces.ethernet`` (the only
interface layer-2 checks may send on), and :func:`lab_down` removes the namespace and the
pair after the simulators stopped. The state file records the link under ``network``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness.errors import LabError

if TYPE_CHECKING:
    from harness.netns import NetnsLink

#: Seconds a simulator may take to print its ready line.
READY_TIMEOUT_S = 20.0
STATE_FILE = "state.json"


class LabPolicy(BaseModel):
    """Device policy given to every simulator (and declared in the generated profile)."""

    model_config = ConfigDict(extra="forbid")

    lockout_threshold: int = Field(default=3, ge=1)
    lockout_duration_s: float = Field(default=3.0, ge=0)
    idle_timeout_s: float = Field(default=3.0, gt=0)
    session_limit: int = Field(default=4, ge=1)
    connection_limit: int = Field(default=8, ge=1)
    fragile_threshold_rps: float = Field(default=150.0, gt=0)
    fragile_recovery_s: float = Field(default=3.0, ge=0)


SimulatorName = Literal[
    "modbus_tcp", "modbus_tls", "modbus_rtu", "console", "opcua", "ssh", "hostile"
]
#: The simulators of a default lab (a hostile device is only ever asked for by name).
SIMULATORS: tuple[SimulatorName, ...] = tuple(n for n in get_args(SimulatorName) if n != "hostile")


class LabNetwork(BaseModel):
    """Where the lab's simulators live on the network."""

    model_config = ConfigDict(extra="forbid")

    #: ``loopback``: a loopback address of this machine; ``netns``: a network namespace behind
    #: a veth pair (root only; see :mod:`harness.netns`).
    kind: Literal["loopback", "netns"] = "loopback"


class LabDefinition(BaseModel):
    """A lab: which simulators, in which posture, with which weaknesses."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    posture: Literal["hardened", "weak"] = "hardened"
    simulators: list[SimulatorName] = Field(default_factory=lambda: list[SimulatorName](SIMULATORS))
    weaknesses: list[str] = Field(default_factory=list)
    #: Fixed ports per simulator (default: the OS picks).
    ports: dict[str, int] = Field(default_factory=dict)
    policy: LabPolicy = Field(default_factory=LabPolicy)
    #: Claimed SL per FR in the generated profile.
    claimed_sl: dict[str, int] = Field(default_factory=lambda: {f"FR{i}": 2 for i in range(1, 8)})
    allow_disruptive: bool = True
    scan_period_ms: float = 10.0
    #: Loopback address the simulators bind. ``auto`` picks a fresh one in 127.0.0.0/8 per lab,
    #: so a port scan of the lab device sees only that lab (not every local service).
    host: str = "auto"
    #: The lab's network (default: loopback).
    network: LabNetwork = Field(default_factory=LabNetwork)

    @model_validator(mode="after")
    def _netns_host(self) -> LabDefinition:
        if self.network.kind == "netns" and self.host != "auto":
            raise ValueError("a netns lab takes its address from its namespace: host must be "
                             f"auto, got {self.host}")
        return self

    @field_validator("host")
    @classmethod
    def _loopback(cls, v: str) -> str:
        if v == "auto":
            return v
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            raise ValueError(f"{v!r} is not an IP address") from None
        if not ip.is_loopback:
            raise ValueError(f"{v} is not a loopback address: the lab never leaves this machine")
        return v


def load_lab(path_or_name: str) -> LabDefinition:
    """Load a lab definition from a path, or by name from the bundled ``lab/labs``."""
    from harness.paths import bundled

    path = Path(path_or_name)
    if not path.exists():
        candidate = bundled("lab") / "labs" / f"{path_or_name}.yaml"
        if not candidate.exists():
            names = sorted(p.stem for p in (bundled("lab") / "labs").glob("*.yaml"))
            raise LabError(
                f"no lab {path_or_name!r}: not a file, and not a bundled lab ({', '.join(names)})"
            )
        path = candidate
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        lab = LabDefinition.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise LabError(f"{path}: cannot read lab definition: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise LabError(f"{path}: invalid lab definition: {problems}") from None
    manifest = weakness_manifest()
    known = {w for ws in manifest.values() for w in ws}
    unknown = sorted(set(lab.weaknesses) - known)
    if unknown:
        raise LabError(f"{path}: unknown weaknesses {unknown}; known: {sorted(known)}")
    return lab


def _simulators_root() -> Path:
    spec = importlib.util.find_spec("simulators")
    if spec is None or not spec.submodule_search_locations:
        raise LabError("the simulators package is not installed")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def weakness_manifest() -> dict[str, list[str]]:
    """Each simulator's weaknesses, read from ``simulators/manifest.json`` (no import)."""
    path = _simulators_root() / "manifest.json"
    try:
        data: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LabError(f"{path}: cannot read the simulator manifest: {exc}") from None
    return data


# --------------------------------------------------------------------------- up
def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def _accounts() -> dict[str, dict[str, str]]:
    def pw() -> str:
        return "Sim-" + secrets.token_urlsafe(12)

    return {
        "admin": {"user": "admin", "password": pw(), "role": "admin"},
        "operator": {"user": "operator", "password": pw(), "role": "operator"},
        "readonly": {"user": "viewer", "password": pw(), "role": "readonly"},
        "lockout_test": {"user": "locktest", "password": pw(), "role": "operator"},
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_simulator(pid: int, state_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = [c.decode(errors="replace") for c in cmdline]
    return any(c.startswith("simulators.") for c in text) and str(state_dir) in " ".join(text)


def _stop_pids(pids: list[int], timeout_s: float = 5.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid if not _pid_alive(pid) else 0
            if done:
                break
            time.sleep(0.02)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


#: Weaknesses a simulator can only model with raw sockets (root or CAP_NET_RAW).
ROOT_ONLY_WEAKNESSES = frozenset({"net.fragile_stack", "net.fragile_l2"})


def _weaknesses_for(lab: LabDefinition, known: list[str]) -> list[str]:
    """The weaknesses one simulator gets: all it knows in the weak posture (less the root-only
    ones when we are not root, so a non-root demo still runs), else the lab's own list."""
    if lab.posture == "weak":
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
        return [w for w in known if is_root or w not in ROOT_ONLY_WEAKNESSES]
    return [w for w in lab.weaknesses if w in known]


def _pick_loopback() -> str:
    """A random loopback address other than 127.0.0.1 (Linux answers on all of 127/8)."""
    while True:
        a, b, c = (secrets.randbelow(254) + 1 for _ in range(3))
        if (a, b, c) != (0, 0, 1):
            return f"127.{a}.{b}.{c}"


def wildcard_listeners(protocol: str = "tcp") -> list[int]:
    """Ports this machine listens on for every address (0.0.0.0 or ::), TCP or UDP.

    They answer on the lab's loopback address too, although they are not part of the simulated
    device; the generated profile declares them so a port inventory judges only the lab.
    """
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"protocol must be tcp or udp, got {protocol!r}")
    # a TCP socket accepting connections is LISTEN (0A); a bound UDP socket is "closed" (07)
    state = "0A" if protocol == "tcp" else "07"
    ports: set[int] = set()
    for suffix, wildcard in (("", "00000000"), ("6", "0" * 32)):
        try:
            lines = Path(f"/proc/net/{protocol}{suffix}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == state:
                addr, port = fields[1].split(":")
                if addr == wildcard:
                    ports.add(int(port, 16))
    return sorted(ports)


def lab_up(lab: LabDefinition, state_dir: Path) -> dict[str, Any]:
    """Start the lab; return its state. On any failure nothing is left running.

    :raises LabError: a lab is already running there, a simulator failed or timed out.
    """
    state_dir = state_dir.resolve()
    if (state_dir / STATE_FILE).exists():
        raise LabError(f"a lab is already running in {state_dir} (harness lab down first)")
    manifest = weakness_manifest()
    state_dir.mkdir(parents=True, exist_ok=True)
    accounts = _accounts()
    sim_config = {
        "accounts": list(accounts.values()),
        **lab.policy.model_dump(),
    }
    _write_private(state_dir / "secrets" / "sim-config.json", json.dumps(sim_config, indent=2))
    for role, acc in accounts.items():
        _write_private(state_dir / "secrets" / f"{role}.password", acc["password"] + "\n")
    (state_dir / "logs").mkdir(exist_ok=True)
    env = dict(os.environ)
    root = str(_simulators_root().parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    t0 = time.monotonic()
    link: NetnsLink | None = None
    prefix: list[str] = []
    try:
        if lab.network.kind == "netns":
            from harness import netns

            link = netns.create()
            host = link.device_address
            prefix = link.exec_prefix()
        else:
            host = _pick_loopback() if lab.host == "auto" else lab.host
        for name in lab.simulators:
            weak = _weaknesses_for(lab, manifest.get(name, []))
            sim_state = state_dir / "sims" / name
            sim_state.mkdir(parents=True, exist_ok=True)
            cmd = [
                *prefix,
                sys.executable,
                "-m",
                f"simulators.{name}",
                "--posture",
                "hardened",  # the weak posture is spelled out as explicit weaknesses below
                "--config",
                str(state_dir / "secrets" / "sim-config.json"),
                "--state-dir",
                str(sim_state),
                "--scan-period-ms",
                str(lab.scan_period_ms),
                "--host",
                host,
                "--port",
                str(lab.ports.get(name, 0)),
            ]
            for w in weak:
                cmd += ["--weakness", w]
            out = (state_dir / "logs" / f"{name}.out").open("wb")
            err = (state_dir / "logs" / f"{name}.err").open("wb")
            procs[name] = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                cwd=str(state_dir),
            )
            out.close()
            err.close()
        ready = _wait_ready(procs, state_dir)
    except BaseException:
        _stop_pids([p.pid for p in procs.values()])
        if link is not None:
            from harness import netns

            netns.teardown(link)
        shutil.rmtree(state_dir, ignore_errors=True)
        raise
    state = {
        "lab": lab.model_dump(),
        "state_dir": str(state_dir),
        "host": host,
        "network": {"kind": "netns", **link.to_json()} if link is not None
        else {"kind": "loopback"},
        "started_s": round(time.monotonic() - t0, 3),
        "started_at": time.time(),
        "simulators": {name: {"pid": procs[name].pid, **ready[name]} for name in procs},
    }
    profile = generated_profile(lab, state, accounts)
    (state_dir / "profile.yaml").write_text(
        "# Generated by `harness lab up` for the running lab; do not edit.\n"
        + yaml.safe_dump(profile, sort_keys=False),
        encoding="utf-8",
    )
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2), encoding="utf-8")
    return state


def _wait_ready(
    procs: dict[str, subprocess.Popen[bytes]], state_dir: Path
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    ready: dict[str, dict[str, Any]] = {}
    while len(ready) < len(procs):
        for name, proc in procs.items():
            if name in ready:
                continue
            text = (state_dir / "logs" / f"{name}.out").read_text(errors="replace")
            for line in text.splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "ready":
                    ready[name] = {
                        "endpoints": event.get("endpoints", {}),
                        "weaknesses": event.get("weaknesses", []),
                    }
                elif event.get("event") == "error":
                    raise LabError(f"simulator {name} failed to start: {event.get('message')}")
            if name not in ready and proc.poll() is not None:
                tail = (state_dir / "logs" / f"{name}.err").read_text(errors="replace")[-800:]
                raise LabError(
                    f"simulator {name} exited with status {proc.returncode} before it "
                    f"was ready:\n{tail.strip()}"
                )
        if time.monotonic() > deadline:
            late = sorted(set(procs) - set(ready))
            raise LabError(f"simulators {late} not ready within {READY_TIMEOUT_S:g} s")
        if len(ready) < len(procs):
            time.sleep(0.02)
    return ready


def generated_profile(
    lab: LabDefinition, state: dict[str, Any], accounts: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """The device profile of a running lab."""
    from harness import __version__

    sims = state["simulators"]
    netns_lab = state.get("network", {}).get("kind") == "netns"
    # Endpoints are matched by their key, whichever simulator reported them (a hostile device
    # may serve several protocols from one process).
    eps: dict[str, dict[str, Any]] = {}
    for sim in sims.values():
        eps.update(sim["endpoints"])
    interfaces: dict[str, Any] = {}
    open_ports: list[int] = []
    ssh_key = None
    if "modbus" in eps:
        ep = eps["modbus"]
        interfaces["modbus_tcp"] = {
            "host": ep["host"],
            "port": ep["port"],
            "unit_id": ep.get("unit", 1),
        }
        open_ports.append(ep["port"])
    if "mbtls" in eps:
        ep = eps["mbtls"]
        interfaces["modbus_tls"] = {
            "host": ep["host"],
            "port": ep["port"],
            "unit_id": ep.get("unit", 1),
            "ca_cert": ep["ca_cert"],
            "ca_key": ep["ca_key"],
        }
        open_ports.append(ep["port"])
    if "opcua" in eps:
        ep = eps["opcua"]
        interfaces["opcua"] = {"endpoint": ep["url"]}
        for key, src in (
            ("client_cert", "client_cert"),
            ("client_key", "client_key"),
            ("application_uri", "client_application_uri"),
            ("ca_cert", "ca_cert"),
            ("ca_key", "ca_key"),
        ):
            if ep.get(src):
                interfaces["opcua"][key] = ep[src]
        open_ports.append(int(ep["url"].rsplit(":", 1)[1].split("/", 1)[0]))
    if "ssh" in eps:
        ep = eps["ssh"]
        interfaces["ssh"] = {"host": ep["host"], "port": ep["port"]}
        ssh_key = ep.get("client_key")
        open_ports.append(ep["port"])
    if "rtu" in eps:
        ep = eps["rtu"]
        interfaces["modbus_rtu"] = {
            "device": ep["path"],
            "baud": ep.get("baud", 19200),
            "unit_id": ep.get("unit", 1),
        }
    if "console" in eps:
        ep = eps["console"]
        interfaces["console"] = {"device": ep["path"], "baud": ep.get("baud", 115200)}
    if netns_lab:
        # the lab's veth: the harness may send layer-2 frames there and nowhere else
        net = state["network"]
        interfaces["ethernet"] = {"ifname": net["host_if"], "device_mac": net["device_mac"]}
    sdir = Path(state["state_dir"]) / "secrets"
    acc_out: dict[str, Any] = {}
    for role, acc in accounts.items():
        entry: dict[str, Any] = {
            "username": acc["user"],
            "password": f"file:{sdir / f'{role}.password'}",
        }
        if ssh_key:
            entry["private_key"] = f"file:{ssh_key}"
        acc_out[role] = entry
    points: dict[str, Any] = {"scratch": [], "protected": []}
    if interfaces.keys() & {"modbus_tcp", "modbus_tls", "modbus_rtu"}:
        points["scratch"] += [
            {"protocol": "modbus", "table": "holding", "address": 100, "count": 10},
            {"protocol": "modbus", "table": "coil", "address": 100, "count": 8},
        ]
        points["protected"] += [
            {"protocol": "modbus", "table": "holding", "address": 200, "count": 10},
            {"protocol": "modbus", "table": "coil", "address": 200, "count": 8},
        ]
        # the PLC's 32-bit scan clock: HR 5 (high word) and HR 6 (low word)
        points["counters"] = [
            {"protocol": "modbus", "table": "holding", "address": 5, "word_order": "high_first"}
        ]
    essential: list[dict[str, Any]] = []
    if "opcua" in eps:
        ns = eps["opcua"].get("namespace_index", 2)
        points["scratch"].append({"protocol": "opcua", "node": f"ns={ns};s=PLC.Scratch.0"})
        points["protected"].append({"protocol": "opcua", "node": f"ns={ns};s=PLC.Protected.0"})
    if "modbus_tcp" in interfaces:
        essential.append({"kind": "modbus_heartbeat", "address": 0, "max_stall_ms": 500})
    if "opcua" in eps:
        ns = eps["opcua"].get("namespace_index", 2)
        essential.append(
            {"kind": "opcua_read", "node": f"ns={ns};s=PLC.Heartbeat", "max_latency_ms": 500,
             "max_stall_ms": 500}
        )
    pol = lab.policy
    return {
        "schema_version": 1,
        "device": {
            "vendor": "harness project",
            "model": f"Simulated PLC ({lab.name})",
            "firmware": f"sim-{__version__}",
            "serial": f"LAB-{os.getpid()}",
            "component_type": "embedded",
            "description": f"bundled simulators, posture {lab.posture}, "
            f"weaknesses {lab.weaknesses or 'none'}",
        },
        "claimed_sl": lab.claimed_sl,
        "interfaces": interfaces,
        "targets": [state["host"]],
        "accounts": acc_out,
        "points": points,
        "essential_functions": essential,
        "safety": {
            "allow_disruptive": lab.allow_disruptive,
            "max_request_rate": 2000,
            "max_connection_rate": 200,
            "max_packet_rate": 5000,
            "max_connections": pol.connection_limit * 2,
            "max_load_duration_s": 3,
            "recovery_wait_s": 2,
            "connect_timeout_s": 3,
            "request_timeout_s": 3,
        },
        "expectations": {
            "lockout": {"threshold": pol.lockout_threshold, "duration_s": pol.lockout_duration_s},
            "session_limit": pol.session_limit,
            "idle_timeout_s": pol.idle_timeout_s,
            "banner_required": True,
            # a netns device shares no listener with this machine
            "open_ports": sorted(set(open_ports) | (set() if netns_lab
                                                    else set(wildcard_listeners()))),
            "open_udp_ports": [] if netns_lab else wildcard_listeners("udp"),
            "modbus_frame_timeout_s": eps.get("modbus", {}).get("frame_timeout_s"),
            "ssh_login_grace_s": eps.get("ssh", {}).get("login_grace_s"),
            "opcua_hello_timeout_s": eps.get("opcua", {}).get("hello_timeout_s"),
            "modbus_function_codes": [1, 2, 3, 4, 5, 6, 15, 16, 22, 23],
            "ssh_auth_methods": ["publickey", "password"],
            "rtu_broadcast": "ignore",
        },
    }


# --------------------------------------------------------------------------- status / down
def read_state(state_dir: Path) -> dict[str, Any]:
    """The state of the lab in ``state_dir``."""
    path = state_dir / STATE_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabError(f"no lab is running in {state_dir.resolve()} (no {STATE_FILE})") from None
    except (OSError, ValueError) as exc:
        raise LabError(f"{path}: unreadable lab state: {exc}") from None
    return data


def lab_status(state_dir: Path) -> dict[str, dict[str, Any]]:
    """Each simulator of the lab with whether its process is still alive."""
    state = read_state(state_dir)
    out = {}
    for name, sim in state["simulators"].items():
        pid = int(sim["pid"])
        alive = _pid_alive(pid) and _is_our_simulator(pid, Path(state["state_dir"]))
        out[name] = {"pid": pid, "alive": alive, "endpoints": sim["endpoints"]}
    return out


def lab_down(state_dir: Path) -> list[str]:
    """Stop the lab's own simulators and remove its state folder; return what was stopped."""
    state = read_state(state_dir)
    sdir = Path(state["state_dir"])
    ours = [
        (name, int(sim["pid"]))
        for name, sim in state["simulators"].items()
        if _is_our_simulator(int(sim["pid"]), sdir)
    ]
    _stop_pids([pid for _, pid in ours])
    network = state.get("network", {})
    if network.get("kind") == "netns":
        from harness import netns

        netns.teardown(netns.NetnsLink.from_json(network))
    shutil.rmtree(sdir, ignore_errors=True)
    return [name for name, _ in ours]
