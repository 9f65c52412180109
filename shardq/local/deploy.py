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

The bootstrap stack is the CLI's own template (``cdk bootstrap --show-template``, kept by CLI
version like the assembly) created with the parameters ``cdk bootstrap`` passes for a new
environment, through CloudFormation directly: the same stack, without a CLI run (≈ 3 s of CPU) per
deploy. An environment bootstrapped before is left as it is, as ``cdk bootstrap`` would leave it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from shardq.local import once
from shardq.local.cloud import REGION, LocalCloud

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "000000000000"
# What the synthesized assembly is made of, relative to the project root (see ``assembly_key``).
SOURCES = ("app.py", "cdk.json", "package.json", "package-lock.json", "stacks", "lambdas", "shardq")
# Where assemblies are kept, by content; SHARDQ_ASSEMBLY_CACHE overrides the temp folder.
CACHE_ENV = "SHARDQ_ASSEMBLY_CACHE"
BOOTSTRAP_STACK = "CDKToolkit"
# What ``cdk bootstrap`` passes for a new environment without options; the rest are the template's defaults.
BOOTSTRAP_PARAMETERS = {
    "FileAssetsBucketKmsKeyId": "AWS_MANAGED_KEY",
    "TrustedAccounts": "",
    "TrustedAccountsForLookup": "",
    "CloudFormationExecutionPolicies": "",
    "PublicAccessBlockConfiguration": "true",
}


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


def _cdk(args: list[str], env: dict[str, str], root: Path, timeout: float) -> str:
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
    return proc.stdout


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
    out = _cache_dir() / f"shardq-assembly-{assembly_key(context, root)}"
    if (out / "manifest.json").is_file():
        return out
    with once.building(out):  # one synth per content however many processes ask at once
        if (out / "manifest.json").is_file():
            return out
        return _keep(
            out, lambda path: _cdk(["synth", "--quiet", "--output", str(path), *context], env, root, timeout)
        )


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or tempfile.gettempdir())


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _keep(out: Path, write: Callable[[Path], object]) -> Path:
    """``out``, written by ``write`` at a staging path, then renamed: concurrent writers win or lose whole."""
    staging = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    _remove(staging)
    write(staging)
    try:
        staging.rename(out)
    except OSError:
        _remove(staging)
    return out


def cli_version(root: Path = ROOT) -> str:
    """The pinned CDK CLI's version (``node_modules/aws-cdk``)."""
    return str(json.loads((root / "node_modules" / "aws-cdk" / "package.json").read_text())["version"])


def bootstrap_template(env: dict[str, str], root: Path, timeout: float) -> str:
    """The pinned CLI's bootstrap template, kept by CLI version."""
    out = _cache_dir() / f"shardq-bootstrap-{cli_version(root)}.yaml"
    if not out.is_file():
        with once.building(out):
            if not out.is_file():
                _keep(
                    out,
                    lambda path: path.write_text(_cdk(["bootstrap", "--show-template"], env, root, timeout)),
                )
    return out.read_text()


def bootstrap(cloud: LocalCloud, env: dict[str, str], root: Path = ROOT, timeout: float = 600.0) -> None:
    """The environment's bootstrap stack, as ``cdk bootstrap aws://ACCOUNT/REGION`` creates it."""
    cfn = cloud.client("cloudformation")
    found = [
        s["StackStatus"] for s in cfn.list_stacks()["StackSummaries"] if s["StackName"] == BOOTSTRAP_STACK
    ]
    found = [status for status in found if status != "DELETE_COMPLETE"]
    if found and found[0] in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        return
    if found:
        raise DeployError(
            f"bootstrap stack {BOOTSTRAP_STACK} is {found[0]}: delete it, or deploy into a new local cloud"
        )
    cfn.create_stack(
        StackName=BOOTSTRAP_STACK,
        TemplateBody=bootstrap_template(env, root, timeout),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in BOOTSTRAP_PARAMETERS.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.monotonic() + timeout
    while True:
        stack = cfn.describe_stacks(StackName=BOOTSTRAP_STACK)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise DeployError(
            f"bootstrap stack {BOOTSTRAP_STACK}: {stack['StackStatus']} {stack.get('StackStatusReason', '')}"
        )


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
    bootstrap(cloud, env, root, timeout)
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
