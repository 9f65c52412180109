"""JobStore: the DynamoDB job table and the S3 artifact bucket (plus its access-log bucket)."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import Construct

from stacks.components._props import Problems, seconds

ARTIFACT_PREFIX = "jobs/"
# Task checkpoints (shardq.core.checkpoint_keys, whose ROOT and EXPIRE_DAYS these must equal; a test
# checks). This rule is what deletes them: the worker keeps a task's last two, and a live task
# rewrites its checkpoint far more often than this, so only ended tasks' checkpoints expire.
CHECKPOINT_PREFIX = "checkpoints/"
CHECKPOINT_EXPIRY_DAYS = 7
TTL_ATTRIBUTE = "expires_at"
STATUS_INDEX = "by_status"
# Each job's outcomes in the order they were recorded: ``watch`` and the dashboard read only what
# was recorded since their last read (shardq.core.progress_reads), whatever the job's size.
RECORDED_INDEX = "by_recorded"
# What a reader of ``by_recorded`` needs of a result item (the dead task's body stays out: it can
# be kilobytes, and every byte projected is written again and read again).
RECORDED_ATTRIBUTES = ["outcome", "result", "source", "receive_count"]
DEFAULT_ACCESS_LOG_RETENTION = Duration.days(365)


class JobStore(Construct):
    """Job records (DynamoDB) and job artifacts (S3), both retained when the stack is deleted.

    Table: ``pk``/``sk`` strings, on-demand, point-in-time recovery, TTL on ``expires_at`` (the
    runtime sets it on finished jobs), GSI ``by_status`` (``status``, ``created_at``) to list jobs,
    GSI ``by_recorded`` (``pk``, ``recorded_at``; sparse: result items alone carry ``recorded_at``)
    to read a job's outcomes recorded since a moment.
    Bucket: public access blocked, TLS only, versioned, S3-managed encryption, server access logs to
    a separate bucket, lifecycle that expires noncurrent versions, aborts stale multipart uploads
    and optionally expires everything under ``jobs/``.

    Parameters
    ----------
    noncurrent_version_expiry
        How long overwritten or deleted artifact versions are kept.
    artifact_expiry
        Expire objects under ``jobs/`` after this long; ``None`` keeps them.
    access_log_retention
        How long server access logs are kept.
    removal_policy
        What happens to the table and buckets when the stack is deleted (RETAIN by default).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        noncurrent_version_expiry: Duration,
        artifact_expiry: Duration | None = None,
        access_log_retention: Duration = DEFAULT_ACCESS_LOG_RETENTION,
        removal_policy: RemovalPolicy = RemovalPolicy.RETAIN,
    ) -> None:
        super().__init__(scope, construct_id)
        _validate(noncurrent_version_expiry, artifact_expiry, access_log_retention)
        self.table = self._job_table(removal_policy)
        self.access_log_bucket = self._access_log_bucket(access_log_retention, removal_policy)
        self.artifact_bucket = self._artifact_bucket(
            noncurrent_version_expiry, artifact_expiry, removal_policy
        )

    def _job_table(self, removal_policy: RemovalPolicy) -> dynamodb.Table:
        """The job table with its ``by_status`` and ``by_recorded`` indexes."""
        table = dynamodb.Table(
            self,
            "JobTable",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                point_in_time_recovery_enabled=True
            ),
            encryption=dynamodb.TableEncryption.AWS_MANAGED,
            time_to_live_attribute=TTL_ATTRIBUTE,
            removal_policy=removal_policy,
        )
        table.add_global_secondary_index(
            index_name=STATUS_INDEX,
            partition_key=dynamodb.Attribute(name="status", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="created_at", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        table.add_global_secondary_index(
            index_name=RECORDED_INDEX,
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="recorded_at", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.INCLUDE,
            non_key_attributes=RECORDED_ATTRIBUTES,
        )
        return table

    def _access_log_bucket(self, retention: Duration, removal_policy: RemovalPolicy) -> s3.Bucket:
        """Where the artifact bucket's server access logs go (SSE-S3: logging requires it)."""
        return s3.Bucket(
            self,
            "AccessLogBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            # Server access logging can only deliver to SSE-S3 buckets.
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=retention)],
            removal_policy=removal_policy,
        )

    def _artifact_bucket(
        self,
        noncurrent_version_expiry: Duration,
        artifact_expiry: Duration | None,
        removal_policy: RemovalPolicy,
    ) -> s3.Bucket:
        """Versioned, TLS-only artifact bucket with its lifecycle rules and access logging."""
        lifecycle = [
            s3.LifecycleRule(
                id="expire-noncurrent-versions", noncurrent_version_expiration=noncurrent_version_expiry
            ),
            s3.LifecycleRule(
                id="abort-incomplete-multipart-uploads",
                abort_incomplete_multipart_upload_after=Duration.days(7),
            ),
            s3.LifecycleRule(
                id="expire-task-checkpoints",
                prefix=CHECKPOINT_PREFIX,
                expiration=Duration.days(CHECKPOINT_EXPIRY_DAYS),
                # The bucket is versioned: every superseded or pruned checkpoint would otherwise be
                # kept as a noncurrent version for the bucket-wide 30 days.
                noncurrent_version_expiration=Duration.days(1),
            ),
        ]
        if artifact_expiry is not None:
            lifecycle.append(
                s3.LifecycleRule(
                    id="expire-job-artifacts", prefix=ARTIFACT_PREFIX, expiration=artifact_expiry
                )
            )
        return s3.Bucket(
            self,
            "ArtifactBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_log_bucket,
            server_access_logs_prefix="artifact-bucket/",
            lifecycle_rules=lifecycle,
            removal_policy=removal_policy,
        )


def _validate(
    noncurrent_version_expiry: Duration, artifact_expiry: Duration | None, access_log_retention: Duration
) -> None:
    """Every lifecycle duration must be a whole number of days, at least one (all named at once)."""
    problems = Problems("JobStore")
    for name, duration in (
        ("noncurrent_version_expiry", noncurrent_version_expiry),
        ("artifact_expiry", artifact_expiry),
        ("access_log_retention", access_log_retention),
    ):
        problems.require(
            duration is None or _whole_days(duration) >= 1,
            f"{name} must be a whole number of days, at least 1 (S3 lifecycle counts days); "
            "fix: use Duration.days(n) with n >= 1",
        )
    problems.raise_if_any()


def _whole_days(duration: Duration) -> int:
    """Whole days of a duration, or 0 if it is not a positive whole number of days."""
    total = seconds(duration)
    return total // 86_400 if total % 86_400 == 0 else 0
