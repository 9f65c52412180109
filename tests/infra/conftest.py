"""Helpers for the CDK assertion tests: one synth per module, nag report included."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `stacks` lives at the repo root
    sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

from aws_cdk import App  # noqa: E402
from aws_cdk.assertions import Template  # noqa: E402

from stacks.application import build_app  # noqa: E402
from stacks.config import load_cdk_json_context  # noqa: E402
from stacks.shardq_stack import ShardqStack  # noqa: E402
from tests.infra.rulepacks import RulePackRun, run_rule_packs  # noqa: E402


@dataclass
class Synth:
    """One synthesized app: the stack, its template, and cdk-nag's validation report."""

    app: App
    stack: ShardqStack
    template: Template
    outdir: Path
    report: dict[str, Any]

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        """Logical id → resource of the synthesized template."""
        return self.template.to_json()["Resources"]

    def of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        """Every resource of one CloudFormation type."""
        return {k: r for k, r in self.resources.items() if r["Type"] == cfn_type}


def synthesize(outdir: Path, **overrides: Any) -> Synth:
    """Synthesize the app with cdk.json's context plus ``overrides`` (cdk-nag runs and must pass)."""
    context = {**load_cdk_json_context(), **overrides}
    app, stack = build_app(context, outdir=str(outdir))
    app.synth()  # runs the validation plugins; raises on any unacknowledged cdk-nag error
    template = Template.from_stack(stack)
    report = json.loads((outdir / "validation-report.json").read_text())
    return Synth(app=app, stack=stack, template=template, outdir=outdir, report=report)


@pytest.fixture(scope="session")
def default_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The stack with cdk.json's defaults, synthesized once for every module that reads it (they
    run on one xdist worker: tests/conftest.py's groups)."""
    return synthesize(tmp_path_factory.mktemp("cdk-default"))


# The two other variants the rule packs check, each owned by its module (its context is defined
# there). Each is synthesized once per session, like the default, so cfn-lint and checkov each run
# once over all three templates (``rule_packs``).
@pytest.fixture(scope="session")
def gpu_fleet_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The stack with a GPU fleet (tests/infra/test_fleet.py's ``GPU_FLEET``)."""
    from tests.infra.test_fleet import GPU_FLEET

    return synthesize(tmp_path_factory.mktemp("cdk-fleet-gpu"), **GPU_FLEET)


@pytest.fixture(scope="session")
def variants_synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The stack with the customer key and other opt-ins (tests/infra/test_variants.py's ``VARIANTS``)."""
    from tests.infra.test_variants import VARIANTS

    return synthesize(tmp_path_factory.mktemp("cdk-variants"), **VARIANTS)


@pytest.fixture(scope="session")
def rule_packs(default_synth: Synth, gpu_fleet_synth: Synth, variants_synth: Synth) -> RulePackRun:
    """cfn-lint's and checkov's findings over the three variants (tests/infra/rulepacks.py)."""
    return run_rule_packs(
        {"default": default_synth.outdir, "gpu": gpu_fleet_synth.outdir, "kms": variants_synth.outdir}
    )
