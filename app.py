#!/usr/bin/env python3
"""shardq CDK app: reads the context once, builds the stack, runs cdk-nag (see docs/DEPLOYING.md).

The stack is environment-agnostic (no account/region lookups at synth): the region is resolved at
deploy time, so the same template deploys to any account, region, or the local cloud.
"""

from stacks.application import build_app

app, _ = build_app()
app.synth()
