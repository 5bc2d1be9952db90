"""CR 7.2 over SSH: connections held before their key exchange (slowloris) do not lock clients
out."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError
from harness.load.slowloris import BOUND_MARGIN_S, run_slowloris

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.load import EssentialMonitor, LoadKit
    from harness.fixtures.ssh import Ssh
    from harness.profile import Profile

pytestmark = pytest.mark.requirement("CR 7.2")

#: The device's login grace time for the identification exchange and key exchange when the
#: profile does not declare one (``expectations.ssh_login_grace_s``): both take milliseconds
#: on a LAN, so 2 s is generous.
DEFAULT_LOGIN_GRACE_S = 2.0
#: What each held connection sends: the start of an identification line that never ends
#: (RFC 4253 4.2); the generator then trickles one more byte a second.
PARTIAL_IDENTIFICATION = b"SSH-2.0-"


@pytest.mark.protocol("ssh")
@pytest.mark.weakness("ssh.no_login_grace")
@pytest.mark.disruptive(traffic="at most {max_connections:g} TCP connections to the SSH port at "
                                "once, opened at most {max_connection_rate:g} per second: all "
                                "but two held with an unfinished identification line (one more "
                                "byte a second) for at most {max_load_duration_s:g} s, and a "
                                "fresh connection reading the server's identification every "
                                "0.25 s")
def test_ssh_drops_connections_held_before_key_exchange(
        load: LoadKit, monitor: EssentialMonitor, ssh: Ssh, device_profile: Profile,
        evidence: Evidence) -> None:
    """SSH connections held open without finishing their handshake are dropped in time.

    Requirement: CR 7.2 (resource management), as in the issue ("connection floods: held
    half-open connections, slowloris style, for SSH"). An SSH server caps the connections that
    are still in their handshake (sshd's MaxStartups); a server that waits forever for a
    client's identification line lets anyone who can reach the port fill that cap with a
    handful of idle sockets and lock every administrator out. It must bound the time a
    connection may take to identify itself and finish its key exchange (sshd's
    LoginGraceTime).

    Procedure (:func:`harness.load.slowloris.run_slowloris`): a fresh connection that reads
    the server's identification and KEXINIT proves the device serves (else ERROR); the
    essential-function monitor must show a healthy baseline. Then the harness opens
    ``safety.max_connections`` minus two connections to the SSH port (one is left for the
    monitor, one for the fresh client), at most ``safety.max_connection_rate`` per second,
    sends each ``SSH-2.0-`` (an identification line without its end) and holds them,
    trickling one byte a second on each (so a timer reset by every byte never fires). Once
    all are open, a fresh connection is tried every 0.25 s: served when the server sends its
    identification line and KEXINIT. The hold lasts long enough to see the bound pass, within
    ``safety.max_load_duration_s``. Afterwards every held connection is closed and a fresh
    connection must be served again (within ``safety.recovery_wait_s``). No login is made.

    The bound: the profile's ``expectations.ssh_login_grace_s`` (default 2 s) plus 0.5 s,
    counted from each held connection's opening (it must be closed by then) and from the
    moment every held connection was open (fresh clients must be served again by then). The
    hold must last the bound plus the opening time, so ``safety.max_load_duration_s`` must
    allow that (about 3 s by default); with a shorter cap a device that did not free the
    connections yet cannot be judged (ERROR).

    Pass: every held connection the device accepted was closed by the device within the bound
    (or at once, beyond its handshake cap), no fresh client was refused later than the bound
    after the hold was established, at least one fresh client was served while the
    connections were held, the monitor's judgement is within bounds, and a fresh client is
    served after the hold. FAIL names the held connections kept past the bound and the fresh
    clients refused past it; the evidence holds the event timeline (``slowloris-events.csv``)
    beside the monitor's.
    """
    declared = device_profile.expectations.ssh_login_grace_s

    def fresh_client() -> tuple[bool, str]:
        try:
            hello = ssh.probe()
        except TargetError as exc:
            return False, str(exc)
        return True, f"identification {hello.identification.version_line}"

    result = run_slowloris(load, monitor, evidence, host=ssh.endpoint.host,
                           port=ssh.endpoint.port, partial=PARTIAL_IDENTIFICATION,
                           bound_s=(declared or DEFAULT_LOGIN_GRACE_S) + BOUND_MARGIN_S,
                           fresh_client=fresh_client, label="ssh_slowloris_hold",
                           waits_for="an unfinished identification line")
    result.conclude("under held pre-handshake SSH connections")
