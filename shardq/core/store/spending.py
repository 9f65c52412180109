"""What a job spent, in the job table: the budget stop's mark and the tasks dropped unrun after it.

The cost itself is counted by ``store.counting`` (``COST_ATTRIBUTE`` and the per-(round, phase)
``usd_*`` counters, in the transaction that counts the outcomes); this part of the store keeps the
two writes of the spend guard (``shardq.core.spend``):

* ``mark_budget_stop``: once, while the job runs, the cost and outcome count when new tasks stopped;
* ``record_drop``: a task a worker dropped unrun because of that stop, once per task
  (``DROP#r0003#train#000042``), with the ``drop_*`` counter of its (round, phase), so the job
  knows when nothing it sent is still running.

An asynchronous sweep's backup copy that ran and lost adds its cost to the job once per run
(``COPY#`` items, ``store.copies``).

A tenant's month-to-date cost lives in ``pk = TENANT#<name>``, ``sk = SPEND#2026-12``
(``cost_uusd``): ``tenant_month_update`` is the recording transaction's third kind of item, so a
result's cost reaches its job and its tenant's month together, once. The month is the UTC month
in which the outcome was counted.
"""

from __future__ import annotations

from typing import Any

from shardq.core.store.base import StoreBase
from shardq.core.store.keys import _counter, _pk, _result_key, _to_item, now_iso
from shardq.core.store.update import _ref, _Update, not_ending

# The job's cost so far, in micro-USD (an integer: ADD keeps it an exact sum).
COST_ATTRIBUTE = "cost_uusd"
# What the failed outcomes a retry forgot (deleted, to count their shards' new outcomes) had cost:
# the job's cost keeps it, so ``cost_uusd`` = the outcome items' costs + this.
FORGOTTEN_COST_ATTRIBUTE = "forgotten_uusd"
# ``{"at": ISO time, "cost_uusd": n, "counted": n}``: when new tasks stopped, what the job had spent
# and how many outcomes it had counted then.
BUDGET_STOP_ATTRIBUTE = "budget_stop"


def month_now() -> str:
    """The current UTC month, ``2026-12``: the tenant spend item it counts into."""
    return now_iso()[:7]


def _month_key(tenant: str, month: str) -> dict[str, Any]:
    return {"pk": {"S": f"TENANT#{tenant}"}, "sk": {"S": f"SPEND#{month}"}}


def _drop_key(job_id: str, round_no: int, task_type: str, shard_id: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"DROP#r{round_no:04d}#{task_type}#{shard_id:06d}"}}


class Spending(StoreBase):
    """The spend guard's writes (``mark_budget_stop``, ``record_drop``) and the tenant's month."""

    def mark_budget_stop(self, job_id: str, cost_micro_usd: int, counted: int, **tenant: Any) -> bool:
        """Record that the job's budget (or, with ``tenant``'s ``tenant``, ``monthly_uusd`` and
        ``month_uusd``, its tenant's monthly budget) is spent: workers drop its queued tasks
        from now on and no new task is sent. Once, while it runs; False when it was marked
        already or ended."""
        stop = {"at": now_iso(), "cost_uusd": cost_micro_usd, "counted": counted, **tenant}
        update = _Update().set(**{BUDGET_STOP_ATTRIBUTE: stop}).expect(status="RUNNING")
        update.condition(f"attribute_not_exists({_ref(update, BUDGET_STOP_ATTRIBUTE)})")
        return self._update(job_id, not_ending(update))

    def record_drop(
        self,
        job_id: str,
        round_no: int,
        task_type: str,
        shard_id: int,
        outcome_key: dict[str, Any] | None = None,
    ) -> bool:
        """Count a task dropped unrun after the budget stop, once: its ``DROP#`` item, the
        ``drop_*`` counter of its (round, phase), while the job runs and no outcome of that task
        is recorded (a copy that ran and was counted is not outstanding either). False when it
        was counted already, or the job ended, or the task's outcome is recorded.

        ``outcome_key``: the item that holds the task's outcome when it is not its result item
        (a FedBuff train task's is its client update, ``UPD#``: ``FedBuffStore.record_drop``)."""
        update = not_ending(_Update().expect(status="RUNNING"))
        update.add(_counter("drop", round_no, task_type), 1)
        item = {**_drop_key(job_id, round_no, task_type, shard_id), **_to_item({"dropped_at": now_iso()})}
        try:
            self.ddb.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {
                        "ConditionCheck": {
                            "TableName": self.table,
                            "Key": outcome_key or _result_key(job_id, round_no, task_type, shard_id),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {"Update": update.request(self.table, job_id, stamp=False)},
                ]
            )
            return True
        except self.ddb.exceptions.TransactionCanceledException:
            return False

    def tenant_month_update(self, tenant: str, cost_micro_usd: int) -> dict[str, Any]:
        """The ``Update`` that adds ``cost_micro_usd`` to ``tenant``'s spend of this month (an item
        of the recording transaction: ``store.counting``)."""
        return {
            "TableName": self.table,
            "Key": _month_key(tenant, month_now()),
            "UpdateExpression": "ADD #c :c",
            "ExpressionAttributeNames": {"#c": COST_ATTRIBUTE},
            "ExpressionAttributeValues": {":c": {"N": str(cost_micro_usd)}},
        }

    def tenant_month_cost(self, tenant: str, month: str | None = None) -> int:
        """What ``tenant``'s counted outcomes cost in ``month`` (default: this one), in micro-USD."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=_month_key(tenant, month or month_now()),
            ProjectionExpression=COST_ATTRIBUTE,
            ConsistentRead=True,
        ).get("Item", {})
        return int(item[COST_ATTRIBUTE]["N"]) if COST_ATTRIBUTE in item else 0
