"""Why a job failed over its failure budget (``max_failed_shards``): the count, and the first failure.

The first failure is named as every human view numbers it (``status``, ``watch``, ``result``):
rounds and rungs from 1, shards and trials by their id, a FedBuff update by its number, client
and the version that was open (``watch``'s ``failed:`` lines). A synchronous job's failures that
count are its current round's (a round closes before the next starts); an asynchronous sweep runs
every rung at once, so its first failure is the earliest recorded at any rung.
"""

from __future__ import annotations

from shardq.core import async_sweep, fedbuff
from shardq.core.jobstore import JobRecord, JobStore, ResultRecord


def message(store: JobStore, job: JobRecord) -> str:
    """``N shards failed, over max_failed_shards=M; first: <where>: <its error's first line>``."""
    text = f"{job.failed_total} shards failed, over max_failed_shards={job.max_failed_shards}"
    if fedbuff.applies(job.request):  # its failures are updates, of any client and number
        return text + fedbuff.first_failure_text(store, job.job_id)
    if async_sweep.is_async(job.request):
        found = [store.first_failure(job.job_id, rung, "train") for rung in range(job.rounds)]
        first = min((f for f in found if f is not None), key=_when, default=None)
        where = "rung {round} trial {shard}"
    else:
        first = store.first_failure(job.job_id, job.round, "train")
        where = "round {round} shard {shard}"
    if first is None or not first.result.error:
        return text
    reason = first.result.error.strip().splitlines()[0][:300]
    return (
        text + f"; first: {where.format(round=first.result.round + 1, shard=first.result.shard_id)}: {reason}"
    )


def _when(record: ResultRecord) -> tuple[str, int, int]:
    """Recording order (ties: rung, then trial)."""
    return record.recorded_at, record.result.round, record.result.shard_id
