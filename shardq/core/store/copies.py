"""An asynchronous sweep's backup copies in the job table: each run's cost counted once, and a
copy's success in place of the other copy's counted failure (``shardq.core.async_backup``).

Both copies of a task answer the same result item (``RES#r0003#train#000042``): the recording
transaction (``store.counting``) counts the first outcome, and the other arrives as its
duplicate. What the duplicate still owes the job:

* ``count_copy_cost``: its run's cost. Both copies ran on a priced worker, so the job's cost
  (``cost_uusd``), its ``usd_*`` counter and its tenant's month take the losing run's cost, once
  per run: its ``COPY#`` item (``COPY#r0003#train#000042#b1``; ``…#b0#g2`` for a run of retry
  generation 2, since a retry may send the task again while the other copy still runs) is written
  once in the same transaction. **Also after the job ended**: backups happen at a sweep's tail, so
  the winning copy usually ends the sweep while the slow original still runs; its GPU seconds are
  the job's as much as any (the job's ``cost_usd`` then grows after its end; its manifest shows the
  cost when it ended: a run counted once the job froze to end is marked ``after_end`` on its
  ``COPY#`` item, so the manifest's trial costs, ``copy_costs(at_end=True)``, add up to its total).
  The spend guard can no longer act on such a cost: the job sends nothing more.
* ``replace_failed_copy``: a copy's success where the other copy's *failure* was counted first
  (one worker ran out of memory, the other trained): the success takes the result item and the
  failure is un-counted (``fail`` and ``failed_total`` down, ``ok`` up), once: the put is
  conditional on the item still holding that failure, and the failure's run becomes a ``COPY#``
  item with its cost (the job's cost keeps it). Only while the job runs (a failure that ended the
  job stays its reason, and so does one over the job's ``max_failed_shards``, which an ``advance``
  may have read to end it) and only between the two copies of one task (``backup`` differs): a
  redelivered duplicate of the same run, or a retry's generations (``store.retried``), never
  replace anything.

A cancelled transaction is read by its reasons: a failed condition is an answer (counted already,
the item changed, the job ended); a ``TransactionConflict`` (another writer on the job item) is
retried, and one that outlasts the attempts raises ``JobStoreError``, so the result's message is
redelivered rather than deleted with its cost uncounted.
"""

from __future__ import annotations

import time
from typing import Any

from shardq.core.batchcalls import JobStoreError
from shardq.core.batchcalls import pause as _pause
from shardq.core.messages import ShardResult
from shardq.core.store.keys import MAX_RECORD_ATTEMPTS, _counter, _pk, _result_key, _to_item
from shardq.core.store.records import Outcome
from shardq.core.store.spending import COST_ATTRIBUTE, Spending
from shardq.core.store.update import _ref, _Update, not_ending


def _copy_key(result: ShardResult) -> dict[str, Any]:
    """The ``COPY#`` item of one run of a task's copy: (backup, retry generation)."""
    generation = f"#g{result.generation}" if result.generation else ""
    sk = f"COPY#r{result.round:04d}#{result.task_type}#{result.shard_id:06d}#b{result.backup}{generation}"
    return {"pk": _pk(result.job_id), "sk": {"S": sk}}


class Copies(Spending):
    """``count_copy_cost`` and ``replace_failed_copy`` (the module doc)."""

    def _counted(self, result: ShardResult) -> tuple[ShardResult, str] | None:
        """The outcome counted for ``result``'s task and its stored body (None when there is none)."""
        key = _result_key(result.job_id, result.round, result.task_type, result.shard_id)
        item = self.ddb.get_item(
            TableName=self.table, Key=key, ProjectionExpression="#r",
            ExpressionAttributeNames={"#r": "result"}, ConsistentRead=True,
        ).get("Item")  # fmt: skip
        return None if item is None else (ShardResult.from_json(item["result"]["S"]), item["result"]["S"])

    def copy_costs(self, job_id: str, *, at_end: bool = False) -> dict[int, int]:
        """What each trial's losing runs cost (its train tasks' ``COPY#`` items, every rung), in
        micro-USD: with its counted outcomes' costs, a trial's share of the job's cost. ``at_end``:
        only the runs counted before the job froze to end, which its frozen cost (the manifest's)
        holds; the others are ``after_end``."""
        out: dict[int, int] = {}
        for item in self._query(job_id, "COPY#"):
            if at_end and item.get("after_end", {}).get("BOOL"):
                continue
            _, _, task_type, shard, *_ = item["sk"]["S"].split("#")
            if task_type == "train":
                out[int(shard)] = out.get(int(shard), 0) + int(item["cost_uusd"]["N"])
        return out

    def count_copy_cost(self, result: ShardResult, tenant: str | None = None) -> bool:
        """Add what a copy's run cost to its job (and ``tenant``'s month), once per run, when
        ``result`` is the duplicate of a task whose outcome another run reported (the other copy,
        or another retry generation), also after the job ended (the module doc). False when
        nothing was added: unpriced, no counted outcome of the task, the counted outcome is this
        run's own (a redelivery), or counted already."""
        cost = result.cost_micro_usd
        if not cost:
            return False
        found = self._counted(result)
        if found is None:
            # Recorded as a duplicate, yet the counted outcome is gone: a ``shardq retry`` forgot
            # it meanwhile (``forget_trial_failures``). Redelivered, the run records afresh.
            gone = f"round {result.round} shard {result.shard_id}"
            raise JobStoreError(f"{result.job_id}: the counted outcome of {gone} is gone; retried")
        if (found[0].backup, found[0].generation) == (result.backup, result.generation):
            return False
        # First as a cost the job's end will show (conditional on the job not frozen to end); when
        # that condition is what failed, as one counted after the end (``after_end``).
        for after_end in (False, True):
            failed = self._transact(self._copy_items(result, cost, tenant, after_end=after_end))
            if failed is None:
                return True
            if failed != 1:  # the COPY# item (counted already), not the job's ending condition
                return False
        return False

    def replace_failed_copy(self, outcome: Outcome, tenant: str | None = None) -> bool:
        """Count ``outcome`` (a success, or a divergence) in place of the other copy's counted
        failure of the same task, once, while the job runs; the failure's cost stays the job's as
        its run's ``COPY#`` item (the module doc). False when nothing was replaced."""
        r = outcome.result
        found = None if r.status == "failed" else self._counted(r)
        if found is None or found[0].status != "failed" or found[0].backup == r.backup:
            return False
        counted, body = found
        update = not_ending(_Update().expect(status="RUNNING"))
        update.add(_counter("fail", r.round, r.task_type), -1)
        update.add(outcome.phase_counter, 1)
        if r.task_type == "train":
            update.add("failed_total", -1)
            # Only a failure the failure budget absorbed: one that put ``failed_total`` over
            # ``max_failed_shards`` is (or is about to be) the job's FAILED reason, which an
            # ``advance`` may already have read; un-counted, the job would end FAILED with no failure.
            update.condition(f"{_ref(update, 'failed_total')} <= {_ref(update, 'max_failed_shards')}")
        if r.cost_micro_usd:
            update.add(COST_ATTRIBUTE, r.cost_micro_usd)
            update.add(_counter("usd", r.round, r.task_type), r.cost_micro_usd)
        put = {  # only while the item holds that failure: un-counted once
            "TableName": self.table,
            "Item": outcome.item(self.stamp()),  # a fresh stamp: the sweep's incremental read sees it
            "ConditionExpression": "#res = :counted",
            "ExpressionAttributeNames": {"#res": "result"},
            "ExpressionAttributeValues": {":counted": {"S": body}},
        }
        marker = {
            **_copy_key(counted),
            **_to_item({"counted_at": self.stamp(), "cost_uusd": counted.cost_micro_usd, "replaced": True}),
        }
        cost = r.cost_micro_usd
        month = [{"Update": self.tenant_month_update(tenant, cost)}] if tenant and cost else []
        job = {"Update": update.request(self.table, r.job_id, stamp=False)}
        return self._transact([{"Put": put}, self._once(marker), job, *month]) is None

    def _copy_items(
        self, result: ShardResult, cost: int, tenant: str | None, *, after_end: bool
    ) -> list[dict[str, Any]]:
        """The losing run's ``COPY#`` item, its cost on the job and its month: while the job is not
        frozen to end, or (``after_end``, marked so on the item) whatever its status."""
        update = _Update()  # the job exists (``attribute_exists(pk)``)
        if not after_end:
            not_ending(update)
        update.add(COST_ATTRIBUTE, cost)
        update.add(_counter("usd", result.round, result.task_type), cost)
        fields: dict[str, Any] = {"counted_at": self.stamp(), "cost_uusd": cost}
        if after_end:
            fields["after_end"] = True
        marker = {**_copy_key(result), **_to_item(fields)}
        month = [{"Update": self.tenant_month_update(tenant, cost)}] if tenant else []
        return [
            self._once(marker),
            {"Update": update.request(self.table, result.job_id, stamp=False)},
            *month,
        ]

    def _once(self, item: dict[str, Any]) -> dict[str, Any]:
        """The ``Put`` of an item written once (``attribute_not_exists``)."""
        return {
            "Put": {"TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
        }

    def _transact(self, items: list[dict[str, Any]]) -> int | None:
        """Run one transaction: None when written, else the index of the first item whose condition
        failed (-1 when the endpoint gives no reasons); a conflict is retried (``JobStoreError``
        when it outlasts ``MAX_RECORD_ATTEMPTS``)."""
        for attempt in range(MAX_RECORD_ATTEMPTS):
            try:
                self.ddb.transact_write_items(TransactItems=items)
                return None
            except self.ddb.exceptions.TransactionCanceledException as exc:
                reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
                codes = [r.get("Code", "None") for r in reasons]
                if "ConditionalCheckFailed" in codes:
                    return codes.index("ConditionalCheckFailed")
                if not codes:
                    return -1  # an endpoint that gives no reasons: an answer, as before
                if set(codes) - {"None", "TransactionConflict"}:
                    raise JobStoreError(f"backup copy transaction cancelled: {sorted(set(codes))}") from exc
            time.sleep(_pause(attempt))
        raise JobStoreError("a backup copy's cost kept conflicting with other writes; retried on redelivery")
