"""`cdk synth` through the pinned CLI (npx, offline): the path `make synth`, CI and every local
deploy take.

The synth goes through ``shardq.local.deploy.synthesize``, the one the local deploys use: the
cloud assembly is kept by content (sources, pinned CLI and library versions, context), so the
suite runs the CLI once for all its deploys and this test, whichever comes first.
"""

from __future__ import annotations

import json
import os
import shutil

from shardq.local.deploy import assembly_key, context_args, synthesize
from stacks.config import REPO_ROOT


def test_cdk_synth_with_the_pinned_cli_succeeds() -> None:
    # `make test` installs the pinned CLI first; a missing one is a broken install, not a skip.
    assert shutil.which("npx"), "npx not found: install Node.js 20+"
    assert (REPO_ROOT / "node_modules" / ".bin" / "cdk").exists(), "run `make install` (npm ci)"
    env = {
        **os.environ,
        "PATH": f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "1",
    }
    context = context_args()
    out = synthesize(env, context, REPO_ROOT, timeout=300)
    # THEN the assembly of exactly this content holds the stack's template, its Lambda asset and
    # cdk-nag's report with both packs and no unacknowledged finding (the synth fails otherwise)
    assert out.name == f"shardq-assembly-{assembly_key(context, REPO_ROOT)}"
    manifest = json.loads((out / "manifest.json").read_text())
    stacks = [a for a in manifest["artifacts"].values() if a["type"] == "aws:cloudformation:stack"]
    assert len(stacks) == 1
    template = json.loads((out / stacks[0]["properties"]["templateFile"]).read_text())
    assert {"AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::Lambda::Function"} <= {
        r["Type"] for r in template["Resources"].values()
    }
    assert any(p.name.startswith("asset.") and p.is_dir() for p in out.iterdir())
    reports = {
        r["pluginName"]: r for r in json.loads((out / "validation-report.json").read_text())["pluginReports"]
    }
    assert {name: reports[name]["conclusion"] for name in ("AwsSolutions", "Serverless")} == {
        "AwsSolutions": "success",
        "Serverless": "success",
    }
