"""ShardqStack: composes the shardq components and wires them together (grants live here)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Acknowledgment, CfnOutput, CfnResource, Duration, Fn, Stack, Tags, Validations
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_logs as logs
from constructs import Construct, IConstruct

from stacks.components import (
    FunctionSizing,
    JobStore,
    Monitoring,
    ResultsQueue,
    ShardqFunctions,
    TaskQueues,
    WorkerAccess,
)
from stacks.components._props import VISIBILITY_PER_CONSUMER_TIMEOUT, ComponentPropsError, seconds
from stacks.components.fleet import FleetSizing, WorkerFleet
from stacks.components.monitoring import MonitoredFleet, MonitoredFunctions, MonitoredQueues
from stacks.config import ShardqConfig

STACK_DESCRIPTION = (
    "shardq: coordinates distributed ML training through Amazon SQS "
    "(task and results queues, job table, artifact bucket, splitter/aggregator/DLQ-handler Lambdas)"
)
POWERTOOLS_LAYER_ARN = (
    "arn:aws:lambda:${AWS::Region}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-arm64:"
)
RESULTS_BATCH_SIZE = 100  # standard queue: one Lambda call and one counter write cover many results
DLQ_BATCH_SIZE = 10
DLQ_HANDLER_MAX_CONCURRENCY = 2  # the Lambda minimum; dead tasks are rare and each one writes a job item
EVENT_BUS_NAME = "default"
# Base images of the worker Dockerfile (build arg BASE_IMAGE) when fleet_base_image is null.
DEFAULT_BASE_IMAGES = {
    "gpu": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
    "fargate": "python:3.11-slim",
}
WORKER_DOCKERFILE = "Dockerfile"
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?P<cn>\.cn)?/"
    r"(?P<repo>[a-z0-9._/-]+?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]*))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)

# Logical IDs of stateful resources: pinned so refactoring the construct tree never replaces them.
PINNED_LOGICAL_IDS = {
    "JobTable": ("job_store", "table"),
    "ArtifactBucket": ("job_store", "artifact_bucket"),
    "AccessLogBucket": ("job_store", "access_log_bucket"),
    "TaskQueue": ("task_queues", "queue"),
    "TaskDlq": ("task_queues", "dead_letter_queue"),
    "ResultsQueue": ("results", "queue"),
    "ResultsDlq": ("results", "dead_letter_queue"),
    "SplitterFailureQueue": ("functions", "splitter_failure_queue"),
}


@dataclass(frozen=True)
class NagAcknowledgment:
    """One cdk-nag finding acknowledged at one scope, with the reason (read by the tests)."""

    scope: IConstruct
    id: str
    reason: str


class ShardqStack(Stack):
    """The shardq coordination plane: queues, job store, Lambdas, worker policy, monitoring."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: ShardqConfig,
        lambda_source: Path,
        sizing: FunctionSizing | None = None,
        worker_image_dir: Path | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(scope, construct_id, description=STACK_DESCRIPTION, **kwargs)  # type: ignore[arg-type]
        self.config = config
        sizing = sizing or FunctionSizing()

        self.queue_key = self._queue_key(config)
        self.task_queues = TaskQueues(
            self,
            "TaskQueues",
            max_receive_count=config.max_receive_count,
            visibility_timeout=Duration.seconds(config.task_visibility_timeout_seconds),
            dlq_consumer_timeout=sizing.dlq_handler.timeout,
            encryption_key=self.queue_key,
            high_throughput=config.fifo_high_throughput,
        )
        self.results = ResultsQueue(
            self,
            "Results",
            consumer_timeout=sizing.aggregator.timeout,
            max_receive_count=config.max_receive_count,
            encryption_key=self.queue_key,
        )
        self.job_store = JobStore(
            self,
            "JobStore",
            noncurrent_version_expiry=Duration.days(config.noncurrent_version_expiry_days),
            artifact_expiry=Duration.days(config.artifact_expiry_days)
            if config.artifact_expiry_days
            else None,
            access_log_retention=Duration.days(config.access_log_retention_days),
        )

        environment = {
            "SHARDQ_JOB_TABLE": self.job_store.table.table_name,
            "SHARDQ_TASK_QUEUE_URL": self.task_queues.queue.queue_url,
            "SHARDQ_RESULTS_QUEUE_URL": self.results.queue.queue_url,
            "SHARDQ_ARTIFACT_BUCKET": self.job_store.artifact_bucket.bucket_name,
            "SHARDQ_EVENT_BUS_NAME": EVENT_BUS_NAME,
            "SHARDQ_JOB_TTL_DAYS": str(config.job_ttl_days),
            # High-throughput FIFO spreads a queue over partitions of 300 calls/s each: keep more
            # SendMessageBatch calls in flight to use them (BENCHMARKS.md, quota model).
            "SHARDQ_FANOUT_IN_FLIGHT": "32" if config.fifo_high_throughput else "8",
            # The buckets the worker policy can read: the splitter refuses s3:// data elsewhere.
            "SHARDQ_DATA_BUCKETS": Fn.join(
                ",",
                [
                    self.job_store.artifact_bucket.bucket_name,
                    *(arn.rsplit(":", 1)[-1] for arn in config.dataset_bucket_arns),
                ],
            ),
            "POWERTOOLS_SERVICE_NAME": "shardq",
            "POWERTOOLS_METRICS_NAMESPACE": "shardq",
            "LOG_LEVEL": config.log_level,
        }
        self.functions = ShardqFunctions(
            self,
            "Functions",
            code=lambda_.Code.from_asset(str(lambda_source)),
            layers=self._layers(config),
            environment=environment,
            dlq_handler_environment={"SHARDQ_MAX_RECEIVE_COUNT": str(config.max_receive_count)},
            sizing=sizing,
            log_retention=_retention(config.log_retention_days),
            encryption_key=self.queue_key,
            aggregator_reserved_concurrency=config.aggregator_reserved_concurrency,
        )
        self._wire_data_plane()
        self._wire_event_sources(sizing)

        self.worker_access = WorkerAccess(
            self,
            "WorkerAccess",
            task_queue=self.task_queues.queue,
            results_queue=self.results.queue,
            job_table=self.job_store.table,
            artifact_bucket=self.job_store.artifact_bucket,
            dataset_bucket_arns=config.dataset_bucket_arns,
            queue_encryption_key=self.queue_key,
        )
        self.fleet = self._fleet(config, worker_image_dir) if config.fleet_enabled else None
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            queues=MonitoredQueues(
                task_queue=self.task_queues.queue,
                task_dlq=self.task_queues.dead_letter_queue,
                results_queue=self.results.queue,
                results_dlq=self.results.dead_letter_queue,
                splitter_failure_queue=self.functions.splitter_failure_queue,
            ),
            functions=MonitoredFunctions(
                splitter=self.functions.splitter,
                aggregator=self.functions.aggregator,
                dlq_handler=self.functions.dlq_handler,
            ),
            oldest_task_age=Duration.seconds(config.oldest_task_age_alarm_seconds),
            alarm_email=config.alarm_email,
            fleet=MonitoredFleet(
                tasks=[
                    self.fleet.metric_tasks(name, label)
                    for name, label in (
                        ("DesiredTaskCount", "desired"),
                        ("RunningTaskCount", "running"),
                        ("PendingTaskCount", "pending"),
                    )
                ],
                backlog_per_worker=self.fleet.metric_backlog_per_worker(),
                target_backlog_per_worker=config.fleet_backlog_per_worker,
                shortfall=self.fleet.metric_shortfall(),
                gpu=self.fleet.metrics_gpu(),
            )
            if self.fleet
            else None,
        )

        self._pin_logical_ids()
        self._outputs()
        Tags.of(self).add("project", "shardq")
        Tags.of(self).add("component", "coordination-plane")
        for key, value in config.tags.items():
            Tags.of(self).add(key, value)
        self.acknowledgments = self._acknowledge_nag_findings()

    # -- building blocks -------------------------------------------------------------------------

    def _queue_key(self, config: ShardqConfig) -> kms.IKey | None:
        if config.queue_encryption != "kms":
            return None
        if config.queue_kms_key_arn:
            return kms.Key.from_key_arn(self, "QueueKey", config.queue_kms_key_arn)
        return kms.Key(
            self,
            "QueueKey",
            description="Encrypts the shardq queues (SSE-KMS)",
            enable_key_rotation=True,
        )

    def _fleet(self, config: ShardqConfig, worker_image_dir: Path | None) -> WorkerFleet:
        return WorkerFleet(
            self,
            "Fleet",
            sizing=FleetSizing(
                kind=config.fleet,
                instance_types=config.fleet_instance_types,
                on_demand_base_capacity=config.fleet_on_demand_base_capacity,
                on_demand_percentage=config.fleet_on_demand_percentage,
                max_workers=config.fleet_max_workers,
                backlog_per_worker=config.fleet_backlog_per_worker,
                scale_to_zero_after=Duration.minutes(config.fleet_scale_to_zero_after_minutes),
                task_cpu=config.fleet_task_cpu,
                task_memory_mib=config.fleet_task_memory_mib,
                root_volume_gib=config.fleet_root_volume_gib,
                nat_gateways=config.fleet_nat_gateways,
            ),
            task_queue=self.task_queues.queue,
            worker_policy=self.worker_access.policy,
            image=self._worker_image(config, worker_image_dir),
            environment={
                "SHARDQ_TASK_QUEUE_URL": self.task_queues.queue.queue_url,
                "SHARDQ_RESULTS_QUEUE_URL": self.results.queue.queue_url,
                "SHARDQ_JOB_TABLE": self.job_store.table.table_name,
                "LOG_LEVEL": config.log_level,
            },
            log_retention=_retention(config.log_retention_days),
        )

    def _worker_image(self, config: ShardqConfig, worker_image_dir: Path | None) -> ecs.ContainerImage:
        """The user's image (fleet_image_uri), else the repository's Dockerfile as a CDK asset.

        An asset is only copied into cdk.out at synth; Docker builds and pushes it at deploy time.
        """
        uri = config.fleet_image_uri
        if uri:
            ecr_image = _ECR_IMAGE.match(uri)
            if ecr_image is None:  # a public registry: nothing to grant
                return ecs.ContainerImage.from_registry(uri)
            partition = "aws-cn" if ecr_image["cn"] else "aws"
            repository = ecr.Repository.from_repository_attributes(
                self,
                "WorkerImageRepository",
                repository_name=ecr_image["repo"],
                repository_arn=f"arn:{partition}:ecr:{ecr_image['region']}:{ecr_image['account']}:"
                f"repository/{ecr_image['repo']}",
            )
            # from_ecr_repository grants the execution role the pull on this repository alone.
            return ecs.ContainerImage.from_ecr_repository(
                repository, ecr_image["digest"] or ecr_image["tag"] or "latest"
            )
        if worker_image_dir is None:
            raise ComponentPropsError(
                "the fleet needs an image: pass worker_image_dir (the repository with the Dockerfile) or "
                "set fleet_image_uri"
            )
        return ecs.ContainerImage.from_asset(
            str(worker_image_dir),
            file=WORKER_DOCKERFILE,
            build_args={"BASE_IMAGE": config.fleet_base_image or DEFAULT_BASE_IMAGES[config.fleet]},
            platform=ecr_assets.Platform.LINUX_AMD64,
        )

    def _layers(self, config: ShardqConfig) -> list[lambda_.ILayerVersion]:
        if not config.powertools_layer:
            return []
        # Fn::Sub resolves the region at deploy time, so the template stays region-agnostic.
        arn = Fn.sub(POWERTOOLS_LAYER_ARN + str(config.powertools_layer_version))
        return [lambda_.LayerVersion.from_layer_version_arn(self, "PowertoolsLayer", arn)]

    def _wire_data_plane(self) -> None:
        """Least-privilege grants, written where the components meet."""
        store, fns = self.job_store, self.functions
        default_bus = events.EventBus.from_event_bus_name(self, "DefaultEventBus", EVENT_BUS_NAME)
        for fn in fns.all_functions:
            store.table.grant_read_write_data(fn)
            self.task_queues.queue.grant_send_messages(fn)  # splitter: round 0; others: next round
            store.artifact_bucket.grant_read(fn)
            store.artifact_bucket.grant_put(fn)  # manifests and results; nothing deletes artifacts
        for fn in (fns.aggregator, fns.dlq_handler):
            default_bus.grant_put_events_to(fn)
            # A next round too big for one invocation is handed to the splitter's continuation.
            fn.add_environment("SHARDQ_SPLITTER_FUNCTION", fns.splitter.function_name)
            # The unqualified function only (grant_invoke would add a ":*" qualifier wildcard).
            fn.add_to_role_policy(
                iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[fns.splitter.function_arn])
            )

    def _wire_event_sources(self, sizing: FunctionSizing) -> None:
        self._consume(
            self.functions.aggregator,
            sources.SqsEventSource(
                self.results.queue,
                batch_size=RESULTS_BATCH_SIZE,
                max_batching_window=Duration.seconds(self.config.results_batch_window_seconds),
                report_batch_item_failures=True,
                max_concurrency=self.config.aggregator_max_concurrency,
            ),
            queue_visibility=self.results.visibility_timeout,
        )
        self._consume(
            self.functions.dlq_handler,
            sources.SqsEventSource(
                self.task_queues.dead_letter_queue,
                batch_size=DLQ_BATCH_SIZE,
                report_batch_item_failures=True,
                max_concurrency=DLQ_HANDLER_MAX_CONCURRENCY,
            ),
            queue_visibility=Duration.seconds(
                VISIBILITY_PER_CONSUMER_TIMEOUT * sizing.dlq_handler.timeout_seconds
            ),
        )

    @staticmethod
    def _consume(fn: lambda_.Function, source: sources.SqsEventSource, *, queue_visibility: Duration) -> None:
        timeout = fn.timeout
        if timeout is None or seconds(queue_visibility) < VISIBILITY_PER_CONSUMER_TIMEOUT * seconds(timeout):
            raise ComponentPropsError(
                f"{fn.node.path}: queue visibility {seconds(queue_visibility)} s is below 6 x the function "
                "timeout; fix: derive the queue's visibility from this function's timeout"
            )
        fn.add_event_source(source)

    def _pin_logical_ids(self) -> None:
        for logical_id, (component, attribute) in PINNED_LOGICAL_IDS.items():
            construct = getattr(getattr(self, component), attribute)
            child = construct.node.default_child
            assert isinstance(child, CfnResource)
            child.override_logical_id(logical_id)

    def _outputs(self) -> None:
        tq, res, store, fns = self.task_queues, self.results, self.job_store, self.functions
        outputs = {
            "TaskQueueUrl": (
                tq.queue.queue_url,
                "FIFO queue workers poll for shard tasks (SHARDQ_TASK_QUEUE_URL)",
            ),
            "TaskQueueArn": (tq.queue.queue_arn, "ARN of the FIFO task queue"),
            "TaskDlqUrl": (
                tq.dead_letter_queue.queue_url,
                "FIFO dead-letter queue of tasks that exhausted maxReceiveCount "
                "(consumed by the DLQ handler)",
            ),
            "ResultsQueueUrl": (
                res.queue.queue_url,
                "Queue workers send ShardResults to (SHARDQ_RESULTS_QUEUE_URL)",
            ),
            "ResultsDlqUrl": (
                res.dead_letter_queue.queue_url,
                "Dead-letter queue of results the aggregator rejected",
            ),
            "SplitterFailureQueueUrl": (
                fns.splitter_failure_queue.queue_url,
                "Failed asynchronous splitter invocations (Lambda on-failure destination)",
            ),
            "SplitterFunctionName": (
                fns.splitter.function_name,
                "Invoke with a TrainingRequest to start a job",
            ),
            "AggregatorFunctionName": (
                fns.aggregator.function_name,
                "Aggregates results from the results queue",
            ),
            "DlqHandlerFunctionName": (fns.dlq_handler.function_name, "Marks shards of dead tasks FAILED"),
            "JobTableName": (store.table.table_name, "DynamoDB table of job records (SHARDQ_JOB_TABLE)"),
            "ArtifactBucketName": (
                store.artifact_bucket.bucket_name,
                "S3 bucket for models, results and manifests under jobs/ (SHARDQ_ARTIFACT_BUCKET)",
            ),
            "WorkerPolicyArn": (
                self.worker_access.policy.managed_policy_arn,
                "Attach this managed policy to any worker role (EC2, ECS, Batch, SageMaker)",
            ),
            "DashboardUrl": (
                self.monitoring.dashboard_url,
                "CloudWatch dashboard of queues, Lambdas and jobs",
            ),
            "AlarmTopicArn": (self.monitoring.topic.topic_arn, "SNS topic the shardq alarms publish to"),
        }
        if self.fleet is not None:
            outputs["FleetClusterName"] = (self.fleet.cluster.cluster_name, "ECS cluster of the worker fleet")
            outputs["FleetServiceName"] = (
                self.fleet.service.service_name,
                "ECS service of the workers (scales on backlog per worker, down to zero)",
            )
            outputs["FleetLogGroupName"] = (self.fleet.log_group.log_group_name, "Worker container logs")
        for output_id, (value, description) in outputs.items():
            CfnOutput(
                self,
                output_id,
                value=value,
                description=description,
                export_name=Fn.sub("${AWS::StackName}-WorkerPolicyArn")
                if output_id == "WorkerPolicyArn"
                else None,
            )

    def _acknowledge_nag_findings(self) -> list[NagAcknowledgment]:
        """Every cdk-nag finding shardq accepts, at the narrowest scope, with its reason.

        Finding ids carry the pack prefix and the finding detail (a bare rule id matches nothing when
        the rule reports details); tests/infra checks each one is actually used.
        """
        fns, worker = self.functions, self.worker_access
        bucket_objects = "Resource::<ArtifactBucket.Arn>/*"  # logical ids pinned in _pin_logical_ids
        acks: list[NagAcknowledgment] = []

        def ack(scope: IConstruct, finding: str, reason: str) -> None:
            acks.append(NagAcknowledgment(scope, finding, reason))

        for fn in fns.all_functions:
            role = fn.role
            assert role is not None
            ack(
                role,
                "AwsSolutions::AwsSolutions-IAM5[Resource::*]",
                "X-Ray PutTraceSegments/PutTelemetryRecords support no resource-level permissions; "
                "CDK adds them for active tracing.",
            )
            ack(
                role,
                "AwsSolutions::AwsSolutions-IAM5[Resource::<JobTable.Arn>/index/*]",
                "grant_read_write_data covers the job table's indexes: the runtime queries the "
                "by_status GSI.",
            )
            ack(
                role,
                f"AwsSolutions::AwsSolutions-IAM5[{bucket_objects}]",
                "Job artifacts have runtime-generated keys (jobs/<job_id>/...); object access is scoped to "
                "this one bucket.",
            )
            for action in ("s3:GetObject*", "s3:GetBucket*", "s3:List*", "s3:Abort*"):
                ack(
                    role,
                    f"AwsSolutions::AwsSolutions-IAM5[Action::{action}]",
                    f"{action} comes from Bucket.grant_read/grant_put on the artifact bucket alone "
                    "(read objects and versions, abort own multipart uploads).",
                )
            if self.queue_key is not None:
                for action in ("kms:ReEncrypt*", "kms:GenerateDataKey*"):
                    ack(
                        role,
                        f"AwsSolutions::AwsSolutions-IAM5[Action::{action}]",
                        f"{action} comes from Queue.grant_send_messages/consume on queues encrypted with the "
                        "one shardq queue key, and is scoped to that key.",
                    )
        for fn in (fns.aggregator, fns.dlq_handler):
            ack(
                fn,
                "Serverless::Serverless-LambdaDLQ",
                "Invoked only synchronously by an SQS event source mapping, never asynchronously: failed "
                "messages go to the source queue's DLQ through its redrive policy.",
            )
        ack(
            fns.splitter,
            "Serverless::Serverless-LambdaDLQ",
            "Async failures go to an on-failure destination (SplitterFailureQueue), which supersedes the "
            "legacy DeadLetterConfig and records the request and the error.",
        )
        ack(
            self,
            "Serverless::Serverless-LambdaEventSourceMappingDestination",
            "SQS event source mappings support no on-failure destination (only streams and Kafka do); "
            "each source queue's redrive policy sends failures to its DLQ.",
        )
        ack(
            worker.policy,
            f"AwsSolutions::AwsSolutions-IAM5[{bucket_objects}]",
            "Workers read dataset and model objects of any job in the artifact bucket; keys are generated "
            "per job at runtime.",
        )
        ack(
            worker.policy,
            "AwsSolutions::AwsSolutions-IAM5[Resource::<ArtifactBucket.Arn>/jobs/*]",
            "Workers write artifacts under jobs/<job_id>/ whose ids exist only at runtime; scoped to "
            "the prefix.",
        )
        for arn in self.config.dataset_bucket_arns:
            ack(
                worker.policy,
                f"AwsSolutions::AwsSolutions-IAM5[Resource::{arn}/*]",
                "Read-only access to the objects of a dataset bucket named in dataset_bucket_arns.",
            )
        if self.config.alarm_email:
            ack(
                self.monitoring.topic,
                "Serverless::Serverless-SNSRedrivePolicy",
                "The only subscription is the optional alarm email; the alarm state stays in "
                "CloudWatch and on "
                "the dashboard, so an undelivered email loses nothing a DLQ would keep.",
            )
        for dlq in (self.task_queues.dead_letter_queue, self.results.dead_letter_queue):
            ack(
                dlq,
                "Serverless::Serverless-SQSRedrivePolicy",
                "This queue is a dead-letter queue; a DLQ of a DLQ would only move the problem.",
            )
        ack(
            fns.splitter_failure_queue,
            "AwsSolutions::AwsSolutions-SQS3",
            "This queue is the splitter's on-failure destination, the end of the line like a DLQ; an alarm "
            "fires on its first message.",
        )
        ack(
            fns.splitter_failure_queue,
            "Serverless::Serverless-SQSRedrivePolicy",
            "On-failure destination queue: it is itself the dead-letter store for async splitter "
            "invocations.",
        )
        if self.fleet is not None:
            self._acknowledge_fleet_findings(self.fleet, ack)
        for a in acks:
            Validations.of(a.scope).acknowledge(Acknowledgment(id=a.id, reason=a.reason))
        return acks

    def _acknowledge_fleet_findings(
        self, fleet: WorkerFleet, ack: Callable[[IConstruct, str, str], None]
    ) -> None:
        """The worker fleet's accepted findings (stacks/components/fleet.py)."""
        cluster = fleet.cluster.node.default_child
        assert isinstance(cluster, CfnResource)
        cluster_id = self.resolve(self.get_logical_id(cluster))
        execution_role = fleet.task_definition.execution_role
        assert execution_role is not None
        ack(
            execution_role,
            "AwsSolutions::AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken supports no resource-level permissions; image pulls and log writes "
            "are scoped to the image repository and the worker log group.",
        )
        ack(
            fleet.task_role,
            "AwsSolutions::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:ecs:<AWS::Region>:"
            f"<AWS::AccountId>:task/<{cluster_id}>/*]",
            "A worker sets scale-in protection on its own task, whose id exists only at run time; scoped "
            "to the tasks of the fleet's cluster.",
        )
        ack(
            fleet.task_definition,
            "AwsSolutions::AwsSolutions-ECS2",
            "The environment holds queue URLs, the table name, the region and worker settings: "
            "configuration, no secrets (credentials come from the task role).",
        )
        if fleet.auto_scaling_group is None:
            return
        instance_role = fleet.auto_scaling_group.role
        ack(
            instance_role,
            "AwsSolutions::AwsSolutions-IAM5[Resource::*]",
            "The ECS agent's DiscoverPollEndpoint, GetAuthorizationToken and Poll (conditioned on this "
            "cluster) and CloudWatch PutMetricData (conditioned on the shardq/Fleet namespace) support no "
            "resource-level permissions.",
        )
        ack(
            instance_role,
            "AwsSolutions::AwsSolutions-IAM5[Action::ecs:Submit*]",
            "ecs:Submit* is the ECS agent's state reporting, added by the CDK's capacity provider and "
            "scoped to the fleet's cluster.",
        )
        ack(
            fleet.auto_scaling_group,
            "AwsSolutions::AwsSolutions-EC26",
            "The rule cannot read a launch template referenced by a mixed instances policy; the template's "
            "root volume is encrypted gp3 (asserted in tests/infra/test_fleet.py).",
        )
        ack(
            fleet.auto_scaling_group,
            "AwsSolutions::AwsSolutions-AS3",
            "A scale-to-zero fleet launches and terminates instances all day: mailing each event would "
            "drown the alarms; the activity history and the FleetCannotPlaceTasks alarm cover failures.",
        )


def _retention(days: int) -> logs.RetentionDays:
    by_days = {
        1: "ONE_DAY",
        3: "THREE_DAYS",
        5: "FIVE_DAYS",
        7: "ONE_WEEK",
        14: "TWO_WEEKS",
        30: "ONE_MONTH",
        60: "TWO_MONTHS",
        90: "THREE_MONTHS",
        120: "FOUR_MONTHS",
        150: "FIVE_MONTHS",
        180: "SIX_MONTHS",
        365: "ONE_YEAR",
        400: "THIRTEEN_MONTHS",
        545: "EIGHTEEN_MONTHS",
        731: "TWO_YEARS",
        1096: "THREE_YEARS",
        1827: "FIVE_YEARS",
        3653: "TEN_YEARS",
    }
    return logs.RetentionDays[by_days[days]]
