"""The job table's keys, counter names and item (de)serialisation: the store family's vocabulary."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

# TransactWriteItems takes up to 100 actions: 99 result puts (or deletes) + the job's update.
MAX_PUTS_PER_TRANSACTION = 99
# Failed outcomes a retry forgets per transaction: their deletes, the chunk's pending item, its
# retry mark (``store.retried``) and the job's counters fill DynamoDB's 100 items.
MAX_RETRY_CHUNK = MAX_PUTS_PER_TRANSACTION - 2
# Attempts of one recording transaction that was cancelled for a conflict (no deadline given); a
# batch call that leaves keys or items unprocessed has ``MAX_BATCH_ATTEMPTS``.
MAX_RECORD_ATTEMPTS = 8
# Stop retrying this long before the caller's deadline, so its answer still goes out.
DEADLINE_MARGIN_S = 2.0
# BatchGetItem takes up to 100 keys, BatchWriteItem 25 puts or deletes.
BATCH_GET_KEYS = 100
BATCH_WRITE_ITEMS = 25
_ser = TypeSerializer()
_de = TypeDeserializer()
# Counters per (round, phase): ok, fail, enq (the enqueue cursor), and plan (tasks a
# successive-halving rung planned, when a closed rung decided them); usd (the counted outcomes'
# cost in micro-USD) and drop (tasks workers dropped unrun once the budget was spent), both
# ``shardq.core.spend``'s.
# upd/ulate/ufail/utau: a FedBuff job's updates (and the applied ones' staleness) per version
# (``shardq.core.store.fedbuff``); usent: its next tasks sent after an update (``mark_sent``).
_COUNTER_RE = re.compile(
    r"^(ok|fail|div|enq|plan|part|usd|drop|upd|ulate|ufail|utau|usent)_r(\d+)_(train|reduce)$"
)
# Set on a RUNNING job about to end (``JobStore.freeze_ending``): no outcome counts from then on.
ENDING_ATTRIBUTE = "ending"
# What ``finish`` (and ``freeze_ending`` before it) sets and ``reopen`` removes.
_FINISH_ATTRIBUTES = (
    "finished_at",
    "result_uri",
    "error",
    "event_pending",
    "event_claim",
    "expires_at",
    ENDING_ATTRIBUTE,
)


def now_iso() -> str:
    """The wall clock's time as a stamp, for stamps that are only shown (``updated_at``, the spend
    log's). A stamp the engine compares with a ``clock()`` reading, or with another such stamp, is
    the store's clock's instead (``StoreBase.stamp``): the engine's time is that one source."""
    return _iso(time.time())


def _iso(seconds: float) -> str:
    """UTC timestamp with milliseconds, sortable as a string, of seconds since the epoch."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pk(job_id: str) -> dict[str, Any]:
    return {"S": f"JOB#{job_id}"}


def job_key(job_id: str) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": "JOB"}}


def _result_key(job_id: str, round_no: int, task_type: str, shard_id: int) -> dict[str, Any]:
    return {"pk": _pk(job_id), "sk": {"S": f"RES#r{round_no:04d}#{task_type}#{shard_id:06d}"}}


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
