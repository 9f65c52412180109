"""Recording outcomes exactly once with their counters (``JobStore.record``), the aggregator's hot path."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

from shardq.core.batchcalls import JobStoreError
from shardq.core.batchcalls import pause as _pause
from shardq.core.store.copies import Copies
from shardq.core.store.keys import (
    DEADLINE_MARGIN_S,
    ENDING_ATTRIBUTE,
    MAX_PUTS_PER_TRANSACTION,
    MAX_RECORD_ATTEMPTS,
    _counter,
    _from_item,
    job_key,
)
from shardq.core.store.records import (
    JobNotFound,
    Outcome,
    RecordOutcome,
)
from shardq.core.store.retried import RetryMarks
from shardq.core.store.spending import COST_ATTRIBUTE
from shardq.core.store.update import _ref, _Update, not_ending


def _preferred(outcome: Outcome) -> tuple[bool, int]:
    """Which of two outcomes of one task in one call to keep (their order in a batch is chance):
    one that is not a failure (it can never be stale), else the newer retry generation. Keeping
    an older copy's failure would drop the retried task's result as its duplicate, and then be
    found stale: the task would end with no counted outcome at all."""
    return (outcome.result.status != "failed", outcome.result.generation)


class Counting(RetryMarks, Copies):
    """``record``: result items and the counter increments that count them, in one transaction."""

    def record(
        self,
        outcomes: Iterable[Outcome],
        *,
        deadline: float | None = None,
        tenants: Mapping[str, str] | None = None,
    ) -> RecordOutcome:
        """Record outcomes exactly once and count them, one transaction per (job, round, type) chunk.

        An outcome counts only while its job runs, and a train outcome only while its round is
        open; outcomes of an ended job or of a round whose training closed (quorum, deadline) are
        recorded as late, uncounted. So is a failure of a task older than its shard's retry (its
        ``generation`` below the shard's retry mark, ``store.retried``): a stale copy's failure
        must not fail the retried shard.
        Duplicates (already recorded, or twice in this call: ``_preferred`` keeps one) are
        returned, not raised.
        Raises JobNotFound for an unknown job and JobStoreError when a conflict outlasts the
        attempts or the ``deadline`` (seconds since the epoch) comes too close.
        ``tenants`` maps job ids to their tenant: a priced chunk adds its cost to the tenant's
        month too, in the same transaction (``store.spending``).
        """
        groups: dict[tuple[str, int, str], dict[str, Outcome]] = {}
        duplicates: list[Outcome] = []
        for o in outcomes:
            r = o.result
            seen = groups.setdefault((r.job_id, r.round, r.task_type), {})
            kept = seen.get(r.key)
            if kept is None:
                seen[r.key] = o
            elif _preferred(o) > _preferred(kept):
                duplicates.append(kept)
                seen[r.key] = o
            else:
                duplicates.append(o)
        total = RecordOutcome(recorded=[], duplicates=duplicates)
        for (job_id, _, _), unique in groups.items():
            pending = list(unique.values())
            tenant = (tenants or {}).get(job_id)
            # A tenant's month item takes one of the transaction's 100 items.
            size = MAX_PUTS_PER_TRANSACTION - (1 if tenant else 0)
            for i in range(0, len(pending), size):
                chunk = pending[i : i + size]
                recorded, dups, late = self._record_chunk(job_id, chunk, deadline, tenant)
                total.recorded.extend(recorded)
                total.duplicates.extend(dups)
                total.late.extend(late)
        return total

    def _counting_update(self, job_id: str, chunk: list[Outcome], verified: int, cost: int) -> dict[str, Any]:
        """The counter increments of a chunk of one (round, type); training counts only while its
        round is open (``closed_round`` below it), and failures only while no retry came after
        their generation (or after ``verified``, the retry generation whose marks were checked).

        Not "the job is at this round": the next round's tasks go on the queue *before* the job
        moves to it (action before transition), so their results may arrive first and count.
        """
        first = chunk[0].result
        update = _Update()
        # An outcome that arrives after its job ended (a task still running when the failure budget
        # ran out, or a cancel) is late: the manifest was written from the counted outcomes, and a
        # later count would make status and manifest disagree.
        update.condition(f"{_ref(update, 'status')} = :running", running="RUNNING")
        not_ending(update)  # nor once it is frozen to end (its manifest is being read)
        if first.task_type == "train":
            closed = _ref(update, "closed_round")
            update.condition(
                f"(attribute_not_exists({closed}) OR {closed} < :open_round)", open_round=first.round
            )
        failures = [o.result.generation for o in chunk if o.result.status == "failed"]
        if failures:
            # Cheap in the common case (no retry since these tasks were sent): one condition on
            # the job record. When it fails, ``_cancelled`` reads the retry marks and sorts out the
            # stale failures, and the rest is recorded with ``verified`` raised.
            generation = _ref(update, "retry_generation")
            update.condition(
                f"(attribute_not_exists({generation}) OR {generation} <= :fresh)",
                fresh=max(min(failures), verified),
            )
        counts: dict[str, int] = {}
        for o in chunk:
            counts[o.phase_counter] = counts.get(o.phase_counter, 0) + 1
        failed = sum(1 for o in chunk if o.result.status == "failed" and o.result.task_type == "train")
        if failed:
            counts["failed_total"] = failed
        for name, value in counts.items():
            update.add(name, value)
        # The outcomes' cost, counted with them and only with them (``shardq.core.spend``): a
        # duplicate or late copy fails this transaction, so it never adds its cost twice.
        if cost:
            update.add(COST_ATTRIBUTE, cost)
            update.add(_counter("usd", first.round, first.task_type), cost)
        return update.request(self.table, job_id, stamp=False)

    def _record_chunk(
        self, job_id: str, chunk: list[Outcome], deadline: float | None, tenant: str | None = None
    ) -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
        duplicates: list[Outcome] = []
        stale: list[Outcome] = []
        verified = 0
        for attempt in range(MAX_RECORD_ATTEMPTS):
            if not chunk:
                return [], duplicates, stale
            recorded_at = self.stamp()
            puts = [
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": o.item(recorded_at),
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
                for o in chunk
            ]
            cost = sum(o.result.cost_micro_usd for o in chunk)
            month = [{"Update": self.tenant_month_update(tenant, cost)}] if tenant and cost else []
            try:
                self.ddb.transact_write_items(
                    TransactItems=[
                        *puts,
                        {"Update": self._counting_update(job_id, chunk, verified, cost)},
                        *month,
                    ]
                )
                return chunk, duplicates, stale
            except self.ddb.exceptions.TransactionCanceledException as exc:
                dup_idx, late, stale_idx, generation = self._cancelled(job_id, chunk, exc)
            if late:
                return [], duplicates, stale + self._record_late(chunk)
            duplicates.extend(o for i, o in enumerate(chunk) if i in dup_idx)
            stale.extend(self._record_late([o for i, o in enumerate(chunk) if i in stale_idx]))
            chunk = [o for i, o in enumerate(chunk) if i not in dup_idx and i not in stale_idx]
            progressed = bool(dup_idx or stale_idx) or generation > verified
            verified = max(verified, generation)
            if not progressed:
                # A conflict (another writer on the same item): back off, within the deadline.
                pause = _pause(attempt)
                if deadline is not None and self.clock() + pause > deadline - DEADLINE_MARGIN_S:
                    break
                time.sleep(pause)
        raise JobStoreError(
            f"could not record {len(chunk)} results for job {job_id}: transactions kept conflicting"
        )

    def _cancelled(
        self, job_id: str, chunk: list[Outcome], exc: Exception
    ) -> tuple[set[int], bool, set[int], int]:
        """Why a recording transaction was cancelled: ``(duplicate indexes, late, stale indexes,
        the job's retry generation)``.

        Duplicates first (they are dropped and the rest retried); with none, the job's own
        condition: a missing job raises JobNotFound, an ended job or a closed round makes the
        chunk late; failures older than their shard's retry are stale (late, the rest retried);
        otherwise it was a conflict, to retry.
        """
        reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
        codes = [r.get("Code", "None") for r in reasons]
        if len(codes) > len(chunk):  # the puts, the job's update (and a tenant's month)
            dup_idx = {i for i, c in enumerate(codes[: len(chunk)]) if c == "ConditionalCheckFailed"}
        else:
            # No per-item reasons (an endpoint that omits them): ask the table.
            dup_idx = self._existing(chunk)
        if dup_idx:
            return dup_idx, False, set(), 0
        state = self._job_state(job_id)
        if state is None:
            raise JobNotFound(job_id) from exc
        r = chunk[0].result
        closed = state.get("closed_round")
        ended = state.get("status") != "RUNNING" or state.get(ENDING_ATTRIBUTE) is not None
        late = ended or (r.task_type == "train" and closed is not None and closed >= r.round)
        generation = int(state.get("retry_generation") or 0)
        if late or not generation:
            return set(), late, set(), generation
        return set(), False, self._stale(job_id, chunk, generation), generation

    def _stale(self, job_id: str, chunk: list[Outcome], generation: int) -> set[int]:
        """Indexes of the chunk's failures that a later retry of their shard made stale."""
        older = [
            i for i, o in enumerate(chunk) if o.result.status == "failed" and o.result.generation < generation
        ]
        if not older:
            return set()
        r = chunk[0].result
        marks = self.retried_generations(job_id, r.round, r.task_type)
        return {i for i in older if marks.get(chunk[i].result.shard_id, 0) > chunk[i].result.generation}

    def _job_state(self, job_id: str) -> dict[str, Any] | None:
        """The job's status, ending mark, closed round and retry generation (None: no job)."""
        resp = self.ddb.get_item(
            TableName=self.table,
            Key=job_key(job_id),
            ProjectionExpression="pk, closed_round, retry_generation, #s, #e",
            ExpressionAttributeNames={"#s": "status", "#e": ENDING_ATTRIBUTE},
            ConsistentRead=True,
        )
        return _from_item(resp["Item"]) if "Item" in resp else None

    def _record_late(self, chunk: list[Outcome]) -> list[Outcome]:
        """Keep outcomes of a closed round (or stale failures) apart (``LATE#``), uncounted; idempotent."""
        recorded_at = self.stamp()
        for o in chunk:
            item = o.item(recorded_at)
            item["sk"] = {"S": "LATE#" + item["sk"]["S"].removeprefix("RES#")}
            with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
                self.ddb.put_item(
                    TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
        return chunk

    def _existing(self, chunk: list[Outcome]) -> set[int]:
        keys = [o.key() for o in chunk]
        found = {(item["pk"]["S"], item["sk"]["S"]) for item in self._batch_get(keys, "pk, sk")}
        return {i for i, k in enumerate(keys) if (k["pk"]["S"], k["sk"]["S"]) in found}
