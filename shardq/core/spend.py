"""The spend guard: a job with ``budget_usd`` stops taking new tasks once its counted cost reaches it.

What is counted: each result carries its task's measured ``duration_s`` and its worker's
``price_per_hour``; ``ShardResult.cost_micro_usd`` is their product, and ``JobStore.record`` adds
it to the job (``cost_uusd``, and ``usd_r<round>_<phase>``) in the transaction that counts the
outcome, so a duplicate or a late copy never adds its cost twice (``shardq.core.budgets``).

The stop, in the order it happens:

1. ``stop_if_spent`` (the aggregator's ``advance``, after recording): once the counted cost
   reaches the budget, the job record is marked ``budget_stop`` with the cost and outcome count
   at that moment (once).
2. No new task is sent (``admission_refusal``, checked by the Enqueuer before any send): no next
   round, no reduce, no rest of a fan-out.
3. Workers drop the job's queued tasks unrun (``shardq.worker.drops``) and say so on the results
   queue (``Dropped``); the aggregator counts each drop once, and not at all when an outcome of
   that task is recorded (a copy of it ran: ``count_drop``).
   Tasks already running finish, and their outcomes (and cost) are counted as usual.
4. ``ending``: once every task sent is counted or dropped (``shardq.core.outstanding``: the
   current phase of a job with rounds, every rung of an asynchronous sweep, every client update
   of a FedBuff job), the job ends
   FAILED with ``stopped_message``: the budget, the cost when new tasks stopped, the cost after
   the tasks running then finished, and how many queued tasks were dropped. A phase that
   completed on its own (its last task spent the budget) closes as usual; a job whose last
   round completed SUCCEEDS, over budget by what its running tasks cost.

FAILED rather than a new status: every reader of a job (CLIs of earlier versions, the
``Job Finished`` rule of a deployment, scripts testing ``status``) knows the three terminal
statuses, and a budget stop means the job did not do all it was asked. The message says why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from shardq.core.budgets import budget_text, money, to_micro, usd
from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.fedbuff_params import NAME as FEDBUFF
from shardq.core.jobstore import JobNotFound, JobRecord, JobStore, Outcome
from shardq.core.outstanding import closes_on_its_own, tasks_out
from shardq.core.outstanding import counted as counted_outcomes
from shardq.core.rounds import Tick
from shardq.core.store.fedbuff import FedBuffStore
from shardq.core.store.spending import month_now

# The results-queue body of a drop notice: ``{"shardq_dropped": {job_id, round, shard_id, task_type}}``.
DROP_KEY = "shardq_dropped"
# What ``shardq.worker.drops.drop_reason`` says of a task of a job whose budget is spent.
BUDGET_DROP = "job's budget_usd is spent"


@dataclass(frozen=True)
class Dropped(Tick):
    """A worker dropped this task unrun because its job's budget is spent.

    It travels the way a round's deadline tick does (a results-queue notice that moves its job,
    ``Advancer.ingest``), with the task's identity; ``due`` is 0, so it is never re-armed.
    """

    shard_id: int = 0
    task_type: str = "train"

    def body(self) -> str:
        """The message body."""
        fields = {"job_id": self.job_id, "round": self.round, "shard_id": self.shard_id}
        return json.dumps({DROP_KEY: {**fields, "task_type": self.task_type}})

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Dropped:
        """The notice of a decoded ``{"shardq_dropped": {...}}`` body (ValidationError if malformed)."""
        raw: Any = data.get(DROP_KEY)
        try:
            task_type = str(raw["task_type"])
            if task_type not in ("train", "reduce"):
                raise ValueError(task_type)
            return cls(
                job_id=str(raw["job_id"]),
                round=int(raw["round"]),
                due=0.0,
                shard_id=int(raw["shard_id"]),
                task_type=task_type,
            )
        except (TypeError, KeyError, ValueError) as exc:
            raise ValidationError(
                "Dropped", [f"{DROP_KEY} needs job_id, round, shard_id and task_type, got {raw!r:.80}"]
            ) from exc

    @classmethod
    def of(cls, job_id: str, round_no: int, shard_id: int, task_type: str) -> Dropped:
        """The notice of one task."""
        return cls(job_id=job_id, round=round_no, due=0.0, shard_id=shard_id, task_type=task_type)


def parse_notice(body: str) -> Dropped | None:
    """The drop notice in a results-queue body, or None when it is none."""
    if DROP_KEY not in body:
        return None
    data = json.loads(body)
    return Dropped.parse(data) if isinstance(data, dict) and DROP_KEY in data else None


def count_drop(store: JobStore, request: TrainingRequest, drop: Dropped) -> bool:
    """Count a drop notice once (``JobStore.record_drop``), unless an outcome of its task is
    recorded (a copy that ran): a FedBuff train task's outcome is its client's update ``round``
    (its ``UPD#`` item), any other task's its result item. False when it was not counted."""
    strategy = request.strategy
    if drop.task_type == "train" and strategy is not None and strategy.name == FEDBUFF:
        return FedBuffStore(store).record_drop(drop.job_id, drop.shard_id, drop.round)
    return store.record_drop(drop.job_id, drop.round, drop.task_type, drop.shard_id)


def tenants_of(outcomes: Iterable[Outcome], request_of: Callable[[str], TrainingRequest]) -> dict[str, str]:
    """The tenant of each job with a priced outcome among ``outcomes`` (its month counts the cost);
    jobs without a tenant, or whose outcomes cost nothing, are left out (and their request unread)."""
    priced = {o.result.job_id for o in outcomes if o.result.cost_micro_usd}
    out: dict[str, str] = {}
    for job_id in priced:
        try:
            tenant = request_of(job_id).tenant
        except JobNotFound:
            continue  # recording raises it, with the job's other outcomes
        if tenant:
            out[job_id] = tenant
    return out


def budget_micro(job: JobRecord) -> int | None:
    """The job's budget in micro-USD (None: no budget)."""
    budget = job.request.budget_usd
    return None if budget is None else to_micro(budget)


def counted(job: JobRecord) -> int:
    """Outcomes the job has counted, over every round and phase (``outstanding.counted``)."""
    return counted_outcomes(job)


def dropped(job: JobRecord) -> int:
    """Tasks workers dropped unrun after the budget stop."""
    return sum(v for (kind, _, _), v in job.counters.items() if kind == "drop")


def monthly_budget(admission: Any, job: JobRecord) -> float | None:
    """The ``monthly_budget_usd`` of the job's tenant (``cdk.json`` ``scheduling``), if any;
    ``admission`` is the Enqueuer's ``shardq.core.admission.Admission`` (None without one)."""
    tenant = job.request.tenant
    if admission is None or not tenant:
        return None
    budget: float | None = admission.scheduling.tenant(tenant).monthly_budget_usd
    return budget


def monthly_refusal(store: JobStore, tenant: str, budget: float | None) -> str | None:
    """Why ``tenant`` may submit no job now: its month-to-date cost reached its monthly budget."""
    if budget is None:
        return None
    spent = store.tenant_month_cost(tenant)
    if spent < to_micro(budget):
        return None
    return (
        f"monthly_budget_usd of tenant '{tenant}' is {budget_text(budget)}: {money(spent)} spent in "
        f"{month_now()} (UTC); wait for next month, or raise cdk.json "
        f"scheduling.tenants.{tenant}.monthly_budget_usd"
    )


def stop_if_spent(store: JobStore, job: JobRecord, monthly: float | None = None) -> JobRecord:
    """Mark the budget stop when a running job's counted cost reached its ``budget_usd``, or its
    tenant's month-to-date cost reached ``monthly`` (its ``monthly_budget_usd``); the job as it
    is now (read again when it was marked)."""
    if job.status != "RUNNING" or job.budget_stop is not None:
        return job
    budget = budget_micro(job)
    tenant: dict[str, Any] = {}
    if budget is None or job.cost_micro_usd < budget:
        if monthly is None or not job.request.tenant:
            return job
        spent = store.tenant_month_cost(job.request.tenant)
        if spent < to_micro(monthly):
            return job
        # Integers only (a float in a map is no DynamoDB number): micro-USD, like every cost here.
        tenant = {"tenant": job.request.tenant, "monthly_uusd": to_micro(monthly), "month_uusd": spent}
    # Marked here or by a racing aggregator (the first mark's figures stay): read it as it is.
    store.mark_budget_stop(job.job_id, job.cost_micro_usd, counted(job), **tenant)
    return store.get_job(job.job_id)


def admission_refusal(job: JobRecord) -> str | None:
    """Why no new task of ``job`` may be sent (None: it may): its budget is spent."""
    if job.budget_stop is None:
        return None
    return f"{BUDGET_DROP}: {job_spend(job)}"


def outstanding(job: JobRecord) -> int:
    """Tasks sent and neither counted nor dropped: those still running (or queued, until a worker
    drops them); every rung of an asynchronous sweep, every client of a FedBuff job
    (``shardq.core.outstanding``)."""
    return tasks_out(job)


def ending(job: JobRecord) -> tuple[str, str] | None:
    """How a budget-stopped job ends, once nothing it sent still runs; None while something does,
    or when its current step completed on its own (it closes as usual, and the next step, given
    no task, ends it here: ``outstanding.closes_on_its_own``)."""
    if job.budget_stop is None or outstanding(job) > 0:
        return None
    if closes_on_its_own(job):
        return None
    return "FAILED", stopped_message(job)


def job_spend(job: JobRecord) -> str:
    """``$5.12 of budget_usd 5.00`` (or ``$5.12`` without a budget)."""
    budget = job.request.budget_usd
    return money(job.cost_micro_usd) + ("" if budget is None else f" of budget_usd {budget_text(budget)}")


def stopped_message(job: JobRecord) -> str:
    """Why a budget-stopped job ended: what it had spent at the stop and after its running tasks."""
    stop = job.budget_stop or {}
    at_stop = int(stop.get("cost_uusd", 0))
    finished = max(0, counted(job) - int(stop.get("counted", 0)))
    drops = dropped(job)
    ran = f"{finished} task{'s' if finished != 1 else ''} running then finished"
    what = (
        f"{money(at_stop)} when new tasks stopped, {money(job.cost_micro_usd)} after the {ran}; "
        f"{drops} queued task{'s' if drops != 1 else ''} dropped unrun"
    )
    if "tenant" in stop:
        tenant, monthly = stop["tenant"], usd(int(stop["monthly_uusd"]))
        return (
            f"monthly_budget_usd {budget_text(monthly)} of tenant '{tenant}' spent "
            f"({money(int(stop['month_uusd']))} this month): this job {what}. Raise cdk.json "
            f"scheduling.tenants.{tenant}.monthly_budget_usd or wait for next month (the manifest "
            "lists what finished)"
        )
    budget = job.request.budget_usd or 0.0
    return (
        f"budget_usd {budget_text(budget)} spent: {what}. Submit again with a higher budget_usd "
        "(the manifest lists what finished)"
    )


def retry_refusal(job: JobRecord) -> str | None:
    """Why ``shardq retry`` refuses a job its budget stopped (None: not stopped), whatever its kind.

    A retry never runs a budget-stopped job again: ``budget_usd`` is part of the request (which
    no one changes after submit) and stays spent, so a retry could send nothing and would end
    the job again; it would also have to forget the drops counted against the tasks it sends
    again. Refused before anything is touched: the job, its counters and its manifest stay as
    they are. The fix is a new job (a new ``job_id``) with a higher budget."""
    stop = job.budget_stop
    if stop is None:
        return None
    spent = f"{money(job.cost_micro_usd)} spent"
    if "tenant" in stop:
        tenant, monthly = stop["tenant"], usd(int(stop["monthly_uusd"]))
        return (
            f"job {job.job_id} was stopped by tenant '{tenant}''s monthly_budget_usd "
            f"{budget_text(monthly)} ({spent} by this job): a budget-stopped job is never retried. "
            f"Submit the request again under a new job_id once the month allows it (raise cdk.json "
            f"scheduling.tenants.{tenant}.monthly_budget_usd or wait for next month)"
        )
    budget = job.request.budget_usd or 0.0
    return (
        f"job {job.job_id} was stopped by its budget_usd {budget_text(budget)} ({spent}): a "
        "budget-stopped job is never retried (its budget stays spent). Submit the request again "
        "under a new job_id with a higher budget_usd (the manifest lists what finished)"
    )


def cost_summary(job: JobRecord) -> dict[str, Any]:
    """The job's cost as the views and the manifest show it: total, budget, per (round, phase)."""
    per_round = [
        {"round": r, "phase": phase, "cost_usd": v / 1_000_000}
        for (kind, r, phase), v in sorted(job.counters.items(), key=lambda kv: (kv[0][1], kv[0][2]))
        if kind == "usd"
    ]
    stop = job.budget_stop
    return {
        "cost_usd": job.cost_micro_usd / 1_000_000,
        "budget_usd": job.request.budget_usd,
        "budget_stopped_at": None if stop is None else stop.get("at"),
        "cost_at_stop_usd": None if stop is None else int(stop.get("cost_uusd", 0)) / 1_000_000,
        "dropped_unrun": dropped(job),
        "per_round": per_round,
    }
