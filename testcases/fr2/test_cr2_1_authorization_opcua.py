"""CR 2.1 over OPC UA: the read-only account cannot write; the read-write account can."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.errors import TargetError

if TYPE_CHECKING:
    from harness.evidence import Evidence
    from harness.fixtures.opcua import OpcUa, OpcUaScratch

pytestmark = pytest.mark.requirement("CR 2.1")


@pytest.mark.protocol("opcua")
@pytest.mark.weakness("opcua.no_authz")
@pytest.mark.disruptive(traffic="two writes to the profile's first OPC UA scratch node (one as "
                                "the read-only account, one as the read-write account) and one "
                                "write restoring its value")
def test_opcua_readonly_account_cannot_write(opcua: OpcUa, opcua_scratch: OpcUaScratch,
                                             evidence: Evidence) -> None:
    """A session of the read-only account cannot change a scratch node; a read-write one can.

    Requirement: CR 2.1 (authorization enforcement): the component enforces the privileges
    assigned to each user. The profile's ``readonly`` account must not write; its
    ``operator`` (else ``admin``) account may, which proves the node is writable at all, so a
    refusal of the read-only write is a decision about the user and not about the node.

    Procedure: the node is the profile's first OPC UA scratch node (``points.scratch``); the
    ``opcua_scratch`` fixture reads it first and restores and verifies it afterwards. As the
    read-only account: read the value, write a different value of the same type, read it back.
    Then as the read-write account: write that value and read it back (it must have changed,
    else the check cannot judge: ERROR). Every Write's status name is in the evidence.

    Pass: the read-only write answered a Bad status (e.g. ``BadUserAccessDenied``) and the value
    stayed. Fail: it answered Good, or the value changed.
    """
    from harness.protocols.opcua import different_value

    node = opcua_scratch.node
    with opcua.connect("readonly", label="read-only session") as ro:
        before = ro.read_value(node)
        target = different_value(before.value, before.variant)
        ro_status = ro.write(node, target, before.variant or opcua_scratch.variant)
        after = ro.read_value(node)
    with opcua.connect(opcua_scratch.writer, label="read-write session") as rw:
        rw_target = different_value(after.value, after.variant)
        rw_status = rw.write(node, rw_target, after.variant or opcua_scratch.variant)
        rw_after = rw.read_value(node)
    writable = rw_status.startswith("Good") and rw_after.value == rw_target
    refused = not ro_status.startswith("Good")
    unchanged = after.value == before.value
    evidence.note("judgement", node=node, readonly={"write": target, "status": ro_status,
                                                    "before": before.value,
                                                    "after": after.value},
                  readwrite={"role": opcua_scratch.writer, "write": rw_target,
                             "status": rw_status, "after": rw_after.value},
                  ok=refused and unchanged)
    if not writable:
        raise TargetError(f"the {opcua_scratch.writer} account could not write {node} "
                          f"({rw_status}, value now {rw_after.value!r}): the read-only refusal "
                          "proves nothing")
    assert refused and unchanged, (
        f"the read-only account wrote {node}: Write {target!r} answered {ro_status}, value "
        f"{before.value!r} -> {after.value!r}")
