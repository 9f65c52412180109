"""The promises the model-based test checks after every step, and at the end of every run.

After every step (``step_problems``), over a consistent scan of the whole job table:

1. **counted at most once**: each (round, phase) counter equals the outcome items it counts
   (``ok`` the succeeded ones, every other outcome counter the rest), ``failed_total`` equals
   the failed train items, and no task is both counted and late (but for a stale failure: an
   older copy's failure of a shard a retry sent again is late beside the retried outcome, and a
   counted failure is never older than its shard's retry mark);
2. **only planned tasks**: every outcome item (counted or late) names a task its round planned
   (its participants, a rung's promoted trials, the reduce of a ``data_parallel`` round);
3. **no item over 400 KB**, sized by DynamoDB's rules (attribute names + values).

Whenever the world is quiet — no task queued, held by a worker or dead-lettered, no result or
tick waiting on the results queue — (``quiet_problems``):

4. **a job whose tasks have all ended is final or advancing**: a RUNNING job's round policy
   says wait (``rounds.verdict``), it is not waiting for a cancel to take effect;
5. **no RUNNING job without outstanding work**: with nothing in flight, a RUNNING job must
   have a round deadline's tick held for its current round (the only thing still to come).

And after every step, **cost counted once** (invariant 10, ``cost_problems``): a job's
``cost_uusd`` is its counted outcome items' costs plus those of failures a retry forgot.

A FedBuff job's updates and versions: invariants 11–13 of ``tests/chaos/model_fedbuff.py``.

A retry resumes the round that failed (``retry_problems``, checked by the retry rule). And at
the end, when every job ran to its end, each job's whole history passes
``tests.chaos.history.check``.

``FIXES`` names the defects being fixed alongside this test; a rule or check that exercises
one runs only once its fix has landed (each predicate looks for the fix's feature).
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks.scale_sizes import ddb_item_size as item_size
from shardq.core import contracts, operations, rounds
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord
from tests.chaos.model_asha import asha_problems, asha_quiet_problem, decided
from tests.chaos.model_fedbuff import fedbuff_problems, fedbuff_quiet_problem, is_fedbuff, planned_updates
from tests.chaos.model_windows import window_problems
from tests.chaos.model_world import ITEM_LIMIT, World, scan_items

_COUNTER = re.compile(r"^([a-z]+)_r(\d+)_(train|reduce)$")
_RESULT = re.compile(r"^(RES|LATE)#r(\d+)#(train|reduce)#(\d+)$")
# A losing run's cost (store.copies): one per (copy, retry generation) of a sweep's task.
_COPY = re.compile(r"^COPY#r(\d+)#(train|reduce)#(\d+)#b\d+(#g\d+)?$")
_RETRIED = re.compile(r"^RETRIED#r(\d+)#(train|reduce)#")
# Counters that count something other than outcomes.
_NOT_OUTCOMES = ("ok", "enq", "plan", "part", "usd", "drop")


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def results_dlq_consumer() -> Callable[[dict[str, Any], Any], dict[str, Any]] | None:
    """The results DLQ's consumer, once it exists (records a rejected result naming a planned
    task as that task's failure)."""
    try:
        from lambdas import results_dlq_handler
    except ImportError:
        return None
    handler: Callable[[dict[str, Any], Any], dict[str, Any]] | None = getattr(
        results_dlq_handler, "handle_dead_results", None
    )
    return handler


# Each predicate looks for its fix's feature; the lead enables a check by landing the fix.
FIXES: dict[str, Callable[[], bool]] = {
    # A train result with a non-finite objective is a "diverged" outcome, not a rejected result.
    "diverged": lambda: "diverged" in contracts.RESULT_STATUSES,
    # A rejected result that names a planned task is recorded as that task's failure.
    "results_dlq": lambda: results_dlq_consumer() is not None,
    # A retry after a round's deadline failed the job reopens the round with a fresh tick.
    "deadline_retry": lambda: "arm_round" in _source(operations) + _source(Engine.reopen),
    # A successive-halving retry resends only the failed rung's own (promoted) trials.
    "halving_retry": lambda: "planned_tasks" in _source(operations),
}


def fixed(name: str) -> bool:
    """True once the fix ``name`` (see ``FIXES``) is in the tree."""
    return FIXES[name]()


def planned(world: World, job: JobRecord, round_no: int, phase: str) -> set[int]:
    """The tasks (round, phase) of ``job`` plans: participants, promoted trials, or the reduce."""
    if phase == "reduce":
        return {0} if job.kind == "data_parallel" else set()
    if is_fedbuff(job):  # a train task's "round" is its client's update number (model_fedbuff)
        return planned_updates(world.engine.store, job, round_no)
    if round_no >= job.rounds:
        return set()
    if job.request.asynchronous:  # an asynchronous sweep plans a rung's tasks one result at a time
        return decided(world.engine.store, job.job_id, round_no)
    if job.request.early_stopping is not None and round_no > 0:
        return {shard for shard, _ in world.engine.store.round_plan(job.job_id, round_no)}
    return set(job.planned(round_no, "train"))


def step_problems(world: World, statuses: dict[str, str] | None = None) -> list[str]:
    """Invariants 1–3 over the whole table (see the module docstring); fills ``statuses`` (job id
    → status) from the same scan."""
    problems: list[str] = []
    by_job: dict[str, list[dict[str, Any]]] = {}
    month_cost: Counter[str] = Counter()
    tenant_cost: Counter[str] = Counter()
    for item in scan_items(world.clients["dynamodb"], world.settings.job_table):
        size = item_size(item)
        if size > ITEM_LIMIT:
            problems.append(
                f"item {item['pk']['S']} {item['sk']['S']} is {size} bytes, over DynamoDB's 400 KB"
            )
        if item["pk"]["S"].startswith("TENANT#"):  # a tenant's spend per month (invariant 10)
            month_cost[item["pk"]["S"].removeprefix("TENANT#")] += int(item["cost_uusd"]["N"])
            continue
        if not item["pk"]["S"].startswith("JOB#"):
            continue  # a tenant's items (TENANT#: its month's spend), not a job's
        by_job.setdefault(item["pk"]["S"].removeprefix("JOB#"), []).append(item)
    for job_id, items in sorted(by_job.items()):
        head = next((i for i in items if i["sk"]["S"] == "JOB"), None)
        if head is None:
            problems.append(f"items of job {job_id} without its job record")
            continue
        job = JobRecord.from_item(head)
        if statuses is not None:
            statuses[job_id] = job.status
        problems += [f"{job_id}: {p}" for p in _job_problems(world, job, items)]
        if job.request.tenant:
            tenant_cost[job.request.tenant] += job.cost_micro_usd
    for tenant in sorted(set(month_cost) | set(tenant_cost)):
        # A tenant's months hold every counted outcome's cost of its jobs, once (the same transaction).
        if month_cost[tenant] != tenant_cost[tenant]:
            problems.append(
                f"tenant {tenant}: its months hold {month_cost[tenant]} micro-USD, its jobs counted "
                f"{tenant_cost[tenant]}: a cost counted twice or lost"
            )
    return problems


def _job_problems(world: World, job: JobRecord, items: list[dict[str, Any]]) -> list[str]:
    if is_fedbuff(job):  # invariants 11-13: tests/chaos/model_fedbuff.py
        return fedbuff_problems(world.engine, job, items)
    problems: list[str] = []
    counted: dict[tuple[int, str], list[str]] = {}
    keys: dict[str, set[tuple[int, str, int]]] = {"RES": set(), "LATE": set()}
    marks: dict[tuple[int, str, int], int] = {}
    for item in items:
        m = _RETRIED.match(item["sk"]["S"])
        if m:
            for shard in item["shards"]["NS"]:
                key = (int(m.group(1)), m.group(2), int(shard))
                marks[key] = max(marks.get(key, 0), int(item["generation"]["N"]))
    stale: set[tuple[int, str, int]] = set()
    for item in items:
        m = _RESULT.match(item["sk"]["S"])
        if not m:
            continue
        where, r, phase, shard = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        generation = int(json.loads(item["result"]["S"]).get("generation", 0))
        older = item["outcome"]["S"] == "failed" and generation < marks.get((r, phase, shard), 0)
        if older and where == "RES":
            problems.append(
                f"round {r} {phase} shard {shard} failed by a stale copy (generation {generation})"
            )
        if older and where == "LATE":
            stale.add((r, phase, shard))
        keys[where].add((r, phase, shard))
        if where == "RES":
            counted.setdefault((r, phase), []).append(item["outcome"]["S"])
        if shard not in planned(world, job, r, phase):
            problems.append(
                f"{where} item for round {r} {phase} shard {shard}, a task its round never planned"
            )
    for both in sorted((keys["RES"] & keys["LATE"]) - stale):
        problems.append(f"{both} is both counted and late")
    outcome_counters: dict[tuple[int, str], int] = {}
    raw = next(i for i in items if i["sk"]["S"] == "JOB")
    for name, value in raw.items():
        m = _COUNTER.match(name)
        if m and m.group(1) not in _NOT_OUTCOMES:
            key = (int(m.group(2)), m.group(3))
            outcome_counters[key] = outcome_counters.get(key, 0) + int(value["N"])
    for key in sorted(
        set(counted) | set(outcome_counters) | {(k[1], k[2]) for k in job.counters if k[0] == "ok"}
    ):
        r, phase = key
        outcomes = counted.get(key, [])
        ok = sum(1 for o in outcomes if o == "succeeded")
        if job.ok(r, phase) != ok:
            problems.append(
                f"ok counter of round {r} {phase} is {job.ok(r, phase)}, {ok} succeeded outcome items"
            )
        if outcome_counters.get(key, 0) != len(outcomes) - ok:
            problems.append(
                f"outcome counters of round {r} {phase} add up to {outcome_counters.get(key, 0)}, "
                f"{len(outcomes) - ok} other outcome items: counted twice or lost"
            )
    failed_train = sum(
        1 for (_, phase), outs in counted.items() if phase == "train" for o in outs if o == "failed"
    )
    if job.failed_total != failed_train:
        problems.append(f"failed_total is {job.failed_total}, {failed_train} failed train outcome items")
    problems += cost_problems(job, items, raw)  # invariant 10
    problems += asha_problems(job, items)  # invariants 8-9: tests/chaos/model_asha.py
    if job.request.asynchronous:
        return problems  # no fan-out window: it decides each task as a slot frees (invariant 8)
    if job.phase == "train" and job.round < job.rounds:  # invariants 6-7: tests/chaos/model_windows.py
        order = [shard for shard, _ in world.engine.store.planned_tasks(job, job.round, "train")]
        shards = {k[2] for k in keys["RES"] | keys["LATE"] if k[:2] == (job.round, "train")}
        problems += window_problems(world, job, order, shards)
    return problems


def cost_problems(job: JobRecord, items: list[dict[str, Any]], raw: dict[str, Any]) -> list[str]:
    """Invariant 10, **cost counted once**: the job's cost is the sum of its counted outcome items'
    costs and its losing backup copies' (``COPY#`` items, one per run: copy and retry generation;
    a counted failure a copy's success replaced is one too), plus those of failures a
    retry forgot (``forgotten_uusd``), and each (round, phase)'s ``usd`` counter the sum of its own;
    a duplicate or late outcome never adds its cost otherwise."""
    problems: list[str] = []
    per_phase: dict[tuple[int, str], int] = {}
    for item in items:
        m = _RESULT.match(item["sk"]["S"])
        c = _COPY.match(item["sk"]["S"])
        if m and m.group(1) == "RES":
            cost = contracts.ShardResult.from_json(item["result"]["S"]).cost_micro_usd
            key = (int(m.group(2)), m.group(3))
            per_phase[key] = per_phase.get(key, 0) + cost
        elif c:
            key = (int(c.group(1)), c.group(2))
            per_phase[key] = per_phase.get(key, 0) + int(item["cost_uusd"]["N"])
    forgotten = int(raw.get("forgotten_uusd", {}).get("N", 0))
    if job.cost_micro_usd != sum(per_phase.values()) + forgotten:
        problems.append(
            f"cost is {job.cost_micro_usd} micro-USD, its counted outcome items' {sum(per_phase.values())}"
            f" + {forgotten} forgotten by retries: a cost counted twice or lost"
        )
    for key in sorted(set(per_phase) | {(k[1], k[2]) for k in job.counters if k[0] == "usd"}):
        counter = job.counters.get(("usd", *key), 0)
        if counter > per_phase.get(key, 0) + forgotten or counter < per_phase.get(key, 0):
            held = per_phase.get(key, 0)
            problems.append(f"usd counter of round {key[0]} {key[1]} is {counter}, its items hold {held}")
    return problems


def quiet_problems(world: World) -> list[str]:
    """Invariants 4–5, for a quiet world (the caller checks ``world.quiet()``)."""
    problems: list[str] = []
    store = world.engine.store
    for job_id in world_jobs(world):
        job = store.get_job(job_id)
        if job.terminal or job.status == "WAITING":  # a follower waits for an event: model_pipeline.py
            continue
        if job.cancel_requested_at is not None:
            problems.append(f"{job_id}: cancelled at {job.cancel_requested_at}, still RUNNING")
            continue
        if job.request.asynchronous:
            problems.append(asha_quiet_problem(job))
            continue
        if is_fedbuff(job):
            problems.append(fedbuff_quiet_problem(job))
            continue
        verdict = rounds.verdict(job, world.clock())
        if verdict != rounds.WAIT:
            problems.append(
                f"{job_id}: round {job.round} {job.phase} can move on ({verdict}) with nothing in flight, "
                f"but the job is RUNNING: {job.done(job.round, job.phase)} of "
                f"{job.expected(job.round, job.phase)} ended"
            )
            continue
        ticks = [t for t in world.ticks.pending(job_id) if int(t.data["round"]) == job.round]
        if not (job.phase == "train" and ticks):
            problems.append(
                f"{job_id}: RUNNING in round {job.round} {job.phase} with no task, result or tick in flight: "
                f"{job.done(job.round, job.phase)} of {job.expected(job.round, job.phase)} tasks ended; "
                "it can never end"
            )
    return problems


def world_jobs(world: World) -> list[str]:
    """Every job id in the table."""
    return sorted(
        i["pk"]["S"].removeprefix("JOB#")
        for i in scan_items(world.clients["dynamodb"], world.settings.job_table)
        if i["sk"]["S"] == "JOB"
    )


def retry_problems(before: JobRecord, after: JobRecord) -> list[str]:
    """A retry of a FAILED job resumes the (round, phase) that failed: the job is RUNNING there
    (or moved on, when the retried tasks' round could already close), not FAILED again."""
    if after.status == "FAILED":
        return [f"{after.job_id}: FAILED again at once after its retry ({after.error})"]
    order = {"train": 0, "reduce": 1}
    if (after.round, order[after.phase]) < (before.round, order[before.phase]):
        return [
            f"{after.job_id}: retry resumed round {after.round} {after.phase}, "
            f"it failed in {before.round} {before.phase}"
        ]
    return []
