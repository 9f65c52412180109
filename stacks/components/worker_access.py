"""WorkerAccess: the one customer-managed policy any worker fleet attaches."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from stacks.components._props import Problems

# Each right is one a worker (shardq/worker/*, shardq worker) uses; docs/SECURITY.md says which call
# needs it, and tests/infra/test_worker_policy.py pins the set per resource.
# Task queue: poll, delete when done, heartbeat/release, and read the lease and maxReceiveCount at
# start. SendMessage re-sends a task the worker hands back gracefully (SIGTERM, a Spot notice:
# shardq.worker.release), so an interruption costs no receive toward the DLQ; it never creates a
# new task (the aggregator Lambda sends reduce and next-round tasks).
TASK_QUEUE_ACTIONS = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
    "sqs:SendMessage",
)
# Results queues (the bulk one and the fast one for round-closing results, shardq.core.result_routes):
# post outcomes only (their attributes are never read).
RESULTS_QUEUE_ACTIONS = ("sqs:SendMessage",)
# Job table: the cancellation/closed-round check and --job-id read one item by key; nothing queries.
JOB_TABLE_ACTIONS = ("dynamodb:GetItem",)
# Artifacts: PutObject covers single and multipart uploads; a failed multipart upload is aborted.
# Reading them back is ReadDatasets' s3:GetObject on the whole bucket.
ARTIFACT_WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload")
# Task checkpoints (shardq.worker.checkpoints): written like artifacts, and the worker deletes the one
# its pointer no longer names (it keeps the last two). Under their own prefix, so only they can be
# deleted. Equal to shardq.core.checkpoint_keys.ROOT (tests/infra/test_worker_policy.py).
CHECKPOINT_PREFIX = "checkpoints/"
CHECKPOINT_WRITE_ACTIONS = ("s3:PutObject", "s3:AbortMultipartUpload", "s3:DeleteObject")
# ``shardq worker --stack``: the queue URLs and table name from the stack's outputs.
STACK_READ_ACTIONS = ("cloudformation:DescribeStacks",)
# With queue_encryption="kms": Decrypt to receive tasks, GenerateDataKey to send results.
QUEUE_KEY_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


class WorkerAccess(Construct):
    """One customer-managed IAM policy with exactly what a shardq worker needs.

    Attach it to any role (EC2 instance profile, ECS task role, Batch job role, SageMaker
    execution role): receive/delete/extend tasks, post results, read job records, read datasets,
    write artifacts under ``jobs/`` of the artifact bucket, and read this stack's outputs.
    Written as explicit statements rather than ``grant_*``: the grants' action sets are wider than a
    worker needs (e.g. ``grant_consume_messages`` has no ChangeMessageVisibility-only variant).

    Parameters
    ----------
    task_queue, results_queue, job_table, artifact_bucket
        The resources a worker touches.
    fast_results_queue
        The zero-window results queue workers send round-closing results to, if the stack has one.
    dataset_bucket_arns
        Extra buckets (ARNs) workers read training data from.
    queue_encryption_key
        The queues' customer KMS key, if any: workers then need Decrypt/GenerateDataKey on it.
    artifact_prefix
        Key prefix under which workers write artifacts.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        task_queue: sqs.IQueue,
        results_queue: sqs.IQueue,
        job_table: dynamodb.ITable,
        artifact_bucket: s3.IBucket,
        dataset_bucket_arns: Sequence[str] = (),
        queue_encryption_key: kms.IKey | None = None,
        artifact_prefix: str = "jobs/",
        fast_results_queue: sqs.IQueue | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        _validate(artifact_prefix, dataset_bucket_arns)

        statements = _statements(
            task_queue=task_queue,
            results_queues=[results_queue, *([fast_results_queue] if fast_results_queue else [])],
            job_table=job_table,
            artifact_bucket=artifact_bucket,
            dataset_bucket_arns=dataset_bucket_arns,
            queue_encryption_key=queue_encryption_key,
            artifact_prefix=artifact_prefix,
        )
        self.policy = iam.ManagedPolicy(
            self,
            "Policy",
            description="shardq worker: consume tasks, post results, read jobs and datasets, write artifacts",
            statements=statements,
        )


def _validate(artifact_prefix: str, dataset_bucket_arns: Sequence[str]) -> None:
    """A plain key prefix and bucket (not object) ARNs (both named in one error)."""
    problems = Problems("WorkerAccess")
    problems.require(
        artifact_prefix.endswith("/") and not artifact_prefix.startswith("/") and "*" not in artifact_prefix,
        f"artifact_prefix={artifact_prefix!r}: must be a key prefix like 'jobs/'; fix: end it with '/', "
        "no leading '/' or '*'",
    )
    problems.require(
        all(arn.startswith("arn:") and "/" not in arn for arn in dataset_bucket_arns),
        "dataset_bucket_arns must hold bucket ARNs (arn:aws:s3:::name), not object ARNs; fix: drop the '/…'",
    )
    problems.raise_if_any()


def _statements(
    *,
    task_queue: sqs.IQueue,
    results_queues: Sequence[sqs.IQueue],
    job_table: dynamodb.ITable,
    artifact_bucket: s3.IBucket,
    dataset_bucket_arns: Sequence[str],
    queue_encryption_key: kms.IKey | None,
    artifact_prefix: str,
) -> list[iam.PolicyStatement]:
    """The worker policy's statements, one per thing a worker does."""
    read_buckets = [artifact_bucket.bucket_arn, *dataset_bucket_arns]
    statements = [
        iam.PolicyStatement(
            sid="ConsumeTasks", actions=list(TASK_QUEUE_ACTIONS), resources=[task_queue.queue_arn]
        ),
        iam.PolicyStatement(
            sid="PostResults",
            actions=list(RESULTS_QUEUE_ACTIONS),
            resources=[q.queue_arn for q in results_queues],
        ),
        iam.PolicyStatement(
            sid="ReadJobRecords", actions=list(JOB_TABLE_ACTIONS), resources=[job_table.table_arn]
        ),
        # ListBucket makes a missing key a 404 (NoSuchKey), not a 403: the reduce treats a missing
        # server state as "start at zero", and a 403 would read as a fatal AccessDenied.
        iam.PolicyStatement(sid="ListDatasets", actions=["s3:ListBucket"], resources=read_buckets),
        iam.PolicyStatement(
            sid="ReadDatasets", actions=["s3:GetObject"], resources=[f"{arn}/*" for arn in read_buckets]
        ),
        iam.PolicyStatement(
            sid="WriteArtifacts",
            actions=list(ARTIFACT_WRITE_ACTIONS),
            resources=[artifact_bucket.arn_for_objects(f"{artifact_prefix}*")],
        ),
        iam.PolicyStatement(
            sid="WriteCheckpoints",
            actions=list(CHECKPOINT_WRITE_ACTIONS),
            resources=[artifact_bucket.arn_for_objects(f"{CHECKPOINT_PREFIX}*")],
        ),
        iam.PolicyStatement(
            sid="ReadStackOutputs", actions=list(STACK_READ_ACTIONS), resources=[Aws.STACK_ID]
        ),
    ]
    if queue_encryption_key is not None:
        statements.append(
            iam.PolicyStatement(
                sid="UseQueueKey",
                actions=list(QUEUE_KEY_ACTIONS),
                resources=[queue_encryption_key.key_arn],
            )
        )
    return statements
