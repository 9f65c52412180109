"""The optional worker fleet (stacks/components/fleet/): GPU on EC2 and Fargate, each synthesized
once per module; off by default; its context keys validated."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from aws_cdk.assertions import Match

from shardq.core.scaling import evaluate, next_desired
from stacks.components.fleet import STOP_TIMEOUT_SECONDS
from stacks.components.fleet.scaling import closure, scaling_rule
from stacks.config import BUNDLED_IMAGE_ALLOW, REPO_ROOT, ConfigError, ShardqConfig
from tests.infra.conftest import Synth, synthesize
from tests.infra.rulepacks import RulePackRun, assert_cfn_lint_passes, assert_checkov_passes

ECR_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/shardq-worker:1.4"
FLEET_TYPES = (
    "AWS::ECS::Cluster",
    "AWS::ECS::Service",
    "AWS::ECS::TaskDefinition",
    "AWS::ECS::CapacityProvider",
    "AWS::AutoScaling::AutoScalingGroup",
    "AWS::EC2::VPC",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
)


# The GPU fleet these tests read (synthesized once per session: conftest's ``gpu_fleet_synth``,
# which the rule packs check too).
GPU_FLEET: dict[str, Any] = {
    "fleet": "gpu",
    "fleet_instance_types": ["g6.xlarge", "g5.xlarge"],
    "fleet_on_demand_base_capacity": 1,
    "fleet_on_demand_percentage": 25,
    "fleet_max_workers": 12,
    "fleet_backlog_per_worker": 2,
    "fleet_scale_to_zero_after_minutes": 20,
    "fleet_root_volume_gib": 150,
    "log_retention_days": 14,
}


@pytest.fixture(scope="module")
def gpu(gpu_fleet_synth: Synth) -> Synth:
    return gpu_fleet_synth


@pytest.fixture(scope="module")
def fargate(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    return synthesize(
        tmp_path_factory.mktemp("cdk-fleet-fargate"),
        fleet="fargate",
        fleet_task_cpu=1024,
        fleet_task_memory_mib=4096,
        fleet_on_demand_percentage=50,
        fleet_image_uri=ECR_IMAGE,
        fleet_allow=["team_models.*", "examples.linear"],
        fleet_nat_gateways=1,
    )


def _one(synth: Synth, cfn_type: str) -> tuple[str, dict[str, Any]]:
    (item,) = synth.of_type(cfn_type).items()
    return item


def _one_matching(synth: Synth, cfn_type: str, fragment: str) -> tuple[str, dict[str, Any]]:
    (item,) = [(k, r) for k, r in synth.of_type(cfn_type).items() if fragment in k]
    return item


def _ref(synth: Synth, construct: Any) -> dict[str, str]:
    return {"Ref": synth.stack.resolve(synth.stack.get_logical_id(construct.node.default_child))}


def _statements(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return resource["Properties"]["PolicyDocument"]["Statement"]


# -- off by default ----------------------------------------------------------------------------------


def test_fleet_is_off_by_default(default_synth: Synth) -> None:
    assert ShardqConfig().fleet == "off"
    assert default_synth.stack.fleet is None
    present = {r["Type"] for r in default_synth.resources.values()}
    assert not present & set(FLEET_TYPES)
    assert not any(t.startswith(("AWS::ECS::", "AWS::EC2::")) for t in present)
    assert "FleetServiceName" not in default_synth.template.to_json()["Outputs"]


# -- GPU capacity ------------------------------------------------------------------------------------


def test_cluster_has_container_insights(gpu: Synth) -> None:
    _, cluster = _one(gpu, "AWS::ECS::Cluster")
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["Properties"]["ClusterSettings"]


def test_gpu_instances_mix_spot_and_on_demand_from_context(gpu: Synth) -> None:
    _, asg = _one(gpu, "AWS::AutoScaling::AutoScalingGroup")
    props = asg["Properties"]
    assert (props["MinSize"], props["MaxSize"]) == ("0", "12")
    assert props["NewInstancesProtectedFromScaleIn"] is True  # managed termination protection needs it
    policy = props["MixedInstancesPolicy"]
    assert policy["LaunchTemplate"]["Overrides"] == [
        {"InstanceType": "g6.xlarge"},
        {"InstanceType": "g5.xlarge"},
    ]
    assert policy["InstancesDistribution"] == {
        "OnDemandAllocationStrategy": "prioritized",
        "OnDemandBaseCapacity": 1,
        "OnDemandPercentageAboveBaseCapacity": 25,
        "SpotAllocationStrategy": "price-capacity-optimized",
    }
    # A Spot instance at elevated risk gets its replacement started before it is interrupted.
    assert props["CapacityRebalance"] is True


def test_launch_template_uses_the_ecs_gpu_ami_imdsv2_and_an_encrypted_root(gpu: Synth) -> None:
    _, template = _one(gpu, "AWS::EC2::LaunchTemplate")
    data = template["Properties"]["LaunchTemplateData"]
    parameters = gpu.template.to_json()["Parameters"]
    ami = parameters[data["ImageId"]["Ref"]]
    # Resolved from SSM by CloudFormation at deploy time: no lookup at synth.
    assert ami["Default"] == "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
    assert data["MetadataOptions"] == {"HttpPutResponseHopLimit": 1, "HttpTokens": "required"}
    assert data["BlockDeviceMappings"] == [
        {
            "DeviceName": "/dev/xvda",
            "Ebs": {"DeleteOnTermination": True, "Encrypted": True, "VolumeSize": 150, "VolumeType": "gp3"},
        }
    ]
    user_data = json.dumps(data["UserData"])
    assert "ECS_CLUSTER=" in user_data
    assert "ECS_ENABLE_SPOT_INSTANCE_DRAINING=true" in user_data  # Spot share > 0
    assert "nvidia_gpu" in user_data  # the CloudWatch agent reports GPU utilisation


def test_capacity_provider_has_managed_scaling_and_termination_protection(gpu: Synth) -> None:
    provider_id, provider = _one(gpu, "AWS::ECS::CapacityProvider")
    asg_id, _ = _one(gpu, "AWS::AutoScaling::AutoScalingGroup")
    assert provider["Properties"]["AutoScalingGroupProvider"] == {
        "AutoScalingGroupArn": {"Ref": asg_id},
        "ManagedScaling": {"Status": "ENABLED", "TargetCapacity": 100},
        "ManagedTerminationProtection": "ENABLED",
    }
    _, service = _one(gpu, "AWS::ECS::Service")
    assert service["Properties"]["CapacityProviderStrategy"] == [
        {"CapacityProvider": {"Ref": provider_id}, "Weight": 1}
    ]


def test_workers_accept_no_inbound_traffic(gpu: Synth) -> None:
    for group in gpu.of_type("AWS::EC2::SecurityGroup").values():
        assert "SecurityGroupIngress" not in group["Properties"]
    (worker_group,) = [
        g
        for g in gpu.of_type("AWS::EC2::SecurityGroup").values()
        if "shardq workers" in g["Properties"]["GroupDescription"]
    ]
    assert [
        (r["IpProtocol"], r["FromPort"], r["ToPort"])
        for r in worker_group["Properties"]["SecurityGroupEgress"]
    ] == [("tcp", 443, 443)]
    assert not gpu.of_type("AWS::EC2::NatGateway")  # fleet_nat_gateways=0: no idle cost
    gpu.template.has_resource_properties("AWS::EC2::FlowLog", {"TrafficType": "REJECT"})


# -- task and service --------------------------------------------------------------------------------


def test_task_definition_reserves_one_gpu_and_logs_to_cloudwatch(gpu: Synth) -> None:
    _, task = _one(gpu, "AWS::ECS::TaskDefinition")
    props = task["Properties"]
    assert props["NetworkMode"] == "bridge"
    (container,) = props["ContainerDefinitions"]
    assert container["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert container["StopTimeout"] == STOP_TIMEOUT_SECONDS
    assert container["LinuxParameters"]["InitProcessEnabled"] is True
    assert container["Command"] == ["--log-format", "json", "--grace-seconds", "90"]
    log = container["LogConfiguration"]
    assert log["LogDriver"] == "awslogs"
    (group_id,) = [k for k in gpu.of_type("AWS::Logs::LogGroup") if k.startswith("FleetWorkerLogs")]
    assert log["Options"]["awslogs-group"] == {"Ref": group_id}
    assert gpu.resources[group_id]["Properties"]["RetentionInDays"] == 14
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["SHARDQ_TASK_QUEUE_URL"] == {"Ref": "TaskQueue"}
    assert env["SHARDQ_RESULTS_QUEUE_URL"] == {"Ref": "ResultsQueue"}
    assert env["SHARDQ_JOB_TABLE"] == {"Ref": "JobTable"}
    assert env["SHARDQ_CONCURRENCY"] == "1"
    assert int(env["SHARDQ_TASK_PROTECTION_MINUTES"]) > 12 * 60  # outlives SQS's visibility ceiling
    # No fleet_allow: the workers run what the repository's image ships, and the image says the same.
    assert env["SHARDQ_ALLOW"] == BUNDLED_IMAGE_ALLOW == "examples.*"
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert re.search(rf"^ENV SHARDQ_ALLOW={re.escape(BUNDLED_IMAGE_ALLOW)}$", dockerfile, re.MULTILINE)


def test_image_is_the_repository_dockerfile_as_an_asset(gpu: Synth) -> None:
    assets = json.loads((gpu.outdir / "Shardq.assets.json").read_text())
    (image,) = assets["dockerImages"].values()
    source = image["source"]
    assert source["dockerFile"] == "Dockerfile"
    assert source["dockerBuildArgs"]["BASE_IMAGE"].startswith("pytorch/pytorch:")
    assert source["platform"] == "linux/amd64"
    staged = gpu.outdir / source["directory"]
    # .dockerignore keeps the build context to the worker's needs (no .venv, node_modules, tests).
    assert {p.name for p in staged.iterdir()} == {
        ".dockerignore",
        "Dockerfile",
        "examples",
        "pyproject.toml",
        "requirements-worker.txt",
        "shardq",
    }
    assert (staged / "shardq" / "worker" / "protection.py").is_file()


def test_task_role_is_the_worker_policy_plus_its_own_protection(gpu: Synth) -> None:
    _, task = _one(gpu, "AWS::ECS::TaskDefinition")
    role_id = task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
    role = gpu.resources[role_id]["Properties"]
    assert role["ManagedPolicyArns"] == [_ref(gpu, gpu.stack.worker_access.policy)]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {
        "Service": "ecs-tasks.amazonaws.com"
    }
    (policy,) = [
        p for p in gpu.of_type("AWS::IAM::Policy").values() if {"Ref": role_id} in p["Properties"]["Roles"]
    ]
    (statement,) = _statements(policy)
    assert statement["Action"] == ["ecs:GetTaskProtection", "ecs:UpdateTaskProtection"]
    cluster = _ref(gpu, gpu.stack.fleet.cluster)  # type: ignore[union-attr]
    assert cluster in statement["Resource"]["Fn::Join"][1]  # task/<this cluster>/*


def test_service_starts_at_zero_and_deploys_without_killing_busy_workers(gpu: Synth) -> None:
    _, service = _one(gpu, "AWS::ECS::Service")
    props = service["Properties"]
    assert props["DesiredCount"] == 0
    assert props["DeploymentConfiguration"] == {
        "DeploymentCircuitBreaker": {"Enable": True, "Rollback": True},
        "MaximumPercent": 100,
        "MinimumHealthyPercent": 0,
    }


# -- scaling -----------------------------------------------------------------------------------------


def _policies(synth: Synth) -> dict[str, dict[str, Any]]:
    return {
        r["Properties"]["PolicyType"] + ":" + k: r["Properties"]
        for k, r in synth.of_type("AWS::ApplicationAutoScaling::ScalingPolicy").items()
    }


def test_scalable_target_goes_from_zero_to_max_workers(gpu: Synth) -> None:
    target_id, target = _one(gpu, "AWS::ApplicationAutoScaling::ScalableTarget")
    props = target["Properties"]
    assert (props["MinCapacity"], props["MaxCapacity"]) == (0, 12)
    assert props["ScalableDimension"] == "ecs:service:DesiredCount"
    assert "AWSServiceRoleForApplicationAutoScaling_ECSService" in json.dumps(props["RoleARN"])
    for policy in _policies(gpu).values():
        assert policy["ScalingTargetId"] == {"Ref": target_id}


def test_target_tracking_on_runnable_tasks_per_worker_metric_math(gpu: Synth) -> None:
    (tracking,) = [p for k, p in _policies(gpu).items() if k.startswith("TargetTrackingScaling:")]
    config = tracking["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 2
    queries = {q["Id"]: q for q in config["CustomizedMetricSpecification"]["Metrics"]}
    assert set(queries) == {
        "visible", "inflight", "running", "desired", "lanes", "backlog", "workers", "runnable", "perworker"
    }  # fmt: skip

    def metric(query_id: str) -> dict[str, Any]:
        return queries[query_id]["MetricStat"]["Metric"]

    task_queue = [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["TaskQueue", "QueueName"]}}]
    assert metric("visible") == {
        "Namespace": "AWS/SQS",
        "MetricName": "ApproximateNumberOfMessagesVisible",
        "Dimensions": task_queue,
    }
    assert metric("inflight")["MetricName"] == "ApproximateNumberOfMessagesNotVisible"
    assert metric("inflight")["Dimensions"] == task_queue
    assert metric("running")["Namespace"] == "ECS/ContainerInsights"
    assert metric("running")["MetricName"] == "RunningTaskCount"
    assert [d["Name"] for d in metric("running")["Dimensions"]] == ["ClusterName", "ServiceName"]
    assert metric("desired")["MetricName"] == "DesiredTaskCount"
    # The lanes gauge of this stack's job table (two stacks in one region never mix gauges).
    assert metric("lanes") == {
        "Namespace": "shardq/Fleet",
        "MetricName": "RunnableLanes",
        "Dimensions": [{"Name": "JobTable", "Value": {"Ref": "JobTable"}}],
    }
    # The expressions are shardq/core/fleet_scaling.json's, with target 2 and max_workers 12 filled in.
    assert queries["backlog"]["Expression"] == "FILL(visible, 0) + FILL(inflight, 0)"
    assert queries["workers"]["Expression"] == scaling_rule()["expressions"]["workers"]
    assert queries["runnable"]["Expression"] == "MIN([backlog, FILL(lanes, 12) * 2])"
    assert queries["perworker"]["Expression"] == "IF(workers > 0, runnable / workers, runnable)"
    # Exactly one query is the policy's metric: the ratio.
    assert [q["Id"] for q in queries.values() if q["ReturnData"]] == ["perworker"]


def _deployed_step(queries: list[dict[str, Any]], target: float, inputs: dict[str, float | None]) -> int:
    """What Application Auto Scaling does with the synthesized queries: evaluate them in order (with
    the core's metric-math evaluator), then ceil(current × metric / target), bounded by max_workers."""
    values: dict[str, float | None] = dict(inputs)
    for q in queries:
        if "Expression" in q:
            values[q["Id"]] = evaluate(q["Expression"], values)
    current = inputs["desired"] or 0
    return min(12, math.ceil(round(current * (values["perworker"] or 0.0) / target, 9)))


@pytest.mark.parametrize(
    ("current", "visible", "in_flight", "lanes", "expected"),
    [
        (4, 100, 4, 4.0, 4),  # one job, 4 lanes, 100 tasks queued: 4 workers, not 12
        (12, 96, 8, 4.0, 4),  # a fleet larger than the lanes shrinks to them
        (2, 100, 2, 10.0, 10),  # two jobs with 10 lanes between them: 10 workers
        (4, 100, 4, None, 12),  # no gauge datapoint: max_workers caps, as before the gauge
        (6, 3, 3, 64.0, 3),  # few tasks left: the backlog caps (ceil(6 / 2))
        (3, 0, 0, 4.0, 0),  # empty queue: zero
    ],
)
def test_the_deployed_rule_is_the_rule_the_core_evaluates(
    gpu: Synth, current: int, visible: float, in_flight: float, lanes: float | None, expected: int
) -> None:
    """GIVEN the synthesized target tracking queries WHEN evaluated on a datapoint THEN they take the
    step shardq/core/scaling.py takes from the same definition (what the tests and estimate use)."""
    (tracking,) = [p for k, p in _policies(gpu).items() if k.startswith("TargetTrackingScaling:")]
    queries = tracking["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]["Metrics"]
    inputs = {
        "visible": visible,
        "inflight": in_flight,
        "running": current,
        "desired": current,
        "lanes": lanes,
    }
    deployed = _deployed_step(queries, 2, inputs)
    core = next_desired(current, visible, in_flight, target=2, max_workers=12, lanes=lanes)
    assert deployed == core == expected


def _alarm_for(synth: Synth, policy_logical_id: str) -> dict[str, Any]:
    (alarm,) = [
        a["Properties"]
        for a in synth.of_type("AWS::CloudWatch::Alarm").values()
        if {"Ref": policy_logical_id} in a["Properties"].get("AlarmActions", [])
    ]
    return alarm


def test_wakes_from_zero_to_ceil_runnable_over_target(gpu: Synth) -> None:
    ((key, wake),) = [(k, p) for k, p in _policies(gpu).items() if "WakeFromZero" in k]
    steps = wake["StepScalingPolicyConfiguration"]
    assert steps["AdjustmentType"] == "ExactCapacity"
    adjustments = steps["StepAdjustments"]
    # target 2: runnable 1-2 → 1 worker, 3-4 → 2, ... (bounds relative to the threshold of 1 task)
    assert adjustments[0] == {
        "MetricIntervalLowerBound": 0,
        "MetricIntervalUpperBound": 2,
        "ScalingAdjustment": 1,
    }
    assert adjustments[1] == {
        "MetricIntervalLowerBound": 2,
        "MetricIntervalUpperBound": 4,
        "ScalingAdjustment": 2,
    }
    assert adjustments[-1] == {"MetricIntervalLowerBound": 18, "ScalingAdjustment": 10}
    alarm = _alarm_for(gpu, key.split(":", 1)[1])
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["Threshold"] == 1
    by_id = {m["Id"]: m for m in alarm["Metrics"]}
    # The wake expression and everything it uses, with the lanes cap: a fleet at zero wakes only
    # as many workers as the lanes can feed.
    assert set(by_id) == set(closure("wake")) - {"wake"} | {"expr_1"}  # CDK names the watched one
    assert sum("Expression" in m for m in by_id.values()) <= 10  # CloudWatch's limits per alarm
    assert sum("MetricStat" in m for m in by_id.values()) <= 10
    (watched,) = [m for m in alarm["Metrics"] if m.get("ReturnData", True)]
    assert watched["Expression"] == "IF(workers < 1, runnable, 0)"
    assert by_id["runnable"]["Expression"] == "MIN([backlog, FILL(lanes, 12) * 2])"


def test_scales_to_zero_after_the_queue_stays_empty(gpu: Synth) -> None:
    ((key, zero),) = [(k, p) for k, p in _policies(gpu).items() if "ScaleToZero" in k]
    assert zero["StepScalingPolicyConfiguration"]["AdjustmentType"] == "ExactCapacity"
    assert zero["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalUpperBound": 0, "ScalingAdjustment": 0}
    ]
    alarm = _alarm_for(gpu, key.split(":", 1)[1])
    assert alarm["ComparisonOperator"] == "LessThanOrEqualToThreshold"
    assert alarm["Threshold"] == 0
    assert alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] == 20
    assert [m["Expression"] for m in alarm["Metrics"] if "Expression" in m] == [
        "FILL(visible, 0) + FILL(inflight, 0)"
    ]


# -- monitoring --------------------------------------------------------------------------------------


def test_dashboard_has_fleet_panels(gpu: Synth) -> None:
    (dashboard,) = gpu.of_type("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for needle in (
        "Fleet tasks (desired / running / pending)",
        "DesiredTaskCount",
        "RunningTaskCount",
        "PendingTaskCount",
        "Runnable tasks per worker",
        "Backlog, runnable tasks and lanes",
        "RunnableLanes",
        "GPUReservation",
        "nvidia_smi_utilization_gpu",
        "Tasks waiting for capacity",
    ):
        assert needle in body, needle


def test_capacity_shortfall_alarm_pages_the_topic(gpu: Synth) -> None:
    topic = _ref(gpu, gpu.stack.monitoring.topic)
    (alarm,) = [
        a["Properties"]
        for a in gpu.of_type("AWS::CloudWatch::Alarm").values()
        if "cannot" in a["Properties"].get("AlarmDescription", "")
        or "wanted more tasks" in a["Properties"].get("AlarmDescription", "")
    ]
    assert alarm["AlarmActions"] == [topic]
    assert alarm["EvaluationPeriods"] == 30


def test_fleet_outputs(gpu: Synth) -> None:
    outputs = gpu.template.to_json()["Outputs"]
    for name in ("FleetClusterName", "FleetServiceName", "FleetLogGroupName"):
        assert outputs[name]["Description"], name


# -- the lanes publisher -----------------------------------------------------------------------------


def test_lanes_publisher_runs_every_minute_with_query_and_put_metric_data_only(gpu: Synth) -> None:
    fn_id, fn = _one_matching(gpu, "AWS::Lambda::Function", "Lanes")
    props = fn["Properties"]
    assert props["Handler"] == "lambdas.fleet_lanes.handler"
    assert (props["Runtime"], props["Architectures"]) == ("python3.14", ["arm64"])
    assert props["Environment"]["Variables"] == {"SHARDQ_JOB_TABLE": {"Ref": "JobTable"}}
    # The lanes publisher's schedule (the stack's other rule routes Job Finished to pipelines).
    (rule,) = [
        r for r in gpu.of_type("AWS::Events::Rule").values() if "ScheduleExpression" in r["Properties"]
    ]
    assert rule["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Fn::GetAtt": [fn_id, "Arn"]}
    assert target["RetryPolicy"] == {"MaximumEventAgeInSeconds": 60, "MaximumRetryAttempts": 0}
    role_id = props["Role"]["Fn::GetAtt"][0]
    statements = [
        st
        for policy in gpu.of_type("AWS::IAM::Policy").values()
        if {"Ref": role_id} in policy["Properties"]["Roles"]
        for st in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    by_action = {json.dumps(st["Action"]): st for st in statements}
    query = by_action['"dynamodb:Query"']
    assert query["Resource"] == {"Fn::Join": ["", [{"Fn::GetAtt": ["JobTable", "Arn"]}, "/index/by_status"]]}
    put = by_action['"cloudwatch:PutMetricData"']
    assert put["Condition"] == {"StringEquals": {"cloudwatch:namespace": "shardq/Fleet"}}
    assert set(by_action) == {
        '"dynamodb:Query"',
        '"cloudwatch:PutMetricData"',
        '["logs:CreateLogStream", "logs:PutLogEvents"]',  # its own log group
        '["xray:PutTelemetryRecords", "xray:PutTraceSegments"]',  # active tracing
    }


def test_no_lanes_publisher_without_a_fleet(default_synth: Synth) -> None:
    scheduled = [
        r
        for r in default_synth.of_type("AWS::Events::Rule").values()
        if "ScheduleExpression" in r["Properties"]
    ]
    assert not scheduled
    handlers = {f["Properties"]["Handler"] for f in default_synth.of_type("AWS::Lambda::Function").values()}
    assert "lambdas.fleet_lanes.handler" not in handlers


# -- cdk-nag -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["gpu", "fargate"])
def test_nag_clean_and_every_fleet_acknowledgment_used(flavour: str, request: pytest.FixtureRequest) -> None:
    synth: Synth = request.getfixturevalue(flavour)
    open_findings = [
        (v["ruleName"], c["constructPath"])
        for r in synth.report["pluginReports"]
        for v in r["violations"]
        for c in v["violatingConstructs"]
    ]
    assert open_findings == []
    used = {
        (s["acknowledgedId"], s["acknowledgedAt"])
        for r in synth.report["pluginReports"]
        for s in r.get("suppressedViolations", [])
    }
    declared = {(a.id, a.scope.node.path) for a in synth.stack.acknowledgments}
    assert declared == used
    fleet_acks = [a for a in synth.stack.acknowledgments if "/Fleet/" in a.scope.node.path + "/"]
    assert fleet_acks
    for ack in fleet_acks:
        assert ack.id.startswith(("AwsSolutions::AwsSolutions-", "Serverless::Serverless-")), ack.id
        assert len(ack.reason) >= 40, ack.id


# -- Fargate -----------------------------------------------------------------------------------------


def test_fargate_runs_cpu_tasks_on_a_spot_mix(fargate: Synth) -> None:
    _, task = _one(fargate, "AWS::ECS::TaskDefinition")
    props = task["Properties"]
    assert props["RequiresCompatibilities"] == ["FARGATE"]
    assert (props["Cpu"], props["Memory"]) == ("1024", "4096")
    (container,) = props["ContainerDefinitions"]
    assert "ResourceRequirements" not in container  # no GPU on Fargate
    _, service = _one(fargate, "AWS::ECS::Service")
    assert service["Properties"]["CapacityProviderStrategy"] == [
        {"CapacityProvider": "FARGATE", "Base": 0, "Weight": 50},
        {"CapacityProvider": "FARGATE_SPOT", "Weight": 50},
    ]
    network = service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"  # fleet_nat_gateways=1: private subnets
    assert len(fargate.of_type("AWS::EC2::NatGateway")) == 1
    assert not fargate.of_type("AWS::AutoScaling::AutoScalingGroup")
    assert not fargate.of_type("AWS::ECS::CapacityProvider")
    (dashboard,) = fargate.of_type("AWS::CloudWatch::Dashboard").values()
    assert "nvidia_smi" not in json.dumps(dashboard["Properties"]["DashboardBody"])


def test_own_ecr_image_is_used_and_pull_is_granted_on_its_repository(fargate: Synth) -> None:
    _, task = _one(fargate, "AWS::ECS::TaskDefinition")
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert "shardq-worker:1.4" in json.dumps(container["Image"])
    # An own image runs what fleet_allow names (required with fleet_image_uri), as SHARDQ_ALLOW.
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert env["SHARDQ_ALLOW"] == "team_models.*,examples.linear"
    assets = json.loads((fargate.outdir / "Shardq.assets.json").read_text())
    assert not assets.get("dockerImages")  # nothing to build
    pulls = [
        st
        for p in fargate.of_type("AWS::IAM::Policy").values()
        for st in _statements(p)
        if "ecr:BatchGetImage" in st["Action"]
    ]
    (pull,) = pulls
    assert pull["Resource"] == "arn:aws:ecr:eu-west-1:123456789012:repository/team/shardq-worker"
    fargate.template.has_resource_properties(
        "AWS::ECS::TaskDefinition", {"TaskRoleArn": Match.any_value(), "ExecutionRoleArn": Match.any_value()}
    )


# -- context validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({"fleet": "yes"}, 'fleet: must be one of off, gpu, fargate ("gpu": ECS on EC2 GPU instances'),
        (
            {"fleet": "gpu", "fleet_instance_types": ["t3.large"]},
            "fleet_instance_types: t3.large has no NVIDIA GPU",
        ),
        ({"fleet_instance_types": []}, "fleet_instance_types: must be a list of 1 to 20 EC2 instance types"),
        (
            {"fleet_instance_types": ["g5 xlarge"]},
            "fleet_instance_types: g5 xlarge is not an EC2 instance type",
        ),
        (
            {"fleet_on_demand_percentage": 101},
            "fleet_on_demand_percentage: must be an integer between 0 and 100",
        ),
        (
            {"fleet_on_demand_base_capacity": 9, "fleet_max_workers": 8},
            "fleet_on_demand_base_capacity: 9 is above fleet_max_workers (8)",
        ),
        ({"fleet_max_workers": 0}, "fleet_max_workers: must be an integer between 1 and 1000"),
        ({"fleet_backlog_per_worker": 0}, "fleet_backlog_per_worker: must be an integer between 1 and 1000"),
        (
            {"fleet": "fargate", "fleet_task_cpu": 1024, "fleet_task_memory_mib": 12288},
            "fleet_task_memory_mib: 12288 MiB does not fit Fargate's 1024 CPU units; fix: use 2048 to 8192",
        ),
        ({"fleet": "fargate", "fleet_task_cpu": 3000}, "fleet_task_cpu: 3000 is not a Fargate size"),
        (
            {"fleet_image_uri": ECR_IMAGE, "fleet_base_image": "python:3.12-slim"},
            "fleet_base_image: only applies when the fleet builds the repository's Dockerfile",
        ),
        ({"fleet_image_uri": "not an image"}, "fleet_image_uri: must be an image reference"),
        ({"fleet_nat_gateways": 4}, "fleet_nat_gateways: must be an integer between 0 and 3"),
        ({"fleet_max_worker": 4}, "fleet_max_worker: unknown context key (did you mean fleet, fleet_"),
        (
            {"fleet_image_uri": ECR_IMAGE},
            "fleet_allow: fleet_image_uri names your own image, so the stack cannot know which code its "
            'workers may run; fix: set fleet_allow to the packages the image ships, like "mypkg.*"',
        ),
        ({"fleet_allow": ""}, "fleet_allow: must name at least one module pattern"),
        ({"fleet_allow": " , "}, "fleet_allow: must name at least one module pattern"),
        ({"fleet_allow": []}, "fleet_allow: must name at least one module pattern"),
        ({"fleet_allow": "my pkg.*"}, "fleet_allow: 'my pkg.*' is not a module pattern"),
        (
            {"fleet_allow": "examples.*,mypkg/train.py,"},
            "fleet_allow: 'mypkg/train.py' is not a module pattern: 'pkg.*' (a package and everything "
            "under it), 'pkg.mod' (one module) or '*' (any module), no spaces; fix: list the packages",
        ),
        ({"fleet_allow": {"pkg": "*"}}, "fleet_allow: must be module patterns, comma-separated or a list"),
    ],
)
def test_bad_fleet_context_fails_with_the_key_and_the_fix(context: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        ShardqConfig.from_context(context)
    assert expected in str(err.value)


def test_fleet_context_from_the_command_line_is_parsed() -> None:
    config = ShardqConfig.from_context(
        {
            "fleet": "gpu",
            "fleet_instance_types": "g5.2xlarge,g6.2xlarge",
            "fleet_max_workers": "32",
            "fleet_on_demand_percentage": "100",
        }
    )
    assert config.fleet_enabled
    assert config.fleet_instance_types == ("g5.2xlarge", "g6.2xlarge")
    assert (config.fleet_max_workers, config.fleet_on_demand_percentage) == (32, 100)
    assert ShardqConfig.from_context({"fleet_instance_types": '["p5.48xlarge"]'}).fleet_instance_types == (
        "p5.48xlarge",
    )
    # fleet_allow: the worker's own SHARDQ_ALLOW syntax, or a JSON list; normalized to SHARDQ_ALLOW's.
    for raw in ("examples.*, mypkg.train", '["examples.*", "mypkg.train"]'):
        assert ShardqConfig.from_context({"fleet_allow": raw}).fleet_worker_allow == "examples.*,mypkg.train"
    assert ShardqConfig.from_context({"fleet_allow": "null"}).fleet_worker_allow == BUNDLED_IMAGE_ALLOW


# -- third-party rule packs (tests/infra/rulepacks.py) on the GPU fleet's template ----------------


def test_cfn_lint_gpu_fleet(rule_packs: RulePackRun) -> None:
    assert_cfn_lint_passes(rule_packs, "gpu")


def test_checkov_gpu_fleet(rule_packs: RulePackRun) -> None:
    assert_checkov_passes(rule_packs, "gpu")
