"""How many workers run: the fleet's scaling rule rendered into CloudWatch and Application Auto Scaling.

The rule is defined once, as metric math, in ``shardq/core/fleet_scaling.json`` (read here by path:
stacks import no runtime module). shardq/core/scaling.py evaluates the same text for
``shardq estimate`` and the tests, so what is tested is what is deployed. In short: the fleet tracks
*runnable tasks per worker*, where runnable = ``min(backlog, lanes × target)``: tasks queued behind a
busy FIFO lane (a job has ``max_parallel`` lanes, each hands out one task at a time) cannot run
however many workers start, so workers are capped at the lanes RUNNING jobs can keep busy (the
``RunnableLanes`` gauge of :mod:`stacks.components.fleet.lanes`).

Three policies act on the service's desired count:

* target tracking of ``perworker`` (metric math; the L2 policy takes plain metrics only);
* wake from zero: a proportional policy has nothing to multiply when capacity is 0, so a step policy
  starts ``ceil(runnable / target)`` workers at once (up to ``WAKE_STEPS_MAX``);
* scale to zero once the queue has had nothing visible or in flight for a while.

Workers protect their ECS task from scale-in while they train (``shardq/worker/protection.py``), so
scaling in never kills a worker mid-shard.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aws_cdk import Arn, ArnComponents, ArnFormat, Duration, Names, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from constructs import Construct

from stacks.components.fleet.sizing import FleetSizing
from stacks.config import REPO_ROOT

RULE_FILE = REPO_ROOT / "shardq" / "core" / "fleet_scaling.json"
CONTAINER_INSIGHTS_NAMESPACE = "ECS/ContainerInsights"
WAKE_STEPS_MAX = 10  # wake-from-zero lands on ceil(runnable / target) up to this many workers
TARGET_METRIC = "perworker"
_FUNCTIONS = {"FILL", "MIN", "MAX", "IF"}
_NAME = re.compile(r"\b[A-Za-z_]\w*\b")
_ONE_MINUTE = Duration.minutes(1)


@functools.cache
def scaling_rule() -> dict[str, Any]:
    """shardq/core/fleet_scaling.json: the lanes metric, inputs, constants and ordered expressions."""
    rule: dict[str, Any] = json.loads(RULE_FILE.read_text(encoding="utf-8"))
    return rule


def rendered(name: str, sizing: FleetSizing) -> str:
    """Expression ``name`` with its constants replaced by this fleet's numbers (CloudWatch has no
    variables): ``target`` is ``backlog_per_worker``, ``max_workers`` is ``max_workers``."""
    constants = {"target": sizing.backlog_per_worker, "max_workers": sizing.max_workers}
    unknown = set(scaling_rule()["constants"]) ^ set(constants)
    assert not unknown, f"fleet_scaling.json constants and the stack disagree on {unknown}"
    return _NAME.sub(
        lambda m: f"{constants[m[0]]:g}" if m[0] in constants else m[0], scaling_rule()["expressions"][name]
    )


def references(name: str) -> list[str]:
    """The inputs and earlier expressions expression ``name`` uses, in the rule's order."""
    rule = scaling_rule()
    used = set(_NAME.findall(rule["expressions"][name])) - _FUNCTIONS - set(rule["constants"])
    order = [*rule["inputs"], *rule["expressions"]]
    return [n for n in order if n in used]


def closure(name: str) -> list[str]:
    """Every input and expression ``name`` depends on, itself last, in the rule's order."""
    needed = {name}
    for expression in reversed(list(scaling_rule()["expressions"])):
        if expression in needed:
            needed.update(references(expression))
    rule = scaling_rule()
    return [n for n in [*rule["inputs"], *rule["expressions"]] if n in needed]


@dataclass(frozen=True)
class MetricSource:
    """Where an input of the rule comes from."""

    namespace: str
    metric_name: str
    dimensions: Mapping[str, str]


class FleetMetrics:
    """The rule's inputs and expressions as CloudWatch metrics (alarms, dashboard, policies).

    Parameters
    ----------
    sources
        Each input of the rule (``visible``, ``inflight``, ``running``, ``desired``, ``lanes``).
    sizing
        The constants (``target``, ``max_workers``).
    """

    def __init__(self, sources: Mapping[str, MetricSource], sizing: FleetSizing) -> None:
        missing = set(scaling_rule()["inputs"]) ^ set(sources)
        assert not missing, f"fleet_scaling.json inputs and the stack disagree on {missing}"
        self.sources = dict(sources)
        self.sizing = sizing

    def input(self, name: str, label: str | None = None) -> cloudwatch.Metric:
        """One input, averaged per minute."""
        source = self.sources[name]
        return cloudwatch.Metric(
            namespace=source.namespace,
            metric_name=source.metric_name,
            dimensions_map=dict(source.dimensions),
            statistic="Average",
            period=_ONE_MINUTE,
            label=label,
        )

    def expression(self, name: str, label: str | None = None) -> cloudwatch.MathExpression:
        """One expression of the rule, with the expressions it uses nested."""
        inputs = scaling_rule()["inputs"]
        using: dict[str, cloudwatch.IMetric] = {
            ref: self.input(ref) if ref in inputs else self.expression(ref) for ref in references(name)
        }
        return cloudwatch.MathExpression(
            expression=rendered(name, self.sizing), using_metrics=using, label=label, period=_ONE_MINUTE
        )

    def target_tracking_queries(
        self,
    ) -> list[appscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty]:
        """The metric data queries of the target tracking policy: every input and expression the
        target metric needs, as flat queries (ids are the rule's names); only the target returns data."""
        cfn = appscaling.CfnScalingPolicy
        queries = []
        for name in closure(TARGET_METRIC):
            if name in self.sources:
                source = self.sources[name]
                queries.append(
                    cfn.TargetTrackingMetricDataQueryProperty(
                        id=name,
                        return_data=False,
                        metric_stat=cfn.TargetTrackingMetricStatProperty(
                            stat="Average",
                            metric=cfn.TargetTrackingMetricProperty(
                                namespace=source.namespace,
                                metric_name=source.metric_name,
                                dimensions=[
                                    cfn.TargetTrackingMetricDimensionProperty(name=k, value=v)
                                    for k, v in source.dimensions.items()
                                ],
                            ),
                        ),
                    )
                )
            else:
                target = name == TARGET_METRIC
                queries.append(
                    cfn.TargetTrackingMetricDataQueryProperty(
                        id=name,
                        expression=rendered(name, self.sizing),
                        label="runnable tasks per worker" if target else None,
                        return_data=target,
                    )
                )
        return queries


def scalable_target(scope: Construct, *, sizing: FleetSizing, resource_id: str) -> appscaling.ScalableTarget:
    """The service's desired count, 0..max_workers, through the ECS service-linked role."""
    return appscaling.ScalableTarget(
        scope,
        "ScalableTarget",
        service_namespace=appscaling.ServiceNamespace.ECS,
        scalable_dimension="ecs:service:DesiredCount",
        resource_id=resource_id,
        min_capacity=0,
        max_capacity=sizing.max_workers,
        # The service-linked role, created by Application Auto Scaling on first use.
        role=iam.Role.from_role_arn(
            scope,
            "AutoScalingRole",
            Arn.format(
                ArnComponents(
                    service="iam",
                    region="",
                    resource="role/aws-service-role/ecs.application-autoscaling.amazonaws.com",
                    resource_name="AWSServiceRoleForApplicationAutoScaling_ECSService",
                    arn_format=ArnFormat.SLASH_RESOURCE_NAME,
                ),
                Stack.of(scope),
            ),
        ),
    )


def track_runnable_per_worker(
    scope: Construct, target: appscaling.ScalableTarget, metrics: FleetMetrics
) -> appscaling.CfnScalingPolicy:
    """Target tracking on the rule's ``perworker`` (metric math, so the L1 policy)."""
    cfn = appscaling.CfnScalingPolicy
    return cfn(
        scope,
        "BacklogPerWorkerPolicy",
        policy_name=Names.unique_id(scope) + "BacklogPerWorker",
        policy_type="TargetTrackingScaling",
        scaling_target_id=target.scalable_target_id,
        target_tracking_scaling_policy_configuration=cfn.TargetTrackingScalingPolicyConfigurationProperty(
            target_value=float(metrics.sizing.backlog_per_worker),
            customized_metric_specification=cfn.CustomizedMetricSpecificationProperty(
                metrics=metrics.target_tracking_queries()
            ),
            scale_out_cooldown=60,
            # Scale-in removes idle workers only: a worker training a shard is task-protected.
            scale_in_cooldown=300,
        ),
    )


def wake_from_zero(
    scope: Construct, target: appscaling.ScalableTarget, metrics: FleetMetrics
) -> cloudwatch.Alarm:
    """0 workers and runnable tasks: start ceil(runnable / target) workers (up to WAKE_STEPS_MAX) at once."""
    sizing = metrics.sizing
    action = appscaling.StepScalingAction(
        scope,
        "WakeFromZero",
        scaling_target=target,
        adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
        cooldown=Duration.minutes(2),
        metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
    )
    t = sizing.backlog_per_worker
    levels = min(sizing.max_workers, WAKE_STEPS_MAX)
    # Bounds are relative to the alarm threshold (1 task): runnable in ((k-1)t, kt] → k workers.
    for k in range(1, levels + 1):
        action.add_adjustment(
            adjustment=k, lower_bound=(k - 1) * t, upper_bound=k * t if k < levels else None
        )
    alarm = cloudwatch.Alarm(
        scope,
        "WakeFromZeroAlarm",
        metric=metrics.expression("wake", "runnable tasks with no workers"),
        threshold=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods=1,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        alarm_description="Scaling (not paging): tasks can run and the fleet has no workers; start some.",
    )
    alarm.add_alarm_action(cw_actions.ApplicationScalingAction(action))
    return alarm


def scale_to_zero(
    scope: Construct, target: appscaling.ScalableTarget, metrics: FleetMetrics
) -> cloudwatch.Alarm:
    """No task visible or in flight for ``scale_to_zero_after``: stop every worker."""
    action = appscaling.StepScalingAction(
        scope,
        "ScaleToZero",
        scaling_target=target,
        adjustment_type=appscaling.AdjustmentType.EXACT_CAPACITY,
        cooldown=Duration.minutes(5),
        metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
    )
    action.add_adjustment(adjustment=0, upper_bound=0)
    periods = max(1, int(metrics.sizing.scale_to_zero_after.to_minutes()))
    alarm = cloudwatch.Alarm(
        scope,
        "QueueIdleAlarm",
        metric=metrics.expression("backlog", "backlog (visible + in flight)"),
        threshold=0,
        comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_OR_EQUAL_TO_THRESHOLD,
        evaluation_periods=periods,
        datapoints_to_alarm=periods,
        # An idle queue may stop publishing metrics: silence means nothing to train.
        treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
        alarm_description=f"Scaling (not paging): no task queued or in flight for {periods} min; "
        "scale the worker fleet to zero.",
    )
    alarm.add_alarm_action(cw_actions.ApplicationScalingAction(action))
    return alarm
