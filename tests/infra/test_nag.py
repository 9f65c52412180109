"""cdk-nag (AwsSolutions + Serverless) runs at synth: no unacknowledged finding, no unused acknowledgment."""

from __future__ import annotations

import pytest

from tests.infra.conftest import Synth


@pytest.fixture(scope="module")
def synth(default_synth: Synth) -> Synth:
    return default_synth


def test_both_packs_ran_and_passed(synth: Synth) -> None:
    reports = {r["pluginName"]: r for r in synth.report["pluginReports"]}
    assert {"AwsSolutions", "Serverless"} <= set(reports)
    for name in ("AwsSolutions", "Serverless"):
        assert reports[name]["conclusion"] == "success", name


def test_no_unacknowledged_findings_of_any_severity(synth: Synth) -> None:
    open_findings = [
        (report["pluginName"], violation["ruleName"], construct["constructPath"])
        for report in synth.report["pluginReports"]
        for violation in report["violations"]
        for construct in violation["violatingConstructs"]
    ]
    assert open_findings == []


def test_every_acknowledgment_is_used_where_it_is_declared(synth: Synth) -> None:
    """A bare rule id (no pack prefix, or no [detail] for rules that report details) matches nothing
    and would silently stay here: each acknowledgment must suppress at least one finding."""
    used = {
        (suppressed["acknowledgedId"], suppressed["acknowledgedAt"])
        for report in synth.report["pluginReports"]
        for suppressed in report.get("suppressedViolations", [])
    }
    declared = {(a.id, a.scope.node.path) for a in synth.stack.acknowledgments}
    assert declared, "the stack declares its acknowledgments"
    assert declared - used == set()
    assert used - declared == set()


def test_every_acknowledgment_names_the_pack_and_gives_a_reason(synth: Synth) -> None:
    for ack in synth.stack.acknowledgments:
        pack, _, rule = ack.id.partition("::")
        assert pack in ("AwsSolutions", "Serverless"), ack.id
        assert rule.startswith(f"{pack}-"), ack.id
        assert len(ack.reason) >= 40, ack.id


def test_acknowledgments_are_data_with_a_known_scope_each() -> None:
    """stacks/nag.py is a table: each row names a scope selector the module defines, and no row repeats."""
    from stacks.nag import RULES, SCOPES

    assert {rule.where for rule in RULES} <= set(SCOPES)
    assert len({(rule.finding, rule.where) for rule in RULES}) == len(RULES)
    assert set(SCOPES) <= {rule.where for rule in RULES}, "a selector no rule uses"
