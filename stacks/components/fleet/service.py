"""What the workers are: the task role, the task definition, the worker container and the ECS service.

Every construct is created in the fleet's scope, so logical ids stay what they were before the
fleet was split into modules.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Arn, ArnComponents, ArnFormat, Aws, Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.components.fleet.sizing import FleetSizing

CONTAINER_NAME = "worker"
# ECS stops a task with SIGTERM, then SIGKILL after stopTimeout (120 s is ECS's maximum, and a Spot
# instance gets a 2-minute notice). The worker finishes or releases its shard within the grace period.
STOP_TIMEOUT_SECONDS = 120
WORKER_GRACE_SECONDS = 90
# A task holds a shard for at most SQS's 12-hour visibility ceiling; protection outlives that a little
# so it never lapses mid-shard, and expires on its own if a worker dies without clearing it.
TASK_PROTECTION_MINUTES = 13 * 60


def task_role(scope: Construct, cluster: ecs.ICluster, worker_policy: iam.IManagedPolicy) -> iam.Role:
    """The exported worker policy, plus the right to set its own task's scale-in protection."""
    role = iam.Role(
        scope,
        "TaskRole",
        assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
        description="shardq worker task: the exported worker policy, plus its own scale-in protection",
        managed_policies=[worker_policy],
    )
    role.add_to_policy(
        iam.PolicyStatement(
            sid="OwnTaskScaleInProtection",
            actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
            resources=[
                Arn.format(
                    ArnComponents(
                        service="ecs",
                        resource="task",
                        resource_name=f"{cluster.cluster_name}/*",
                        arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                    ),
                    Stack.of(scope),
                )
            ],
        )
    )
    return role


def task_definition(scope: Construct, sizing: FleetSizing, role: iam.IRole) -> ecs.TaskDefinition:
    """GPU: an EC2 task definition in bridge mode; Fargate: an x86_64 Fargate task of the given size."""
    if sizing.gpu:
        # Bridge mode: the task uses its instance's network (and public IP when there is no NAT);
        # awsvpc tasks on EC2 get no public IP and would need NAT gateways even when idle.
        return ecs.Ec2TaskDefinition(
            scope, "TaskDefinition", network_mode=ecs.NetworkMode.BRIDGE, task_role=role
        )
    return ecs.FargateTaskDefinition(
        scope,
        "TaskDefinition",
        cpu=sizing.task_cpu,
        memory_limit_mib=sizing.task_memory_mib,
        task_role=role,
        runtime_platform=ecs.RuntimePlatform(
            operating_system_family=ecs.OperatingSystemFamily.LINUX,
            cpu_architecture=ecs.CpuArchitecture.X86_64,
        ),
    )


def gpu_service(
    scope: Construct,
    *,
    cluster: ecs.ICluster,
    definition: ecs.TaskDefinition,
    capacity_provider: ecs.AsgCapacityProvider,
) -> ecs.Ec2Service:
    """The worker service on the GPU instances, packed by memory, starting at zero tasks."""
    return ecs.Ec2Service(
        scope,
        "Service",
        cluster=cluster,
        task_definition=definition,
        desired_count=0,
        capacity_provider_strategies=[
            ecs.CapacityProviderStrategy(capacity_provider=capacity_provider.capacity_provider_name, weight=1)
        ],
        # Deployments replace idle workers first; protected ones finish their shard before stopping.
        min_healthy_percent=0,
        max_healthy_percent=100,
        circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
        placement_strategies=[ecs.PlacementStrategy.packed_by_memory()],
        propagate_tags=ecs.PropagatedTagSource.SERVICE,
        enable_ecs_managed_tags=True,
    )


def fargate_service(
    scope: Construct,
    sizing: FleetSizing,
    *,
    cluster: ecs.Cluster,
    definition: ecs.TaskDefinition,
    subnets: ec2.SubnetSelection,
    security_group: ec2.ISecurityGroup,
) -> ecs.FargateService:
    """The worker service on Fargate and Fargate Spot (the On-Demand base and percentage apply)."""
    cluster.enable_fargate_capacity_providers()
    return ecs.FargateService(
        scope,
        "Service",
        cluster=cluster,
        task_definition=definition,
        desired_count=0,
        vpc_subnets=subnets,
        security_groups=[security_group],
        assign_public_ip=sizing.nat_gateways == 0,
        capacity_provider_strategies=[
            ecs.CapacityProviderStrategy(
                capacity_provider="FARGATE",
                base=sizing.on_demand_base_capacity,
                weight=sizing.on_demand_percentage,
            ),
            ecs.CapacityProviderStrategy(
                capacity_provider="FARGATE_SPOT", weight=100 - sizing.on_demand_percentage
            ),
        ],
        min_healthy_percent=0,
        max_healthy_percent=100,
        circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
        propagate_tags=ecs.PropagatedTagSource.SERVICE,
        enable_ecs_managed_tags=True,
    )


def add_worker_container(
    scope: Construct,
    definition: ecs.TaskDefinition,
    *,
    image: ecs.ContainerImage,
    environment: Mapping[str, str],
    sizing: FleetSizing,
    log_group: logs.ILogGroup,
) -> ecs.ContainerDefinition:
    """The worker: one slot per task (one GPU on the GPU flavour), tini as PID 1, JSON logs."""
    env = {
        **environment,
        "AWS_REGION": Aws.REGION,
        "AWS_DEFAULT_REGION": Aws.REGION,
        # One task = one worker slot (= one GPU on the GPU flavour).
        "SHARDQ_CONCURRENCY": "1",
        "SHARDQ_TASK_PROTECTION_MINUTES": str(TASK_PROTECTION_MINUTES),
    }
    return definition.add_container(
        CONTAINER_NAME,
        image=image,
        command=["--log-format", "json", "--grace-seconds", str(WORKER_GRACE_SECONDS)],
        environment=env,
        gpu_count=1 if sizing.gpu else None,
        cpu=sizing.task_cpu if sizing.gpu else None,
        memory_reservation_mib=sizing.task_memory_mib if sizing.gpu else None,
        logging=ecs.LogDrivers.aws_logs(stream_prefix="worker", log_group=log_group),
        stop_timeout=Duration.seconds(STOP_TIMEOUT_SECONDS),
        # tini as PID 1: forwards SIGTERM to the worker and reaps data-loader processes.
        linux_parameters=ecs.LinuxParameters(scope, "LinuxParameters", init_process_enabled=True),
        essential=True,
    )
