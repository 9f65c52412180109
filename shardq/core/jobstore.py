"""The job store: one DynamoDB table holds each job's record, its results and round summaries.

Items (partition ``pk = JOB#<job_id>``):

========================  ===========================================================
``sk``                    what
========================  ===========================================================
``JOB``                   the job record: status, request, current round and phase,
                          per-(round, phase) counters ``ok_*``/``fail_*``, the enqueue
                          cursor ``enq_*``, result URI; GSI ``by_status`` lists jobs
``RES#r0003#train#000042`` one recorded outcome of a task (written once, conditionally)
``ROUND#0003``            a finished round's metrics summary
========================  ===========================================================

A result item and the counter increment that counts it are written in one
transaction, so a record and its count never part; a duplicate fails its
``attribute_not_exists`` condition and is dropped.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from shardq.core.contracts import ShardResult

# TransactWriteItems takes up to 100 actions: 99 result puts + the job's counter update.
MAX_PUTS_PER_TRANSACTION = 99
_ser = TypeSerializer()
_de = TypeDeserializer()


class JobNotFound(LookupError):
    """No job record under that id."""


class JobStoreError(RuntimeError):
    """A write could not complete after its retries."""


def now_iso() -> str:
    """UTC timestamp with milliseconds, sortable as a string."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_key(job_id: str) -> dict[str, Any]:
    """Primary key of a job record."""
    return {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}}


def result_sk(round_no: int, task_type: str, shard_id: int) -> str:
    """Sort key of a result item; sorts by round, type, shard."""
    return f"RES#r{round_no:04d}#{task_type}#{shard_id:06d}"


def counter(kind: str, round_no: int, phase: str) -> str:
    """Name of a per-(round, phase) counter attribute: ``ok``, ``fail`` or ``enq``."""
    return f"{kind}_r{round_no}_{phase}"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | set):
        return [_plain(v) for v in value]
    return value


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    """Python values → DynamoDB attribute values (floats go through Decimal)."""
    out = {}
    for k, v in data.items():
        if v is None:
            continue
        out[k] = _ser.serialize(Decimal(repr(v)) if isinstance(v, float) else v)
    return out


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values → plain Python values (ints stay ints)."""
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}


@dataclass(frozen=True)
class Outcome:
    """One outcome to record: the result plus, for a dead task, its body and receive count."""

    result: ShardResult
    source: str = "worker"
    task_body: str | None = None
    receive_count: int | None = None

    @property
    def phase_counter(self) -> str:
        """The counter this outcome increments."""
        kind = "ok" if self.result.status == "succeeded" else "fail"
        return counter(kind, self.result.round, self.result.task_type)

    def item(self, recorded_at: str) -> dict[str, Any]:
        """The result item."""
        r = self.result
        return to_item(
            {
                "pk": f"JOB#{r.job_id}",
                "sk": result_sk(r.round, r.task_type, r.shard_id),
                "outcome": r.status,
                "result": r.to_json(),
                "source": self.source,
                "task": self.task_body,
                "receive_count": self.receive_count,
                "recorded_at": recorded_at,
            }
        )


@dataclass
class RecordOutcome:
    """Which outcomes were newly recorded, and which were duplicates of recorded ones."""

    recorded: list[Outcome]
    duplicates: list[Outcome]
    transactions: int = 0


class JobStore:
    """Typed access to the job table.

    Parameters
    ----------
    table:
        Table name.
    client:
        A boto3 DynamoDB client.
    """

    def __init__(self, table: str, client: Any, *, max_attempts: int = 8) -> None:
        self.table = table
        self.ddb = client
        self.max_attempts = max_attempts

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the job record unless one exists; returns ``(record, created)``."""
        item = to_item({"pk": f"JOB#{record['job_id']}", "sk": "JOB", **record})
        try:
            self.ddb.put_item(TableName=self.table, Item=item, ConditionExpression="attribute_not_exists(pk)")
            return record, True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return self.get_job(record["job_id"]), False

    def get_job(self, job_id: str, *, consistent: bool = True) -> dict[str, Any]:
        """The job record as plain values; raises JobNotFound."""
        resp = self.ddb.get_item(TableName=self.table, Key=job_key(job_id), ConsistentRead=consistent)
        if "Item" not in resp:
            raise JobNotFound(job_id)
        return from_item(resp["Item"])

    def status_of(self, job_id: str) -> str | None:
        """The job's status alone (an eventually consistent, one-attribute read); None if unknown."""
        item = self.ddb.get_item(
            TableName=self.table,
            Key=job_key(job_id),
            ProjectionExpression="#s",
            ExpressionAttributeNames={"#s": "status"},
        ).get("Item")
        return None if item is None else str(item["status"]["S"])

    def update_job(
        self,
        job_id: str,
        *,
        set_values: dict[str, Any] | None = None,
        remove: Sequence[str] = (),
        expect: dict[str, Any] | None = None,
        expect_absent: Sequence[str] = (),
    ) -> bool:
        """Conditionally update the job record; False when ``expect`` did not hold.

        ``expect`` maps attribute → required current value; the job must exist.
        """
        names: dict[str, str] = {}
        values: dict[str, Any] = {}
        sets = []
        for i, (k, v) in enumerate({**(set_values or {}), "updated_at": now_iso()}.items()):
            if v is None:
                remove = (*remove, k)
                continue
            names[f"#s{i}"] = k
            values[f":s{i}"] = v
            sets.append(f"#s{i} = :s{i}")
        conds = ["attribute_exists(pk)"]
        for i, (k, v) in enumerate((expect or {}).items()):
            names[f"#c{i}"] = k
            values[f":c{i}"] = v
            conds.append(f"#c{i} = :c{i}")
        for i, k in enumerate(expect_absent):
            names[f"#a{i}"] = k
            conds.append(f"attribute_not_exists(#a{i})")
        removes = []
        for i, k in enumerate(remove):
            names[f"#r{i}"] = k
            removes.append(f"#r{i}")
        expr = "SET " + ", ".join(sets)
        if removes:
            expr += " REMOVE " + ", ".join(removes)
        try:
            self.ddb.update_item(
                TableName=self.table,
                Key=job_key(job_id),
                UpdateExpression=expr,
                ConditionExpression=" AND ".join(conds),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=to_item(values),
            )
            return True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False

    def advance_cursor(self, job_id: str, name: str, value: int) -> None:
        """Move an enqueue cursor forward (never back: a stale writer cannot rewind it)."""
        with contextlib.suppress(self.ddb.exceptions.ConditionalCheckFailedException):
            self.ddb.update_item(
                TableName=self.table,
                Key=job_key(job_id),
                UpdateExpression="SET #c = :v, updated_at = :t",
                ConditionExpression="attribute_exists(pk) AND (attribute_not_exists(#c) OR #c < :v)",
                ExpressionAttributeNames={"#c": name},
                ExpressionAttributeValues=to_item({":v": value, ":t": now_iso()}),
            )

    def list_jobs(self, status: str, limit: int = 20) -> list[dict[str, Any]]:
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
        return [from_item(i) for i in resp.get("Items", [])]

    # -- results ------------------------------------------------------------------------------

    def record(self, outcomes: Iterable[Outcome]) -> RecordOutcome:
        """Record outcomes exactly once and count them, one transaction per job and chunk.

        Duplicates (already recorded, or twice in this call) are returned, not raised.
        Raises JobNotFound for an unknown job and JobStoreError when retries run out.
        """
        by_job: dict[str, dict[str, Outcome]] = {}
        duplicates: list[Outcome] = []
        for o in outcomes:
            seen = by_job.setdefault(o.result.job_id, {})
            if o.result.key in seen:
                duplicates.append(o)
            else:
                seen[o.result.key] = o
        total = RecordOutcome(recorded=[], duplicates=duplicates)
        for job_id, unique in by_job.items():
            pending = list(unique.values())
            for i in range(0, len(pending), MAX_PUTS_PER_TRANSACTION):
                chunk = pending[i : i + MAX_PUTS_PER_TRANSACTION]
                recorded, dups, calls = self._record_chunk(job_id, chunk)
                total.recorded.extend(recorded)
                total.duplicates.extend(dups)
                total.transactions += calls
        return total

    def _record_chunk(self, job_id: str, chunk: list[Outcome]) -> tuple[list[Outcome], list[Outcome], int]:
        duplicates: list[Outcome] = []
        calls = 0
        for attempt in range(self.max_attempts):
            if not chunk:
                return [], duplicates, calls
            recorded_at = now_iso()
            counts: dict[str, int] = {}
            for o in chunk:
                counts[o.phase_counter] = counts.get(o.phase_counter, 0) + 1
            failed = sum(1 for o in chunk if o.result.status == "failed" and o.result.task_type == "train")
            if failed:
                counts["failed_total"] = failed
            names = {f"#k{i}": k for i, k in enumerate(counts)}
            values = {f":v{i}": v for i, v in enumerate(counts.values())}
            update = {
                "Update": {
                    "TableName": self.table,
                    "Key": job_key(job_id),
                    "UpdateExpression": "ADD " + ", ".join(f"#k{i} :v{i}" for i in range(len(counts))),
                    "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": to_item(values),
                }
            }
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
                calls += 1
                self.ddb.transact_write_items(TransactItems=[*puts, update])
                return chunk, duplicates, calls
            except self.ddb.exceptions.TransactionCanceledException as exc:
                reasons = exc.response.get("CancellationReasons") or []
                codes = [r.get("Code", "None") for r in reasons]
                if len(codes) == len(chunk) + 1 and codes[-1] == "ConditionalCheckFailed":
                    raise JobNotFound(job_id) from exc
                if len(codes) == len(chunk) + 1 and "ConditionalCheckFailed" in codes[:-1]:
                    dup_idx = {i for i, c in enumerate(codes[:-1]) if c == "ConditionalCheckFailed"}
                else:
                    # No per-item reasons (conflict, throttling, or an endpoint that omits them):
                    # ask the table which ones exist.
                    dup_idx = self._existing(chunk)
                    if not dup_idx and not self._job_exists(job_id):
                        raise JobNotFound(job_id) from exc
                duplicates.extend(o for i, o in enumerate(chunk) if i in dup_idx)
                chunk = [o for i, o in enumerate(chunk) if i not in dup_idx]
                if not dup_idx:
                    time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
            except (
                self.ddb.exceptions.ProvisionedThroughputExceededException,
                self.ddb.exceptions.ThrottlingException,
                self.ddb.exceptions.RequestLimitExceeded,
                self.ddb.exceptions.TransactionConflictException,
                self.ddb.exceptions.InternalServerError,
            ):
                time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
        raise JobStoreError(
            f"could not record {len(chunk)} results for job {job_id} after {self.max_attempts} tries"
        )

    def _job_exists(self, job_id: str) -> bool:
        resp = self.ddb.get_item(TableName=self.table, Key=job_key(job_id), ProjectionExpression="pk")
        return "Item" in resp

    def _existing(self, chunk: list[Outcome]) -> set[int]:
        keys = [
            {
                "pk": {"S": f"JOB#{o.result.job_id}"},
                "sk": {"S": result_sk(o.result.round, o.result.task_type, o.result.shard_id)},
            }
            for o in chunk
        ]
        found: set[tuple[str, str]] = set()
        request: dict[str, Any] = {self.table: {"Keys": keys, "ProjectionExpression": "pk, sk"}}
        while request:
            resp = self.ddb.batch_get_item(RequestItems=request)
            for item in resp.get("Responses", {}).get(self.table, []):
                found.add((item["pk"]["S"], item["sk"]["S"]))
            request = resp.get("UnprocessedKeys") or {}
        return {i for i, k in enumerate(keys) if (k["pk"]["S"], k["sk"]["S"]) in found}

    def results(self, job_id: str, round_no: int, task_type: str = "train") -> list[dict[str, Any]]:
        """Recorded outcomes of one round and task type, ordered by shard."""
        return list(self._query(job_id, f"RES#r{round_no:04d}#{task_type}#"))

    def all_results(self, job_id: str) -> list[dict[str, Any]]:
        """Every recorded outcome of a job."""
        return list(self._query(job_id, "RES#"))

    def _query(self, job_id: str, prefix: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": {"S": f"JOB#{job_id}"}, ":p": {"S": prefix}},
            "ConsistentRead": True,
        }
        while True:
            resp = self.ddb.query(**kwargs)
            for item in resp.get("Items", []):
                row = from_item(item)
                row["result"] = json.loads(row["result"])
                yield row
            if "LastEvaluatedKey" not in resp:
                return
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def put_round_summary(self, job_id: str, round_no: int, summary: dict[str, Any]) -> None:
        """Store a finished round's summary (idempotent overwrite)."""
        self.ddb.put_item(
            TableName=self.table,
            Item=to_item(
                {"pk": f"JOB#{job_id}", "sk": f"ROUND#{round_no:04d}", "summary": json.dumps(summary)}
            ),
        )

    def round_summaries(self, job_id: str) -> list[dict[str, Any]]:
        """All stored round summaries, in round order."""
        resp = self.ddb.query(
            TableName=self.table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
            ExpressionAttributeValues={":pk": {"S": f"JOB#{job_id}"}, ":p": {"S": "ROUND#"}},
            ConsistentRead=True,
        )
        return [json.loads(from_item(i)["summary"]) for i in resp.get("Items", [])]
