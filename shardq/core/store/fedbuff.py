"""FedBuff's items in the job table: each client update recorded once, with its base version and the
version it went into, in one transaction with the buffer's count (``shardq.core.fedbuff`` decides).

Items (partition ``pk = JOB#<job_id>``):

==================================  ===========================================================
``sk``                              what
==================================  ===========================================================
``UPD#c000003#n000007``             client (shard) 3's update number 7: its outcome (``state``
                                    ``applied`` | ``late`` | ``surplus`` | ``failed`` |
                                    ``after_end``), ``base`` and ``version``, τ, weight, model;
                                    later ``slot`` (``c:n``: the task its freed slot went to, set
                                    once: ``hand``) and ``next_sent`` (that task is on the
                                    queue), and ``next_base`` (the version its client's *own* next
                                    task trains from, fixed once when a slot goes to that task).
                                    Written once: a replay is a duplicate.
``BUF#v000002#c000003#n000007``     the same update listed under the version it went into
                                    (applied, late or surplus), for that version's reduce and
                                    its summary
``FIRST#c000040``                   a job with fewer slots than clients: client 40's first task,
                                    handed a slot beyond round 0's fan-out, trains from
                                    version ``next_base`` (the latest when it was handed)
``IDLE#o000000012#c000003#n000007`` a job with fewer slots than clients: client 3 waits for a
                                    slot since its update 7, the 12th recorded (sort order:
                                    oldest first); written with the update, deleted by the
                                    ``hand`` that gives the client a slot
==================================  ===========================================================

The job record carries ``fb_seq`` (updates recorded: the optimistic lock every recording
transaction checks and moves), ``fb_open`` (the buffer filling now: the version it will be
applied to), ``fb_fill`` (updates accepted into it), ``fb_applied``/``fb_late``/``fb_failed``
totals, ``failed_total`` (the failure budget, shared with every kind) and ``fb_waiting`` (clients
whose next task waits for the next version). Per version ``v``, in the job record's counter scheme
(``JobRecord.counters``, so every read view counts them as it counts rounds): ``upd_rv_train``
(updates that trained and went into v: applied, late or surplus), ``ulate_rv_train`` (of them
late), ``utau_rv_train`` (the applied ones' staleness τ summed), ``ufail_rv_train`` (failed updates
while v was open) and ``usd_rv_train`` (their cost, also added to the job's ``cost_uusd``); per
update number ``n``, ``usent_rn_train``: tasks sent after a client's update ``n - 1`` (counted
once, when a slot is handed to it, before it is sent: ``hand``; ``usent_r0_train``: first tasks
handed to the clients beyond round 0's fan-out, in shard order). A retry (``forgive``) sets
``fb_forgive_seq``: failed updates recorded before it (``order`` below it) no longer count against
the failure budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardq.core.batchcalls import JobStoreError
from shardq.core.batchcalls import pause as _pause
from shardq.core.store.keys import (
    ENDING_ATTRIBUTE,
    MAX_RECORD_ATTEMPTS,
    _counter,
    _from_item,
    _pk,
    _to_item,
    job_key,
)
from shardq.core.store.records import JobChanged, JobNotFound
from shardq.core.store.spending import COST_ATTRIBUTE
from shardq.core.store.update import _ref, _Update, not_ending

# Two puts an update (UPD and BUF; three with IDLE) and the job's update: within TransactWriteItems'
# 100 items.
UPDATES_PER_TRANSACTION = 48
UPDATES_PER_TRANSACTION_IDLE = 32
# Update states; the buffer's (BUF#) items are the succeeded ones.
APPLIED, LATE, SURPLUS, FAILED, AFTER_END = "applied", "late", "surplus", "failed", "after_end"


@dataclass(frozen=True)
class Counts:
    """The job's FedBuff accounting: the lock, the open buffer and the totals."""

    seq: int = 0
    open: int = 0
    fill: int = 0
    applied: int = 0
    late: int = 0
    failed: int = 0
    running: bool = True
    waiting: frozenset[str] = frozenset()
    # Failed updates whose ``order`` is below this were forgiven by a retry (``forgive``).
    forgive_seq: int = 0


@dataclass(frozen=True)
class Update:
    """One client update as the table holds it (UPD# or BUF# item)."""

    client: int
    seq: int
    state: str
    base: int
    version: int
    tau: int
    weight: float
    num_samples: int
    model_uri: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    error: str | None = None
    next_base: int | None = None
    next_sent: bool = False
    # ``c:n``: the task (update n of client c) its freed slot went to (``FedBuffStore.hand``).
    slot: str | None = None
    cost_micro_usd: int = 0
    # Its place in the job's recording order (``Counts.seq`` before it); -1 until placed.
    order: int = -1

    @property
    def name(self) -> str:
        """``c:n``: how the waiting set names it."""
        return f"{self.client}:{self.seq}"

    @property
    def slot_task(self) -> tuple[int, int] | None:
        """``(client, update number)`` of the task its freed slot went to (None: not handed yet)."""
        if self.slot is None:
            return None
        client, seq = self.slot.split(":")
        return int(client), int(seq)

    def attributes(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "seq": self.seq,
            "state": self.state,
            "base": self.base,
            "version": self.version,
            "tau": self.tau,
            "weight": self.weight,
            "num_samples": self.num_samples,
            "model_uri": self.model_uri,
            "metrics": json.dumps(self.metrics, allow_nan=True),
            "duration_s": self.duration_s,
            "error": self.error,
            "cost_micro_usd": self.cost_micro_usd,
            "order": self.order,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Update:
        raw = _from_item(item)
        return cls(
            client=int(raw["client"]),
            seq=int(raw["seq"]),
            state=str(raw["state"]),
            base=int(raw["base"]),
            version=int(raw["version"]),
            tau=int(raw["tau"]),
            weight=float(raw["weight"]),
            num_samples=int(raw.get("num_samples", 0)),
            model_uri=raw.get("model_uri"),
            metrics=json.loads(raw.get("metrics") or "{}"),
            duration_s=float(raw.get("duration_s", 0.0)),
            error=raw.get("error"),
            next_base=None if raw.get("next_base") is None else int(raw["next_base"]),
            next_sent=bool(raw.get("next_sent", False)),
            # an update recorded before slots were handed (``slot``) whose own next task was sent
            slot=raw.get("slot")
            or (f"{raw['client']}:{int(raw['seq']) + 1}" if raw.get("next_sent") else None),
            cost_micro_usd=int(raw.get("cost_micro_usd", 0)),
            order=int(raw.get("order", -1)),
        )


def _version_counters(placed: Sequence[Update]) -> dict[str, int]:
    """What ``placed`` adds to the per-version counters and the job's cost (module docstring)."""
    out: dict[str, int] = {}
    for u in placed:
        names = [f"ufail_r{u.version}_train"] if u.state == FAILED else [f"upd_r{u.version}_train"]
        if u.state == LATE:
            names.append(f"ulate_r{u.version}_train")
        for name in names:
            out[name] = out.get(name, 0) + 1
        if u.state == APPLIED and u.tau:
            out[f"utau_r{u.version}_train"] = out.get(f"utau_r{u.version}_train", 0) + u.tau
        if u.cost_micro_usd:
            for name in (f"usd_r{u.version}_train", COST_ATTRIBUTE):
                out[name] = out.get(name, 0) + u.cost_micro_usd
    return out


def _upd_key(job_id: str, client: int, seq: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"UPD#c{client:06d}#n{seq:06d}"}}


def _buf_key(job_id: str, version: int, client: int, seq: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"BUF#v{version:06d}#c{client:06d}#n{seq:06d}"}}


def _first_key(job_id: str, client: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"FIRST#c{client:06d}"}}


def _idle_sk(u: Update) -> str:
    return f"IDLE#o{u.order:09d}#c{u.client:06d}#n{u.seq:06d}"


@dataclass(frozen=True)
class Receiver:
    """Who a freed slot goes to: the task ``(seq, client)``, the client's update ``seq``.

    ``idle``: the sort key of the client's ``IDLE#`` item (a client waiting since its update
    ``seq - 1``), deleted with the hand; None for a client's own next task without rotation, or a
    first task (``seq`` 0), handed to the clients beyond round 0's fan-out in shard order, the
    ``first``-th of them (the job's ``usent_r0_train`` before the hand)."""

    client: int
    seq: int
    idle: str | None = None
    first: int = 0

    @property
    def name(self) -> str:
        return f"{self.client}:{self.seq}"


# Decides where each new update goes, given the counts: (updates with state/version set, new counts).
Placer = Callable[[Counts, Sequence[Update]], tuple[list[Update], Counts]]


class FedBuffStore:
    """FedBuff's named reads and writes on a job store's table (``store``: a ``JobStore``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.ddb = store.ddb
        self.table = store.table

    # -- reads ---------------------------------------------------------------------------------

    def counts(self, job_id: str) -> Counts:
        """The job's FedBuff counts (consistent read); raises JobNotFound."""
        resp = self.ddb.get_item(
            TableName=self.table,
            Key=job_key(job_id),
            ProjectionExpression=(
                "pk, #s, #e, fb_seq, fb_open, fb_fill, fb_applied, fb_late, fb_failed, fb_waiting, "
                "fb_forgive_seq"
            ),
            ExpressionAttributeNames={"#s": "status", "#e": ENDING_ATTRIBUTE},
            ConsistentRead=True,
        )
        if "Item" not in resp:
            raise JobNotFound(job_id)
        raw = _from_item(resp["Item"])
        return Counts(
            seq=int(raw.get("fb_seq", 0)),
            open=int(raw.get("fb_open", 0)),
            fill=int(raw.get("fb_fill", 0)),
            applied=int(raw.get("fb_applied", 0)),
            late=int(raw.get("fb_late", 0)),
            failed=int(raw.get("fb_failed", 0)),
            # a job frozen to end (``JobStore.freeze_ending``) counts no update: as if it ended
            running=raw.get("status") == "RUNNING" and raw.get(ENDING_ATTRIBUTE) is None,
            waiting=frozenset(str(s) for s in raw.get("fb_waiting") or ()),
            forgive_seq=int(raw.get("fb_forgive_seq", 0)),
        )

    def updates(self, job_id: str, keys: Iterable[tuple[int, int]]) -> dict[tuple[int, int], Update]:
        """The recorded updates among ``(client, seq)`` keys (consistent reads)."""
        wanted = [_upd_key(job_id, c, n) for c, n in set(keys)]
        found = (Update.from_item(i) for i in self.store._batch_get(wanted))
        return {(u.client, u.seq): u for u in found}

    def buffer(self, job_id: str, version: int) -> list[Update]:
        """The updates that went into ``version``'s buffer (applied, late or surplus), in key order."""
        return [Update.from_item(i) for i in self.store._query(job_id, f"BUF#v{version:06d}#")]

    def all_updates(self, job_id: str) -> list[Update]:
        """Every recorded update of the job (client, then sequence order)."""
        return [Update.from_item(i) for i in self.store._query(job_id, "UPD#")]

    # -- writes --------------------------------------------------------------------------------

    def record(
        self,
        job_id: str,
        new: Sequence[Update],
        place: Placer,
        *,
        deadline: float | None = None,
        tenant: str | None = None,
        idle: bool = False,
    ) -> tuple[list[Update], list[Update]]:
        """Record ``new`` updates once each, placed by ``place`` under the job's current counts, in
        one transaction with the counts they move; returns ``(recorded, duplicates)``.

        The transaction checks the job's ``fb_seq`` (the count of recorded updates) against the one
        its placement read: two aggregators racing re-read and re-place, so buffer positions are
        handed out once. An update already recorded is a duplicate (never placed twice). Outcomes
        of a job that no longer runs are kept as ``after_end``, uncounted. With a ``tenant``, the
        updates' cost joins its month's spend in the same transaction (as ``store.counting`` does).
        With ``idle`` (a job with fewer slots than clients), each update's client joins the ones
        waiting for a slot (its ``IDLE#`` item), in the same transaction.
        """
        recorded: list[Update] = []
        duplicates: list[Update] = []
        per = UPDATES_PER_TRANSACTION_IDLE if idle else UPDATES_PER_TRANSACTION
        for i in range(0, len(new), per):
            chunk = list(new[i : i + per])
            got, dups = self._record_chunk(job_id, chunk, place, deadline, tenant, idle)
            recorded.extend(got)
            duplicates.extend(dups)
        return recorded, duplicates

    def _record_chunk(
        self,
        job_id: str,
        chunk: list[Update],
        place: Placer,
        deadline: float | None,
        tenant: str | None,
        idle: bool,
    ) -> tuple[list[Update], list[Update]]:
        duplicates: list[Update] = []
        for attempt in range(MAX_RECORD_ATTEMPTS):
            existing = self.updates(job_id, [(u.client, u.seq) for u in chunk])
            duplicates.extend(existing[(u.client, u.seq)] for u in chunk if (u.client, u.seq) in existing)
            chunk = [u for u in chunk if (u.client, u.seq) not in existing]
            if not chunk:
                return [], duplicates
            counts = self.counts(job_id)
            if not counts.running:
                return self._after_end(job_id, chunk), duplicates
            placed, after = place(counts, chunk)
            writes = self._writes(job_id, placed, counts, after, idle)
            cost = sum(u.cost_micro_usd for u in placed)
            if tenant and cost:
                writes.append({"Update": self.store.tenant_month_update(tenant, cost)})
            try:
                self.ddb.transact_write_items(TransactItems=writes)
                return placed, duplicates
            except self.ddb.exceptions.TransactionCanceledException:
                pass  # a duplicate or another writer: read again and place again
            pause = _pause(attempt)
            if deadline is not None and self.store.clock() + pause > deadline - 2.0:
                break
            time.sleep(pause)
        raise JobStoreError(f"could not record {len(chunk)} FedBuff updates for job {job_id}: conflicts")

    def _writes(
        self, job_id: str, placed: list[Update], before: Counts, after: Counts, idle: bool
    ) -> list[dict[str, Any]]:
        at = self.store.stamp()
        writes: list[dict[str, Any]] = []
        for u in placed:
            body = {**_to_item({**u.attributes(), "recorded_at": at})}
            writes.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": {**_upd_key(job_id, u.client, u.seq), **body},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
            if u.state in (APPLIED, LATE, SURPLUS):
                writes.append(
                    {
                        "Put": {
                            "TableName": self.table,
                            "Item": {**_buf_key(job_id, u.version, u.client, u.seq), **body},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    }
                )
            if idle:
                item = {
                    "pk": _pk(job_id),
                    "sk": {"S": _idle_sk(u)},
                    **_to_item({"client": u.client, "seq": u.seq}),
                }
                writes.append({"Put": {"TableName": self.table, "Item": item}})
        update = _Update().set(fb_seq=after.seq, fb_open=after.open, fb_fill=after.fill)
        update.condition(f"{_ref(update, 'status')} = :running", running="RUNNING")
        not_ending(update)
        seq = _ref(update, "fb_seq")
        if before.seq:
            update.condition(f"{seq} = :seq", seq=before.seq)
        else:
            update.condition(f"attribute_not_exists({seq})")
        for name, value in (
            ("fb_applied", after.applied - before.applied),
            ("fb_late", after.late - before.late),
            ("fb_failed", after.failed - before.failed),
            ("failed_total", after.failed - before.failed),
            *_version_counters(placed).items(),
        ):
            if value:
                update.add(name, value)
        writes.append({"Update": update.request(self.table, job_id, stamp=False)})
        return writes

    def _after_end(self, job_id: str, chunk: list[Update]) -> list[Update]:
        """Keep updates that arrived after the job ended, uncounted (idempotent)."""
        at = self.store.stamp()
        kept = []
        for u in chunk:
            late = Update(**{**u.__dict__, "state": AFTER_END})
            item = {**_upd_key(job_id, u.client, u.seq), **_to_item({**late.attributes(), "recorded_at": at})}
            try:
                self.ddb.put_item(
                    TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)"
                )
            except self.ddb.exceptions.ConditionalCheckFailedException:
                continue
            kept.append(late)
        return kept

    def first_bases(self, job_id: str, clients: Iterable[int]) -> dict[int, int]:
        """The version each of ``clients`` trains its first update from, where a slot handed it its
        first task (``FIRST#``); a client absent got it from round 0's fan-out (version 0) or not
        at all."""
        items = self.store._batch_get([_first_key(job_id, c) for c in set(clients)])
        return {int(raw["client"]): int(raw["next_base"]) for raw in map(_from_item, items)}

    def idle(self, job_id: str, limit: int) -> list[Receiver]:
        """Up to ``limit`` clients waiting for a slot, the longest waiting first (their ``IDLE#``
        items in key order: their last update's recording order), each as the task it would get."""
        resp = self.ddb.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
            ExpressionAttributeValues={":pk": _pk(job_id), ":p": {"S": "IDLE#"}},
            ConsistentRead=True,
            Limit=max(1, limit),
        )
        out = []
        for item in resp.get("Items", []):
            raw = _from_item(item)
            out.append(Receiver(int(raw["client"]), int(raw["seq"]) + 1, idle=str(raw["sk"])))
        return out

    def hand(self, job_id: str, giver: Update, to: Receiver, version: int) -> tuple[str, bool] | None:
        """Hand the slot update ``giver`` freed to the task ``to``, once; returns the giver's ``slot``
        (``c:n``) and whether this call handed it: ``(to.name, True)``, or the one another writer
        handed first (a redelivery), ``False``: its base is on the table. None when ``to`` was
        taken meanwhile (or a conflict): pick again.

        One transaction: the giver's ``slot`` (set once), the receiving client's ``next_base`` =
        ``version`` on its last update (set once: a client gets one slot at a time; ``to``'s first
        task instead moves ``usent_r0_train`` from ``to.first``, so each client beyond the fan-out
        gets one, in shard order, and puts its ``FIRST#`` item with that base), its ``IDLE#`` item
        deleted, and ``usent_r<n>_train`` counting the task out *before* it is sent
        (``shardq.core.outstanding``): a crash after this leaves it counted, never missing, and a
        giver whose slot is set but not ``next_sent`` has its task sent again by whoever sees it
        next (``Driver.follow_up``), even once the job may send nothing new."""
        key = _upd_key(job_id, giver.client, giver.seq)
        own = (to.client, to.seq) == (giver.client, giver.seq + 1)
        values: dict[str, Any] = {":s": {"S": to.name}}
        give = {
            "TableName": self.table,
            "Key": key,
            "UpdateExpression": "SET slot = :s",
            "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(slot)",
            "ExpressionAttributeValues": values,
        }
        writes: list[dict[str, Any]] = [{"Update": give}]
        count = _Update().add(_counter("usent", to.seq, "train"), 1)
        if to.seq == 0:
            first = _ref(count, _counter("usent", 0, "train"))
            if to.first:
                count.condition(f"{first} = :first", first=to.first)
            else:
                count.condition(f"attribute_not_exists({first})")
            item = {**_first_key(job_id, to.client), **_to_item({"client": to.client, "next_base": version})}
            put = {"TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
            writes.append({"Put": put})
        elif own:
            give["UpdateExpression"] += ", next_base = :v"
            give["ConditionExpression"] += " AND attribute_not_exists(next_base)"
            values[":v"] = {"N": str(version)}
        else:
            receiver = {
                "TableName": self.table,
                "Key": _upd_key(job_id, to.client, to.seq - 1),
                "UpdateExpression": "SET next_base = :v",
                "ConditionExpression": "attribute_exists(pk) AND attribute_not_exists(next_base)",
                "ExpressionAttributeValues": {":v": {"N": str(version)}},
            }
            writes.append({"Update": receiver})
        if to.idle is not None:
            idle_key = {"pk": _pk(job_id), "sk": {"S": to.idle}}
            delete = {"TableName": self.table, "Key": idle_key, "ConditionExpression": "attribute_exists(pk)"}
            writes.append({"Delete": delete})
        writes.append({"Update": count.request(self.table, job_id, stamp=False)})
        try:
            self.ddb.transact_write_items(TransactItems=writes)
            return to.name, True
        except self.ddb.exceptions.TransactionCanceledException:
            item = self.ddb.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        if item is None:
            raise JobStoreError(f"job {job_id}: update {giver.name} is not recorded")
        return (str(item["slot"]["S"]), False) if "slot" in item else None

    def mark_sent(self, job_id: str, client: int, seq: int) -> None:
        """The task update ``seq``'s freed slot went to is on the queue: ``next_sent`` (it was
        counted out when the slot was handed: ``hand``); marking twice changes nothing."""
        self.ddb.update_item(
            TableName=self.table,
            Key=_upd_key(job_id, client, seq),
            UpdateExpression="SET next_sent = :t",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":t": {"BOOL": True}},
        )

    def record_drop(self, job_id: str, client: int, seq: int) -> bool:
        """Count the drop of update ``(client, seq)``'s task (``Spending.record_drop``) unless that
        update is recorded: a copy of its task ran, so it is not out."""
        return bool(self.store.record_drop(job_id, seq, "train", client, _upd_key(job_id, client, seq)))

    def wait(self, job_id: str, names: Iterable[str]) -> None:
        """Clients (``c:n``) whose next task waits for the next version."""
        names = sorted(set(names))
        if names:
            self.ddb.update_item(
                TableName=self.table,
                Key=job_key(job_id),
                UpdateExpression="ADD fb_waiting :w",
                ExpressionAttributeValues={":w": {"SS": names}},
            )

    def unwait(self, job_id: str, names: Iterable[str]) -> None:
        """Their next tasks were sent."""
        names = sorted(set(names))
        if names:
            self.ddb.update_item(
                TableName=self.table,
                Key=job_key(job_id),
                UpdateExpression="DELETE fb_waiting :w",
                ExpressionAttributeValues={":w": {"SS": names}},
            )

    # -- retry ---------------------------------------------------------------------------------

    def forgive(self, job_id: str, status: str) -> int:
        """A retry: the failed updates recorded so far no longer count against the failure budget
        (``failed_total`` back to 0, ``fb_forgive_seq`` = the updates recorded so far), if the job
        is still ``status`` and recorded nothing meanwhile; returns how many it forgave.

        Raises ``JobChanged`` when the job moved (its status, or a new update recorded)."""
        counts = self.counts(job_id)
        update = _Update().set(failed_total=0, fb_forgive_seq=counts.seq).expect(status=status)
        seq = _ref(update, "fb_seq")
        if counts.seq:
            update.condition(f"{seq} = :seq", seq=counts.seq)
        else:
            update.condition(f"attribute_not_exists({seq})")
        before = self.store.get_job(job_id).failed_total
        try:
            self.ddb.update_item(**update.request(self.table, job_id, stamp=False))
        except self.ddb.exceptions.ConditionalCheckFailedException as exc:
            raise JobChanged(f"job {job_id} changed while retrying (status, or an update recorded)") from exc
        return before

    def first_failure(self, job_id: str) -> Update | None:
        """The first failed update the failure budget counts (recorded since the last retry)."""
        forgiven = self.counts(job_id).forgive_seq
        failed = [u for u in self.all_updates(job_id) if u.state == FAILED and u.order >= forgiven]
        return min(failed, key=lambda u: (u.order, u.client, u.seq), default=None)

    def drop_after_end(self, job_id: str, client: int, seq: int) -> bool:
        """Forget an update kept ``after_end`` (never counted) so a retry can train it again."""
        try:
            self.ddb.delete_item(
                TableName=self.table,
                Key=_upd_key(job_id, client, seq),
                ConditionExpression="#s = :after",
                ExpressionAttributeNames={"#s": "state"},
                ExpressionAttributeValues={":after": {"S": AFTER_END}},
            )
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def retrying(self, job_id: str) -> bool:
        """True while a retry of the job has not sent its tasks yet (it died midway)."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=job_key(job_id),
            ProjectionExpression="fb_retrying",
            ConsistentRead=True,
        ).get("Item", {})
        return "fb_retrying" in item

    def mark_retrying(self, job_id: str, generation: int | None) -> None:
        """Set (a retry of ``generation`` began) or clear (its tasks went out) ``fb_retrying``."""
        update = _Update()
        update = (
            update.set(fb_retrying=generation) if generation is not None else update.remove("fb_retrying")
        )
        self.ddb.update_item(**update.request(self.table, job_id, stamp=False))
