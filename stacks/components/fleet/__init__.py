"""WorkerFleet: shardq workers on Amazon ECS that scale with the runnable tasks, down to zero.

Off by default (context ``fleet``). Two flavours share everything but the capacity:

* ``gpu``: an EC2 Auto Scaling group of GPU instances (ECS GPU-optimized AMI, Spot/On-Demand mix)
  behind an ECS capacity provider with managed scaling; one GPU per task (``gpuCount``).
* ``fargate``: CPU-only tasks on Fargate / Fargate Spot, for cheap runs and for trying the fleet
  without GPUs.

The package follows the fleet's three questions: where workers run (:mod:`.capacity`), what a
worker is (:mod:`.service`), and how many run (:mod:`.scaling`, with the RunnableLanes gauge from
:mod:`.lanes`). Every construct is created in this construct's scope, so logical ids do not depend
on the module layout.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import RemovalPolicy
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import ComponentPropsError
from stacks.components.fleet.capacity import (
    GPU_METRICS_NAMESPACE,
    gpu_capacity,
    network,
    worker_security_group,
    worker_subnets,
)
from stacks.components.fleet.lanes import LanesPublisher
from stacks.components.fleet.scaling import (
    CONTAINER_INSIGHTS_NAMESPACE,
    FleetMetrics,
    MetricSource,
    scalable_target,
    scale_to_zero,
    scaling_rule,
    track_runnable_per_worker,
    wake_from_zero,
)
from stacks.components.fleet.service import (
    STOP_TIMEOUT_SECONDS,
    add_worker_container,
    fargate_service,
    gpu_service,
    task_definition,
    task_role,
)
from stacks.components.fleet.sizing import FLEET_KINDS, FleetSizing, validate_sizing
from stacks.worker_trust import trust

__all__ = ["FLEET_KINDS", "STOP_TIMEOUT_SECONDS", "FleetSizing", "WorkerFleet"]


def _validate_allow(allow: str) -> None:
    """The workers' SHARDQ_ALLOW must parse as the worker parses it and name something: a worker
    with an empty or malformed list refuses to start, which ECS would only show as a crash loop."""
    try:
        empty = not trust().AllowList.parse(allow).patterns
    except trust().AllowListError:
        empty = False
    else:
        if not empty:
            return
    why = "names no module, so every worker would refuse to start" if empty else "is not module patterns"
    raise ComponentPropsError(
        f"WorkerFleet: invalid props:\n  - allow={allow!r} {why}; fix: pass the patterns of the code "
        "the image ships, comma-separated, like 'examples.*' or 'mypkg.*,examples.linear'"
    )


class WorkerFleet(Construct):
    """ECS cluster, capacity, the worker service and its runnable-tasks-per-worker scaling.

    Parameters
    ----------
    sizing
        Flavour and bounds (:class:`FleetSizing`).
    task_queue
        The FIFO task queue: its depth drives the scaling.
    job_table
        The job table: the lanes publisher reads the RUNNING jobs from it.
    lanes_code
        The shared Lambda code asset (runs ``lambdas/fleet_lanes.py``).
    worker_policy
        The exported worker policy; attached to the task role, which holds nothing else but the
        right to set its own task's scale-in protection.
    image
        The worker container image (the repository's Dockerfile as an asset, or a user's image).
    environment
        Container environment (queue URLs, table name); region and concurrency are added here.
    allow
        The workers' entry-point allow-list (``SHARDQ_ALLOW``, comma-separated module patterns):
        the code they may import. Required: a worker refuses to start without one.
    log_retention
        Retention of the worker, lanes publisher and VPC flow log groups.

    Attributes
    ----------
    vpc, security_group, cluster, task_definition, task_role, service, log_group, scalable_target
        The parts, for wiring and tests.
    metrics, lanes, backlog_policy, wake_alarm, idle_alarm
        The scaling rule's metrics, the lanes publisher and the three scaling policies' parts.
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
        job_table: dynamodb.ITable,
        lanes_code: lambda_.Code,
        worker_policy: iam.IManagedPolicy,
        image: ecs.ContainerImage,
        environment: Mapping[str, str],
        allow: str,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        validate_sizing(sizing)
        _validate_allow(allow)
        self.sizing = sizing
        self.task_queue = task_queue
        self._build_workers(sizing, worker_policy, image, {**environment, trust().ENV: allow}, log_retention)
        self.lanes = LanesPublisher(
            self, "Lanes", code=lanes_code, job_table=job_table, log_retention=log_retention
        )
        self.metrics = FleetMetrics(self._metric_sources(job_table), sizing)
        self.scalable_target = scalable_target(
            self,
            sizing=sizing,
            resource_id=f"service/{self.cluster.cluster_name}/{self.service.service_name}",
        )
        self.backlog_policy = track_runnable_per_worker(self, self.scalable_target, self.metrics)
        self.wake_alarm = wake_from_zero(self, self.scalable_target, self.metrics)
        self.idle_alarm = scale_to_zero(self, self.scalable_target, self.metrics)

    def _build_workers(
        self,
        sizing: FleetSizing,
        worker_policy: iam.IManagedPolicy,
        image: ecs.ContainerImage,
        environment: Mapping[str, str],
        log_retention: logs.RetentionDays,
    ) -> None:
        """Network, cluster, capacity, task definition, service and the worker container."""
        self.vpc = network(self, sizing, log_retention)
        self.security_group = worker_security_group(self, self.vpc)
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
        self.task_role = task_role(self, self.cluster, worker_policy)
        self.task_definition = task_definition(self, sizing, self.task_role)
        self.auto_scaling_group: autoscaling.AutoScalingGroup | None = None
        self.capacity_provider: ecs.AsgCapacityProvider | None = None
        if sizing.gpu:
            capacity = gpu_capacity(
                self, sizing, vpc=self.vpc, security_group=self.security_group, cluster=self.cluster
            )
            self.auto_scaling_group = capacity.auto_scaling_group
            self.capacity_provider = capacity.capacity_provider
            self.service: ecs.BaseService = gpu_service(
                self,
                cluster=self.cluster,
                definition=self.task_definition,
                capacity_provider=capacity.capacity_provider,
            )
        else:
            self.service = fargate_service(
                self,
                sizing,
                cluster=self.cluster,
                definition=self.task_definition,
                subnets=worker_subnets(sizing),
                security_group=self.security_group,
            )
        add_worker_container(
            self,
            self.task_definition,
            image=image,
            environment=environment,
            sizing=sizing,
            log_group=self.log_group,
        )

    def _metric_sources(self, job_table: dynamodb.ITable) -> dict[str, MetricSource]:
        lanes = scaling_rule()["lanes_metric"]
        queue = {"QueueName": self.task_queue.queue_name}
        service = {"ClusterName": self.cluster.cluster_name, "ServiceName": self.service.service_name}
        return {
            "visible": MetricSource("AWS/SQS", "ApproximateNumberOfMessagesVisible", queue),
            "inflight": MetricSource("AWS/SQS", "ApproximateNumberOfMessagesNotVisible", queue),
            "running": MetricSource(CONTAINER_INSIGHTS_NAMESPACE, "RunningTaskCount", service),
            "desired": MetricSource(CONTAINER_INSIGHTS_NAMESPACE, "DesiredTaskCount", service),
            "lanes": MetricSource(
                lanes["namespace"], lanes["metric_name"], {lanes["dimension"]: job_table.table_name}
            ),
        }

    # -- metrics (also drawn on the dashboard) ---------------------------------------------------

    def metric_tasks(self, metric_name: str, label: str | None = None) -> cloudwatch.Metric:
        """A Container Insights task count of the worker service (RunningTaskCount, ...)."""
        name = {"RunningTaskCount": "running", "DesiredTaskCount": "desired"}.get(metric_name)
        if name is not None:
            return self.metrics.input(name, label)
        return cloudwatch.Metric(
            namespace=CONTAINER_INSIGHTS_NAMESPACE,
            metric_name=metric_name,
            dimensions_map={
                "ClusterName": self.cluster.cluster_name,
                "ServiceName": self.service.service_name,
            },
            statistic="Average",
            period=self.metrics.input("running").period,
            label=label,
        )

    def metric_backlog(self) -> cloudwatch.MathExpression:
        """Tasks waiting or being trained: visible + in flight on the task queue."""
        return self.metrics.expression("backlog", "backlog (visible + in flight)")

    def metric_runnable(self) -> cloudwatch.MathExpression:
        """Tasks that can run now: the backlog capped at RunnableLanes × target."""
        return self.metrics.expression("runnable", "runnable tasks")

    def metric_lanes(self) -> cloudwatch.Metric:
        """The RunnableLanes gauge: lanes RUNNING jobs can keep busy."""
        return self.metrics.input("lanes", "runnable lanes")

    def metric_backlog_per_worker(self) -> cloudwatch.MathExpression:
        """The scaling metric: runnable tasks / max(running, desired) tasks (runnable itself at zero)."""
        return self.metrics.expression("perworker", "runnable tasks per worker")

    def metric_shortfall(self) -> cloudwatch.MathExpression:
        """Tasks the service wants but cannot run (waiting for instances, Spot capacity or quota)."""
        return cloudwatch.MathExpression(
            expression="FILL(desired, 0) - FILL(running, 0)",
            using_metrics={k: self.metrics.input(k) for k in ("desired", "running")},
            label="desired - running",
            period=self.metrics.input("running").period,
        )

    def metrics_gpu(self) -> list[cloudwatch.IMetric]:
        """GPU reservation (ECS) and utilisation (CloudWatch agent on the GPU instances)."""
        if not self.sizing.gpu:
            return []
        period = self.metrics.input("running").period
        return [
            cloudwatch.Metric(
                namespace="AWS/ECS",
                metric_name="GPUReservation",
                dimensions_map={"ClusterName": self.cluster.cluster_name},
                statistic="Average",
                period=period,
                label="GPUs reserved by tasks (%)",
            ),
            cloudwatch.MathExpression(
                expression=(
                    f"SEARCH('{{{GPU_METRICS_NAMESPACE},InstanceId,arch,index,name}} "
                    "MetricName=\"nvidia_smi_utilization_gpu\"', 'Average', 60)"
                ),
                using_metrics={},
                label="GPU utilisation (%)",
                period=period,
            ),
        ]
