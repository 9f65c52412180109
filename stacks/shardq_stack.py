"""ShardqStack: composes the shardq components and wires them together (grants live here)."""

from __future__ import annotations

from pathlib import Path

from aws_cdk import CfnOutput, CfnResource, Duration, Fn, Stack, Tags
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from constructs import Construct

from stacks.components import (
    FunctionSizing,
    JobStore,
    Monitoring,
    ResultsQueue,
    ShardqFunctions,
    TaskQueues,
    WorkerAccess,
)
from stacks.components._props import VISIBILITY_PER_CONSUMER_TIMEOUT, ComponentPropsError, retention, seconds
from stacks.components.fleet import FleetSizing, WorkerFleet
from stacks.components.monitoring import MonitoredFleet, MonitoredFunctions, MonitoredQueues
from stacks.components.pipeline_trigger import PipelineTrigger
from stacks.components.tenant_access import TenantAliases
from stacks.components.worker_image import worker_image
from stacks.config import ShardqConfig
from stacks.nag import acknowledge_findings
from stacks.tenancy_config import scheduling_context, tenant_principals

STACK_DESCRIPTION = (
    "shardq: coordinates distributed ML training through Amazon SQS "
    "(task and results queues, job table, artifact bucket, splitter/aggregator/DLQ-handler Lambdas)"
)
POWERTOOLS_LAYER_ARN = (
    "arn:aws:lambda:${AWS::Region}:017000801446:layer:AWSLambdaPowertoolsPythonV3-python314-arm64:"
)
RESULTS_BATCH_SIZE = 100  # standard queue: one Lambda call and one counter write cover many results
# The fast results queue (shardq.core.result_routes): round-closing messages reach the aggregator with
# no batching window; AWS allows a window of 0 only with batches of at most 10.
FAST_RESULTS_BATCH_SIZE = 10
DLQ_BATCH_SIZE = 10
DLQ_HANDLER_MAX_CONCURRENCY = 2  # the Lambda minimum; dead tasks are rare and each one writes a job item
EVENT_BUS_NAME = "default"
# Logical IDs of stateful resources: pinned so refactoring the construct tree never replaces them.
PINNED_LOGICAL_IDS = {
    "JobTable": ("job_store", "table"),
    "ArtifactBucket": ("job_store", "artifact_bucket"),
    "AccessLogBucket": ("job_store", "access_log_bucket"),
    "TaskQueue": ("task_queues", "queue"),
    "TaskDlq": ("task_queues", "dead_letter_queue"),
    "ResultsQueue": ("results", "queue"),
    "ResultsDlq": ("results", "dead_letter_queue"),
    "ParkedResults": ("results", "parked_queue"),
    "FastResultsQueue": ("results", "fast_queue"),
    "SplitterFailureQueue": ("functions", "splitter_failure_queue"),
    "PipelineFailureQueue": ("functions", "pipeline_failure_queue"),
}


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
        sizing = sizing or FunctionSizing.for_queue(high_throughput=config.fifo_high_throughput)

        self.queue_key = self._queue_key(config)
        self.task_queues = self._task_queues(config, sizing)
        self.results = self._results_queue(config, sizing)
        self.job_store = self._job_store(config)
        # One code asset for every function (the fleet's lanes publisher too).
        self.lambda_code = lambda_.Code.from_asset(str(lambda_source))
        self.functions = self._functions(config, sizing)
        self.tenant_access = TenantAliases(
            self,
            "TenantAccess",
            splitter=self.functions.splitter,
            principals=tenant_principals(config.scheduling),
        )
        self._wire_data_plane()
        self._wire_event_sources(sizing)
        self.pipeline_trigger = self._pipeline_trigger()
        self.worker_access = self._worker_access(config)
        self.fleet = self._fleet(config, worker_image_dir) if config.fleet_enabled else None
        self.monitoring = self._monitoring(config)

        self._pin_logical_ids()
        self._outputs()
        self._tag(config)
        self.acknowledgments = acknowledge_findings(self)

    # -- components ------------------------------------------------------------------------------

    def _task_queues(self, config: ShardqConfig, sizing: FunctionSizing) -> TaskQueues:
        """The FIFO task queue and its FIFO DLQ (consumed by the DLQ handler)."""
        return TaskQueues(
            self,
            "TaskQueues",
            max_receive_count=config.max_receive_count,
            visibility_timeout=Duration.seconds(config.task_visibility_timeout_seconds),
            dlq_consumer_timeout=sizing.dlq_handler.timeout,
            encryption_key=self.queue_key,
            high_throughput=config.fifo_high_throughput,
        )

    def _results_queue(self, config: ShardqConfig, sizing: FunctionSizing) -> ResultsQueue:
        """The results queue (consumed by the aggregator) and its DLQ (by the results DLQ handler)."""
        return ResultsQueue(
            self,
            "Results",
            consumer_timeout=sizing.aggregator.timeout,
            dlq_consumer_timeout=sizing.results_dlq_handler.timeout,
            max_receive_count=config.max_receive_count,
            encryption_key=self.queue_key,
        )

    def _job_store(self, config: ShardqConfig) -> JobStore:
        """The job table, the artifact bucket and its access-log bucket."""
        return JobStore(
            self,
            "JobStore",
            noncurrent_version_expiry=Duration.days(config.noncurrent_version_expiry_days),
            artifact_expiry=Duration.days(config.artifact_expiry_days)
            if config.artifact_expiry_days
            else None,
            access_log_retention=Duration.days(config.access_log_retention_days),
        )

    def _environment(self, config: ShardqConfig) -> dict[str, str]:
        """What every function finds in its environment (shardq.core.settings reads it)."""
        return {
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
            # Tenants, weights, quotas and windows (shardq.core.tenancy); absent: rounds go out whole.
            **(
                {"SHARDQ_SCHEDULING": scheduling_context(config.scheduling).to_json(principals=False)}
                if config.scheduling is not None
                else {}
            ),
        }

    def _functions(self, config: ShardqConfig, sizing: FunctionSizing) -> ShardqFunctions:
        """The splitter, aggregator and DLQ handler on the shared code asset."""
        # Kept for the outputs: the CLI builds the same Settings from them as the Lambdas from this.
        self.settings_environment = {
            **self._environment(config),
            "SHARDQ_MAX_RECEIVE_COUNT": str(config.max_receive_count),
        }
        return ShardqFunctions(
            self,
            "Functions",
            code=self.lambda_code,
            layers=self._layers(config),
            environment=self._environment(config),
            dlq_handler_environment={"SHARDQ_MAX_RECEIVE_COUNT": str(config.max_receive_count)},
            sizing=sizing,
            log_retention=retention(config.log_retention_days),
            encryption_key=self.queue_key,
            aggregator_reserved_concurrency=config.aggregator_reserved_concurrency,
        )

    def _worker_access(self, config: ShardqConfig) -> WorkerAccess:
        """The exported managed policy any worker fleet attaches."""
        return WorkerAccess(
            self,
            "WorkerAccess",
            task_queue=self.task_queues.queue,
            results_queue=self.results.queue,
            fast_results_queue=self.results.fast_queue,
            job_table=self.job_store.table,
            artifact_bucket=self.job_store.artifact_bucket,
            dataset_bucket_arns=config.dataset_bucket_arns,
            queue_encryption_key=self.queue_key,
        )

    def _monitoring(self, config: ShardqConfig) -> Monitoring:
        """Alarms to the SNS topic and the dashboard (with the fleet's panels when there is one)."""
        return Monitoring(
            self,
            "Monitoring",
            queues=MonitoredQueues(
                task_queue=self.task_queues.queue,
                task_dlq=self.task_queues.dead_letter_queue,
                results_queue=self.results.queue,
                results_dlq=self.results.dead_letter_queue,
                parked_results=self.results.parked_queue,
                fast_results=self.results.fast_queue,
                splitter_failure_queue=self.functions.splitter_failure_queue,
                pipeline_failure_queue=self.functions.pipeline_failure_queue,
            ),
            functions=MonitoredFunctions(
                splitter=self.functions.splitter,
                aggregator=self.functions.aggregator,
                dlq_handler=self.functions.dlq_handler,
                results_dlq_handler=self.functions.results_dlq_handler,
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
                work=[self.fleet.metric_backlog(), self.fleet.metric_runnable(), self.fleet.metric_lanes()],
                backlog_per_worker=self.fleet.metric_backlog_per_worker(),
                target_backlog_per_worker=config.fleet_backlog_per_worker,
                shortfall=self.fleet.metric_shortfall(),
                gpu=self.fleet.metrics_gpu(),
            )
            if self.fleet
            else None,
        )

    def _tag(self, config: ShardqConfig) -> None:
        """shardq's own tags on every resource, then the user's (context ``tags``)."""
        Tags.of(self).add("project", "shardq")
        Tags.of(self).add("component", "coordination-plane")
        for key, value in config.tags.items():
            Tags.of(self).add(key, value)

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
            job_table=self.job_store.table,
            lanes_code=self.lambda_code,
            worker_policy=self.worker_access.policy,
            image=worker_image(
                self,
                kind=config.fleet,
                image_uri=config.fleet_image_uri,
                base_image=config.fleet_base_image,
                dockerfile_dir=worker_image_dir,
            ),
            environment={
                "SHARDQ_TASK_QUEUE_URL": self.task_queues.queue.queue_url,
                "SHARDQ_RESULTS_QUEUE_URL": self.results.queue.queue_url,
                "SHARDQ_FAST_RESULTS_QUEUE_URL": self.results.fast_queue.queue_url,
                "SHARDQ_JOB_TABLE": self.job_store.table.table_name,
                "LOG_LEVEL": config.log_level,
            },
            allow=config.fleet_worker_allow,
            log_retention=retention(config.log_retention_days),
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
            # A round with a deadline arms its tick: a delayed message to the results queue
            # (shardq.core.rounds), sent by whichever function starts the round.
            self.results.queue.grant_send_messages(fn)
            store.artifact_bucket.grant_read(fn)
            store.artifact_bucket.grant_put(fn)  # manifests and results; nothing deletes artifacts
        # The splitter too: it runs the ranges of a big round's close, and the last one ends the job.
        for fn in fns.all_functions:
            default_bus.grant_put_events_to(fn)
        for fn in (fns.aggregator, fns.dlq_handler, fns.results_dlq_handler):
            # A next round too big for one invocation is handed to the splitter's continuation.
            fn.add_environment("SHARDQ_SPLITTER_FUNCTION", fns.splitter.function_name)
            # The unqualified function only (grant_invoke would add a ":*" qualifier wildcard).
            fn.add_to_role_policy(
                iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[fns.splitter.function_arn])
            )
        # Only the results DLQ handler parks dead results no job can record (shardq.core.parking);
        # nothing consumes the parked queue: people read it with `shardq dlq show --queue results`.
        self.results.parked_queue.grant_send_messages(fns.results_dlq_handler)
        fns.results_dlq_handler.add_environment(
            "SHARDQ_PARKED_RESULTS_QUEUE_URL", self.results.parked_queue.queue_url
        )

    def _pipeline_trigger(self) -> PipelineTrigger:
        """Job Finished → the pipeline Lambda: jobs submitted with ``after`` start (or end) then."""
        fns = self.functions
        # A big round 0 of a follower is handed on to the splitter's continuation, as the aggregator does.
        fns.pipeline.add_environment("SHARDQ_SPLITTER_FUNCTION", fns.splitter.function_name)
        fns.pipeline.add_to_role_policy(
            iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[fns.splitter.function_arn])
        )
        return PipelineTrigger(
            self,
            "PipelineTrigger",
            function=fns.pipeline,
            event_bus=events.EventBus.from_event_bus_name(self, "PipelineEventBus", EVENT_BUS_NAME),
            dead_letter_queue=fns.pipeline_failure_queue,
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
        # Round-closing results (reduce results, small rounds' train results): no batching window, so
        # a round does not wait results_batch_window_seconds twice (shardq.core.result_routes).
        self._consume(
            self.functions.aggregator,
            sources.SqsEventSource(
                self.results.fast_queue,
                batch_size=FAST_RESULTS_BATCH_SIZE,
                max_batching_window=Duration.seconds(0),
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
        # Dead results: recorded (or a rejected one as its shard's failure); what names no planned
        # task is parked with its reason (shardq.core.parking), where its depth alarm sees it (#22).
        self._consume(
            self.functions.results_dlq_handler,
            sources.SqsEventSource(
                self.results.dead_letter_queue,
                batch_size=DLQ_BATCH_SIZE,
                report_batch_item_failures=True,
                max_concurrency=DLQ_HANDLER_MAX_CONCURRENCY,
            ),
            queue_visibility=Duration.seconds(
                VISIBILITY_PER_CONSUMER_TIMEOUT * sizing.results_dlq_handler.timeout_seconds
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

    def _output_table(self) -> dict[str, tuple[str, str]]:
        """Output name → (value, description), named for people reading the CloudFormation console."""
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
            "FastResultsQueueUrl": (
                res.fast_queue.queue_url,
                "Queue workers send round-closing results to: reduce results and rounds of at most 100 "
                "tasks, read with no batching window (SHARDQ_FAST_RESULTS_QUEUE_URL)",
            ),
            "ResultsDlqUrl": (
                res.dead_letter_queue.queue_url,
                "Dead-letter queue of results the aggregator could not record (consumed by the results "
                "DLQ handler; what stays names no planned task)",
            ),
            "ParkedResultsQueueUrl": (
                res.parked_queue.queue_url,
                "Dead results no job can record (no planned task), each with the reason; kept 14 days. "
                "Read: shardq dlq show --queue results; retry: shardq dlq redrive --queue results",
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
            "ResultsDlqHandlerFunctionName": (
                fns.results_dlq_handler.function_name,
                "Records dead results, or a rejected one as its shard's failure",
            ),
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
        env = self.settings_environment
        outputs.update(
            {
                "EventBusName": (env["SHARDQ_EVENT_BUS_NAME"], "Bus the Job Finished events go to"),
                "JobTtlDays": (env["SHARDQ_JOB_TTL_DAYS"], "Days a finished job's record is kept"),
                "MaxReceiveCount": (
                    env["SHARDQ_MAX_RECEIVE_COUNT"],
                    "Receives before a task is dead-lettered",
                ),
                "FanoutInFlight": (env["SHARDQ_FANOUT_IN_FLIGHT"], "SendMessageBatch calls in flight"),
                "DataBuckets": (env["SHARDQ_DATA_BUCKETS"], "Buckets workers can read; requests are checked"),
            }
        )
        if "SHARDQ_SCHEDULING" in env:
            outputs["Scheduling"] = (env["SHARDQ_SCHEDULING"], "Tenants, weights, quotas and task windows")
        if self.fleet is not None:
            outputs.update(self._fleet_output_table(self.fleet))
        return outputs

    @staticmethod
    def _fleet_output_table(fleet: WorkerFleet) -> dict[str, tuple[str, str]]:
        """The worker fleet's outputs."""
        return {
            "FleetClusterName": (fleet.cluster.cluster_name, "ECS cluster of the worker fleet"),
            "FleetServiceName": (
                fleet.service.service_name,
                "ECS service of the workers (scales on runnable tasks per worker, down to zero)",
            ),
            "FleetLogGroupName": (fleet.log_group.log_group_name, "Worker container logs"),
        }

    def _outputs(self) -> None:
        """One CfnOutput per table row; the worker policy ARN is also exported."""
        for output_id, (value, description) in self._output_table().items():
            CfnOutput(
                self,
                output_id,
                value=value,
                description=description,
                export_name=Fn.sub("${AWS::StackName}-WorkerPolicyArn")
                if output_id == "WorkerPolicyArn"
                else None,
            )
