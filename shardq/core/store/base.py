"""What every part of the job store shares: the table, its client, conditional updates and the batch
and query calls with their retries of what DynamoDB left unprocessed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from shardq.core.batchcalls import until_processed
from shardq.core.store.keys import (
    BATCH_GET_KEYS,
    BATCH_WRITE_ITEMS,
    _iso,
    _pk,
)
from shardq.core.store.update import _Update


class StoreBase:
    """The table and client of a job store, and the calls its parts share (see ``JobStore``)."""

    def __init__(self, table: str, client: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.table = table
        self.ddb = client
        # The engine's one clock (seconds since the epoch): its deadlines and its stamps (``stamp``).
        self.clock = clock

    def stamp(self) -> str:
        """The store's clock now, as a ``now_iso`` stamp: every stamp the engine later compares with
        a ``clock()`` reading or with another such stamp (``recorded_at``, ``decided_at``,
        ``created_at``, ``round_started_at``, ``cancel_requested_at``), so that an incremental read's
        "since", a prefetch's round trip and a round's deadline all read one time, which a test
        drives by giving the engine its clock."""
        return _iso(self.clock())

    def _update(self, job_id: str, update: _Update, *, stamp: bool = True) -> bool:
        """Apply a conditional update; False when its condition did not hold."""
        try:
            self.ddb.update_item(**update.request(self.table, job_id, stamp=stamp))
            return True
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return False

    def _update_returning(self, job_id: str, update: _Update) -> dict[str, Any] | None:
        """Apply a conditional update and return the job item as the update left it (DynamoDB's
        ``ALL_NEW`` image: what a consistent read right after the write returns, without a second
        call); None when its condition did not hold."""
        try:
            answer = self.ddb.update_item(**update.request(self.table, job_id), ReturnValues="ALL_NEW")
        except self.ddb.exceptions.ConditionalCheckFailedException:
            return None
        return dict(answer["Attributes"])

    # -- jobs: reads ----------------------------------------------------------------------------

    def _delete(self, keys: list[dict[str, Any]]) -> None:
        self._batch_write([{"DeleteRequest": {"Key": key}} for key in keys])

    def _batch_write(self, writes: list[dict[str, Any]]) -> None:
        """Apply puts and deletes, 25 a ``BatchWriteItem`` call (its limit); what DynamoDB leaves
        unprocessed is sent again after a growing, jittered pause, and ``JobStoreError`` names
        what is left after ``MAX_BATCH_ATTEMPTS`` calls."""
        for i in range(0, len(writes), BATCH_WRITE_ITEMS):
            for _ in until_processed(
                self.ddb.batch_write_item,
                {self.table: writes[i : i + BATCH_WRITE_ITEMS]},
                leftover="UnprocessedItems",
                action="BatchWriteItem",
                describe=lambda left: f"table {self.table}: {len(left[self.table])} writes",
            ):
                pass

    def _batch_get(
        self, keys: list[dict[str, Any]], projection: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The items of ``keys`` that exist (consistent reads, 100 keys a call).

        Keys DynamoDB leaves unprocessed (throttling, the 16 MB response cap) are asked for again
        after a growing pause with jitter, as DynamoDB advises; ``JobStoreError`` after
        ``MAX_BATCH_ATTEMPTS`` calls that all left some (``batchcalls.until_processed``).
        """
        for i in range(0, len(keys), BATCH_GET_KEYS):
            spec: dict[str, Any] = {"Keys": keys[i : i + BATCH_GET_KEYS], "ConsistentRead": True}
            if projection:
                spec["ProjectionExpression"] = projection
            responses = until_processed(
                self.ddb.batch_get_item,
                {self.table: spec},
                leftover="UnprocessedKeys",
                action="BatchGetItem",
                describe=lambda left: f"table {self.table}: {len(left[self.table]['Keys'])} keys",
            )
            for resp in responses:
                yield from resp.get("Responses", {}).get(self.table, [])

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
