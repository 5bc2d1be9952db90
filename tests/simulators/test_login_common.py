"""The pieces the console and SSH simulators share: the login policy and the serve/stop plumbing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from simulators import common, console, ssh
from simulators.common import FACTORY_DEFAULTS, Account, SimArgs, SimConfig
from simulators.login import IDLE_MESSAGE, PASSWORD_PROMPT, LoginPolicy, welcome

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]

USER = Account("alice", "Al1ce-Test-Pass!", "operator")


def sim_args(*weaknesses: str) -> SimArgs:
    """A parsed command line with ``weaknesses`` on and one test account."""
    cfg = SimConfig(accounts=[USER], lockout_threshold=2, lockout_duration_s=60.0,
                    idle_timeout_s=7.0, banner="Test banner")
    return SimArgs("test", "127.0.0.1", 0, frozenset(weaknesses), cfg, 0.01, "/nonexistent", {})


# -- LoginPolicy ------------------------------------------------------------------------------

def test_hardened_policy_follows_the_config() -> None:
    policy = LoginPolicy.from_args(sim_args(), "console")
    assert policy.lockout.enabled
    assert (policy.lockout.threshold, policy.lockout.duration_s) == (2, 60.0)
    assert not policy.factory_defaults
    assert policy.banner == "Test banner"
    assert policy.idle_timeout_s == 7.0


@pytest.mark.parametrize(("switch", "changed"), [
    ("console.no_lockout", "lockout"),
    ("console.default_credentials", "factory_defaults"),
    ("console.no_banner", "banner"),
    ("console.no_idle_logout", "idle_timeout_s"),
])
def test_each_switch_changes_only_its_own_rule(switch: str, changed: str) -> None:
    base = LoginPolicy.from_args(sim_args(), "console")
    weak = LoginPolicy.from_args(sim_args(switch), "console")
    seen = {
        "lockout": weak.lockout.enabled != base.lockout.enabled,
        "factory_defaults": weak.factory_defaults != base.factory_defaults,
        "banner": weak.banner != base.banner,
        "idle_timeout_s": weak.idle_timeout_s != base.idle_timeout_s,
    }
    assert {k for k, v in seen.items() if v} == {changed}


def test_switches_of_another_prefix_are_ignored() -> None:
    policy = LoginPolicy.from_args(sim_args("ssh.no_lockout", "ssh.no_banner"), "console")
    assert policy.lockout.enabled
    assert policy.banner == "Test banner"


def test_idle_switch_name_is_per_front_end() -> None:
    on = LoginPolicy.from_args(sim_args("ssh.no_idle_timeout"), "ssh",
                               idle_switch="no_idle_timeout")
    assert on.idle_timeout_s == 0.0
    other = LoginPolicy.from_args(sim_args("ssh.no_idle_logout"), "ssh",
                                  idle_switch="no_idle_timeout")
    assert other.idle_timeout_s == 7.0


@pytest.mark.parametrize(("module", "prefix", "idle_switch"), [
    (console, "console", "no_idle_logout"),
    (ssh, "ssh", "no_idle_timeout"),
])
def test_the_simulators_switch_names_exist(module: object, prefix: str, idle_switch: str) -> None:
    known = module.WEAKNESSES  # type: ignore[attr-defined]
    policy = LoginPolicy.from_args(sim_args(*known), prefix, idle_switch=idle_switch, known=known)
    assert not policy.lockout.enabled
    assert policy.factory_defaults
    assert policy.banner == ""
    assert policy.idle_timeout_s == 0.0


def test_a_misspelt_switch_is_refused() -> None:
    with pytest.raises(ValueError, match=r"console\.no_idle_timeout"):
        LoginPolicy.from_args(sim_args(), "console", idle_switch="no_idle_timeout",
                              known=console.WEAKNESSES)


def test_negative_idle_timeout_is_refused() -> None:
    policy = LoginPolicy.from_args(sim_args(), "console")
    with pytest.raises(ValueError, match="idle_timeout_s"):
        LoginPolicy(policy.config, policy.lockout, False, "", -1.0)


def test_authenticate_locks_after_the_threshold_even_for_the_right_password() -> None:
    policy = LoginPolicy.from_args(sim_args(), "console")
    assert policy.authenticate(USER.user, USER.password) == USER
    assert policy.authenticate(USER.user, "wrong") is None
    assert policy.authenticate(USER.user, "wrong") is None
    assert policy.lockout.is_locked(USER.user)
    assert policy.authenticate(USER.user, USER.password) is None


def test_a_good_login_clears_the_failure_count() -> None:
    policy = LoginPolicy.from_args(sim_args(), "console")
    assert policy.authenticate(USER.user, "wrong") is None
    assert policy.authenticate(USER.user, USER.password) == USER
    assert policy.authenticate(USER.user, "wrong") is None
    assert not policy.lockout.is_locked(USER.user)


def test_no_lockout_never_locks() -> None:
    policy = LoginPolicy.from_args(sim_args("console.no_lockout"), "console")
    for _ in range(5):
        assert policy.authenticate(USER.user, "wrong") is None
    assert policy.authenticate(USER.user, USER.password) == USER


def test_factory_defaults_only_with_the_switch() -> None:
    factory = FACTORY_DEFAULTS[0]
    hardened = LoginPolicy.from_args(sim_args(), "ssh")
    assert hardened.authenticate(factory.user, factory.password) is None
    weak = LoginPolicy.from_args(sim_args("ssh.default_credentials"), "ssh")
    assert weak.authenticate(factory.user, factory.password) == factory


def test_messages() -> None:
    assert welcome(USER) == "alice logged in (role operator). Type 'help' for commands.\n"
    assert PASSWORD_PROMPT == "Password: "
    assert IDLE_MESSAGE == "idle timeout, logged out"


# -- serve_until_stopped ----------------------------------------------------------------------

class FakeServer:
    """Records the calls :func:`common.serve_until_stopped` makes."""

    def __init__(self, calls: list[str], fail: bool = False) -> None:
        self.calls = calls
        self.fail = fail

    def endpoints(self) -> dict[str, object]:
        self.calls.append("endpoints")
        return {"fake": {"port": 1}}

    def serve_forever(self) -> None:
        self.calls.append("serve")
        if self.fail:
            raise RuntimeError("serve failed")

    def request_stop(self) -> None:
        self.calls.append("request_stop")

    def close(self) -> None:
        self.calls.append("close")


class FakePlc:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def start(self) -> None:
        self.calls.append("plc.start")

    def stop(self) -> None:
        self.calls.append("plc.stop")


@pytest.fixture
def no_signals(monkeypatch: pytest.MonkeyPatch) -> list[Callable[[], None]]:
    """Keep the test process's signal handlers; collect what would have been installed."""
    installed: list[Callable[[], None]] = []
    monkeypatch.setattr(common, "install_stop_handler", installed.append)
    return installed


def test_serve_runs_in_order_and_announces_ready(
        no_signals: list[Callable[[], None]], capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[str] = []
    server = FakeServer(calls)
    common.serve_until_stopped("fake", server, ["b.two", "a.one"], FakePlc(calls))
    assert calls == ["plc.start", "endpoints", "serve", "close", "plc.stop"]
    assert no_signals == [server.request_stop]
    event = json.loads(capsys.readouterr().out)
    assert event["event"] == "ready"
    assert event["simulator"] == "fake"
    assert event["endpoints"] == {"fake": {"port": 1}}
    assert event["weaknesses"] == ["a.one", "b.two"]


def test_serve_closes_and_stops_when_serving_fails(no_signals: list[Callable[[], None]]) -> None:
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="serve failed"):
        common.serve_until_stopped("fake", FakeServer(calls, fail=True), [], FakePlc(calls))
    assert calls[-2:] == ["close", "plc.stop"]


def test_serve_without_background(no_signals: list[Callable[[], None]]) -> None:
    calls: list[str] = []
    common.serve_until_stopped("fake", FakeServer(calls), [])
    assert calls == ["endpoints", "serve", "close"]


SERVER_SCRIPT = textwrap.dedent(
    """
    import threading
    from simulators import common

    class Server:
        def __init__(self):
            self.stopping = threading.Event()
        def endpoints(self):
            return {"fake": {}}
        def serve_forever(self):
            while not self.stopping.wait(0.05):
                pass
        def request_stop(self):
            self.stopping.set()
        def close(self):
            print("closed", flush=True)

    common.serve_until_stopped("fake", Server(), [])
    """
)


def test_sigterm_ends_serving_cleanly() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert out == "closed\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
