"""Where the workers run: the VPC, the workers' security group, and the GPU instances.

* ``gpu``: an EC2 Auto Scaling group of GPU instances (ECS GPU-optimized AMI, Spot/On-Demand mix)
  behind an ECS capacity provider with managed scaling.
* ``fargate``: Fargate / Fargate Spot capacity providers on the cluster (nothing to build here).

Every construct is created in the fleet's scope, so logical ids stay what they were before the
fleet was split into modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import RemovalPolicy
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.components.fleet.sizing import FleetSizing

GPU_METRICS_NAMESPACE = "shardq/Fleet"


@dataclass(frozen=True)
class GpuCapacity:
    """The GPU flavour's instances and the capacity provider that places tasks on them."""

    auto_scaling_group: autoscaling.AutoScalingGroup
    capacity_provider: ecs.AsgCapacityProvider


def network(scope: Construct, sizing: FleetSizing, log_retention: logs.RetentionDays) -> ec2.Vpc:
    """A two-AZ VPC: public subnets (and private ones behind NAT when asked), S3 endpoint, flow log."""
    subnets = [ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)]
    if sizing.nat_gateways:
        subnets.append(
            ec2.SubnetConfiguration(
                name="Workers", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
            )
        )
    vpc = ec2.Vpc(
        scope,
        "Vpc",
        max_azs=2,
        nat_gateways=sizing.nat_gateways,
        subnet_configuration=subnets,
        # Datasets and artifacts travel to S3 through a free gateway endpoint, not a NAT gateway.
        gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
        # Nothing is placed in the default security group; restricting it would add a custom
        # resource Lambda to the stack for no gain.
        restrict_default_security_group=False,
    )
    vpc.add_flow_log(
        "FlowLog",
        destination=ec2.FlowLogDestination.to_cloud_watch_logs(
            logs.LogGroup(scope, "FlowLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        ),
        traffic_type=ec2.FlowLogTrafficType.REJECT,
    )
    return vpc


def worker_subnets(sizing: FleetSizing) -> ec2.SubnetSelection:
    """Private subnets behind NAT when the fleet has NAT gateways, else the public ones."""
    kind = ec2.SubnetType.PRIVATE_WITH_EGRESS if sizing.nat_gateways else ec2.SubnetType.PUBLIC
    return ec2.SubnetSelection(subnet_type=kind)


def worker_security_group(scope: Construct, vpc: ec2.IVpc) -> ec2.SecurityGroup:
    """No inbound rule; outbound HTTPS only (AWS APIs and image registries)."""
    group = ec2.SecurityGroup(
        scope,
        "WorkerSecurityGroup",
        vpc=vpc,
        description="shardq workers: no inbound; outbound HTTPS to AWS APIs and image registries",
        allow_all_outbound=False,
    )
    group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS APIs")
    return group


def gpu_capacity(
    scope: Construct,
    sizing: FleetSizing,
    *,
    vpc: ec2.IVpc,
    security_group: ec2.ISecurityGroup,
    cluster: ecs.Cluster,
) -> GpuCapacity:
    """GPU instances (launch template → Auto Scaling group) as the cluster's capacity provider."""
    template = _launch_template(scope, sizing, security_group)
    asg = _auto_scaling_group(scope, sizing, vpc, template)
    capacity_provider = ecs.AsgCapacityProvider(
        scope,
        "CapacityProvider",
        auto_scaling_group=asg,
        machine_image_type=ecs.MachineImageType.AMAZON_LINUX_2,
        enable_managed_scaling=True,
        target_capacity_percent=100,
        # ECS keeps instances that run tasks; it scales the group in only when they are empty.
        enable_managed_termination_protection=True,
    )
    cluster.add_asg_capacity_provider(capacity_provider)
    return GpuCapacity(auto_scaling_group=asg, capacity_provider=capacity_provider)


def _instance_role(scope: Construct) -> iam.Role:
    role = iam.Role(
        scope,
        "InstanceRole",
        assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
        description="shardq GPU instances: ECS agent, and GPU metrics from the CloudWatch agent",
    )
    role.add_to_policy(
        iam.PolicyStatement(
            sid="PublishGpuMetrics",
            actions=["cloudwatch:PutMetricData"],
            resources=["*"],  # PutMetricData has no resource-level permissions
            conditions={"StringEquals": {"cloudwatch:namespace": GPU_METRICS_NAMESPACE}},
        )
    )
    return role


def _user_data(sizing: FleetSizing) -> ec2.UserData:
    user_data = ec2.UserData.for_linux()
    user_data.add_commands(*_gpu_metrics_agent_commands())
    if sizing.on_demand_percentage < 100:
        # On a Spot interruption notice ECS drains the instance: tasks get SIGTERM and the worker
        # hands its shard back (CDK writes this only for groups with a legacy spotPrice).
        user_data.add_commands("echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config")
    return user_data


def _launch_template(
    scope: Construct, sizing: FleetSizing, security_group: ec2.ISecurityGroup
) -> ec2.LaunchTemplate:
    return ec2.LaunchTemplate(
        scope,
        "LaunchTemplate",
        machine_image=ecs.EcsOptimizedImage.amazon_linux2023(ecs.AmiHardwareType.GPU),
        user_data=_user_data(sizing),
        role=_instance_role(scope),
        security_group=security_group,
        require_imdsv2=True,
        # Hop limit 1: containers on the Docker bridge cannot reach IMDS (the instance role).
        http_put_response_hop_limit=1,
        block_devices=[
            ec2.BlockDevice(
                device_name="/dev/xvda",
                volume=ec2.BlockDeviceVolume.ebs(
                    sizing.root_volume_gib,
                    encrypted=True,
                    volume_type=ec2.EbsDeviceVolumeType.GP3,
                    delete_on_termination=True,
                ),
            )
        ],
    )


def _auto_scaling_group(
    scope: Construct, sizing: FleetSizing, vpc: ec2.IVpc, template: ec2.LaunchTemplate
) -> autoscaling.AutoScalingGroup:
    return autoscaling.AutoScalingGroup(
        scope,
        "Instances",
        vpc=vpc,
        vpc_subnets=worker_subnets(sizing),
        min_capacity=0,
        max_capacity=sizing.max_workers,
        # On a rebalance recommendation (a Spot instance at elevated risk) the group starts a
        # replacement before the old instance is interrupted, so a preempted shard finds a worker
        # waiting (issue #24). Spot only: on-demand instances get no such signal.
        capacity_rebalance=sizing.on_demand_percentage < 100 or None,
        mixed_instances_policy=autoscaling.MixedInstancesPolicy(
            launch_template=template,
            launch_template_overrides=[
                autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(t))
                for t in sizing.instance_types
            ],
            instances_distribution=autoscaling.InstancesDistribution(
                on_demand_base_capacity=sizing.on_demand_base_capacity,
                on_demand_percentage_above_base_capacity=sizing.on_demand_percentage,
                on_demand_allocation_strategy=autoscaling.OnDemandAllocationStrategy.PRIORITIZED,
                # Spot from the pools least likely to be interrupted at a low price.
                spot_allocation_strategy=autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
            ),
        ),
    )


def _gpu_metrics_agent_commands() -> list[str]:
    """User data: the CloudWatch agent reporting nvidia-smi utilisation (namespace shardq/Fleet)."""
    config = (
        '{"agent": {"metrics_collection_interval": 60}, "metrics": {"namespace": "'
        + GPU_METRICS_NAMESPACE
        + '", "append_dimensions": {"InstanceId": "${aws:InstanceId}"}, "metrics_collected": '
        '{"nvidia_gpu": {"measurement": ["utilization_gpu", "utilization_memory", "memory_used", '
        '"memory_total", "temperature_gpu", "power_draw"]}}}}'
    )
    path = "/opt/aws/amazon-cloudwatch-agent/etc/shardq-gpu.json"
    return [
        # Best effort: a missing agent costs the dashboard its GPU panel, never the worker.
        "dnf install -y amazon-cloudwatch-agent || yum install -y amazon-cloudwatch-agent || true",
        f"cat > {path} <<'SHARDQ_EOF'\n{config}\nSHARDQ_EOF",
        "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s "
        f"-c file:{path} || true",
    ]
