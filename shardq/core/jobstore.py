"""The job store: the one module that knows the job table's schema.

Items (partition ``pk = JOB#<job_id>``):

========================  ===========================================================
``sk``                    what
========================  ===========================================================
``JOB``                   the job record (``JobRecord``): status, request, current round
                          and phase, per-(round, phase) counters ``ok_*``/``fail_*``, the
                          enqueue cursor ``enq_*``, result URI; GSI ``by_status`` lists jobs
``RES#r0003#train#000042`` one recorded outcome of a task (``ResultRecord``, written once)
``ROUND#0003``            a finished round's metrics summary
========================  ===========================================================

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

import contextlib
import functools
import json
import random
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from shardq.core.contracts import TERMINAL_STATUSES, JobView, ShardResult, TrainingRequest
from shardq.core.planning import participant_count, participants

# TransactWriteItems takes up to 100 actions: 99 result puts (or deletes) + the job's update.
MAX_PUTS_PER_TRANSACTION = 99
# Failed outcomes a retry forgets per transaction: their deletes, the chunk's pending item and the
# job's counters fill DynamoDB's 100 items.
MAX_RETRY_CHUNK = MAX_PUTS_PER_TRANSACTION - 1
# Attempts of one recording transaction that was cancelled for a conflict (no deadline given), and
# of a BatchGetItem that left keys unprocessed.
MAX_RECORD_ATTEMPTS = 8
# Stop retrying this long before the caller's deadline, so its answer still goes out.
DEADLINE_MARGIN_S = 2.0
# BatchGetItem takes up to 100 keys.
BATCH_GET_KEYS = 100
_ser = TypeSerializer()
_de = TypeDeserializer()
# Counters per (round, phase): ok, fail, enq (the enqueue cursor), and plan (tasks a
# successive-halving rung planned, when a closed rung decided them).
_COUNTER_RE = re.compile(r"^(ok|fail|enq|plan|part)_r(\d+)_(train|reduce)$")
# What ``finish`` sets and ``reopen`` removes.
_FINISH_ATTRIBUTES = ("finished_at", "result_uri", "error", "event_pending", "event_claim", "expires_at")


class JobNotFound(LookupError):
    """No job record under that id."""


class JobStoreError(RuntimeError):
    """A write could not complete within its attempts or its deadline."""


class JobChanged(RuntimeError):
    """A conditional write found the job no longer where the caller saw it."""


def now_iso() -> str:
    """UTC timestamp with milliseconds, sortable as a string."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pk(job_id: str) -> dict[str, Any]:
    return {"S": f"JOB#{job_id}"}


def _job_key(job_id: str) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": "JOB"}}


def _result_key(job_id: str, round_no: int, task_type: str, shard_id: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"RES#r{round_no:04d}#{task_type}#{shard_id:06d}"}}


def _pause(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` of a call DynamoDB refused in part (a
    conflict, keys left unprocessed): growing, with full jitter, at most 2 s."""
    return random.uniform(0, min(2.0, 0.05 * 2**attempt))


def _close_key(job_id: str, round_no: int, index: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"CLOSE#r{round_no:04d}#{index:05d}"}}


def _checkpoint_key(job_id: str, round_no: int, index: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"CLOSECK#r{round_no:04d}#{index:05d}"}}


def _counter(kind: str, round_no: int, phase: str) -> str:
    return f"{kind}_r{round_no}_{phase}"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    return value


def _to_item(data: Mapping[str, Any]) -> dict[str, Any]:
    """Python values → DynamoDB attribute values (floats go through Decimal; None is left out)."""
    out = {}
    for k, v in data.items():
        if v is None:
            continue
        out[k] = _ser.serialize(Decimal(repr(v)) if isinstance(v, float) else v)
    return out


def _from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values → plain Python values (ints stay ints)."""
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


# -- typed records ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobRecord:
    """One job as the table holds it: read-only; the store's named methods change it.

    ``counters`` maps ``(kind, round, phase)`` — kind ``ok``, ``fail`` or ``enq`` — to its count;
    read them through ``ok``, ``failed``, ``enqueued`` and ``done``.
    """

    job_id: str
    kind: str
    status: str
    request_json: str
    request_hash: str
    rounds: int
    task_count: int
    max_failed_shards: int
    created_at: str
    round: int = 0
    phase: str = "train"
    round_started_at: str | None = None
    updated_at: str | None = None
    failed_total: int = 0
    model_uri: str | None = None
    finished_at: str | None = None
    result_uri: str | None = None
    error: str | None = None
    event_pending: bool = False
    expires_at: int | None = None
    retry_generation: int = 0
    # The last round whose training closed (quorum or deadline): its later results are late.
    closed_round: int | None = None
    # When the ranges of the closed round's close were last handed out (their lease).
    ranges_sent_at: float | None = None
    # When an operator asked to cancel the job (``request_cancel``): workers stop taking its tasks
    # and the next ``advance`` ends it CANCELLED (a big map round closes in ranges first).
    cancel_requested_at: str | None = None
    counters: Mapping[tuple[str, int, str], int] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def new(cls, request: TrainingRequest, job_id: str, request_hash: str) -> JobRecord:
        """The record of a job just submitted: RUNNING, round 0, training."""
        now = now_iso()
        return cls(
            job_id=job_id,
            kind=request.kind,
            status="RUNNING",
            request_json=request.to_json(),
            request_hash=request_hash,
            rounds=request.round_count,
            task_count=request.task_count,
            max_failed_shards=request.max_failed_shards,
            created_at=now,
            round_started_at=now,
            model_uri=request.model.get("init_uri"),
        )

    @functools.cached_property
    def request(self) -> TrainingRequest:
        """The request the job was submitted with (parsed once per record)."""
        return TrainingRequest.from_json(self.request_json)

    @property
    def terminal(self) -> bool:
        """True once the job SUCCEEDED, FAILED or was CANCELLED."""
        return self.status in TERMINAL_STATUSES

    def expected(self, round_no: int, phase: str) -> int:
        """Tasks (round, phase) has: its participating shards (or promoted trials) to train, one reduce."""
        if phase != "train":
            return 1
        return self.counters.get(("plan", round_no, phase), participant_count(self.request, round_no))

    def planned(self, round_no: int, phase: str) -> Sequence[int]:
        """The shard ids (round, phase) runs, ascending, when the request decides them (a rung that
        a closed rung decided has a stored plan instead: ``JobStore.planned_tasks``)."""
        return participants(self.request, round_no) if phase == "train" else range(1)

    def has_plan(self, round_no: int) -> bool:
        """True when a closed rung decided round ``round_no``'s trials (``JobStore.round_plan``)."""
        return ("plan", round_no, "train") in self.counters

    def ok(self, round_no: int, phase: str) -> int:
        """Recorded successful outcomes of (round, phase)."""
        return self.counters.get(("ok", round_no, phase), 0)

    def failed(self, round_no: int, phase: str) -> int:
        """Recorded failed outcomes of (round, phase)."""
        return self.counters.get(("fail", round_no, phase), 0)

    def done(self, round_no: int, phase: str) -> int:
        """Recorded outcomes of (round, phase), successful or not."""
        return self.ok(round_no, phase) + self.failed(round_no, phase)

    def ranges_done(self, round_no: int) -> int:
        """Ranges of round ``round_no``'s close whose digest is stored (``JobStore.put_close_part``)."""
        return self.counters.get(("part", round_no, "train"), 0)

    def enqueued(self, round_no: int, phase: str) -> int:
        """The enqueue cursor of (round, phase): tasks sent so far."""
        return self.counters.get(("enq", round_no, phase), 0)

    def view(self) -> JobView:
        """The people-facing view (``shardq status``, the splitter's answer)."""
        return JobView(
            job_id=self.job_id,
            status=self.status,
            kind=self.kind,
            round=self.round,
            rounds=self.rounds,
            phase=self.phase,
            shard_count=self.task_count,
            done=self.ok(self.round, "train"),
            failed=self.failed_total,
            created_at=self.created_at,
            finished_at=self.finished_at,
            result_uri=self.result_uri,
            error=self.error,
            cancel_requested_at=self.cancel_requested_at,
        )

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> JobRecord:
        """The record of a table item (attributes this version does not know are ignored)."""
        raw = _from_item(item)
        counters: dict[tuple[str, int, str], int] = {}
        for name, value in raw.items():
            m = _COUNTER_RE.match(name)
            if m:
                counters[(m.group(1), int(m.group(2)), m.group(3))] = int(value)
        return cls(
            job_id=raw["job_id"],
            kind=raw["kind"],
            status=raw["status"],
            request_json=raw["request"],
            request_hash=raw.get("request_hash", ""),
            rounds=int(raw.get("rounds", 1)),
            task_count=int(raw.get("task_count", 0)),
            max_failed_shards=int(raw.get("max_failed_shards", 0)),
            created_at=raw.get("created_at", ""),
            round=int(raw.get("round", 0)),
            phase=raw.get("phase", "train"),
            round_started_at=raw.get("round_started_at"),
            updated_at=raw.get("updated_at"),
            failed_total=int(raw.get("failed_total", 0)),
            model_uri=raw.get("model_uri"),
            finished_at=raw.get("finished_at"),
            result_uri=raw.get("result_uri"),
            error=raw.get("error"),
            event_pending=bool(raw.get("event_pending", False)),
            expires_at=raw.get("expires_at"),
            retry_generation=int(raw.get("retry_generation", 0)),
            closed_round=raw.get("closed_round"),
            ranges_sent_at=raw.get("ranges_sent_at"),
            cancel_requested_at=raw.get("cancel_requested_at"),
            counters=MappingProxyType(counters),
        )

    def item(self) -> dict[str, Any]:
        """The table item of this record."""
        data: dict[str, Any] = {
            "pk": f"JOB#{self.job_id}",
            "sk": "JOB",
            "job_id": self.job_id,
            "kind": self.kind,
            "status": self.status,
            "request": self.request_json,
            "request_hash": self.request_hash,
            "rounds": self.rounds,
            "task_count": self.task_count,
            "max_failed_shards": self.max_failed_shards,
            "created_at": self.created_at,
            "round": self.round,
            "phase": self.phase,
            "round_started_at": self.round_started_at,
            "updated_at": self.updated_at,
            "failed_total": self.failed_total,
            "model_uri": self.model_uri,
            "finished_at": self.finished_at,
            "result_uri": self.result_uri,
            "error": self.error,
            "event_pending": True if self.event_pending else None,
            "expires_at": self.expires_at,
            "retry_generation": self.retry_generation or None,
            "closed_round": self.closed_round,
            "ranges_sent_at": self.ranges_sent_at,
        }
        data.update({_counter(*key): value for key, value in self.counters.items()})
        return _to_item(data)


@dataclass(frozen=True)
class JobState:
    """Where a job is, without its request: what a worker needs to know before it runs a task."""

    status: str
    round: int
    phase: str
    closed_round: int | None = None
    cancelling: bool = False

    @property
    def terminal(self) -> bool:
        """True once the job SUCCEEDED, FAILED or was CANCELLED."""
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class ResultRecord:
    """One recorded outcome of a task, as the table holds it."""

    result: ShardResult
    recorded_at: str
    source: str = "worker"
    task_body: str | None = None
    receive_count: int | None = None

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> ResultRecord:
        """The record of a result item."""
        raw = _from_item(item)
        return cls(
            result=ShardResult.from_json(raw["result"]),
            recorded_at=raw.get("recorded_at", ""),
            source=raw.get("source", "worker"),
            task_body=raw.get("task"),
            receive_count=raw.get("receive_count"),
        )


@dataclass(frozen=True)
class Outcome:
    """One outcome to record: the result plus, for a dead task, its body and receive count."""

    result: ShardResult
    source: str = "worker"
    task_body: str | None = None
    receive_count: int | None = None

    @property
    def phase_counter(self) -> str:
        """The counter attribute this outcome increments."""
        kind = "ok" if self.result.status == "succeeded" else "fail"
        return _counter(kind, self.result.round, self.result.task_type)

    def key(self) -> dict[str, Any]:
        """The key of its result item."""
        r = self.result
        return _result_key(r.job_id, r.round, r.task_type, r.shard_id)

    def item(self, recorded_at: str) -> dict[str, Any]:
        """The result item."""
        r = self.result
        return {
            **self.key(),
            **_to_item(
                {
                    "outcome": r.status,
                    "result": r.to_json(),
                    "source": self.source,
                    "task": self.task_body,
                    "receive_count": self.receive_count,
                    "recorded_at": recorded_at,
                }
            ),
        }


@dataclass
class RecordOutcome:
    """Which outcomes were newly recorded and counted, which were duplicates of recorded ones, and
    which were late (their round had closed: recorded apart, never counted)."""

    recorded: list[Outcome]
    duplicates: list[Outcome]
    late: list[Outcome] = field(default_factory=list)


class _Update:
    """Builds one UpdateExpression with its names and values (SET, ADD, REMOVE, DELETE)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}
        self.clauses: dict[str, list[str]] = {"SET": [], "ADD": [], "REMOVE": [], "DELETE": []}
        self.conditions: list[str] = ["attribute_exists(pk)"]

    def _name(self, attr: str) -> str:
        ref = f"#n{len(self.names)}"
        self.names[ref] = attr
        return ref

    def _value(self, value: Any) -> str:
        ref = f":v{len(self.values)}"
        self.values[ref] = value
        return ref

    def set(self, **attrs: Any) -> _Update:
        for attr, value in attrs.items():
            if value is None:
                self.remove(attr)
            else:
                self.clauses["SET"].append(f"{self._name(attr)} = {self._value(value)}")
        return self

    def add(self, attr: str, value: Any) -> _Update:
        self.clauses["ADD"].append(f"{self._name(attr)} {self._value(value)}")
        return self

    def remove(self, *attrs: str) -> _Update:
        self.clauses["REMOVE"].extend(self._name(a) for a in attrs)
        return self

    def delete(self, attr: str, value: Any) -> _Update:
        self.clauses["DELETE"].append(f"{self._name(attr)} {self._value(value)}")
        return self

    def expect(self, **attrs: Any) -> _Update:
        for attr, value in attrs.items():
            self.conditions.append(f"{self._name(attr)} = {self._value(value)}")
        return self

    def condition(self, expression: str, **values: Any) -> _Update:
        """A raw condition over ``#name`` placeholders already named, with ``:name`` values."""
        self.conditions.append(expression)
        self.values.update({f":{k}": v for k, v in values.items()})
        return self

    def request(self, table: str, job_id: str, *, stamp: bool = True) -> dict[str, Any]:
        if stamp:
            self.set(updated_at=now_iso())
        expression = " ".join(f"{verb} {', '.join(parts)}" for verb, parts in self.clauses.items() if parts)
        out: dict[str, Any] = {
            "TableName": table,
            "Key": _job_key(job_id),
            "UpdateExpression": expression,
            "ConditionExpression": " AND ".join(self.conditions),
            "ExpressionAttributeNames": self.names,
        }
        if self.values:
            out["ExpressionAttributeValues"] = _to_item(self.values)
        return out


class JobStore:
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

    def __init__(self, table: str, client: Any, *, clock: Any = time.time) -> None:
        self.table = table
        self.ddb = client
        self.clock = clock

    def _update(self, job_id: str, update: _Update, *, stamp: bool = True) -> bool:
        """Apply a conditional update; False when its condition did not hold."""
        try:
            self.ddb.update_item(**update.request(self.table, job_id, stamp=stamp))
            return True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False

    # -- jobs: reads ----------------------------------------------------------------------------

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
        resp = self.ddb.get_item(TableName=self.table, Key=_job_key(job_id), ConsistentRead=consistent)
        if "Item" not in resp:
            raise JobNotFound(job_id)
        return JobRecord.from_item(resp["Item"])

    def status_of(self, job_id: str) -> str | None:
        """The job's status alone (an eventually consistent, one-attribute read); None if unknown."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=_job_key(job_id),
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "status"},
        ).get("Item")
        return None if item is None else str(item["status"]["S"])

    def state_of(self, job_id: str) -> JobState | None:
        """The job's status, round, phase and closed round alone (a projected, eventually consistent
        read: what a worker checks before each task); None if unknown."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=_job_key(job_id),
            ProjectionExpression="#s, #r, #p, closed_round, cancel_requested_at",
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

    def advance_cursor(self, job_id: str, round_no: int, phase: str, value: int) -> None:
        """Move the enqueue cursor of (round, phase) forward (never back: a stale writer cannot rewind it)."""
        name = _counter("enq", round_no, phase)
        update = _Update().set(**{name: value})
        update.condition(
            f"(attribute_not_exists({_ref(update, name)}) OR {_ref(update, name)} < :cur)", cur=value
        )
        self._update(job_id, update)

    def claim_close(self, job_id: str, round_no: int, now: float, until: float) -> bool:
        """Claim the work of closing round ``round_no`` (summary, reduce inputs, next fan-out) until
        ``until`` — the claimant's own deadline, after which it is surely dead. One invocation does
        the work while the claim holds; a claim past its time is taken over."""
        name = f"close_claim_r{round_no}"
        update = _Update().set(**{name: until}).expect(status="RUNNING", round=round_no, phase="train")
        claim = _ref(update, name)
        update.condition(f"(attribute_not_exists({claim}) OR {claim} < :now)", now=now)
        return self._update(job_id, update, stamp=False)

    def release_close(self, job_id: str, round_no: int) -> None:
        """Give a close claim back (its holder failed), so the next delivery closes at once."""
        self._update(job_id, _Update().remove(f"close_claim_r{round_no}"), stamp=False)

    def request_cancel(self, job_id: str) -> bool:
        """Mark a RUNNING job to be cancelled (once: the first request's time stays); False if it
        is not running. ``advance`` then ends it CANCELLED."""
        update = _Update().set(cancel_requested_at=now_iso()).expect(status="RUNNING")
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

    def start_reduce(self, job_id: str, round_no: int) -> bool:
        """Round ``round_no`` trained: move the job to its reduce phase (once)."""
        update = _Update().set(phase="reduce").remove(f"close_claim_r{round_no}")
        return self._update(job_id, update.expect(status="RUNNING", round=round_no, phase="train"))

    def start_round(
        self, job_id: str, round_no: int, model_uri: str | None, *, after: str = "reduce"
    ) -> bool:
        """Round ``round_no - 1`` ended its ``after`` phase (a reduce, or a sweep rung's training):
        move the job to train round ``round_no`` from ``model_uri``."""
        update = _Update().set(round=round_no, phase="train", model_uri=model_uri, round_started_at=now_iso())
        update.remove(f"close_claim_r{round_no - 1}").expect(
            status="RUNNING", round=round_no - 1, phase=after
        )
        return self._update(job_id, update)

    def put_round_plan(self, job: JobRecord, round_no: int, plan: Sequence[tuple[int, str | None]]) -> None:
        """Store the trials (and each one's model) a closed rung promoted to ``round_no``, with their
        count on the job, in one transaction; idempotent (a closed rung always promotes the same)."""
        item = {
            "pk": _pk(job.job_id),
            "sk": {"S": f"PLAN#{round_no:04d}"},
            **_to_item({"plan": json.dumps([[shard, uri] for shard, uri in plan])}),
        }
        count = _Update().set(**{_counter("plan", round_no, "train"): len(plan)})
        count.expect(status="RUNNING", round=round_no - 1)
        try:
            self.ddb.transact_write_items(
                TransactItems=[
                    {"Put": {"TableName": self.table, "Item": item}},
                    {"Update": count.request(self.table, job.job_id)},
                ]
            )
        except self.ddb.exceptions.TransactionCanceledException as exc:
            raise JobChanged(f"job {job.job_id} moved on before round {round_no} was planned") from exc

    def round_plan(self, job_id: str, round_no: int) -> list[tuple[int, str | None]]:
        """The trials a closed rung promoted to ``round_no`` and their models (empty if none)."""
        resp = self.ddb.get_item(
            TableName=self.table,
            Key={"pk": _pk(job_id), "sk": {"S": f"PLAN#{round_no:04d}"}},
            ConsistentRead=True,
        )
        if "Item" not in resp:
            return []
        return [(int(shard), uri) for shard, uri in json.loads(_from_item(resp["Item"])["plan"])]

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

    def reopen(self, job: JobRecord) -> bool:
        """FAILED → RUNNING for a retry, clearing what ``finish`` set; False if it was not FAILED.

        A job that failed with its training round frozen (a big map round closed in ranges over
        its failure budget) has the round opened again: its late shards must run and count now,
        and the round closes anew (``forget_close`` drops the old ranges' digests first).
        """
        # A cancel asked for while the job was failing is undone by the retry asked for after it.
        update = _Update().set(status="RUNNING").remove(*_FINISH_ATTRIBUTES, "cancel_requested_at")
        update.expect(status="FAILED")
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

    def _delete(self, keys: list[dict[str, Any]]) -> None:
        for i in range(0, len(keys), 25):  # BatchWriteItem's limit
            request = {self.table: [{"DeleteRequest": {"Key": key}} for key in keys[i : i + 25]]}
            while request:
                request = self.ddb.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}

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

    def forget_failures(self, job: JobRecord, shards: Sequence[int], generation: int) -> None:
        """Delete failed outcomes of the job's current (round, phase) and un-count them, in one
        transaction (at most ``MAX_RETRY_CHUNK`` shards); the shards wait in a pending item of
        retry ``generation`` until ``retry_sent``.

        One pending item per chunk, not one set on the job record: a retry of 100,000 failed
        shards would overflow the record's 400 KB at ≈ 95,000 ids.

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
            item = {
                "pk": _pk(job.job_id),
                "sk": {"S": f"RETRY#g{generation:06d}#{min(shards):06d}"},
                "shards": {"NS": [str(s) for s in sorted(set(shards))]},
            }
            pending.append({"Put": {"TableName": self.table, "Item": item}})
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

    # -- results --------------------------------------------------------------------------------

    def record(self, outcomes: Iterable[Outcome], *, deadline: float | None = None) -> RecordOutcome:
        """Record outcomes exactly once and count them, one transaction per (job, round, type) chunk.

        A train outcome counts only while its round is open; outcomes of a round whose training
        closed (quorum, deadline) are recorded as late, uncounted.
        Duplicates (already recorded, or twice in this call) are returned, not raised.
        Raises JobNotFound for an unknown job and JobStoreError when a conflict outlasts the
        attempts or the ``deadline`` (seconds since the epoch) comes too close.
        """
        groups: dict[tuple[str, int, str], dict[str, Outcome]] = {}
        duplicates: list[Outcome] = []
        for o in outcomes:
            r = o.result
            seen = groups.setdefault((r.job_id, r.round, r.task_type), {})
            if r.key in seen:
                duplicates.append(o)
            else:
                seen[r.key] = o
        total = RecordOutcome(recorded=[], duplicates=duplicates)
        for (job_id, _, _), unique in groups.items():
            pending = list(unique.values())
            for i in range(0, len(pending), MAX_PUTS_PER_TRANSACTION):
                chunk = pending[i : i + MAX_PUTS_PER_TRANSACTION]
                recorded, dups, late = self._record_chunk(job_id, chunk, deadline)
                total.recorded.extend(recorded)
                total.duplicates.extend(dups)
                total.late.extend(late)
        return total

    def _counting_update(self, job_id: str, chunk: list[Outcome]) -> dict[str, Any]:
        """The counter increments of a chunk of one (round, type); training counts only while its
        round is open (``closed_round`` below it).

        Not "the job is at this round": the next round's tasks go on the queue *before* the job
        moves to it (action before transition), so their results may arrive first and count.
        """
        first = chunk[0].result
        update = _Update()
        if first.task_type == "train":
            closed = _ref(update, "closed_round")
            update.condition(
                f"(attribute_not_exists({closed}) OR {closed} < :open_round)", open_round=first.round
            )
        counts: dict[str, int] = {}
        for o in chunk:
            counts[o.phase_counter] = counts.get(o.phase_counter, 0) + 1
        failed = sum(1 for o in chunk if o.result.status == "failed" and o.result.task_type == "train")
        if failed:
            counts["failed_total"] = failed
        for name, value in counts.items():
            update.add(name, value)
        return update.request(self.table, job_id, stamp=False)

    def _record_chunk(
        self, job_id: str, chunk: list[Outcome], deadline: float | None
    ) -> tuple[list[Outcome], list[Outcome], list[Outcome]]:
        duplicates: list[Outcome] = []
        for attempt in range(MAX_RECORD_ATTEMPTS):
            if not chunk:
                return [], duplicates, []
            recorded_at = now_iso()
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
            try:
                self.ddb.transact_write_items(
                    TransactItems=[*puts, {"Update": self._counting_update(job_id, chunk)}]
                )
                return chunk, duplicates, []
            except self.ddb.exceptions.TransactionCanceledException as exc:
                dup_idx, late = self._cancelled(job_id, chunk, exc)
            if late:
                return [], duplicates, self._record_late(chunk)
            duplicates.extend(o for i, o in enumerate(chunk) if i in dup_idx)
            chunk = [o for i, o in enumerate(chunk) if i not in dup_idx]
            if not dup_idx:
                # A conflict (another writer on the same item): back off, within the deadline.
                pause = _pause(attempt)
                if deadline is not None and self.clock() + pause > deadline - DEADLINE_MARGIN_S:
                    break
                time.sleep(pause)
        raise JobStoreError(
            f"could not record {len(chunk)} results for job {job_id}: transactions kept conflicting"
        )

    def _cancelled(self, job_id: str, chunk: list[Outcome], exc: Exception) -> tuple[set[int], bool]:
        """Why a recording transaction was cancelled: ``(duplicate indexes, late)``.

        Duplicates first (they are dropped and the rest retried); with none, the job's own
        condition: a missing job raises JobNotFound, a closed round makes the chunk late;
        otherwise it was a conflict, to retry.
        """
        reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
        codes = [r.get("Code", "None") for r in reasons]
        if len(codes) == len(chunk) + 1:
            dup_idx = {i for i, c in enumerate(codes[:-1]) if c == "ConditionalCheckFailed"}
        else:
            # No per-item reasons (an endpoint that omits them): ask the table.
            dup_idx = self._existing(chunk)
        if dup_idx:
            return dup_idx, False
        state = self._job_state(job_id)
        if state is None:
            raise JobNotFound(job_id) from exc
        r = chunk[0].result
        closed = state.get("closed_round")
        late = r.task_type == "train" and closed is not None and closed >= r.round
        return set(), late

    def _job_state(self, job_id: str) -> dict[str, Any] | None:
        """The job's closed round, if any (None when there is no job)."""
        resp = self.ddb.get_item(
            TableName=self.table,
            Key=_job_key(job_id),
            ProjectionExpression="pk, closed_round",
            ConsistentRead=True,
        )
        return _from_item(resp["Item"]) if "Item" in resp else None

    def _record_late(self, chunk: list[Outcome]) -> list[Outcome]:
        """Keep outcomes of a closed round apart (``LATE#``), uncounted; idempotent."""
        recorded_at = now_iso()
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

    def _batch_get(
        self, keys: list[dict[str, Any]], projection: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The items of ``keys`` that exist (consistent reads, 100 keys a call).

        Keys DynamoDB leaves unprocessed (throttling, the 16 MB response cap) are asked for again
        after a growing pause with jitter, as DynamoDB advises; ``JobStoreError`` after
        ``MAX_RECORD_ATTEMPTS`` calls that all left some.
        """
        for i in range(0, len(keys), BATCH_GET_KEYS):
            spec: dict[str, Any] = {"Keys": keys[i : i + BATCH_GET_KEYS], "ConsistentRead": True}
            if projection:
                spec["ProjectionExpression"] = projection
            request: dict[str, Any] = {self.table: spec}
            for attempt in range(MAX_RECORD_ATTEMPTS):
                resp = self.ddb.batch_get_item(RequestItems=request)
                yield from resp.get("Responses", {}).get(self.table, [])
                request = resp.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(_pause(attempt))
            else:
                raise JobStoreError(
                    f"table {self.table}: {len(request[self.table]['Keys'])} keys still unprocessed after "
                    f"{MAX_RECORD_ATTEMPTS} BatchGetItem calls"
                )

    def iter_results(
        self,
        job_id: str,
        round_no: int | None = None,
        task_type: str | None = None,
        *,
        shards: tuple[int, int] | None = None,
        only_failed: bool = False,
    ) -> Iterator[ResultRecord]:
        """Recorded outcomes (of one round, and type) in key order, one query page in memory at a time.

        ``shards=(first, last)`` (with a round and a type) reads shards ``first``…``last`` alone:
        a key range, so a range of a million-shard round costs what it returns. ``only_failed``:
        the failed ones alone, filtered by DynamoDB (the others are read there, never sent).
        """
        prefix = "RES#"
        if round_no is not None:
            prefix += f"r{round_no:04d}#" + (f"{task_type}#" if task_type else "")
        between = None
        if shards is not None:
            if round_no is None or task_type is None:
                raise ValueError("iter_results: shards=(first, last) needs round_no and task_type")
            between = (f"{prefix}{shards[0]:06d}", f"{prefix}{shards[1]:06d}")
        for item in self._query(job_id, prefix, between=between, only_failed=only_failed):
            yield ResultRecord.from_item(item)

    def reduce_results(self, job_id: str, rounds: int) -> list[ResultRecord]:
        """The recorded reduce outcomes of rounds ``0 … rounds - 1``, in round order: one
        ``BatchGetItem`` per 100 rounds, whatever each round's shard count."""
        keys = [_result_key(job_id, r, "reduce", 0) for r in range(rounds)]
        found = {item["sk"]["S"]: item for item in self._batch_get(keys)}
        return [ResultRecord.from_item(found[k["sk"]["S"]]) for k in keys if k["sk"]["S"] in found]

    def results(self, job_id: str, round_no: int, task_type: str = "train") -> list[ResultRecord]:
        """Recorded outcomes of one round and task type, ordered by shard."""
        return list(self.iter_results(job_id, round_no, task_type))

    def all_results(self, job_id: str) -> list[ResultRecord]:
        """Every recorded outcome of a job, in (round, type, shard) order."""
        return list(self.iter_results(job_id))

    def failed_results(
        self, job_id: str, round_no: int | None = None, task_type: str | None = None
    ) -> list[ResultRecord]:
        """Recorded failed outcomes of a job (optionally of one round and task type), in key order."""
        return list(self.iter_results(job_id, round_no, task_type, only_failed=True))

    def first_failure(self, job_id: str, round_no: int, task_type: str) -> ResultRecord | None:
        """The lowest shard's failed outcome of (round, type): reads only as far as the first one."""
        prefix = f"RES#r{round_no:04d}#{task_type}#"
        item = next(self._query(job_id, prefix, only_failed=True), None)
        return None if item is None else ResultRecord.from_item(item)

    def _query(
        self,
        job_id: str,
        prefix: str,
        *,
        only_failed: bool = False,
        between: tuple[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": _pk(job_id), ":p": {"S": prefix}},
            "ConsistentRead": True,
        }
        if between is not None:
            kwargs["KeyConditionExpression"] = "pk = :pk AND sk BETWEEN :a AND :b"
            kwargs["ExpressionAttributeValues"] = {
                ":pk": _pk(job_id), ":a": {"S": between[0]}, ":b": {"S": between[1]}
            }  # fmt: skip
        if only_failed:
            kwargs["FilterExpression"] = "outcome = :failed"
            kwargs["ExpressionAttributeValues"][":failed"] = {"S": "failed"}
        while True:
            resp = self.ddb.query(**kwargs)
            after = resp.get("LastEvaluatedKey")
            items = resp.get("Items", [])
            del resp  # one page in memory, not two
            yield from items
            if after is None:
                return
            kwargs["ExclusiveStartKey"] = after

    def put_round_summary(self, job_id: str, round_no: int, summary: dict[str, Any]) -> None:
        """Store a finished round's summary (idempotent overwrite)."""
        item = {
            "pk": _pk(job_id),
            "sk": {"S": f"ROUND#{round_no:04d}"},
            **_to_item({"summary": json.dumps(summary)}),
        }
        self.ddb.put_item(TableName=self.table, Item=item)

    def late_results(self, job_id: str) -> list[ResultRecord]:
        """Outcomes that arrived after their round or phase closed, never counted."""
        return [ResultRecord.from_item(i) for i in self._query(job_id, "LATE#")]

    def add_to_round_summary(self, job_id: str, round_no: int, fields: dict[str, Any]) -> None:
        """Merge ``fields`` into a stored round summary (no-op when the round has none)."""
        key = {"pk": _pk(job_id), "sk": {"S": f"ROUND#{round_no:04d}"}}
        item = self.ddb.get_item(TableName=self.table, Key=key, ConsistentRead=True).get("Item")
        if item is None:
            return
        summary = {**json.loads(_from_item(item)["summary"]), **fields}
        self.put_round_summary(job_id, round_no, summary)

    def round_summaries(self, job_id: str) -> list[dict[str, Any]]:
        """All stored round summaries, in round order."""
        return [json.loads(_from_item(i)["summary"]) for i in self._query(job_id, "ROUND#")]


def _ref(update: _Update, attr: str) -> str:
    """The ``#name`` placeholder of ``attr`` in ``update`` (named once)."""
    for ref, name in update.names.items():
        if name == attr:
            return ref
    return update._name(attr)


__all__ = [
    "JobChanged",
    "JobNotFound",
    "JobRecord",
    "JobState",
    "JobStore",
    "JobStoreError",
    "Outcome",
    "RecordOutcome",
    "ResultRecord",
    "now_iso",
]
