"""JUnit XML (junit-xml): one testsuite per FR, one testcase per check.

The reference schema (Jenkins xUnit, ``junit-10.xsd``) allows ``properties`` only on a
``testsuite``: device, firmware, claimed and achieved SL go there; each testcase carries the
requirement ID in its name and its evidence paths in ``system-out``.
"""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree

from junit_xml import TestCase, TestSuite, to_xml_report_string

from harness.report.matrix import FRS
from harness.verdict import Verdict


def render_junit(results: dict[str, Any]) -> str:
    """Render a results.json document as JUnit XML."""
    device = results["profile"]["device"]
    matrix = {row["fr"]: row for row in results["matrix"]}
    suites = []
    for fr in FRS:
        checks = [c for c in results["checks"] if c["fr"] == fr]
        row = matrix.get(fr, {"claimed": 0, "achieved": None})
        cases = []
        for c in checks:
            module = c["nodeid"].split("::", 1)[0].removesuffix(".py").replace("/", ".")
            case = TestCase(
                name=f"{c['requirement']}: {c['title']}",
                classname=f"{fr}.{module.rsplit('.', 1)[-1]}",
                elapsed_sec=float(c.get("duration_s") or 0.0),
                stdout="\n".join(
                    [
                        f"verdict: {c['verdict']}",
                        f"check: {c['nodeid']}",
                        f"protocol: {c['protocol']}",
                        f"requirement SL: {c['sl']}",
                        f"started: {c.get('started')}",
                    ]
                    + [f"evidence: {p}" for p in c.get("evidence", [])]
                ),
            )
            verdict = Verdict(c["verdict"])
            if verdict is Verdict.FAIL:
                case.add_failure_info(
                    message=c["reason"][:2000], output=c["reason"], failure_type="NonConformance"
                )
            elif verdict is Verdict.ERROR:
                case.add_error_info(
                    message=c["reason"][:2000], output=c["reason"], error_type="CouldNotDecide"
                )
            elif verdict in (Verdict.NOT_APPLICABLE, Verdict.NOT_RUN):
                case.add_skipped_info(message=f"{verdict}: {c['reason']}")
            cases.append(case)
        props = {
            "device.vendor": device["vendor"],
            "device.model": device["model"],
            "device.firmware": device["firmware"],
            "device.component_type": device["component_type"],
            "sl.claimed": str(row["claimed"]),
            "sl.achieved": "untested" if row["achieved"] is None else str(row["achieved"]),
            "profile.sha256": results["profile"]["sha256"],
            "run.complete": str(results["complete"]).lower(),
        }
        suites.append(
            TestSuite(
                f"{fr} {device['model']}",
                cases,
                properties=props,
                timestamp=results["started"],
                package="harness",
            )
        )
    return _conform(to_xml_report_string(suites, prettyprint=False, encoding="utf-8"))


def _conform(xml: str) -> str:
    """Drop what the reference schema does not allow (junit-xml's ``disabled`` counts)."""
    root = ElementTree.fromstring(xml)  # noqa: S314 - our own just-rendered document
    for element in root.iter():
        element.attrib.pop("disabled", None)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
