"""Build the shardq CDK app: context → ShardqConfig → ShardqStack, with cdk-nag as validation plugins."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks, ServerlessChecks

from stacks.components.lambda_asset import stage_lambda_source
from stacks.config import REPO_ROOT, ShardqConfig
from stacks.shardq_stack import ShardqStack

LAMBDA_STAGING_DIR = ".shardq-lambda-src"


def build_app(
    context: Mapping[str, Any] | None = None,
    *,
    outdir: str | None = None,
    repo_root: Path = REPO_ROOT,
    env: Environment | None = None,
) -> tuple[App, ShardqStack]:
    """Create the app and the shardq stack; cdk-nag AwsSolutions + Serverless run at synth.

    Parameters
    ----------
    context
        Context to use instead of what the CDK CLI passes (tests pass cdk.json's context plus
        overrides). ``None`` reads the CLI's context (cdk.json, cdk.context.json, ``-c``).
    outdir
        Cloud assembly directory; ``None`` lets the CDK choose (the CLI's ``cdk.out``).
    repo_root
        Where ``lambdas/`` and ``shardq/`` live, and the worker ``Dockerfile`` (the fleet's image).
    env
        Account/region; ``None`` keeps the stack environment-agnostic.

    Raises
    ------
    stacks.config.ConfigError
        On an unknown context key or a bad value (all listed in one message).
    """
    app = App(context=dict(context) if context is not None else None, outdir=outdir)
    config = ShardqConfig.from_context(app.node.get_all_context())
    lambda_source = stage_lambda_source(repo_root, Path(app.outdir) / LAMBDA_STAGING_DIR)
    stack = ShardqStack(
        app,
        "Shardq",
        stack_name=config.stack_name,
        config=config,
        lambda_source=lambda_source,
        worker_image_dir=repo_root,
        env=env,
    )
    Validations.of(app).add_plugins(AwsSolutionsChecks(), ServerlessChecks())
    return app, stack
