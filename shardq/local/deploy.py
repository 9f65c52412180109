"""Deploy the real CDK app into the local cloud with the pinned CDK CLI.

``cdk bootstrap`` and ``cdk deploy`` run exactly as against AWS; only the endpoint
(``AWS_ENDPOINT_URL``) and dummy credentials differ. The template is the one AWS gets:
the Lambda runtime and the public Powertools layer ARN are recorded by the local cloud
and the handlers run on this machine's interpreter with Powertools from the venv, so no
context switch is needed (``-c powertools_layer=false`` exists should one be).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from shardq.local.cloud import REGION, LocalCloud

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "000000000000"


class DeployError(RuntimeError):
    """``cdk bootstrap`` or ``cdk deploy`` failed; the message carries the CLI's output tail."""


def cdk_env(cloud: LocalCloud, root: Path = ROOT) -> dict[str, str]:
    """Environment for the CDK CLI aimed at the local cloud."""
    venv_bin = root / ".venv" / "bin"
    return {
        **os.environ,
        **cloud.env(),
        "CDK_DEFAULT_ACCOUNT": ACCOUNT,
        "CDK_DEFAULT_REGION": REGION,
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "1",
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _cdk(args: list[str], env: dict[str, str], root: Path, timeout: float) -> None:
    proc = subprocess.run(
        ["npx", "--no-install", "cdk", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-4000:]
        raise DeployError(f"cdk {args[0]} failed (exit {proc.returncode}):\n{tail}")


def deploy_stack(
    cloud: LocalCloud,
    *,
    stack_name: str = "shardq",
    output_dir: Path | None = None,
    context: dict[str, Any] | None = None,
    root: Path = ROOT,
    timeout: float = 600.0,
) -> dict[str, str]:
    """Bootstrap the local account and deploy the stack; returns its outputs by key."""
    out = output_dir or (cloud.state_dir or root) / "cdk.out"
    env = cdk_env(cloud, root)
    ctx = [f"--context=stack_name={stack_name}"]
    for key, value in (context or {}).items():
        ctx.append(f"--context={key}={value}")
    started = time.monotonic()
    _cdk(["bootstrap", f"aws://{ACCOUNT}/{REGION}", "--output", str(out), *ctx], env, root, timeout)
    _cdk(
        [
            "deploy",
            "--all",
            "--require-approval",
            "never",
            "--output",
            str(out),
            "--progress",
            "events",
            *ctx,
        ],
        env,
        root,
        timeout,
    )
    outputs = stack_outputs(cloud, stack_name)
    outputs["_deploy_seconds"] = f"{time.monotonic() - started:.1f}"
    return outputs


def stack_outputs(cloud: LocalCloud, stack_name: str = "shardq") -> dict[str, str]:
    """The deployed stack's outputs by key."""
    stack = cloud.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"][0]
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
