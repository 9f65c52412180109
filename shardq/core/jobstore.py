"""The job store: the public face of the one family of modules that knows the job table's schema.

The family (named in ``tests/unit/test_layering.py``): this module (``JobStore``'s job lifecycle),
``shardq.core.store`` (``keys``, ``records``, ``update``, ``base``, ``counting``, ``results``) and
``shardq.core.progress_reads``. Callers import from here.

Items (partition ``pk = JOB#<job_id>``, built in ``store.keys``):

========================  ===========================================================
``sk``                    what
========================  ===========================================================
``JOB``                   the job record (``JobRecord``): status, request, current round
                          and phase, per-(round, phase) counters ``ok_*``/``fail_*``, the
                          enqueue cursor ``enq_*``, result URI; GSI ``by_status`` lists jobs
``RES#r0003#train#000042`` one recorded outcome of a task (``ResultRecord``, written once)
``ROUND#0003``            a finished round's metrics summary
``PLAN#0002#00000``       part 0 of the trials (and models) a closed rung promoted to rung 2
                          (``rungplan``: parts of ≤ 300 KB, each naming how many there are)
``RETRIED#r0003#train#g000002#000042`` shards a retry sent again under generation 2
                          (``store.retried``): older copies' failures of them are late
``ASYNC#r0002#000042``     an asynchronous sweep's decision that trial 42 trains rung 2
                          (``store.sweeps``, ``shardq.core.async_sweep``), written once
========================  ===========================================================

Result items (``RES#``, ``LATE#``) carry ``recorded_at``: the sparse GSI ``by_recorded`` (``pk``,
``recorded_at``) lists a job's outcomes in the order they were recorded, for readers that want
only what is new (``shardq.core.progress_reads``).

Everything else in shardq reads typed records (``JobRecord``, ``ResultRecord``) and changes
the table through the named methods below; no other module builds a key, an attribute name
or an update expression. A result item and the counter increment that counts it are written
in one transaction, so a record and its count never part; a duplicate fails its
``attribute_not_exists`` condition and is dropped.

Retries: the client's botocore retry mode (standard) is the one layer for throttling, 5xx and
connection errors. ``record`` retries only what botocore cannot see — a transaction cancelled
for a conflict or for duplicates in it — and only while the caller's deadline allows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from shardq.core import rungplan
from shardq.core.batchcalls import JobStoreError
from shardq.core.store.counting import Counting
from shardq.core.store.keys import (
    _FINISH_ATTRIBUTES,
    ENDING_ATTRIBUTE,
    MAX_PUTS_PER_TRANSACTION,
    MAX_RETRY_CHUNK,
    _checkpoint_key,
    _close_key,
    _counter,
    _from_item,
    _pk,
    _result_key,
    _to_item,
    job_key,
    now_iso,
)
from shardq.core.store.records import (
    JobChanged,
    JobNotFound,
    JobRecord,
    JobState,
    Outcome,
    RecordOutcome,
    ResultRecord,
)
from shardq.core.store.results import ResultReads
from shardq.core.store.retried import retried_item
from shardq.core.store.spending import BUDGET_STOP_ATTRIBUTE, FORGOTTEN_COST_ATTRIBUTE
from shardq.core.store.sweeps import SweepDecision, SweepDecisions
from shardq.core.store.update import _ref, _Update


@dataclass(frozen=True)
class Cursor:
    """Where a send left a (round, phase)'s enqueue cursor, and the window it was held to."""

    value: int
    window: int | None = None


def _cursor_update(update: _Update, round_no: int, phase: str, cursor: Cursor, op: str) -> _Update:
    """``update`` moving the enqueue cursor of (round, phase) to ``cursor`` — only forward (``op``
    ``<``: a stale writer cannot rewind it; ``<=``: a move may record a value it holds already)."""
    name = _counter("enq", round_no, phase)
    values: dict[str, Any] = {name: cursor.value}
    if cursor.window is not None:
        values["window"] = cursor.window
    update.set(**values)
    ref = _ref(update, name)
    return update.condition(f"(attribute_not_exists({ref}) OR {ref} {op} :cur)", cur=cursor.value)


class JobStore(Counting, ResultReads, SweepDecisions):
    """Typed access to the job table: records out, named writes in.

    Parameters
    ----------
    table:
        Table name.
    client:
        A boto3 DynamoDB client (its botocore retry mode retries throttling and 5xx).
    clock:
        Seconds since the epoch, for deadlines; injectable for tests.
    """

    def create_job(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Create the job record unless one exists; returns ``(record, created)``."""
        try:
            self.ddb.put_item(
                TableName=self.table, Item=record.item(), ConditionExpression="attribute_not_exists(pk)"
            )
            return record, True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return self.get_job(record.job_id), False

    def get_job(self, job_id: str, *, consistent: bool = True) -> JobRecord:
        """The job record; raises JobNotFound."""
        resp = self.ddb.get_item(TableName=self.table, Key=job_key(job_id), ConsistentRead=consistent)
        if "Item" not in resp:
            raise JobNotFound(job_id)
        return JobRecord.from_item(resp["Item"])

    def status_of(self, job_id: str) -> str | None:
        """The job's status alone (an eventually consistent, one-attribute read); None if unknown."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=job_key(job_id),
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "status"},
        ).get("Item")
        return None if item is None else str(item["status"]["S"])

    def state_of(self, job_id: str) -> JobState | None:
        """The job's status, round, phase and closed round alone (a projected, eventually consistent
        read: what a worker checks before each task); None if unknown."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=job_key(job_id),
            ProjectionExpression=f"#s, #r, #p, closed_round, cancel_requested_at, {BUDGET_STOP_ATTRIBUTE}",
            ExpressionAttributeNames={"#s": "status", "#r": "round", "#p": "phase"},
        ).get("Item")
        if item is None:
            return None
        raw = _from_item(item)
        return JobState(
            status=raw["status"],
            round=int(raw.get("round", 0)),
            phase=raw.get("phase", "train"),
            closed_round=raw.get("closed_round"),
            cancelling=raw.get("cancel_requested_at") is not None,
            budget_spent=raw.get(BUDGET_STOP_ATTRIBUTE) is not None,
        )

    def list_jobs(self, status: str, limit: int = 20) -> list[JobRecord]:
        """Most recent jobs with ``status`` (GSI ``by_status``)."""
        resp = self.ddb.query(
            TableName=self.table,
            IndexName="by_status",
            KeyConditionExpression="#s = :s",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": {"S": status}},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [JobRecord.from_item(i) for i in resp.get("Items", [])]

    # -- jobs: named writes ---------------------------------------------------------------------

    def advance_cursor(
        self, job_id: str, round_no: int, phase: str, value: int, *, window: int | None = None
    ) -> None:
        """Move the enqueue cursor of (round, phase) forward (never back: a stale writer cannot rewind it);
        with ``window``, record the window the send was held to (``shardq.core.admission``)."""
        self._update(job_id, _cursor_update(_Update(), round_no, phase, Cursor(value, window), "<"))

    def claim_close(self, job_id: str, round_no: int, now: float, until: float) -> bool:
        """Claim the work of closing round ``round_no`` (summary, reduce inputs, next fan-out) until
        ``until`` — the claimant's own deadline, after which it is surely dead. One invocation does
        the work while the claim holds; a claim past its time is taken over.

        The claim freezes the round too (``close_round``'s write, in the same update: the claimant
        always closes it, and one call is one less on a round's critical path)."""
        name = f"close_claim_r{round_no}"
        update = _Update().set(**{name: until, "closed_round": round_no})
        update.expect(status="RUNNING", round=round_no, phase="train")
        claim = _ref(update, name)
        update.condition(f"(attribute_not_exists({claim}) OR {claim} < :now)", now=now)
        return self._update(job_id, update, stamp=False)

    def release_close(self, job_id: str, round_no: int) -> None:
        """Give a close claim back (its holder failed), so the next delivery closes at once."""
        self._update(job_id, _Update().remove(f"close_claim_r{round_no}"), stamp=False)

    def request_cancel(self, job_id: str) -> bool:
        """Mark a RUNNING job to be cancelled (once: the first request's time stays); False if it
        is not running. ``advance`` then ends it CANCELLED."""
        update = _Update().set(cancel_requested_at=self.stamp()).expect(status="RUNNING")
        update.condition("attribute_not_exists(cancel_requested_at)")
        return self._update(job_id, update)

    def close_round(self, job_id: str, round_no: int) -> bool:
        """Freeze round ``round_no``'s training: from now on its results are late. False if the job
        is no longer training that round."""
        update = _Update().set(closed_round=round_no).expect(status="RUNNING", round=round_no, phase="train")
        return self._update(job_id, update)

    def ranges_sent(self, job_id: str, round_no: int, now: float) -> bool:
        """Note that the ranges of round ``round_no``'s close were handed out at ``now`` (its lease
        starts); False if the round is no longer the job's closed, running round."""
        update = _Update().set(ranges_sent_at=now)
        return self._update(job_id, update.expect(status="RUNNING", round=round_no, closed_round=round_no))

    def put_close_part(self, job_id: str, round_no: int, index: int, digest: dict[str, Any]) -> bool:
        """Store range ``index``'s digest of round ``round_no``'s close and count it, once (one
        transaction). False when it was stored already or the job moved on (nothing changes)."""
        item = {
            **_close_key(job_id, round_no, index),
            **_to_item({"digest": json.dumps(digest)}),
        }
        count = _Update().add(_counter("part", round_no, "train"), 1)
        count.expect(status="RUNNING", round=round_no, closed_round=round_no)
        try:
            self.ddb.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": item,
                            "ConditionExpression": "attribute_not_exists(sk)",
                        }
                    },
                    {"Update": count.request(self.table, job_id)},
                ]
            )
            return True
        except self.ddb.exceptions.TransactionCanceledException:
            return False

    def close_part_stored(self, job_id: str, round_no: int, index: int) -> bool:
        """True when range ``index`` of round ``round_no``'s close has its digest stored."""
        key = _close_key(job_id, round_no, index)
        resp = self.ddb.get_item(
            TableName=self.table, Key=key, ProjectionExpression="sk", ConsistentRead=True
        )
        return "Item" in resp

    def close_checkpoint(self, job_id: str, round_no: int, index: int) -> dict[str, Any] | None:
        """Where range ``index`` of round ``round_no``'s close stopped last (its partial digest
        with ``next_shard`` and ``seq``), or None when it never stopped half-way."""
        resp = self.ddb.get_item(
            TableName=self.table, Key=_checkpoint_key(job_id, round_no, index), ConsistentRead=True
        )
        if "Item" not in resp:
            return None
        item = _from_item(resp["Item"])
        return {**json.loads(item["digest"]), "seq": int(item["seq"])}

    def put_close_checkpoint(
        self, job_id: str, round_no: int, index: int, partial: dict[str, Any], after: int
    ) -> bool:
        """Store a close range's partial digest as checkpoint ``after + 1``, only if the stored one
        is still ``after`` (0: none). False when another invocation of the range got there first
        (a duplicate delivery): its checkpoint stands, and its hand-on carries the range."""
        item = {
            **_checkpoint_key(job_id, round_no, index),
            **_to_item({"digest": json.dumps(partial), "seq": after + 1}),
        }
        condition = "attribute_not_exists(sk)" if after == 0 else "seq = :after"
        kwargs: dict[str, Any] = {"TableName": self.table, "Item": item, "ConditionExpression": condition}
        if after:
            kwargs["ExpressionAttributeValues"] = {":after": {"N": str(after)}}
        try:
            self.ddb.put_item(**kwargs)
            return True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False

    def close_parts(self, job_id: str, round_no: int) -> list[dict[str, Any]]:
        """The stored digests of round ``round_no``'s close ranges, in range order."""
        return [json.loads(_from_item(i)["digest"]) for i in self._query(job_id, f"CLOSE#r{round_no:04d}#")]

    def start_reduce(self, job_id: str, round_no: int, cursor: Cursor | None = None) -> JobRecord | None:
        """Round ``round_no`` trained: move the job to its reduce phase (once). Returns the job as
        the move left it (the advancer goes on from it without reading it again), None when the
        job was not training that round. ``cursor``: the reduce's send, recorded by the same write
        (``Enqueuer.enqueue``'s ``defer``)."""
        update = _Update().set(phase="reduce").remove(f"close_claim_r{round_no}")
        update.expect(status="RUNNING", round=round_no, phase="train")
        return self._moved(job_id, update, (round_no, "reduce", cursor))

    def _moved(
        self, job_id: str, update: _Update, cursor: tuple[int, str, Cursor | None]
    ) -> JobRecord | None:
        """Apply a move, with the send before it recorded in the same write when given; the job as
        the move left it. Should that cursor be past already (a racing send got further: its
        condition fails), the cursor is left as it is and the move is made alone."""
        round_no, phase, at = cursor
        if at is not None:
            item = self._update_returning(job_id, _cursor_update(update.copy(), round_no, phase, at, "<="))
            if item is not None:
                return JobRecord.from_item(item)
        item = self._update_returning(job_id, update)
        return None if item is None else JobRecord.from_item(item)

    def start_round(
        self,
        job_id: str,
        round_no: int,
        model_uri: str | None,
        *,
        after: str = "reduce",
        cursor: Cursor | None = None,
    ) -> JobRecord | None:
        """Round ``round_no - 1`` ended its ``after`` phase (a reduce, or a sweep rung's training):
        move the job to train round ``round_no`` from ``model_uri``. Returns the job as the move left
        it, None when the job was not in that phase (another call moved it). ``cursor``: the new
        round's send, recorded by the same write (``Enqueuer.enqueue``'s ``defer``)."""
        # The round's clock is the store's (the engine's): a deadline and the clock it is read by agree.
        started = self.stamp()
        update = _Update().set(round=round_no, phase="train", model_uri=model_uri, round_started_at=started)
        update.remove(f"close_claim_r{round_no - 1}").expect(
            status="RUNNING", round=round_no - 1, phase=after
        )
        return self._moved(job_id, update, (round_no, "train", cursor))

    def put_round_plan(self, job: JobRecord, round_no: int, plan: Sequence[tuple[int, str | None]]) -> None:
        """Store the trials (and each one's model) a closed rung promoted to ``round_no``, then
        their count on the job; idempotent (a closed rung always promotes the same).

        The plan goes in parts (``PLAN#0001#00000``…, ``rungplan.split_plan``), each within an
        item's 400 KB: 5,000 promoted trials overflow one item. The parts are written first and
        the count last (conditional on the job still closing the rung before), so a job that has
        the count has the whole plan; raises ``JobChanged`` when the job moved on.
        """
        parts = rungplan.split_plan(plan)
        self._batch_write(
            [
                {
                    "PutRequest": {
                        "Item": {
                            "pk": _pk(job.job_id),
                            "sk": {"S": f"PLAN#{round_no:04d}#{i:05d}"},
                            **_to_item({"plan": text, "part": i, "parts": len(parts)}),
                        }
                    }
                }
                for i, text in enumerate(parts)
            ]
        )
        count = _Update().set(**{_counter("plan", round_no, "train"): len(plan)})
        if not self._update(job.job_id, count.expect(status="RUNNING", round=round_no - 1)):
            raise JobChanged(f"job {job.job_id} moved on before round {round_no} was planned")

    def round_plan(self, job_id: str, round_no: int) -> list[tuple[int, str | None]]:
        """The trials a closed rung promoted to ``round_no`` and their models (empty if none, or
        while its parts are still being written)."""
        # The prefix also reads a plan stored whole, as one ``PLAN#0001`` item, by earlier versions.
        items = (_from_item(i) for i in self._query(job_id, f"PLAN#{round_no:04d}"))
        return rungplan.join_plan((int(i.get("part", 0)), int(i.get("parts", 1)), i["plan"]) for i in items)

    def planned_tasks(self, job: JobRecord, round_no: int, phase: str) -> list[tuple[int, str | None]]:
        """``(shard, model to start from)`` of every task of (round, phase), in send order; the
        model is None where the round's global model applies."""
        if phase == "train" and job.has_plan(round_no):
            return self.round_plan(job.job_id, round_no)
        return [(shard, None) for shard in job.planned(round_no, phase)]

    def set_final_model(self, job_id: str, round_no: int, model_uri: str | None) -> bool:
        """The last round reduced: keep its model on the job before it finishes."""
        update = _Update().set(model_uri=model_uri).expect(status="RUNNING", round=round_no, phase="reduce")
        return self._update(job_id, update)

    def finish(
        self,
        job_id: str,
        status: str,
        *,
        finished_at: str,
        result_uri: str,
        error: str | None,
        expires_at: int,
    ) -> bool:
        """RUNNING → ``status`` (once), with the event marked pending; False if it had finished."""
        update = _Update().set(
            status=status,
            finished_at=finished_at,
            result_uri=result_uri,
            error=error,
            event_pending=True,
            expires_at=expires_at,
        )
        return self._update(job_id, update.expect(status="RUNNING"))

    def freeze_ending(self, job_id: str, status: str, error: str | None) -> JobRecord | None:
        """Mark a RUNNING job as ending with ``status``/``error`` and return it as the mark left it
        (``ALL_NEW``): from then on no outcome counts (``update.not_ending``), so that record and the
        outcomes read after it are all the manifest and ``finish`` will ever see. Idempotent (a
        mark already there stands); None when the job no longer runs."""
        update = _Update().expect(status="RUNNING")
        ref = _ref(update, ENDING_ATTRIBUTE)
        mark = {"status": status, "error": error}
        update.clauses["SET"].append(f"{ref} = if_not_exists({ref}, {update._value(mark)})")
        item = self._update_returning(job_id, update)
        return None if item is None else JobRecord.from_item(item)

    def reopen(self, job: JobRecord) -> bool:
        """FAILED → RUNNING for a retry, clearing what ``finish`` set; False if it was not FAILED.

        A training round restarts its clock (``round_started_at``), so its deadline, if it has one,
        is ``quorum.deadline_seconds`` from the retry.

        A job that failed with its training round frozen (a big map round closed in ranges over
        its failure budget) has the round opened again: its late shards must run and count now,
        and the round closes anew (``forget_close`` drops the old ranges' digests first).
        """
        # A cancel asked for while the job was failing is undone by the retry asked for after it.
        update = _Update().set(status="RUNNING").remove(*_FINISH_ATTRIBUTES, "cancel_requested_at")
        update.expect(status="FAILED")
        if job.phase == "train":
            # The round resumes with a fresh clock: a round that failed at its deadline would
            # otherwise fail again at once (its deadline counts from ``round_started_at``).
            update.set(round_started_at=self.stamp())
        if job.phase == "train" and job.closed_round == job.round:
            update.remove(
                "closed_round",
                "ranges_sent_at",
                f"close_claim_r{job.round}",
                _counter("part", job.round, "train"),
            )
        return self._update(job.job_id, update)

    def forget_close(self, job_id: str, round_no: int) -> None:
        """Delete the digests and checkpoints of round ``round_no``'s close ranges (before the round
        opens again)."""
        keys = [
            {"pk": i["pk"], "sk": i["sk"]}
            for prefix in (f"CLOSE#r{round_no:04d}#", f"CLOSECK#r{round_no:04d}#")
            for i in self._query(job_id, prefix)
        ]
        self._delete(keys)

    def claim_event(self, job_id: str, now: float, lease_s: float) -> bool:
        """Claim the pending ``Job Finished`` event; False if none is pending or a live claim holds it."""
        update = _Update().set(event_claim=now)
        pending, claim = _ref(update, "event_pending"), _ref(update, "event_claim")
        update.condition(
            f"attribute_exists({pending}) AND (attribute_not_exists({claim}) OR {claim} < :stale)",
            stale=now - lease_s,
        )
        return self._update(job_id, update, stamp=False)

    def release_event_claim(self, job_id: str) -> None:
        """Give a claim back (the event could not be sent) so the next try sends it at once."""
        self._update(job_id, _Update().remove("event_claim"))

    def event_sent(self, job_id: str) -> None:
        """The ``Job Finished`` event went out: clear the pending flag and the claim."""
        self._update(job_id, _Update().remove("event_pending", "event_claim"))

    def next_retry_generation(self, job_id: str, status: str) -> int:
        """A fresh retry generation (its tasks' deduplication ids differ from every earlier send)."""
        update = _Update().add("retry_generation", 1).expect(status=status)
        try:
            resp = self.ddb.update_item(
                **update.request(self.table, job_id, stamp=False), ReturnValues="UPDATED_NEW"
            )
        except self.ddb.exceptions.ConditionalCheckFailedException as exc:
            raise JobChanged(f"job {job_id} is no longer {status}") from exc
        return int(resp["Attributes"]["retry_generation"]["N"])

    def forget_failures(
        self, job: JobRecord, shards: Sequence[int], generation: int, cost_micro_usd: int = 0
    ) -> None:
        """Delete failed outcomes of the job's current (round, phase) and un-count them, in one
        transaction (at most ``MAX_RETRY_CHUNK`` shards); the shards wait in a pending item of
        retry ``generation`` until ``retry_sent``, and a retry mark (``store.retried``) says they
        were sent again under ``generation``.

        One pending item per chunk, not one set on the job record: a retry of 100,000 failed
        shards would overflow the record's 400 KB at ≈ 95,000 ids.

        ``cost_micro_usd``: what the forgotten outcomes cost; the job's cost keeps it (the time was
        spent) and ``FORGOTTEN_COST_ATTRIBUTE`` says how much of it no outcome item holds now.

        Raises ``JobChanged`` when the job moved (status, round or phase) or an outcome changed.
        """
        if len(shards) > MAX_RETRY_CHUNK:
            raise ValueError(f"forget_failures: at most {MAX_RETRY_CHUNK} shards a call, got {len(shards)}")
        round_no, phase = job.round, job.phase
        update = _Update().expect(status=job.status, round=round_no, phase=phase)
        pending: list[dict[str, Any]] = []
        if shards:
            update.add(_counter("fail", round_no, phase), -len(shards))
            if phase == "train":
                update.add("failed_total", -len(shards))
            if cost_micro_usd:
                update.add(FORGOTTEN_COST_ATTRIBUTE, cost_micro_usd)
            item = {
                "pk": _pk(job.job_id),
                "sk": {"S": f"RETRY#g{generation:06d}#{min(shards):06d}"},
                "shards": {"NS": [str(s) for s in sorted(set(shards))]},
            }
            pending.append({"Put": {"TableName": self.table, "Item": item}})
            # The retry mark, in the same transaction as the deletes: from the moment a failure is
            # forgotten, an older copy's failure of that shard is stale (``store.retried``).
            mark = retried_item(job.job_id, round_no, phase, generation, shards)
            pending.append({"Put": {"TableName": self.table, "Item": mark}})
        deletes = [
            {
                "Delete": {
                    "TableName": self.table,
                    "Key": _result_key(job.job_id, round_no, phase, shard),
                    "ConditionExpression": "outcome = :failed",
                    "ExpressionAttributeValues": {":failed": {"S": "failed"}},
                }
            }
            for shard in shards
        ]
        try:
            self.ddb.transact_write_items(
                TransactItems=[*deletes, *pending, {"Update": update.request(self.table, job.job_id)}]
            )
        except self.ddb.exceptions.TransactionCanceledException as exc:
            raise JobChanged(
                f"job {job.job_id} changed while retrying (status, round or an outcome moved on)"
            ) from exc

    def retry_pending(self, job_id: str) -> frozenset[int]:
        """Shards whose failure a retry forgot but whose task it has not sent yet (a crashed retry)."""
        return frozenset(int(s) for _, shards in self._pending(job_id) for s in shards)

    def _pending(self, job_id: str) -> Iterator[tuple[dict[str, Any], list[str]]]:
        for item in self._query(job_id, "RETRY#"):
            yield {"pk": item["pk"], "sk": item["sk"]}, item["shards"]["NS"]

    def retry_sent(self, job_id: str, shards: Iterable[int]) -> None:
        """The retried shards' tasks are on the queue: drop the pending items they cover."""
        sent = {str(s) for s in shards}
        self._delete([key for key, pending in self._pending(job_id) if sent.issuperset(pending)])


__all__ = [
    "MAX_PUTS_PER_TRANSACTION",
    "MAX_RETRY_CHUNK",
    "JobChanged",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "JobStore",
    "JobStoreError",
    "Outcome",
    "RecordOutcome",
    "ResultRecord",
    "SweepDecision",
    "now_iso",
]
