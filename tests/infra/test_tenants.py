"""Tenants in the stack (issue #25): the scheduling configuration reaches every function, and each
tenant with principals gets a splitter alias only they may invoke (cdk-nag runs and passes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stacks.config import ConfigError, ShardqConfig
from tests.infra.conftest import Synth, synthesize

VISION_CI = "arn:aws:iam::123456789012:role/vision-ci"
SCHEDULING = {
    "window_per_lane": 3,
    "tenants": {
        "default": {},
        "vision": {"weight": 2, "principals": [VISION_CI], "quotas": {"running_jobs": 5}},
        "speech": {"weight": 1},
    },
}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(Path(tmp_path_factory.mktemp("cdk-tenants")), scheduling=SCHEDULING)


def _environment(fn: dict[str, Any]) -> dict[str, Any]:
    return dict(fn["Properties"].get("Environment", {}).get("Variables", {}))


def test_every_function_reads_the_scheduling_without_principals(synth: Synth) -> None:
    functions = [
        f for f in synth.of_type("AWS::Lambda::Function").values() if "SHARDQ_JOB_TABLE" in _environment(f)
    ]
    assert functions
    for fn in functions:
        config = json.loads(_environment(fn)["SHARDQ_SCHEDULING"])
        assert config["window_per_lane"] == 3
        assert config["tenants"]["vision"]["weight"] == 2 and config["tenants"]["vision"]["principals"] == []
        assert config["tenants"]["vision"]["quotas"] == {"running_jobs": 5}


def test_a_tenant_with_principals_gets_an_alias_only_they_invoke(synth: Synth) -> None:
    (alias,) = synth.of_type("AWS::Lambda::Alias").values()
    assert alias["Properties"]["Name"] == "tenant-vision"
    permissions = [p["Properties"] for p in synth.of_type("AWS::Lambda::Permission").values()]
    mine = [p for p in permissions if p.get("Principal") == VISION_CI]
    assert len(mine) == 1 and mine[0]["Action"] == "lambda:InvokeFunction"
    assert mine[0]["FunctionName"] == {"Ref": next(iter(synth.of_type("AWS::Lambda::Alias")))}


def test_the_output_lets_the_cli_enforce_the_same_rules(synth: Synth) -> None:
    outputs = synth.template.to_json()["Outputs"]
    assert json.loads(outputs["Scheduling"]["Value"])["tenants"]["speech"]["weight"] == 1


def test_a_bad_scheduling_fails_synth_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"scheduling: tenants\.vision\.weight must be a number above 0"):
        ShardqConfig.from_context({"scheduling": {"tenants": {"default": {}, "vision": {"weight": 0}}}})
