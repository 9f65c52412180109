"""The model-based test's FedBuff jobs (buffered asynchronous FedAvg, issue #27).

Submits may draw a FedBuff job (``fedbuff_fields``): 2–4 clients, K = 2, S = 0–1, 2–3 versions, so
buffers close while slow clients still train (stale and late updates) and clients outnumber K.
The shared rules drive it: updates reported ok, failed, non-finite (a failed update), twice, or
replayed long after; workers killed mid-update, tasks dead-lettered (a failed update); reduces
ok or failed; cancels and retries. After every step, over the same consistent scan of the table,
``fedbuff_problems`` checks

11. **every update applied to exactly one version, never twice, never staler than S**: the
    history checker's version rules (``tests.chaos.versions.follows_versions``: each update
    recorded once with its base and version, listed under at most its own version, τ ≤ S for an
    applied one, each closed buffer exactly K applied updates and its reduce applied exactly
    those, ``failed_total`` the failures since the last retry);
12. **the job's counts are its recorded updates**: each version's ``upd``/``ulate``/``ufail``/
    ``utau`` counters equal its UPD items (``utau``: the applied ones' τ summed), the reduce
    counters its reduce outcome items, the job's cost the updates' and reduces' costs (plus those
    a retry forgot), and no train outcome item exists (a FedBuff update is never a round's result);
13. **at most ``max_parallel`` client tasks out** (``tasks_out`` less the version's reduce): every
    task after the first wave goes out only on a slot a recorded update freed, once;

and ``fedbuff_quiet_problem``: a RUNNING FedBuff job in a quiet world (no task, result or tick in
flight) can never end, since each of its steps is driven by an update or a reduce.
"""

from __future__ import annotations

import json
import re
from typing import Any

from shardq.core import fedbuff
from shardq.core.contracts import ShardResult
from shardq.core.jobstore import JobRecord
from shardq.core.outstanding import tasks_out
from shardq.core.store.fedbuff import FAILED, LATE, FedBuffStore, Update
from tests.chaos.versions import follows_versions

INIT = "s3://models/init.npz"
_COUNTER = re.compile(r"^([a-z]+)_r(\d+)_(train|reduce)$")
_RESULT = re.compile(r"^(RES|LATE)#r(\d+)#(train|reduce)#(\d+)$")


def fedbuff_fields(shards: int, seed: int) -> dict[str, Any]:
    """A submit's FedBuff fields: one lane per client or one fewer (client slots rotate:
    ``Driver._hand``), K = 2, S = 0 or 1, 2 or 3 versions, calibration none or cached."""
    return {
        "rounds": 2 + seed % 2,
        "max_parallel": shards - (seed + 1) % 2,  # seeds 0 and 2: one slot fewer than clients
        "model": {"init_uri": INIT},
        "strategy": {
            "name": "fedbuff",
            "buffer_size": 2,
            "max_staleness": (seed // 2) % 2,
            # seeds 1 and 2 with CA2FL's cached calibration: rule 11 then also checks that each
            # reduce names each client's latest applied update (tests.chaos.versions, rule 6)
            "calibration": "cached" if seed % 2 != (seed // 2) % 2 else "none",
        },
    }


def is_fedbuff(job: JobRecord) -> bool:
    """True for a FedBuff job."""
    return fedbuff.applies(job.request)


def planned_updates(store: Any, job: JobRecord, seq: int) -> set[int]:
    """The clients whose update ``seq`` was sent: every client's first; a later one only once the
    client's previous update fixed the version it trains from."""
    if seq == 0:
        return set(range(job.task_count))
    keys = [(c, seq - 1) for c in range(job.task_count)]
    found = FedBuffStore(store).updates(job.job_id, keys)
    return {c for (c, _), u in found.items() if u.next_base is not None}


def fedbuff_problems(engine: Any, job: JobRecord, items: list[dict[str, Any]]) -> list[str]:
    """Invariants 11–13 over one FedBuff job's items (see the module docstring)."""
    problems = follows_versions(engine, job.job_id)
    clients_out = tasks_out(job) - max(0, job.enqueued(job.round, "reduce") - job.done(job.round, "reduce"))
    if job.status == "RUNNING" and clients_out > job.client_slots():
        problems.append(f"{clients_out} client tasks out, over max_parallel={job.request.max_parallel}")
    updates = [Update.from_item(i) for i in items if i["sk"]["S"].startswith("UPD#")]
    head = next(i for i in items if i["sk"]["S"] == "JOB")
    want: dict[tuple[str, int, str], int] = {}
    for u in updates:
        if u.state == "after_end":
            continue
        kinds = ["ufail"] if u.state == FAILED else ["upd", *(["ulate"] if u.state == LATE else [])]
        for kind in kinds:
            want[(kind, u.version, "train")] = want.get((kind, u.version, "train"), 0) + 1
        if u.state == "applied" and u.tau:
            want[("utau", u.version, "train")] = want.get(("utau", u.version, "train"), 0) + u.tau
    reduce_cost = 0
    for item in items:
        m = _RESULT.match(item["sk"]["S"])
        if not m:
            continue
        if m.group(3) == "train":
            problems.append(f"a train outcome item {item['sk']['S']}: FedBuff updates are UPD items")
            continue
        if m.group(1) == "RES":
            result = ShardResult.from_json(item["result"]["S"])
            kind = "ok" if result.status == "succeeded" else "fail"
            key = (kind, int(m.group(2)), "reduce")
            want[key] = want.get(key, 0) + 1
            reduce_cost += result.cost_micro_usd
    have = {
        (m.group(1), int(m.group(2)), m.group(3)): int(value["N"])
        for name, value in head.items()
        if (m := _COUNTER.match(name)) and m.group(1) in ("upd", "ulate", "ufail", "utau", "ok", "fail")
    }
    for key in sorted(set(want) | {k for k, n in have.items() if n}):
        if have.get(key, 0) != want.get(key, 0):
            problems.append(f"counter {key} is {have.get(key, 0)}, the items say {want.get(key, 0)}")
    counted_cost = sum(u.cost_micro_usd for u in updates if u.state != "after_end") + reduce_cost
    forgotten = int(head.get("forgotten_uusd", {}).get("N", 0))
    if job.cost_micro_usd != counted_cost + forgotten:
        problems.append(
            f"cost is {job.cost_micro_usd} micro-USD, its updates' and reduces' {counted_cost} + {forgotten} "
            "forgotten: a cost counted twice or lost"
        )
    return problems


def fedbuff_quiet_problem(job: JobRecord) -> str:
    """A RUNNING FedBuff job with nothing in flight is a hang."""
    return (
        f"{job.job_id}: RUNNING FedBuff job at version {job.round} ({job.phase}) with no task, result "
        f"or tick in flight: it can never end ({json.dumps(job.error)})"
    )
