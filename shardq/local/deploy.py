"""Deploy the real CDK app into the local cloud with the pinned CDK CLI.

``cdk bootstrap`` and ``cdk deploy`` run exactly as against AWS; only the endpoint
(``AWS_ENDPOINT_URL``) and dummy credentials differ. The template is the one AWS gets:
the Lambda runtime and the public Powertools layer ARN are recorded by the local cloud
and the handlers run on this machine's interpreter with Powertools from the venv, so no
context switch is needed (``-c powertools_layer=false`` exists should one be).

The app is synthesized once per content: the cloud assembly goes to a folder named by a hash of
everything the template and the Lambda asset are made of (the app's sources, ``cdk.json``, the
pinned CLI and library versions, the context), and ``cdk bootstrap`` and ``cdk deploy`` read it
(``--app <assembly>``) instead of running the app again each. A second deploy of unchanged code
— the next test module, benchmark or ``make run`` — skips the synth (≈ 10 s of the ≈ 23 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from shardq.local.cloud import REGION, LocalCloud

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "000000000000"
# What the synthesized assembly is made of, relative to the project root (see ``assembly_key``).
SOURCES = ("app.py", "cdk.json", "package.json", "package-lock.json", "stacks", "lambdas", "shardq")
# Where assemblies are kept, by content; SHARDQ_ASSEMBLY_CACHE overrides the temp folder.
CACHE_ENV = "SHARDQ_ASSEMBLY_CACHE"


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


def assembly_key(context: list[str], root: Path = ROOT) -> str:
    """A hash of every input of the synth: the sources (``.py`` and ``.json`` under ``SOURCES``),
    the CDK library versions and the context arguments."""
    digest = hashlib.sha256(json.dumps(context).encode())
    for dist in ("aws-cdk-lib", "cdk-nag", "constructs"):
        try:
            digest.update(f"{dist}={metadata.version(dist)}".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{dist}=none".encode())
    for name in SOURCES:
        base = root / name
        files = [base] if base.is_file() else sorted(base.rglob("*")) if base.is_dir() else []
        for path in files:
            if path.is_file() and path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def context_args(stack_name: str = "shardq", context: dict[str, Any] | None = None) -> list[str]:
    """The CLI's ``--context`` arguments for a deploy (part of the assembly's cache key)."""
    return [f"--context=stack_name={stack_name}"] + [f"--context={k}={v}" for k, v in (context or {}).items()]


def synthesize(env: dict[str, str], context: list[str], root: Path, timeout: float) -> Path:
    """The cloud assembly for this content and context: synthesized now, or kept from before."""
    cache = Path(os.environ.get(CACHE_ENV) or tempfile.gettempdir())
    out = cache / f"shardq-assembly-{assembly_key(context, root)}"
    if (out / "manifest.json").is_file():
        return out
    staging = cache / f"{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    _cdk(["synth", "--quiet", "--output", str(staging), *context], env, root, timeout)
    try:
        staging.rename(out)  # atomic: a concurrent synth of the same content wins or loses whole
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def deploy_stack(
    cloud: LocalCloud,
    *,
    stack_name: str = "shardq",
    context: dict[str, Any] | None = None,
    root: Path = ROOT,
    timeout: float = 600.0,
) -> dict[str, str]:
    """Bootstrap the local account and deploy the stack; returns its outputs by key."""
    env = cdk_env(cloud, root)
    ctx = context_args(stack_name, context)
    started = time.monotonic()
    app = synthesize(env, ctx, root, timeout)
    _cdk(["bootstrap", f"aws://{ACCOUNT}/{REGION}", "--app", str(app)], env, root, timeout)
    _cdk(
        ["deploy", "--all", "--require-approval", "never", "--app", str(app), "--progress", "events"],
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
