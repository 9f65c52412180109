"""Retry marks: which shards a retry sent again, under which generation, so stale failures stay late.

``shardq retry`` sends a failed shard's task again under a fresh retry generation
(``ShardTask.generation``), but an older copy of the task may still be out there: in flight on
a worker, or waiting out its receives until SQS dead-letters it. Its failure, arriving after the
retry, must not fail the shard: the retried task's good result would then be dropped as a
duplicate and the shard lost to the retry. So a retry leaves a mark per chunk of shards it sends
again (``RETRIED#r0003#train#g000002#000042``: round, phase, generation, lowest shard; the shard
ids in a number set), and ``Counting.record`` keeps a failure (``ShardResult.generation``) older
than its shard's mark apart as late. A succeeded outcome of an older generation still counts: it
is a real training of the same task.

The marks stay until the job's items go (they are a few per retry, read only on that rare path).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from shardq.core.store.base import StoreBase
from shardq.core.store.keys import _pk

# Shard ids one mark holds when a retry re-sends a whole phase (a FAILED map job's unrun shards):
# ≈ 7 bytes an id, so a mark stays near 35 KB, far below DynamoDB's 400 KB item limit.
MARK_SHARDS_MAX = 5_000


def retried_prefix(round_no: int, phase: str) -> str:
    """The ``sk`` prefix of the retry marks of one (round, phase)."""
    return f"RETRIED#r{round_no:04d}#{phase}#"


def retried_item(
    job_id: str, round_no: int, phase: str, generation: int, shards: Sequence[int]
) -> dict[str, Any]:
    """The mark that ``shards`` of (round, phase) were sent again under retry ``generation``."""
    ids = sorted(set(shards))
    return {
        "pk": _pk(job_id),
        "sk": {"S": f"{retried_prefix(round_no, phase)}g{generation:06d}#{ids[0]:06d}"},
        "generation": {"N": str(generation)},
        "shards": {"NS": [str(s) for s in ids]},
    }


class RetryMarks(StoreBase):
    """Writing and reading retry marks (the job store's part that knows them)."""

    def mark_retried(
        self, job_id: str, round_no: int, phase: str, shards: Iterable[int], generation: int
    ) -> None:
        """Mark ``shards`` of (round, phase) as sent again under ``generation`` (idempotent).

        For shards a retry sends without forgetting a failure first (a FAILED job's unrun tasks, a
        crashed retry's pending ones); ``JobStore.forget_failures`` marks the ones it forgets in
        its own transaction. Call it before the tasks go out and before the job runs again.
        """
        ids = sorted(set(shards))
        marks = [ids[i : i + MARK_SHARDS_MAX] for i in range(0, len(ids), MARK_SHARDS_MAX)]
        self._batch_write(
            [{"PutRequest": {"Item": retried_item(job_id, round_no, phase, generation, m)}} for m in marks]
        )

    def retried_generations(self, job_id: str, round_no: int, phase: str) -> dict[int, int]:
        """Shard → the latest retry generation that sent it again, for one (round, phase)."""
        latest: dict[int, int] = {}
        for item in self._query(job_id, retried_prefix(round_no, phase)):
            generation = int(item["generation"]["N"])
            for shard in item["shards"]["NS"]:
                latest[int(shard)] = max(generation, latest.get(int(shard), 0))
        return latest
