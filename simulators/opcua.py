"""OPC UA PLC simulator: the PLC core's process image behind an asyncua server.

``python -m simulators.opcua [common options] [--verbose] [--auditing on|off]
[--hello-timeout-s S]`` (see :mod:`simulators.common`).

Ready line ``endpoints``::

    {"opcua": {"url": "opc.tcp://127.0.0.1:PORT/harness/plc", "host": ..., "port": PORT,
               "application_uri": "urn:harness:simulator:opcua",
               "client_application_uri": "urn:harness:client",
               "namespace_uri": "urn:harness:simulator:plc", "namespace_index": 2,
               "server_cert": PEM, "client_cert": PEM, "client_key": PEM,
               "ca_cert": PEM, "ca_key": PEM,
               "hello_timeout_s": S,    # None with opcua.no_hello_timeout
               "nodes": {"heartbeat": "ns=2;s=PLC.Heartbeat", "setpoint": ...,
                         "process_value": ..., "output": ..., "scratch": [...],
                         "protected": [...]}}}

Start-up takes ~0.8 s to the ready line when asyncua's standard address space (~7000 nodes)
comes from the per-user cache (``--aspace-cache``, default ``~/.cache/harness``: a shelf of
pickles, ~20 MB, used only when the folder and its files are the user's own and writable by
nobody else), ~2.1 s without it, ~3.5 s for the one start that makes the cache.

The client certificate is signed by the test CA the server trusts; a client using it must
announce ``client_application_uri`` as its ApplicationUri. Certificates signed with ``ca_key``
are trusted too, so the harness can mint trusted-but-expired ones.

Nodes (namespace ``urn:harness:simulator:plc``, string ids, all UInt16, under object ``PLC``):
``PLC.Heartbeat`` (+1 per scan, wraps), ``PLC.Setpoint`` (writable), ``PLC.ProcessValue``,
``PLC.Output``, ``PLC.Scratch.0``..``9`` (writable), ``PLC.Protected.0``..``9`` (read-only for
everyone). Image values reach the nodes within 50 ms. Writes take any integer variant in
0..65535 (else BadTypeMismatch / BadOutOfRange); read-only nodes answer BadNotWritable.

Hardened posture:

- endpoints Basic256Sha256, Aes128_Sha256_RsaOaep and Aes256_Sha256_RsaPss, each Sign and
  SignAndEncrypt; server certificate RSA 2048, SHA-256, ApplicationUri in its SubjectAltName.
  OpenSecureChannel for any other policy gets an Error message BadSecurityPolicyRejected
  (SecurityPolicy None channels stay open for GetEndpoints only: CreateSession without a client
  certificate gets BadSecurityChecksFailed, ActivateSession on such a channel
  BadSecurityPolicyRejected);
- user tokens username (config accounts) and X.509 (a trusted user certificate acts as an
  operator, an untrusted one gets BadUserAccessDenied); anonymous gets BadIdentityTokenRejected;
- wrong password, unknown user and locked account all give BadUserAccessDenied; the lockout
  follows ``lockout_threshold``/``lockout_duration_s``;
- client application certificates checked at CreateSession: BadCertificateTimeInvalid (expired
  or not yet valid), BadCertificateUriInvalid (SubjectAltName lacks the announced
  ApplicationUri), BadCertificatePolicyCheckFailed (RSA under 2048 bits),
  BadCertificateUseNotAllowed (a CA certificate), BadCertificateUntrusted (neither in the
  trust list nor issued by its CA); ActivateSession on a channel secured with another
  certificate than CreateSession presented gets BadCertificateInvalid;
- readonly accounts writing a scratch node or the set point get BadUserAccessDenied (and read
  UserAccessLevel = CurrentRead only);
- more than ``session_limit`` sessions: CreateSession answers BadTooManySessions (the sessions
  already open keep working);
- sessions idle for ``idle_timeout_s`` are closed: the server revises every requested session
  timeout to at most that value (and at least min(it, 1 s)); a request on the closed session
  gets BadSessionNotActivated (asyncua's code for it). A client that polls is never idle:
  asyncua's Client reads the server state every ``watchdog_intervall`` (default 1 s).
- connection start-up: at most ``min(32, connection_limit)`` connections may be open at once
  without a secure channel (extra connections are closed at once), and a connection that has
  not sent a complete Hello and opened its secure channel within ``--hello-timeout-s``
  (default 2 s, counted from the connect; trickling bytes of an unfinished Hello does not
  extend it) is closed. A connection with a secure channel but no activated session is closed
  after ``idle_timeout_s`` (at least 1 s);
- auditing: ``Server.Auditing`` (i=2994) reads True, and every ActivateSession, refused or
  accepted, is reported as an AuditActivateSessionEventType (i=2075) event on the Server object
  (i=2253) to every subscriber whose filter lets it through (``OfType`` AuditEventType matches
  it: subtypes count, as OPC UA Part 4 says). Fields: ``Status`` (False when refused),
  ``StatusCodeId`` (the refusal, e.g. BadUserAccessDenied), ``ClientUserId`` (the user name the
  token claimed; ``x509:<CN>`` for a user certificate, ``anonymous``), ``Message``
  (``ActivateSession refused for 'locktest': BadUserAccessDenied``), ``SourceName``
  (``Session/ActivateSession``), ``SourceNode`` and ``SessionId`` (the session), ``ServerId``
  (the server's ApplicationUri), ``ClientApplicationUri``, ``UserIdentityToken`` (without its
  password), ``Time``, ``ActionTimeStamp``, ``Severity`` (500 refused, 100 accepted). Refusals
  asyncua makes before the session's ActivateSession runs (a bad client signature, an unknown
  session) are not reported.

``--auditing off`` (not a weakness: a device that does not offer auditing at all, for the
not-applicable path of audit checks): ``Server.Auditing`` reads False and no audit event is
generated. ``--auditing on`` is the default.

Weaknesses: ``opcua.policy_none`` (adds a None/None endpoint whose username token policy is
None: the password travels in clear), ``opcua.deprecated_policies`` (adds Basic128Rsa15 and
Basic256, Sign and SignAndEncrypt), ``opcua.weak_server_cert`` (RSA 1024, SHA-1 signed),
``opcua.anonymous`` (anonymous token accepted, read-only), ``opcua.accepts_untrusted_certs``
(no client certificate check at all), ``opcua.no_authz`` (readonly accounts and anonymous may
write scratch nodes), ``opcua.no_session_limit``, ``opcua.no_session_timeout`` (every session
is granted 24 h), ``opcua.no_lockout``, ``opcua.user_enumeration`` (an unknown user gets
BadIdentityTokenInvalid instead of BadUserAccessDenied), ``opcua.no_audit`` (``Server.Auditing``
still reads True, but no audit event is generated, for a refused login or any other),
``opcua.no_hello_timeout`` (no Hello timeout, and the activation timeout starts only once
the Hello is complete: a connection that never finishes its Hello is kept for as long as the
client holds it, so a few of them fill the start-up cap and every fresh client is closed at
once: slowloris), ``load.fragile`` (every CreateSession, Read, Write and Browse counts against
the fragile threshold).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import math
import socket
import sys
import threading

from simulators import common
from simulators.opcua_sim import (
    APPLICATION_URI,
    CLIENT_APPLICATION_URI,
    HELLO_TIMEOUT_S,
    NAME,
    WEAKNESSES,
)
from simulators.opcua_sim import certs as certs_mod


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="log asyncua's messages to stderr (quiet by default)")
    parser.add_argument("--aspace-cache", metavar="DIR",
                        help="folder for the cached standard address space (default "
                             "$XDG_CACHE_HOME/harness, or ~/.cache/harness); 'none' to build "
                             "it in memory at every start")
    parser.add_argument("--auditing", choices=("on", "off"), default="on",
                        help="'off': Server.Auditing reads False and no audit event is "
                             "generated (a device without auditing; not a weakness)")
    parser.add_argument("--hello-timeout-s", type=float, default=HELLO_TIMEOUT_S,
                        help="seconds a connection has to send its Hello and open its secure "
                             "channel (hardened)")


class _StopSignal:
    """SIGTERM/SIGINT may arrive before the event loop runs; remember it and wake the loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None

    def request(self) -> None:
        """Called (from the stop-signal thread) on the first SIGTERM or SIGINT."""
        with self._lock:
            self._requested = True
            if self._loop is not None and self._event is not None:
                self._loop.call_soon_threadsafe(self._event.set)

    def attach(self) -> asyncio.Event:
        """Bind to the running loop; the returned event is set on a stop request."""
        event = asyncio.Event()
        with self._lock:
            self._loop, self._event = asyncio.get_running_loop(), event
            if self._requested:
                event.set()
        return event


def _check_port_free(host: str, port: int) -> None:
    """Fail fast (before the slow asyncua start) when a fixed port is already taken."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        try:
            sock.bind((host, port))
        except OSError as exc:
            common.fail(NAME, f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM; return the exit status."""
    args = common.parse_args(NAME, WEAKNESSES, argv, add_arguments=_add_arguments)
    hello = float(args.extra["hello_timeout_s"])
    if not (hello > 0 and math.isfinite(hello)):
        common.fail(NAME, f"--hello-timeout-s must be a finite number > 0, got {hello:g}")
    stop = _StopSignal()
    common.install_stop_handler(stop.request)
    _check_port_free(args.host, args.port)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        level=logging.INFO if args.extra.get("verbose") else logging.CRITICAL)
    # Certificates are made in a thread (RSA key generation releases the GIL) while asyncua is
    # imported and its address space is built.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="opcua-certs")
    certs_future = pool.submit(certs_mod.generate, args.state_dir, APPLICATION_URI,
                               CLIENT_APPLICATION_URI,
                               weak_server_cert=args.has("opcua.weak_server_cert"))
    pool.shutdown(wait=False)
    # Imported here, not at the top, so that it overlaps with the certificate thread.
    from simulators.opcua_sim import server as server_mod

    sim = server_mod.OpcuaPlc(args)

    async def run() -> int:
        return await sim.serve(certs_future, stop.attach())

    try:
        return asyncio.run(run())
    except server_mod.StartupError as exc:
        common.fail(NAME, str(exc))
    return 2  # not reached: fail() exits


if __name__ == "__main__":
    raise SystemExit(main())
