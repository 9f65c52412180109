"""FleetSizing: how big the worker fleet may get and what it runs on (the ``fleet_*`` context keys)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from aws_cdk import Duration

from stacks.components._props import Problems

FLEET_KINDS = ("gpu", "fargate")


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
        Target of ``runnable tasks / workers`` (shardq/core/fleet_scaling.json).
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


def validate_sizing(sizing: FleetSizing) -> None:
    """Raise one ComponentPropsError naming every problem of ``sizing``."""
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
