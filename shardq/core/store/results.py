"""Reading recorded outcomes and round summaries back (``JobStore.iter_results`` and the rest)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from shardq.core.store.base import StoreBase
from shardq.core.store.keys import (
    _from_item,
    _pk,
    _result_key,
    _to_item,
)
from shardq.core.store.records import (
    ResultRecord,
)


class ResultReads(StoreBase):
    """Recorded outcomes, late results and round summaries, read back in key order."""

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

    def put_round_summary(self, job_id: str, round_no: int, summary: dict[str, Any]) -> None:
        """Store a finished round's summary (idempotent overwrite)."""
        item = {
            "pk": _pk(job_id),
            "sk": {"S": f"ROUND#{round_no:04d}"},
            **_to_item({"summary": json.dumps(summary)}),
        }
        self.ddb.put_item(TableName=self.table, Item=item)

    def late_results(self, job_id: str) -> list[ResultRecord]:
        """Outcomes that arrived after their round or phase closed or their job ended, never counted."""
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
