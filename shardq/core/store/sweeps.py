"""An asynchronous sweep's decisions log (``shardq.core.async_sweep``): which task each freed slot got.

Items (partition ``JOB#<job_id>``):

==========================  =========================================================
``sk``                      what
==========================  =========================================================
``ASYNC#r0002#000042``      the decision that trial 42 trains rung 2: its lane, the
                            decision's sequence number, the trial's hyperparameters,
                            the model it starts from, and why (the rung's results known
                            then and the trial's rank among them); written once
``ASYNC#r0002#000042#b1``   its backup copy (``shardq.core.async_backup``): the same task
                            sent again to a fast worker while a straggler runs it; at
                            most one a task (written once, like every decision), not
                            counted in ``enq_r<rung>_train`` (the task's outcome counts
                            once, whichever copy reports first)
``ASYNCLOG#000000017``      pass 17's decisions, all in one item (written once, by the
                            pass): a reader that knows the decisions up to pass 16 reads
                            this item alone, not the job's every decision
==========================  =========================================================

and on the job record: ``async_seq`` (decisions made so far, one number a pass) and
``async_sent`` (the last pass whose tasks are all on the queue), plus the enqueue counters
``enq_r<rung>_train`` (tasks decided per rung), so status reads count tasks in flight from the
job record alone.

A pass's decisions are written in one transaction with ``async_seq = seen + 1``, conditional on
``async_seq`` still being ``seen``, the job RUNNING and no cancel asked for: two invocations that
read the same state cannot both decide (the loser reads again), each decision item exists once
(``attribute_not_exists``), and a cancelled job gets no new task.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shardq.core.store.base import StoreBase
from shardq.core.store.keys import (
    MAX_PUTS_PER_TRANSACTION,
    MAX_RETRY_CHUNK,
    _counter,
    _from_item,
    _pk,
    _result_key,
    _to_item,
    job_key,
)
from shardq.core.store.records import JobChanged
from shardq.core.store.retried import retried_item
from shardq.core.store.spending import FORGOTTEN_COST_ATTRIBUTE
from shardq.core.store.update import _ref, _Update, not_ending

# Decisions one pass writes at most: one transaction's puts beside the pass's log item and the
# job's update.
MAX_DECISIONS = MAX_PUTS_PER_TRANSACTION - 1


@dataclass(frozen=True)
class SweepDecision:
    """One task an asynchronous sweep decided to run: trial ``trial`` trains rung ``rung``.

    ``lane`` is its FIFO message group (free when it was decided); ``seq`` the pass that decided
    it; ``params`` the trial's hyperparameters (the trial source's, kept so every rung and every
    reader sees the same); ``init_model`` the model a promoted trial starts from; ``known`` and
    ``rank``: the rung-``rung - 1`` results known at the promotion and the trial's 0-based rank
    among them; ``rule``: ``"draw"`` (a new rung-0 trial), ``"asha"`` (top ``known // eta``) or
    ``"drain"`` (the sweep's end: the best of a rung that promoted none, as halving's at least one).
    """

    rung: int
    trial: int
    lane: int
    seq: int
    params: dict[str, Any]
    init_model: str | None = None
    known: int = 0
    rank: int = 0
    rule: str = "draw"
    decided_at: str = ""
    # The retry generation its task is sent under (``shardq retry`` decides a failed task again).
    generation: int = 0
    # 1: the backup copy of the task (``shardq.core.async_backup``), decided beside the task's own.
    backup: int = 0

    @property
    def key(self) -> tuple[int, int]:
        """``(rung, trial)``: the task's identity, as its result names it (both copies' alike)."""
        return (self.rung, self.trial)

    @property
    def ident(self) -> tuple[int, int, int]:
        """``(rung, trial, backup)``: the decision's own identity (its item)."""
        return (self.rung, self.trial, self.backup)


def _decision_key(job_id: str, rung: int, trial: int, backup: int = 0) -> dict[str, Any]:
    copy = f"#b{backup}" if backup else ""
    return {"pk": _pk(job_id), "sk": {"S": f"ASYNC#r{rung:04d}#{trial:06d}{copy}"}}


def _log_sk(seq: int) -> str:
    return f"ASYNCLOG#{seq:09d}"


def _fields(d: SweepDecision, seq: int, now: str) -> dict[str, Any]:
    """A decision's attributes as pass ``seq`` writes them (its item, and its log entry)."""
    return {
        "rung": d.rung,
        "trial": d.trial,
        "lane": d.lane,
        "seq": seq,
        "params": json.dumps(d.params, sort_keys=True),
        "init_model": d.init_model,
        "known": d.known,
        "rank": d.rank,
        "rule": d.rule,
        "decided_at": d.decided_at or now,
        "generation": d.generation or None,
        "backup": d.backup or None,
    }


def _decision(raw: dict[str, Any]) -> SweepDecision:
    """A decision from its attributes (an item's, or a log entry's)."""
    return SweepDecision(
        rung=int(raw["rung"]),
        trial=int(raw["trial"]),
        lane=int(raw["lane"]),
        seq=int(raw["seq"]),
        params=json.loads(raw["params"]),
        init_model=raw.get("init_model"),
        known=int(raw.get("known", 0)),
        rank=int(raw.get("rank", 0)),
        rule=raw.get("rule", "draw"),
        decided_at=raw.get("decided_at", ""),
        generation=int(raw.get("generation") or 0),
        backup=int(raw.get("backup") or 0),
    )


class SweepDecisions(StoreBase):
    """Reads and conditional writes of an asynchronous sweep's decisions (see the module docstring)."""

    def sweep_cursor(self, job_id: str) -> tuple[int, int]:
        """``(async_seq, async_sent)``: passes decided and passes sent (0, 0 before the first)."""
        resp = self.ddb.get_item(
            TableName=self.table,
            Key=job_key(job_id),
            ProjectionExpression="async_seq, async_sent",
            ConsistentRead=True,
        )
        raw = _from_item(resp.get("Item", {}))
        return int(raw.get("async_seq", 0)), int(raw.get("async_sent", 0))

    def sweep_decisions(self, job_id: str, rung: int | None = None) -> list[SweepDecision]:
        """Every decision of the job (or of one rung), in (rung, trial) order."""
        prefix = "ASYNC#" if rung is None else f"ASYNC#r{rung:04d}#"
        return [_decision(_from_item(item)) for item in self._query(job_id, prefix)]

    def sweep_log(self, job_id: str, after: int, upto: int) -> list[SweepDecision] | None:
        """The decisions of passes ``after + 1 … upto``, in pass order (a later pass's decision of
        the same task, a retry's, comes after); None when a pass's log item is missing (a job
        decided before the log existed: read ``sweep_decisions`` instead)."""
        if upto <= after:
            return []
        items = list(self._query(job_id, "", between=(_log_sk(after + 1), _log_sk(upto))))
        if len(items) != upto - after:
            return None
        out: list[SweepDecision] = []
        for item in items:
            out.extend(_decision(entry) for entry in json.loads(_from_item(item)["decisions"]))
        return out

    def sweep_decided(self, job_id: str, rung: int, trial: int) -> bool:
        """True when a decision ran ``trial`` at ``rung`` (one item read)."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=_decision_key(job_id, rung, trial),
            ProjectionExpression="sk",
            ConsistentRead=True,
        ).get("Item")
        return item is not None

    def outcome_recorded(self, job_id: str, rung: int, trial: int) -> bool:
        """True when trial ``trial``'s rung-``rung`` outcome is recorded (one item read): a backup
        copy received after it is dropped unrun (``shardq.worker.drops``)."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=_result_key(job_id, rung, "train", trial),
            ProjectionExpression="sk",
            ConsistentRead=True,
        ).get("Item")
        return item is not None

    def decide(
        self, job_id: str, seen: int, decisions: Sequence[SweepDecision], *, again: str | None = None
    ) -> bool:
        """Write one pass's decisions (each with ``seq = seen + 1``) and its log item, and move
        ``async_seq`` to ``seen + 1``, in one transaction; False when another pass decided first,
        the job is no longer RUNNING or a cancel was asked for (nothing is written). An empty
        pass claims the state alone (the sweep's end: nobody decided since ``seen``).

        ``again`` (a retry, with the job's status then): the decisions exist and are written anew
        under the new ``seq`` (and their new ``generation``), so the next pass sends them again."""
        if len(decisions) > MAX_DECISIONS:
            raise ValueError(f"decide: at most {MAX_DECISIONS} decisions a pass, got {len(decisions)}")
        now = self.stamp()
        entries = [_fields(d, seen + 1, now) for d in decisions]
        puts = [
            {
                "Put": {
                    "TableName": self.table,
                    "Item": {**_decision_key(job_id, d.rung, d.trial, d.backup), **_to_item(entry)},
                    "ConditionExpression": "attribute_exists(sk)" if again else "attribute_not_exists(sk)",
                }
            }
            for d, entry in zip(decisions, entries, strict=True)
        ]
        # The pass's log item: what a reader that knows the passes before reads of this one.
        log = {"pk": _pk(job_id), "sk": {"S": _log_sk(seen + 1)}, "decisions": {"S": json.dumps(entries)}}
        puts.append(
            {"Put": {"TableName": self.table, "Item": log, "ConditionExpression": "attribute_not_exists(sk)"}}
        )
        update = _Update().set(async_seq=seen + 1)
        update.condition(f"{_ref(update, 'status')} = :running", running=again or "RUNNING")
        update.condition(f"attribute_not_exists({_ref(update, 'cancel_requested_at')})")
        if not again:  # no new trial once the sweep is frozen to end (a retry's reopen lifts it)
            not_ending(update)
        seq = _ref(update, "async_seq")
        if seen == 0:
            update.condition(f"attribute_not_exists({seq})")
        else:
            update.condition(f"{seq} = :seen", seen=seen)
        per_rung: dict[int, int] = {}
        for d in decisions:
            if not d.backup:  # a backup copy is no task of its own: its outcome is the task's
                per_rung[d.rung] = per_rung.get(d.rung, 0) + 1
        for rung, n in sorted(per_rung.items()) if not again else ():
            update.add(_counter("enq", rung, "train"), n)
        try:
            self.ddb.transact_write_items(
                TransactItems=[*puts, {"Update": update.request(self.table, job_id)}]
            )
            return True
        except self.ddb.exceptions.TransactionCanceledException:
            return False

    def forget_trial_failures(
        self,
        job_id: str,
        status: str,
        rung: int,
        trials: Sequence[int],
        generation: int,
        cost_micro_usd: int = 0,
    ) -> None:
        """Delete the failed outcomes of ``trials`` at ``rung`` and un-count them, with their retry
        mark of ``generation`` (``store.retried``), in one transaction (at most ``MAX_RETRY_CHUNK``
        trials); raises ``JobChanged`` when the job left ``status`` or an outcome changed.

        ``cost_micro_usd``: what the forgotten outcomes cost; the job keeps it (the time was spent)
        and ``FORGOTTEN_COST_ATTRIBUTE`` says how much no outcome item holds now, as
        ``JobStore.forget_failures`` does."""
        if not trials:
            return
        if len(trials) > MAX_RETRY_CHUNK:
            raise ValueError(
                f"forget_trial_failures: at most {MAX_RETRY_CHUNK} trials a call, got {len(trials)}"
            )
        update = _Update().expect(status=status)
        update.add(_counter("fail", rung, "train"), -len(trials)).add("failed_total", -len(trials))
        if cost_micro_usd:
            update.add(FORGOTTEN_COST_ATTRIBUTE, cost_micro_usd)
        deletes = [
            {
                "Delete": {
                    "TableName": self.table,
                    "Key": _result_key(job_id, rung, "train", trial),
                    "ConditionExpression": "outcome = :failed",
                    "ExpressionAttributeValues": {":failed": {"S": "failed"}},
                }
            }
            for trial in trials
        ]
        mark = {
            "Put": {"TableName": self.table, "Item": retried_item(job_id, rung, "train", generation, trials)}
        }
        try:
            self.ddb.transact_write_items(
                TransactItems=[*deletes, mark, {"Update": update.request(self.table, job_id)}]
            )
        except self.ddb.exceptions.TransactionCanceledException as exc:
            raise JobChanged(
                f"job {job_id} changed while retrying (its status or an outcome moved on)"
            ) from exc

    def sweep_sent(self, job_id: str, seq: int) -> None:
        """Every task of passes up to ``seq`` is on the queue (never moves back)."""
        update = _Update().set(async_sent=seq)
        sent = _ref(update, "async_sent")
        update.condition(f"(attribute_not_exists({sent}) OR {sent} < :seq)", seq=seq)
        self._update(job_id, update, stamp=False)


__all__ = ["MAX_DECISIONS", "SweepDecision", "SweepDecisions"]
