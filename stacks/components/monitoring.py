"""Monitoring: alarms to an encrypted, TLS-only SNS topic, and the shardq CloudWatch dashboard."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aws_cdk import Aws, Duration, Fn
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import Problems

METRICS_NAMESPACE = "shardq"
# Powertools Metrics adds the `service` dimension (POWERTOOLS_SERVICE_NAME) to every metric.
METRICS_SERVICE = "shardq"
# Past one visibility timeout of the results queues (6 x the aggregator's 60 s) plus a margin.
FAST_RESULTS_MAX_AGE_SECONDS = 600
CUSTOM_METRICS = ("TasksEnqueued", "ResultsRecorded", "DuplicateResults", "JobsFinished", "RoundDuration")
_ONE_MINUTE = Duration.minutes(1)


@dataclass(frozen=True, kw_only=True)
class MonitoredQueues:
    """The queues the monitoring watches."""

    task_queue: sqs.IQueue
    task_dlq: sqs.IQueue
    results_queue: sqs.IQueue
    results_dlq: sqs.IQueue
    splitter_failure_queue: sqs.IQueue
    # Dead results no job can record (shardq.core.parking); None in stacks built before it.
    parked_results: sqs.IQueue | None = None
    # The zero-window results queue (shardq.core.result_routes); None in stacks built before it.
    fast_results: sqs.IQueue | None = None
    # The pipeline trigger's failures: the Job Finished rule's DLQ and the pipeline function's
    # on-failure destination (stacks.components.pipeline_trigger); None in stacks built before it.
    pipeline_failure_queue: sqs.IQueue | None = None


@dataclass(frozen=True, kw_only=True)
class MonitoredFunctions:
    """The functions the monitoring watches."""

    splitter: lambda_.IFunction
    aggregator: lambda_.IFunction
    dlq_handler: lambda_.IFunction
    # The results DLQ's consumer (issue #22); None in stacks built before it.
    results_dlq_handler: lambda_.IFunction | None = None


@dataclass(frozen=True, kw_only=True)
class MonitoredFleet:
    """The worker fleet's metrics (stacks/components/fleet/), when the stack has one."""

    tasks: Sequence[cloudwatch.IMetric]
    # Backlog, runnable tasks and the RunnableLanes gauge: what the fleet scales on, and why.
    work: Sequence[cloudwatch.IMetric]
    backlog_per_worker: cloudwatch.IMetric
    target_backlog_per_worker: float
    shortfall: cloudwatch.IMetric
    gpu: Sequence[cloudwatch.IMetric] = field(default_factory=list)


# Tasks the fleet wants but cannot run for this long: Spot capacity, the vCPU quota, or a broken image.
FLEET_SHORTFALL_MINUTES = 30


class Monitoring(Construct):
    """SNS alarm topic (customer KMS key, TLS only, optional email), alarms and a dashboard.

    The topic uses its own customer-managed key because CloudWatch alarms cannot publish to a topic
    encrypted with the AWS-managed ``aws/sns`` key (its key policy cannot grant CloudWatch).

    Alarms: a message in the task DLQ, results DLQ, splitter or pipeline failure queue; oldest task older
    than ``oldest_task_age``; aggregator errors or throttles; splitter or DLQ handler errors.

    Parameters
    ----------
    queues, functions
        What to watch.
    oldest_task_age
        Alarm when the oldest task waits longer than this (no worker is polling, or too few).
    alarm_email
        Subscribe this address to the topic (it must confirm); ``None`` for no subscription.
    fleet
        The worker fleet, if any: its panels and the ``FleetCannotPlaceTasks`` alarm.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        queues: MonitoredQueues,
        functions: MonitoredFunctions,
        oldest_task_age: Duration,
        alarm_email: str | None = None,
        fleet: MonitoredFleet | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        problems = Problems("Monitoring")
        problems.require(
            oldest_task_age.to_seconds() >= 60,
            "oldest_task_age must be at least 60 s (the metric's resolution); fix: raise it",
        )
        problems.require(
            alarm_email is None or "@" in alarm_email,
            f"alarm_email={alarm_email!r} is not an email address; fix: pass one or None",
        )
        problems.raise_if_any()

        self.topic_key, self.topic = self._alarm_topic(alarm_email)
        self.alarms: list[cloudwatch.Alarm] = [
            *self._queue_alarms(queues, oldest_task_age),
            *self._function_alarms(functions),
        ]
        if fleet is not None:
            self.alarms.append(self._fleet_alarm(fleet))
        self.dashboard = self._dashboard(queues, functions)
        if fleet is not None:
            self._fleet_panels(fleet)
        self.dashboard_url = Fn.sub(
            "https://${AWS::Region}.console.aws.amazon.com/cloudwatch/home?region=${AWS::Region}"
            "#dashboards:name=${Name}",
            {"Name": self.dashboard.dashboard_name},
        )

    # -- alarms ----------------------------------------------------------------------------------

    def _alarm_topic(self, alarm_email: str | None) -> tuple[kms.Key, sns.Topic]:
        """The topic and its customer key (CloudWatch alarms cannot publish with ``aws/sns``)."""
        key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Encrypts the shardq alarm topic; CloudWatch may use it to publish alarms",
            enable_key_rotation=True,
        )
        key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="AllowCloudWatchAlarmsToPublish",
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy, "*" means this key
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
            )
        )
        topic = sns.Topic(self, "AlarmTopic", display_name="shardq alarms", master_key=key, enforce_ssl=True)
        if alarm_email:
            topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        return key, topic

    def _queue_alarms(self, queues: MonitoredQueues, oldest_task_age: Duration) -> list[cloudwatch.Alarm]:
        """A message in any dead-letter store; a task waiting longer than ``oldest_task_age``."""
        return [
            self._depth_alarm("TaskDlqNotEmpty", queues.task_dlq, "tasks exhausted their receives"),
            self._depth_alarm("ResultsDlqNotEmpty", queues.results_dlq, "results could not be aggregated"),
            self._depth_alarm(
                "SplitterFailuresNotEmpty", queues.splitter_failure_queue, "async splitter invocations failed"
            ),
            *(
                [
                    self._depth_alarm(
                        "PipelineFailuresNotEmpty",
                        queues.pipeline_failure_queue,
                        "a Job Finished event never reached the pipeline function, or it failed past its "
                        "retries: the jobs that follow that job may still be WAITING",
                    )
                ]
                if queues.pipeline_failure_queue is not None
                else []
            ),
            *(
                [
                    self._depth_alarm(
                        "ParkedResultsNotEmpty",
                        queues.parked_results,
                        "results name no planned task and were parked (`shardq dlq show --queue results`)",
                    )
                ]
                if queues.parked_results is not None
                else []
            ),
            *(
                [
                    self._alarm(
                        "FastResultsNotDrained",
                        queues.fast_results.metric_approximate_age_of_oldest_message(
                            period=_ONE_MINUTE, statistic="Maximum"
                        ),
                        # Past one visibility timeout (6 x the aggregator's 60 s) a failed batch has
                        # had its retry: still waiting means the fast event source is not draining it.
                        threshold=FAST_RESULTS_MAX_AGE_SECONDS,
                        description="A round-closing result has waited more than "
                        f"{FAST_RESULTS_MAX_AGE_SECONDS} s in the fast results queue: its event source "
                        "mapping is disabled or the aggregator is failing or throttled; rounds are not "
                        "advancing.",
                        periods=3,
                    )
                ]
                if queues.fast_results is not None
                else []
            ),
            self._alarm(
                "OldestTaskTooOld",
                queues.task_queue.metric_approximate_age_of_oldest_message(
                    period=_ONE_MINUTE, statistic="Maximum"
                ),
                threshold=oldest_task_age.to_seconds(),
                description=f"A task has waited more than {int(oldest_task_age.to_seconds())} s: "
                "no or too few "
                "workers are polling the task queue.",
                periods=5,
            ),
        ]

    def _function_alarms(self, functions: MonitoredFunctions) -> list[cloudwatch.Alarm]:
        """Errors of each function; throttles of the aggregator (its concurrency is capped)."""
        return [
            self._alarm(
                "AggregatorErrors",
                functions.aggregator.metric_errors(period=_ONE_MINUTE, statistic="Sum"),
                description="The aggregator failed; results are retried and may reach the results DLQ.",
            ),
            self._alarm(
                "AggregatorThrottles",
                functions.aggregator.metric_throttles(period=_ONE_MINUTE, statistic="Sum"),
                description="The aggregator is throttled: raise aggregator_reserved_concurrency or the "
                "account's concurrency.",
            ),
            self._alarm(
                "SplitterErrors",
                functions.splitter.metric_errors(period=_ONE_MINUTE, statistic="Sum"),
                description="The splitter failed to plan or enqueue a job.",
            ),
            self._alarm(
                "DlqHandlerErrors",
                functions.dlq_handler.metric_errors(period=_ONE_MINUTE, statistic="Sum"),
                description="The DLQ handler failed; dead tasks are not being recorded as FAILED.",
            ),
            *(
                [
                    self._alarm(
                        "ResultsDlqHandlerErrors",
                        functions.results_dlq_handler.metric_errors(period=_ONE_MINUTE, statistic="Sum"),
                        description="The results DLQ handler failed, or a whole batch of dead results "
                        "named no planned task (see `shardq dlq show --queue results`).",
                    )
                ]
                if functions.results_dlq_handler is not None
                else []
            ),
        ]

    def _fleet_alarm(self, fleet: MonitoredFleet) -> cloudwatch.Alarm:
        """The fleet has wanted more tasks than it runs for FLEET_SHORTFALL_MINUTES."""
        return self._alarm(
            "FleetCannotPlaceTasks",
            fleet.shortfall,
            description=f"The worker fleet has wanted more tasks than it runs for "
            f"{FLEET_SHORTFALL_MINUTES} min: no Spot/On-Demand capacity for the instance types, "
            "the account's G/P vCPU quota, or tasks failing to start (see docs/OPERATIONS.md).",
            periods=FLEET_SHORTFALL_MINUTES,
        )

    def _depth_alarm(self, name: str, queue: sqs.IQueue, what: str) -> cloudwatch.Alarm:
        return self._alarm(
            name,
            queue.metric_approximate_number_of_messages_visible(period=_ONE_MINUTE, statistic="Maximum"),
            description=f"Messages in a dead-letter queue: {what}. Inspect them, then redrive.",
        )

    def _alarm(
        self,
        name: str,
        metric: cloudwatch.IMetric,
        *,
        description: str,
        threshold: float = 0,
        periods: int = 1,
    ) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self,
            name,
            metric=metric,
            threshold=threshold,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=periods,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        alarm.add_ok_action(cw_actions.SnsAction(self.topic))
        return alarm

    # -- dashboard -------------------------------------------------------------------------------

    def _dashboard(self, queues: MonitoredQueues, functions: MonitoredFunctions) -> cloudwatch.Dashboard:
        """Rows top to bottom: a header, the queues, the Lambdas (and alarms), shardq's own metrics."""
        dashboard = cloudwatch.Dashboard(self, "Dashboard", default_interval=Duration.hours(3))
        dashboard.add_widgets(
            cloudwatch.TextWidget(
                markdown="# shardq\nTasks flow splitter → task queue → workers → results queue → aggregator. "
                "Any message in a DLQ fires an alarm.",
                width=24,
                height=2,
            )
        )
        dashboard.add_widgets(*_queue_row(queues))
        dashboard.add_widgets(
            *_function_row(functions),
            cloudwatch.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=8),
        )
        dashboard.add_widgets(*_shardq_metrics_row())
        return dashboard

    def _fleet_panels(self, fleet: MonitoredFleet) -> None:
        self.dashboard.add_widgets(
            cloudwatch.TextWidget(
                markdown="## Worker fleet\nScales on runnable tasks per worker to the target line: the "
                "backlog (visible + in-flight tasks) capped at the lanes RUNNING jobs can keep busy "
                "(tasks behind a busy FIFO lane cannot run). Wakes from zero on the first runnable task, "
                "returns to zero when the queue stays empty. Workers protect their task from scale-in "
                "while they train.",
                width=24,
                height=2,
            )
        )
        panels: list[dict[str, object]] = [
            {"title": "Fleet tasks (desired / running / pending)", "left": list(fleet.tasks)},
            {"title": "Backlog, runnable tasks and lanes", "left": list(fleet.work)},
            {
                "title": "Runnable tasks per worker",
                "left": [fleet.backlog_per_worker],
                "left_annotations": [
                    cloudwatch.HorizontalAnnotation(value=fleet.target_backlog_per_worker, label="target")
                ],
            },
            {"title": "Tasks waiting for capacity", "left": [fleet.shortfall]},
        ]
        if fleet.gpu:
            panels.append(
                {
                    "title": "GPU % (reserved; utilisation where the CloudWatch agent reports it)",
                    "left": list(fleet.gpu),
                    "left_y_axis": cloudwatch.YAxisProps(min=0, max=100),
                }
            )
        width = 24 // len(panels)
        self.dashboard.add_widgets(*(cloudwatch.GraphWidget(width=width, **p) for p in panels))  # type: ignore[arg-type]


def _custom(name: str, statistic: str = "Sum") -> cloudwatch.Metric:
    """A metric the Lambdas publish through Powertools (namespace shardq, dimension service)."""
    return cloudwatch.Metric(
        namespace=METRICS_NAMESPACE,
        metric_name=name,
        dimensions_map={"service": METRICS_SERVICE},
        statistic=statistic,
        period=_ONE_MINUTE,
    )


def _queue_row(queues: MonitoredQueues) -> list[cloudwatch.IWidget]:
    """Queue depth, messages in flight, and the age of the oldest task and result."""
    return [
        cloudwatch.GraphWidget(
            title="Queue depth (visible)",
            left=[
                q.metric_approximate_number_of_messages_visible(label=label, period=_ONE_MINUTE)
                for label, q in (
                    ("tasks", queues.task_queue),
                    ("results", queues.results_queue),
                    *([("fast results", queues.fast_results)] if queues.fast_results else []),
                    ("task DLQ", queues.task_dlq),
                    ("results DLQ", queues.results_dlq),
                    ("splitter failures", queues.splitter_failure_queue),
                    *([("parked results", queues.parked_results)] if queues.parked_results else []),
                    *(
                        [("pipeline failures", queues.pipeline_failure_queue)]
                        if queues.pipeline_failure_queue
                        else []
                    ),
                )
            ],
            width=8,
        ),
        cloudwatch.GraphWidget(
            title="In flight (not visible)",
            left=[
                queues.task_queue.metric_approximate_number_of_messages_not_visible(
                    label="tasks being trained", period=_ONE_MINUTE
                ),
                queues.results_queue.metric_approximate_number_of_messages_not_visible(
                    label="results being aggregated", period=_ONE_MINUTE
                ),
            ],
            width=8,
        ),
        cloudwatch.GraphWidget(
            title="Age of oldest message (s)",
            left=[
                queues.task_queue.metric_approximate_age_of_oldest_message(
                    label="task", period=_ONE_MINUTE, statistic="Maximum"
                ),
                queues.results_queue.metric_approximate_age_of_oldest_message(
                    label="result", period=_ONE_MINUTE, statistic="Maximum"
                ),
                *(
                    [
                        queues.fast_results.metric_approximate_age_of_oldest_message(
                            label="round-closing result", period=_ONE_MINUTE, statistic="Maximum"
                        )
                    ]
                    if queues.fast_results
                    else []
                ),
            ],
            width=8,
        ),
    ]


def _function_row(functions: MonitoredFunctions) -> list[cloudwatch.IWidget]:
    """Duration p90, errors and the aggregator's throttles of the three Lambdas."""
    labelled = list(
        zip(
            ("splitter", "aggregator", "DLQ handler"),
            (functions.splitter, functions.aggregator, functions.dlq_handler),
            strict=True,
        )
    )
    if functions.results_dlq_handler is not None:
        labelled.append(("results DLQ handler", functions.results_dlq_handler))
    return [
        cloudwatch.GraphWidget(
            title="Lambda duration p90 (ms)",
            left=[
                fn.metric_duration(label=label, statistic="p90", period=_ONE_MINUTE) for label, fn in labelled
            ],
            width=8,
        ),
        cloudwatch.GraphWidget(
            title="Lambda errors and throttles",
            left=[fn.metric_errors(label=f"{label} errors", period=_ONE_MINUTE) for label, fn in labelled],
            right=[functions.aggregator.metric_throttles(label="aggregator throttles", period=_ONE_MINUTE)],
            width=8,
        ),
    ]


def _shardq_metrics_row() -> list[cloudwatch.IWidget]:
    """What the Lambdas count: tasks, results, duplicates, finished jobs, round durations."""
    return [
        cloudwatch.GraphWidget(
            title="Tasks and results (shardq metrics)",
            left=[_custom("TasksEnqueued"), _custom("ResultsRecorded"), _custom("DuplicateResults")],
            width=8,
        ),
        cloudwatch.GraphWidget(title="Jobs finished", left=[_custom("JobsFinished")], width=8),
        cloudwatch.GraphWidget(
            title="Round duration (s)",
            left=[_custom("RoundDuration", "Average"), _custom("RoundDuration", "p90")],
            width=8,
        ),
    ]
