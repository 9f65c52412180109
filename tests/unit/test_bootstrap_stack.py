"""The local deploy's bootstrap stack: the CLI's own template, created through CloudFormation once
per environment with the parameters ``cdk bootstrap`` passes (what ``cdk deploy`` then reads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardq.local import deploy
from shardq.local.cloud import LocalCloud

pytestmark = pytest.mark.local_cloud


def test_bootstrap_creates_what_cdk_deploy_reads_and_leaves_a_bootstrapped_environment(
    cloud: LocalCloud,
) -> None:
    # GIVEN a local cloud; WHEN it is bootstrapped
    env = deploy.cdk_env(cloud)
    deploy.bootstrap(cloud, env)
    # THEN the toolkit stack is complete with the CLI's parameters for a new environment
    cfn = cloud.client("cloudformation")
    [stack] = cfn.describe_stacks(StackName=deploy.BOOTSTRAP_STACK)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE"
    parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert {k: parameters[k] for k in deploy.BOOTSTRAP_PARAMETERS} == deploy.BOOTSTRAP_PARAMETERS
    assert parameters["Qualifier"] == "hnb659fds"
    # AND what `cdk deploy` looks up exists: the asset bucket and the version, in the outputs and in SSM
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    cloud.client("s3").head_bucket(Bucket=outputs["BucketName"])
    version = cloud.client("ssm").get_parameter(Name="/cdk-bootstrap/hnb659fds/version")["Parameter"]["Value"]
    assert version == outputs["BootstrapVersion"] and int(version) >= 6
    # WHEN it is bootstrapped again, THEN the stack is left as it was (a second create would fail)
    deploy.bootstrap(cloud, env)
    [again] = cfn.describe_stacks(StackName=deploy.BOOTSTRAP_STACK)["Stacks"]
    assert again["CreationTime"] == stack["CreationTime"] and again["StackStatus"] == "CREATE_COMPLETE"


def test_the_template_is_kept_by_cli_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a template kept for this CLI version
    monkeypatch.setenv(deploy.CACHE_ENV, str(tmp_path))
    calls: list[list[str]] = []

    def cli(args: list[str], *rest: object) -> str:
        calls.append(args)
        return "Resources: {}\n"

    monkeypatch.setattr(deploy, "_cdk", cli)
    # WHEN it is read twice, THEN the CLI ran once, for the template
    assert deploy.bootstrap_template({}, deploy.ROOT, 60) == "Resources: {}\n"
    assert deploy.bootstrap_template({}, deploy.ROOT, 60) == "Resources: {}\n"
    assert calls == [["bootstrap", "--show-template"]]
    # (beside it only its build lock, ``shardq.local.once``)
    kept = sorted(p.name for p in tmp_path.iterdir())
    name = f"shardq-bootstrap-{deploy.cli_version()}.yaml"
    assert kept == [name, f"{name}.lock"]
