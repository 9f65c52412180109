"""WorkerFleet: shardq workers on Amazon ECS that scale with the task backlog, down to zero.

Off by default (context ``fleet``). Two flavours share everything but the capacity:

* ``gpu``: an EC2 Auto Scaling group of GPU instances (ECS GPU-optimized AMI, Spot/On-Demand mix)
  behind an ECS capacity provider with managed scaling; one GPU per task (``gpuCount``).
* ``fargate``: CPU-only tasks on Fargate / Fargate Spot, for cheap runs and for trying the fleet
  without GPUs.

Scaling follows the pattern AWS recommends for queue workers, *backlog per worker*:
``(visible + in-flight tasks) / workers`` tracked to a target with metric math, plus two step
policies target tracking cannot do on its own: wake the service from zero tasks (a proportional
policy has nothing to multiply when capacity is 0) and return to zero once the queue has been
empty for a while. Workers protect their ECS task from scale-in while they train a shard
(``shardq/worker/protection.py``), so scaling in never kills a worker mid-shard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aws_cdk import Arn, ArnComponents, ArnFormat, Aws, Duration, Names, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import Problems

FLEET_KINDS = ("gpu", "fargate")
CONTAINER_NAME = "worker"
# ECS stops a task with SIGTERM, then SIGKILL after stopTimeout (120 s is ECS's maximum, and a Spot
# instance gets a 2-minute notice). The worker finishes or releases its shard within the grace period.
STOP_TIMEOUT_SECONDS = 120
WORKER_GRACE_SECONDS = 90
# A task holds a shard for at most SQS's 12-hour visibility ceiling; protection outlives that a little
# so it never lapses mid-shard, and expires on its own if a worker dies without clearing it.
TASK_PROTECTION_MINUTES = 13 * 60
GPU_METRICS_NAMESPACE = "shardq/Fleet"
CONTAINER_INSIGHTS_NAMESPACE = "ECS/ContainerInsights"
WAKE_STEPS_MAX = 10  # wake-from-zero lands on ceil(backlog / target) up to this many workers
# Metric math shared by the target tracking policy, the step alarms and the dashboard. Ids are the
# query ids below; FILL makes a quiet queue or a service without tasks read as 0, not as no data.
BACKLOG_EXPRESSION = "FILL(visible, 0) + FILL(inflight, 0)"
WORKERS_EXPRESSION = "MAX([FILL(running, 0), FILL(desired, 0)])"
BACKLOG_PER_WORKER_EXPRESSION = "IF(workers > 0, backlog / workers, backlog)"
WAKE_EXPRESSION = f"IF({WORKERS_EXPRESSION} < 1, {BACKLOG_EXPRESSION}, 0)"
_ONE_MINUTE = Duration.minutes(1)


@dataclass(frozen=True, kw_only=True)
class FleetSizing:
    """How big the fleet may get and what it runs on (the ``fleet_*`` context keys).

    Attributes
    ----------
    kind
        ``"gpu"`` (ECS on EC2 GPU instances) or ``"fargate"`` (CPU only).
    instance_types
        EC2 instance types of the GPU Auto Scaling group, tried in the order given for On-Demand.
    on_demand_base_capacity, on_demand_percentage
        Instances (GPU) or tasks (Fargate) always On-Demand, then the On-Demand percentage above
        that base; the rest is Spot.
    max_workers
        Upper bound of running worker tasks (and of GPU instances).
    backlog_per_worker
        Target of ``(visible + in-flight tasks) / workers``.
    scale_to_zero_after
        Return to zero tasks once the queue has had no visible or in-flight task this long.
    task_cpu, task_memory_mib
        CPU units and memory of one worker task (a soft reservation on EC2, the size on Fargate).
    root_volume_gib
        Encrypted gp3 root volume of each GPU instance (images and scratch space).
    nat_gateways
        0: public subnets (workers get public IPs, no inbound rule); 1..3: private subnets.
    """

    kind: str
    instance_types: Sequence[str] = ("g5.xlarge", "g6.xlarge")
    on_demand_base_capacity: int = 0
    on_demand_percentage: int = 0
    max_workers: int = 8
    backlog_per_worker: float = 1.0
    scale_to_zero_after: Duration = field(default_factory=lambda: Duration.minutes(15))
    task_cpu: int = 2048
    task_memory_mib: int = 12288
    root_volume_gib: int = 100
    nat_gateways: int = 0

    @property
    def gpu(self) -> bool:
        """True for the EC2 GPU flavour."""
        return self.kind == "gpu"


class WorkerFleet(Construct):
    """ECS cluster, capacity, the worker service and its backlog-per-worker scaling.

    Parameters
    ----------
    sizing
        Flavour and bounds (:class:`FleetSizing`).
    task_queue
        The FIFO task queue: its depth drives the scaling.
    worker_policy
        The exported worker policy; attached to the task role, which holds nothing else but the
        right to set its own task's scale-in protection.
    image
        The worker container image (the repository's Dockerfile as an asset, or a user's image).
    environment
        Container environment (queue URLs, table name); region and concurrency are added here.
    log_retention
        Retention of the worker and VPC flow log groups.

    Attributes
    ----------
    vpc, security_group, cluster, task_definition, task_role, service, log_group, scalable_target
        The parts, for wiring and tests.
    auto_scaling_group, capacity_provider
        GPU flavour only (``None`` on Fargate).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        sizing: FleetSizing,
        task_queue: sqs.IQueue,
        worker_policy: iam.IManagedPolicy,
        image: ecs.ContainerImage,
        environment: Mapping[str, str],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        _validate(sizing)
        self.sizing = sizing
        self.task_queue = task_queue

        self.vpc = self._network(sizing, log_retention)
        self.security_group = ec2.SecurityGroup(
            self,
            "WorkerSecurityGroup",
            vpc=self.vpc,
            description="shardq workers: no inbound; outbound HTTPS to AWS APIs and image registries",
            allow_all_outbound=False,
        )
        self.security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to AWS APIs")
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.vpc,
            # Container Insights supplies RunningTaskCount/DesiredTaskCount, the scaling denominator.
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.log_group = logs.LogGroup(
            self, "WorkerLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.task_role = iam.Role(
            self,
            "TaskRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description="shardq worker task: the exported worker policy, plus its own scale-in protection",
            managed_policies=[worker_policy],
        )
        self.task_role.add_to_policy(
            iam.PolicyStatement(
                sid="OwnTaskScaleInProtection",
                actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"],
                resources=[
                    Arn.format(
                        ArnComponents(
                            service="ecs",
                            resource="task",
                            resource_name=f"{self.cluster.cluster_name}/*",
                            arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                        ),
                        Stack.of(self),
                    )
                ],
            )
        )
        self.auto_scaling_group: autoscaling.AutoScalingGroup | None = None
        self.capacity_provider: ecs.AsgCapacityProvider | None = None
        if sizing.gpu:
            self.task_definition: ecs.TaskDefinition = self._gpu_task_definition()
            self.service: ecs.BaseService = self._gpu_service(sizing)
        else:
            self.task_definition = ecs.FargateTaskDefinition(
                self,
                "TaskDefinition",
                cpu=sizing.task_cpu,
                memory_limit_mib=sizing.task_memory_mib,
                task_role=self.task_role,
                runtime_platform=ecs.RuntimePlatform(
                    operating_system_family=ecs.OperatingSystemFamily.LINUX,
                    cpu_architecture=ecs.CpuArchitecture.X86_64,
                ),
            )
            self.service = self._fargate_service(sizing)
        self._add_worker_container(image, environment, sizing)
        self.scalable_target = self._scaling(sizing)

    # -- metrics (also drawn on the dashboard) ---------------------------------------------------

    def metric_tasks(self, metric_name: str, label: str | None = None) -> cloudwatch.Metric:
        """A Container Insights task count of the worker service (RunningTaskCount, ...)."""
        return cloudwatch.Metric(
            namespace=CONTAINER_INSIGHTS_NAMESPACE,
            metric_name=metric_name,
            dimensions_map={
                "ClusterName": self.cluster.cluster_name,
                "ServiceName": self.service.service_name,
            },
            statistic="Average",
            period=_ONE_MINUTE,
            label=label,
        )

    def _inputs(self) -> dict[str, cloudwatch.IMetric]:
        q = self.task_queue
        return {
            "visible": q.metric_approximate_number_of_messages_visible(
                period=_ONE_MINUTE, statistic="Average"
            ),
            "inflight": q.metric_approximate_number_of_messages_not_visible(
                period=_ONE_MINUTE, statistic="Average"
            ),
            "running": self.metric_tasks("RunningTaskCount"),
            "desired": self.metric_tasks("DesiredTaskCount"),
        }

    def metric_backlog(self) -> cloudwatch.MathExpression:
        """Tasks waiting or being trained: visible + in flight on the task queue."""
        inputs = self._inputs()
        return cloudwatch.MathExpression(
            expression=BACKLOG_EXPRESSION,
            using_metrics={k: inputs[k] for k in ("visible", "inflight")},
            label="backlog (visible + in flight)",
            period=_ONE_MINUTE,
        )

    def metric_backlog_per_worker(self) -> cloudwatch.MathExpression:
        """The scaling metric: backlog / max(running, desired) tasks (the backlog itself at zero)."""
        inputs = self._inputs()
        return cloudwatch.MathExpression(
            expression=BACKLOG_PER_WORKER_EXPRESSION,
            using_metrics={
                "backlog": cloudwatch.MathExpression(
                    expression=BACKLOG_EXPRESSION,
                    using_metrics={k: inputs[k] for k in ("visible", "inflight")},
                    period=_ONE_MINUTE,
                ),
                "workers": cloudwatch.MathExpression(
                    expression=WORKERS_EXPRESSION,
                    using_metrics={k: inputs[k] for k in ("running", "desired")},
                    period=_ONE_MINUTE,
                ),
            },
            label="backlog per worker",
            period=_ONE_MINUTE,
        )

    def metric_shortfall(self) -> cloudwatch.MathExpression:
        """Tasks the service wants but cannot run (waiting for instances, Spot capacity or quota)."""
        inputs = self._inputs()
        return cloudwatch.MathExpression(
            expression="FILL(desired, 0) - FILL(running, 0)",
            using_metrics={k: inputs[k] for k in ("desired", "running")},
            label="desired - running",
            period=_ONE_MINUTE,
        )

    def metrics_gpu(self) -> list[cloudwatch.IMetric]:
        """GPU reservation (ECS) and utilisation (CloudWatch agent on the GPU instances)."""
        if not self.sizing.gpu:
            return []
        return [
            cloudwatch.Metric(
                namespace="AWS/ECS",
                metric_name="GPUReservation",
                dimensions_map={"ClusterName": self.cluster.cluster_name},
                statistic="Average",
                period=_ONE_MINUTE,
                label="GPUs reserved by tasks (%)",
            ),
            cloudwatch.MathExpression(
                expression=(
                    f"SEARCH('{{{GPU_METRICS_NAMESPACE},InstanceId,arch,index,name}} "
                    "MetricName=\"nvidia_smi_utilization_gpu\"', 'Average', 60)"
                ),
                using_metrics={},
                label="GPU utilisation (%)",
                period=_ONE_MINUTE,
            ),
        ]

    # -- building blocks -------------------------------------------------------------------------

    def _network(self, sizing: FleetSizing, log_retention: logs.RetentionDays) -> ec2.Vpc:
        subnets = [ec2.SubnetConfiguration(name="Public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)]
        if sizing.nat_gateways:
            subnets.append(
                ec2.SubnetConfiguration(
                    name="Workers", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=20
                )
            )
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,
            nat_gateways=sizing.nat_gateways,
            subnet_configuration=subnets,
            # Datasets and artifacts travel to S3 through a free gateway endpoint, not a NAT gateway.
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)
            },
            # Nothing is placed in the default security group; restricting it would add a custom
            # resource Lambda to the stack for no gain.
            restrict_default_security_group=False,
        )
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                logs.LogGroup(self, "FlowLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
            ),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        return vpc

    @property
    def _subnets(self) -> ec2.SubnetSelection:
        kind = ec2.SubnetType.PRIVATE_WITH_EGRESS if self.sizing.nat_gateways else ec2.SubnetType.PUBLIC
        return ec2.SubnetSelection(subnet_type=kind)

    def _gpu_task_definition(self) -> ecs.Ec2TaskDefinition:
        # Bridge mode: the task uses its instance's network (and public IP when there is no NAT);
        # awsvpc tasks on EC2 get no public IP and would need NAT gateways even when idle.
        return ecs.Ec2TaskDefinition(
            self, "TaskDefinition", network_mode=ecs.NetworkMode.BRIDGE, task_role=self.task_role
        )

    def _gpu_service(self, sizing: FleetSizing) -> ecs.Ec2Service:
        instance_role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="shardq GPU instances: ECS agent, and GPU metrics from the CloudWatch agent",
        )
        instance_role.add_to_policy(
            iam.PolicyStatement(
                sid="PublishGpuMetrics",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],  # PutMetricData has no resource-level permissions
                conditions={"StringEquals": {"cloudwatch:namespace": GPU_METRICS_NAMESPACE}},
            )
        )
        user_data = ec2.UserData.for_linux()
        user_data.add_commands(*_gpu_metrics_agent_commands())
        if sizing.on_demand_percentage < 100:
            # On a Spot interruption notice ECS drains the instance: tasks get SIGTERM and the worker
            # hands its shard back (CDK writes this only for groups with a legacy spotPrice).
            user_data.add_commands("echo ECS_ENABLE_SPOT_INSTANCE_DRAINING=true >> /etc/ecs/ecs.config")
        launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=ecs.EcsOptimizedImage.amazon_linux2023(ecs.AmiHardwareType.GPU),
            user_data=user_data,
            role=instance_role,
            security_group=self.security_group,
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
        asg = autoscaling.AutoScalingGroup(
            self,
            "Instances",
            vpc=self.vpc,
            vpc_subnets=self._subnets,
            min_capacity=0,
            max_capacity=sizing.max_workers,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=launch_template,
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
        capacity_provider = ecs.AsgCapacityProvider(
            self,
            "CapacityProvider",
            auto_scaling_group=asg,
            machine_image_type=ecs.MachineImageType.AMAZON_LINUX_2,
            enable_managed_scaling=True,
            target_capacity_percent=100,
            # ECS keeps instances that run tasks; it scales the group in only when they are empty.
            enable_managed_termination_protection=True,
        )
        self.cluster.add_asg_capacity_provider(capacity_provider)
        self.auto_scaling_group = asg
        self.capacity_provider = capacity_provider
        return ecs.Ec2Service(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            desired_count=0,
            capacity_provider_strategies=[
                ecs.CapacityProviderStrategy(
                    capacity_provider=capacity_provider.capacity_provider_name, weight=1
                )
            ],
            # Deployments replace idle workers first; protected ones finish their shard before stopping.
            min_healthy_percent=0,
            max_healthy_percent=100,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            placement_strategies=[ecs.PlacementStrategy.packed_by_memory()],
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
            enable_ecs_managed_tags=True,
        )

    def _fargate_service(self, sizing: FleetSizing) -> ecs.FargateService:
        self.cluster.enable_fargate_capacity_providers()
        return ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            desired_count=0,
            vpc_subnets=self._subnets,
            security_groups=[self.security_group],
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

    def _add_worker_container(
        self, image: ecs.ContainerImage, environment: Mapping[str, str], sizing: FleetSizing
    ) -> None:
        env = {
            **environment,
            "AWS_REGION": Aws.REGION,
            "AWS_DEFAULT_REGION": Aws.REGION,
            # One task = one worker slot (= one GPU on the GPU flavour).
            "SHARDQ_CONCURRENCY": "1",
            "SHARDQ_TASK_PROTECTION_MINUTES": str(TASK_PROTECTION_MINUTES),
        }
        self.task_definition.add_container(
            CONTAINER_NAME,
            image=image,
            command=["--log-format", "json", "--grace-seconds", str(WORKER_GRACE_SECONDS)],
            environment=env,
            gpu_count=1 if sizing.gpu else None,
            cpu=sizing.task_cpu if sizing.gpu else None,
            memory_reservation_mib=sizing.task_memory_mib if sizing.gpu else None,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="worker", log_group=self.log_group),
            stop_timeout=Duration.seconds(STOP_TIMEOUT_SECONDS),
            # tini as PID 1: forwards SIGTERM to the worker and reaps data-loader processes.
            linux_parameters=ecs.LinuxParameters(self, "LinuxParameters", init_process_enabled=True),
            essential=True,
        )

    def _scaling(self, sizing: FleetSizing) -> appscaling.ScalableTarget:
        target = appscaling.ScalableTarget(
            self,
            "ScalableTarget",
            service_namespace=appscaling.ServiceNamespace.ECS,
            scalable_dimension="ecs:service:DesiredCount",
            resource_id=f"service/{self.cluster.cluster_name}/{self.service.service_name}",
            min_capacity=0,
            max_capacity=sizing.max_workers,
            # The service-linked role, created by Application Auto Scaling on first use.
            role=iam.Role.from_role_arn(
                self,
                "AutoScalingRole",
                Arn.format(
                    ArnComponents(
                        service="iam",
                        region="",
                        resource="role/aws-service-role/ecs.application-autoscaling.amazonaws.com",
                        resource_name="AWSServiceRoleForApplicationAutoScaling_ECSService",
                        arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                    ),
                    Stack.of(self),
                ),
            ),
        )
        self._track_backlog_per_worker(target, sizing)
        self._wake_from_zero(target, sizing)
        self._scale_to_zero(target, sizing)
        return target

    def _track_backlog_per_worker(self, target: appscaling.ScalableTarget, sizing: FleetSizing) -> None:
        """Target tracking on metric math (the L2 policy takes plain metrics only)."""
        cfn = appscaling.CfnScalingPolicy
        q = self.task_queue

        def stat(
            query_id: str, namespace: str, name: str, dims: Mapping[str, str]
        ) -> appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
            return cfn.TargetTrackingMetricDataQueryProperty(
                id=query_id,
                return_data=False,
                metric_stat=cfn.TargetTrackingMetricStatProperty(
                    stat="Average",
                    metric=cfn.TargetTrackingMetricProperty(
                        namespace=namespace,
                        metric_name=name,
                        dimensions=[
                            cfn.TargetTrackingMetricDimensionProperty(name=k, value=v)
                            for k, v in dims.items()
                        ],
                    ),
                ),
            )

        service_dims = {"ClusterName": self.cluster.cluster_name, "ServiceName": self.service.service_name}
        queries = [
            stat("visible", "AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": q.queue_name}),
            stat("inflight", "AWS/SQS", "ApproximateNumberOfMessagesNotVisible", {"QueueName": q.queue_name}),
            stat("running", CONTAINER_INSIGHTS_NAMESPACE, "RunningTaskCount", service_dims),
            stat("desired", CONTAINER_INSIGHTS_NAMESPACE, "DesiredTaskCount", service_dims),
            cfn.TargetTrackingMetricDataQueryProperty(
                id="backlog", expression=BACKLOG_EXPRESSION, return_data=False
            ),
            cfn.TargetTrackingMetricDataQueryProperty(
                id="workers", expression=WORKERS_EXPRESSION, return_data=False
            ),
            cfn.TargetTrackingMetricDataQueryProperty(
                id="perworker",
                expression=BACKLOG_PER_WORKER_EXPRESSION,
                label="backlog per worker",
                return_data=True,
            ),
        ]
        self.backlog_policy = cfn(
            self,
            "BacklogPerWorkerPolicy",
            policy_name=Names.unique_id(self) + "BacklogPerWorker",
            policy_type="TargetTrackingScaling",
            scaling_target_id=target.scalable_target_id,
            target_tracking_scaling_policy_configuration=cfn.TargetTrackingScalingPolicyConfigurationProperty(
                target_value=float(sizing.backlog_per_worker),
                customized_metric_specification=cfn.CustomizedMetricSpecificationProperty(metrics=queries),
                scale_out_cooldown=60,
                # Scale-in removes idle workers only: a worker training a shard is task-protected.
                scale_in_cooldown=300,
            ),
        )

    def _wake_from_zero(self, target: appscaling.ScalableTarget, sizing: FleetSizing) -> None:
        """0 tasks and a backlog: start ceil(backlog / target) workers (up to WAKE_STEPS_MAX) at once."""
        action = appscaling.StepScalingAction(
            self,
            "WakeFromZero",
            scaling_target=target,
            adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
            cooldown=Duration.minutes(2),
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
        )
        t = sizing.backlog_per_worker
        levels = min(sizing.max_workers, WAKE_STEPS_MAX)
        # Bounds are relative to the alarm threshold (1 task): backlog in ((k-1)t, kt] → k workers.
        for k in range(1, levels + 1):
            action.add_adjustment(
                adjustment=k,
                lower_bound=(k - 1) * t,
                upper_bound=k * t if k < levels else None,
            )
        inputs = self._inputs()
        self.wake_alarm = cloudwatch.Alarm(
            self,
            "WakeFromZeroAlarm",
            metric=cloudwatch.MathExpression(
                expression=WAKE_EXPRESSION,
                using_metrics=inputs,
                label="backlog with no workers",
                period=_ONE_MINUTE,
            ),
            threshold=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description="Scaling (not paging): tasks wait and the fleet has no workers; start some.",
        )
        self.wake_alarm.add_alarm_action(cw_actions.ApplicationScalingAction(action))

    def _scale_to_zero(self, target: appscaling.ScalableTarget, sizing: FleetSizing) -> None:
        """No task visible or in flight for ``scale_to_zero_after``: stop every worker."""
        action = appscaling.StepScalingAction(
            self,
            "ScaleToZero",
            scaling_target=target,
            adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
            cooldown=Duration.minutes(5),
            metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
        )
        action.add_adjustment(adjustment=0, upper_bound=0)
        periods = max(1, int(sizing.scale_to_zero_after.to_minutes()))
        self.idle_alarm = cloudwatch.Alarm(
            self,
            "QueueIdleAlarm",
            metric=self.metric_backlog(),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            # An idle queue may stop publishing metrics: silence means nothing to train.
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            alarm_description=f"Scaling (not paging): no task queued or in flight for {periods} min; "
            "scale the worker fleet to zero.",
        )
        self.idle_alarm.add_alarm_action(cw_actions.ApplicationScalingAction(action))


def _validate(sizing: FleetSizing) -> None:
    problems = Problems("WorkerFleet")
    problems.require(
        sizing.kind in FLEET_KINDS, f"kind={sizing.kind!r}; fix: use one of {', '.join(FLEET_KINDS)}"
    )
    problems.require(
        sizing.max_workers >= 1, f"max_workers={sizing.max_workers}; fix: allow at least one worker"
    )
    problems.require(
        0 <= sizing.on_demand_base_capacity <= sizing.max_workers,
        f"on_demand_base_capacity={sizing.on_demand_base_capacity} must be within 0..max_workers "
        f"({sizing.max_workers}); fix: lower it",
    )
    problems.require(
        0 <= sizing.on_demand_percentage <= 100,
        f"on_demand_percentage={sizing.on_demand_percentage}; fix: use 0..100",
    )
    problems.require(
        sizing.backlog_per_worker > 0,
        f"backlog_per_worker={sizing.backlog_per_worker}; fix: use a positive target",
    )
    problems.require(
        sizing.scale_to_zero_after.to_minutes() >= 1,
        "scale_to_zero_after must be at least one minute (the metrics' period); fix: raise it",
    )
    problems.require(
        not sizing.gpu or len(sizing.instance_types) >= 1,
        "the GPU fleet needs at least one instance type; fix: list some, e.g. g5.xlarge",
    )
    problems.raise_if_any()


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
