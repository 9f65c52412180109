"""LanesPublisher: the scheduled Lambda that publishes the RunnableLanes gauge the fleet scales on.

Every minute it reads the RUNNING jobs from the job table's ``by_status`` index and publishes, in
``shardq/Fleet`` with dimension ``JobTable``, the task lanes those jobs can keep busy
(``lambdas/fleet_lanes.py``). Only a stack with a fleet has it. A missed run leaves one datapoint
missing, and the scaling rule then falls back to ``fleet_max_workers`` for that minute.
"""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from stacks.components.fleet.scaling import scaling_rule

LANES_HANDLER = "lambdas.fleet_lanes.handler"
STATUS_INDEX = "by_status"
SCHEDULE = Duration.minutes(1)


class LanesPublisher(Construct):
    """Scheduled function (python3.14, arm64, X-Ray) with Query on the status index and PutMetricData.

    Parameters
    ----------
    code
        The shared Lambda code asset (handlers + shardq core).
    job_table
        The job table; the function queries its ``by_status`` index only.
    log_retention
        Retention of the function's log group.

    Attributes
    ----------
    function, rule
        The publisher and its schedule.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        job_table: dynamodb.ITable,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        namespace = scaling_rule()["lanes_metric"]["namespace"]
        role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="shardq fleet lanes publisher: query RUNNING jobs, publish RunnableLanes",
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="QueryJobsByStatus",
                actions=["dynamodb:Query"],
                resources=[f"{job_table.table_arn}/index/{STATUS_INDEX}"],
            )
        )
        role.add_to_policy(
            iam.PolicyStatement(
                sid="PublishRunnableLanes",
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],  # PutMetricData has no resource-level permissions
                conditions={"StringEquals": {"cloudwatch:namespace": namespace}},
            )
        )
        log_group = logs.LogGroup(
            self, "LogGroup", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        log_group.grant_write(role)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_14,
            architecture=lambda_.Architecture.ARM_64,
            handler=LANES_HANDLER,
            code=code,
            memory_size=256,
            timeout=Duration.seconds(30),
            environment={"SHARDQ_JOB_TABLE": job_table.table_name},
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            role=role,
            description="shardq fleet lanes: publishes the task lanes RUNNING jobs can keep busy",
        )
        self.rule = events.Rule(
            self,
            "Schedule",
            schedule=events.Schedule.rate(SCHEDULE),
            description="shardq fleet lanes: publish RunnableLanes every minute",
            # A late gauge is worth nothing: no retries, and drop an event older than one period.
            targets=[targets.LambdaFunction(self.function, retry_attempts=0, max_event_age=SCHEDULE)],
        )
