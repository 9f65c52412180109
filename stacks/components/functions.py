"""ShardqFunctions: the splitter, aggregator and the two DLQ handler Lambdas, sharing one code asset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import Problems
from stacks.components._queues import DLQ_RETENTION, secure_queue

RUNTIME = lambda_.Runtime.PYTHON_3_14
ARCHITECTURE = lambda_.Architecture.ARM_64
SPLITTER_HANDLER = "lambdas.splitter.handler"
AGGREGATOR_HANDLER = "lambdas.aggregator.handler"
DLQ_HANDLER_HANDLER = "lambdas.dlq_handler.handler"
RESULTS_DLQ_HANDLER_HANDLER = "lambdas.results_dlq_handler.handler"
PIPELINE_HANDLER = "lambdas.pipeline.handler"
LAMBDA_MAX_TIMEOUT_SECONDS = 900


@dataclass(frozen=True, kw_only=True)
class FunctionSize:
    """Memory and timeout of one function."""

    memory_mb: int
    timeout_seconds: int

    @property
    def timeout(self) -> Duration:
        """The timeout as a CDK Duration."""
        return Duration.seconds(self.timeout_seconds)


@dataclass(frozen=True, kw_only=True)
class FunctionSizing:
    """Sizes of the four functions; queue visibility timeouts are derived from these timeouts.

    Memory also buys CPU: 512 MB keeps the splitter's concurrent SendMessageBatch calls and the
    aggregator's JSON work quick, while none of them holds more than a batch in memory.
    """

    # Plans a round and enqueues it; continues itself asynchronously well before the timeout.
    splitter: FunctionSize = field(default_factory=lambda: FunctionSize(memory_mb=512, timeout_seconds=120))
    # One batch of up to 100 results: conditional writes + counter update + maybe the next round.
    aggregator: FunctionSize = field(default_factory=lambda: FunctionSize(memory_mb=512, timeout_seconds=60))
    # Up to 10 dead tasks: marks shards FAILED, may finish the round.
    dlq_handler: FunctionSize = field(default_factory=lambda: FunctionSize(memory_mb=256, timeout_seconds=60))
    # Up to 10 dead results: records them (or the failure a rejected one stands for), may finish
    # the round; sized as the aggregator, whose work it redoes, for the memory (CPU) of a round close.
    results_dlq_handler: FunctionSize = field(
        default_factory=lambda: FunctionSize(memory_mb=512, timeout_seconds=60)
    )
    # One Job Finished event: starts (enqueues round 0 of) or ends each job that follows the one
    # that ended (shardq.core.pipeline); a big round 0 is handed on to the splitter's continuation.
    pipeline: FunctionSize = field(default_factory=lambda: FunctionSize(memory_mb=512, timeout_seconds=120))

    @classmethod
    def for_queue(cls, *, high_throughput: bool) -> FunctionSizing:
        """The defaults, with a splitter that can feed a high-throughput FIFO queue.

        At 512 MB (a third of a vCPU) the splitter is CPU-bound near 3,000 messages/s, which a
        plain FIFO queue's quota already caps; high-throughput FIFO takes far more, and 1,769 MB is
        one full vCPU (BENCHMARKS.md, quota model: 1M tasks in 96 s instead of 330 s).
        """
        if not high_throughput:
            return cls()
        return cls(splitter=FunctionSize(memory_mb=1769, timeout_seconds=120))


class ShardqFunctions(Construct):
    """The four Lambdas: python3.14 on arm64, X-Ray, explicit log groups, one role each.

    Each function gets its own role whose only inline permissions are writing to its own log group
    (no AWSLambdaBasicExecutionRole); the stack adds data-plane grants where it wires components.

    The splitter continues long plans by invoking itself asynchronously. Its permission to do so is
    a separate ``iam.Policy`` attached to its role: the function depends on its role (and the role's
    default policy), so a statement naming the function's own ARN in that default policy would be a
    circular dependency; the separate policy depends on the function instead. Failed async
    invocations (after ``splitter_async_retry_attempts`` retries, safe because the splitter is
    idempotent on job_id) land in ``splitter_failure_queue``.

    Parameters
    ----------
    code
        The shared code asset (handlers + shardq core).
    layers
        Layers for every function (Powertools), possibly empty.
    environment
        Environment variables every function gets.
    dlq_handler_environment
        Extra variables for the task DLQ handler only.
    sizing
        Memory and timeout per function.
    log_retention
        Retention of the log groups.
    encryption_key
        Customer KMS key for the failure queue; ``None`` means SQS-managed SSE.
    splitter_async_retry_attempts
        Lambda's retries of a failed async splitter invocation (0..2).
    aggregator_reserved_concurrency
        Reserved concurrency of the aggregator; ``None`` leaves it unreserved (the event source's
        MaximumConcurrency already bounds it).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        layers: Sequence[lambda_.ILayerVersion],
        environment: Mapping[str, str],
        dlq_handler_environment: Mapping[str, str] | None = None,
        sizing: FunctionSizing | None = None,
        log_retention: logs.RetentionDays = logs.RetentionDays.ONE_MONTH,
        encryption_key: kms.IKey | None = None,
        splitter_async_retry_attempts: int = 2,
        aggregator_reserved_concurrency: int | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        sizing = sizing or FunctionSizing()
        _validate(sizing, environment, splitter_async_retry_attempts, aggregator_reserved_concurrency)

        self._code = code
        self._layers = list(layers)
        self._log_retention = log_retention
        self.log_groups: dict[str, logs.LogGroup] = {}

        self.splitter_failure_queue: sqs.Queue = secure_queue(
            self, "SplitterFailureQueue", encryption_key=encryption_key, retention=DLQ_RETENTION
        )
        self.splitter, self.splitter_self_invoke_policy = self._splitter(
            sizing.splitter, environment, splitter_async_retry_attempts
        )
        self.aggregator = self._function(
            "Aggregator",
            handler=AGGREGATOR_HANDLER,
            size=sizing.aggregator,
            environment=environment,
            description="shardq aggregator: records each shard result once, advances rounds, finishes jobs",
            reserved_concurrent_executions=aggregator_reserved_concurrency,
        )
        self.dlq_handler = self._function(
            "DlqHandler",
            handler=DLQ_HANDLER_HANDLER,
            size=sizing.dlq_handler,
            environment={**environment, **(dlq_handler_environment or {})},
            description="shardq DLQ handler: marks shards whose tasks exhausted their receives as FAILED",
        )
        self.results_dlq_handler = self._function(
            "ResultsDlqHandler",
            handler=RESULTS_DLQ_HANDLER_HANDLER,
            size=sizing.results_dlq_handler,
            environment=environment,
            description="shardq results DLQ handler: records dead results (a rejected one as a failure)",
        )
        # Async only (the Job Finished rule); failures after Lambda's retries, and events the rule
        # could not deliver (its DLQ, stacks.components.pipeline_trigger), land in this queue.
        self.pipeline_failure_queue: sqs.Queue = secure_queue(
            self, "PipelineFailureQueue", encryption_key=encryption_key, retention=DLQ_RETENTION
        )
        self.pipeline = self._function(
            "Pipeline",
            handler=PIPELINE_HANDLER,
            size=sizing.pipeline,
            environment=environment,
            description="shardq pipeline: a job ended, so the jobs that follow it start (or end) now",
            on_failure=destinations.SqsDestination(self.pipeline_failure_queue),
            retry_attempts=2,
            max_event_age=Duration.hours(6),
        )

    def _splitter(
        self, size: FunctionSize, environment: Mapping[str, str], retry_attempts: int
    ) -> tuple[lambda_.Function, iam.Policy]:
        """The splitter, with its failure destination and the separate policy to invoke itself."""
        splitter = self._function(
            "Splitter",
            handler=SPLITTER_HANDLER,
            size=size,
            environment=environment,
            description="shardq splitter: validates a TrainingRequest, records the job, enqueues shard tasks",
            on_failure=destinations.SqsDestination(self.splitter_failure_queue),
            retry_attempts=retry_attempts,
            max_event_age=Duration.hours(1),
        )
        policy = iam.Policy(
            self,
            "SplitterSelfInvokePolicy",
            roles=[splitter.role],  # type: ignore[list-item]
            statements=[
                iam.PolicyStatement(
                    sid="SelfContinuation",
                    actions=["lambda:InvokeFunction"],
                    # The unqualified function only: the handler must continue itself through
                    # context.function_name (an invoked ARN carrying a qualifier would be denied).
                    resources=[splitter.function_arn],
                )
            ],
        )
        return splitter, policy

    @property
    def all_functions(self) -> list[lambda_.Function]:
        """Splitter, aggregator, the two DLQ handlers and the pipeline trigger."""
        return [self.splitter, self.aggregator, self.dlq_handler, self.results_dlq_handler, self.pipeline]

    def _function(
        self,
        name: str,
        *,
        handler: str,
        size: FunctionSize,
        environment: Mapping[str, str],
        description: str,
        **extra: object,
    ) -> lambda_.Function:
        role = iam.Role(
            self,
            f"{name}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"Execution role of the shardq {name} function",
        )
        log_group = logs.LogGroup(
            self, f"{name}LogGroup", retention=self._log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        log_group.grant_write(role)
        self.log_groups[name] = log_group
        return lambda_.Function(
            self,
            name,
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=handler,
            code=self._code,
            layers=self._layers,
            memory_size=size.memory_mb,
            timeout=size.timeout,
            environment=dict(environment),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            role=role,
            description=description,
            **extra,  # type: ignore[arg-type]
        )


def _validate(
    sizing: FunctionSizing,
    environment: Mapping[str, str],
    splitter_async_retry_attempts: int,
    aggregator_reserved_concurrency: int | None,
) -> None:
    """Sizes within Lambda's limits, retries 0..2, no reserved variable (all named in one error)."""
    problems = Problems("ShardqFunctions")
    for name, size in (
        ("splitter", sizing.splitter),
        ("aggregator", sizing.aggregator),
        ("dlq_handler", sizing.dlq_handler),
        ("results_dlq_handler", sizing.results_dlq_handler),
        ("pipeline", sizing.pipeline),
    ):
        problems.require(
            128 <= size.memory_mb <= 10240,
            f"sizing.{name}.memory_mb={size.memory_mb}: Lambda accepts 128..10240; "
            "fix: pick a value in range",
        )
        problems.require(
            1 <= size.timeout_seconds <= LAMBDA_MAX_TIMEOUT_SECONDS,
            f"sizing.{name}.timeout_seconds={size.timeout_seconds}: Lambda accepts 1..900; "
            "fix: pick a value in range",
        )
    problems.require(
        0 <= splitter_async_retry_attempts <= 2,
        f"splitter_async_retry_attempts={splitter_async_retry_attempts}: Lambda accepts 0..2; "
        "fix: pick 0, 1 or 2",
    )
    problems.require(
        aggregator_reserved_concurrency is None or aggregator_reserved_concurrency >= 1,
        "aggregator_reserved_concurrency must be at least 1; fix: use None to leave it unreserved",
    )
    reserved_names = {"AWS_REGION", "AWS_LAMBDA_FUNCTION_NAME", "_HANDLER", "AWS_EXECUTION_ENV"}
    problems.require(
        not reserved_names.intersection(environment),
        "environment sets a variable Lambda reserves; fix: remove "
        + ", ".join(sorted(reserved_names.intersection(environment))),
    )
    problems.raise_if_any()
