"""SQS partial batch processing with one flush per batch, through Powertools' public API only.

Why one flush: the job's counters live on one hot item (shared/DESIGN.md: "batch the
increments per Lambda batch"), so a batch's outcomes are recorded together, one DynamoDB
transaction per job, instead of one write per record.

How, in three steps:

1. **Stage.** Every record is parsed into an ``Outcome``; a record that does not parse is
   remembered as failed. On a FIFO source the records that the FIFO processor will not hand
   to a record handler after that failure (every later record, or with
   ``skip_group_on_error`` every later record of the same message group) are neither parsed
   nor recorded, exactly as record-by-record processing would leave them.
2. **Flush.** The staged outcomes are recorded at once; the flush answers which outcomes
   failed (a whole job's, or a foreign result alone), remembered by message id.
3. **Report.** ``process_partial_response`` runs the source's Powertools processor with a
   record handler that raises the remembered error for each failed record (and for any record
   that was never staged), so Powertools alone decides the ``batchItemFailures`` response,
   FIFO stop-at-first-failure included.

Why a flush failure on a FIFO source is safe. The flush runs before the processor, so when
one record's job fails there, the FIFO processor also reports every later record (or every
later record of its group) as failed, including records the flush did record. They come
back, and the redelivery records nothing twice: every outcome is a conditional put of its
(job, round, shard, type) item in the same transaction as its counter increment, so an
outcome already recorded is a duplicate, not a count; advancing a job is idempotent too.
Order holds where FIFO promises it: SQS deletes only the records reported as successes, and
those are the records before the first failure (per group with ``skip_group_on_error``),
so no record is acknowledged ahead of an earlier record of its group. What may run ahead
is only the *recording* of a later record whose earlier group-mate's job failed in the
flush; a message group is one job's lane (``job:lane``), so group-mates share their job and
fail together, except a foreign result, which is rejected alone. Recording order carries no
meaning in the job store (one item per outcome, commutative counters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from lambdas.deferred import import_powertools_batch

# First, so that what Powertools' batch utility imports but its synchronous processors never run
# (asyncio, and every event class of the data-classes package) is deferred: lambdas/deferred.py.
import_powertools_batch()

from aws_lambda_powertools.utilities.batch import (  # noqa: E402
    BatchProcessor,
    EventType,
    SqsFifoPartialProcessor,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord  # noqa: E402

from lambdas.common import logger  # noqa: E402

# A staged item is an ``Outcome`` (or, on the results queue, a round deadline's ``Tick``): the
# batch adapter never looks inside it, it only hands the flush what the parser made.
Parse = Callable[[SQSRecord], Any]
Flush = Callable[[list[Any]], list[tuple[Any, Exception]]]


class NotProcessed(Exception):
    """A record held back because an earlier record of its FIFO batch (or group) failed."""


class SqsSource(NamedTuple):
    """The kind of SQS queue behind an event source mapping, and its processor.

    A named tuple rather than a frozen dataclass: as immutable, and defined ≈ 0.5 ms faster at
    import (a dataclass compiles six generated methods; BENCHMARKS.md, section 1).

    Parameters
    ----------
    fifo
        A FIFO queue: stop at the first failed record (Powertools ``SqsFifoPartialProcessor``).
    skip_group_on_error
        With ``fifo``: stop only the failed record's message group, not the whole batch.
    """

    fifo: bool = False
    skip_group_on_error: bool = False

    def processor(self) -> BatchProcessor:
        """A fresh Powertools processor for one batch."""
        if self.fifo:
            return SqsFifoPartialProcessor(skip_group_on_error=self.skip_group_on_error)
        return BatchProcessor(event_type=EventType.SQS)


STANDARD_QUEUE = SqsSource()


def process_batch(event: dict[str, Any], *, parse: Parse, flush: Flush, source: SqsSource) -> dict[str, Any]:
    """Parse every record, record the outcomes in one flush, and answer the partial batch response.

    Parameters
    ----------
    event
        The Lambda SQS event.
    parse
        A record → its ``Outcome``; raises for a malformed record.
    flush
        Records the outcomes; returns those that failed, each with its error.
    source
        The queue kind (standard or FIFO, and FIFO's group skipping).

    Returns
    -------
    dict
        ``{"batchItemFailures": [{"itemIdentifier": message_id}, ...]}``. Raises Powertools'
        ``BatchProcessingError`` when every record failed, so the whole batch is retried.
    """
    raw = event.get("Records") if isinstance(event, dict) else None
    staged, failed = stage(raw if isinstance(raw, list) else [], parse, source)
    if staged:
        message_of = {id(outcome): message_id for message_id, outcome in staged}
        for outcome, exc in flush([outcome for _, outcome in staged]):
            failed[message_of[id(outcome)]] = exc
    recorded = {message_id for message_id, _ in staged} - failed.keys()
    if failed:
        logger.warning(
            "records failed",
            extra={"failed": {m: f"{type(e).__name__}: {e}"[:300] for m, e in failed.items()}},
        )

    def record_handler(record: SQSRecord) -> None:
        error = failed.get(record.message_id)
        if error is not None:
            raise error
        if record.message_id not in recorded:
            # Powertools short-circuits these itself; raising keeps them failed whatever it does.
            raise NotProcessed(f"record {record.message_id} held back: an earlier record failed")

    return dict(
        process_partial_response(event=event, record_handler=record_handler, processor=source.processor())
    )


def stage(
    records: list[dict[str, Any]], parse: Parse, source: SqsSource
) -> tuple[list[tuple[str, Any]], dict[str, Exception]]:
    """Parse records in order: (message id, outcome) staged, and message id → error for the failed.

    On a FIFO source, records after a parse failure (in its group, with ``skip_group_on_error``)
    are left out of both: the FIFO processor reports them failed without handling them.
    """
    staged: list[tuple[str, Any]] = []
    failed: dict[str, Exception] = {}
    stop_batch = False
    stopped_groups: set[str] = set()
    for raw in records:
        record = SQSRecord(raw)
        group = raw.get("attributes", {}).get("MessageGroupId")  # read as the FIFO processor reads it
        if source.fifo and (stop_batch or group in stopped_groups):
            continue
        try:
            staged.append((record.message_id, parse(record)))
        except Exception as exc:  # any parse error fails its record alone, as a record handler's would
            failed[record.message_id] = exc
            if source.fifo and not source.skip_group_on_error:
                stop_batch = True
            elif source.fifo and group:
                stopped_groups.add(group)
    return staged, failed
