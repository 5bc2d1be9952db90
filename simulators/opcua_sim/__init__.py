"""The OPC UA PLC simulator's parts: names and URIs (here), certificates and the trust list
(:mod:`.certs`, cryptography only) and the asyncua server (:mod:`.server`).

``python -m simulators.opcua`` is the entry point; this package keeps asyncua out of the import
path until the certificates are being generated in a background thread, so that the two slow
steps of start-up overlap.
"""

from __future__ import annotations

#: Simulator name in the ready line and on the command line.
NAME = "opcua"

#: Every weakness this simulator can switch on (``--posture weak`` switches on all of them).
WEAKNESSES = (
    "opcua.policy_none",
    "opcua.deprecated_policies",
    "opcua.weak_server_cert",
    "opcua.anonymous",
    "opcua.accepts_untrusted_certs",
    "opcua.no_authz",
    "opcua.no_session_limit",
    "opcua.no_session_timeout",
    "opcua.no_lockout",
    "opcua.user_enumeration",
    "opcua.no_audit",
    "opcua.no_hello_timeout",
    "load.fragile",
)

#: ApplicationUri of the simulated server (in its certificate's SubjectAltName).
APPLICATION_URI = "urn:harness:simulator:opcua"
#: ApplicationUri the generated client certificate carries; a client must announce it.
CLIENT_APPLICATION_URI = "urn:harness:client"
#: Namespace of the process-image nodes.
NAMESPACE_URI = "urn:harness:simulator:plc"
#: Seconds a connection has, from its connect, to send a complete Hello and open its secure
#: channel (``--hello-timeout-s``); both take milliseconds on a LAN.
HELLO_TIMEOUT_S = 2.0
#: Connections allowed at once that have not opened their secure channel yet (at most; the
#: config's ``connection_limit`` lowers it).
MAX_STARTUPS = 32
#: Path part of the endpoint URL.
ENDPOINT_PATH = "/harness/plc"
