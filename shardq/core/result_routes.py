"""Which results queue a result takes: the fast one for messages that close or move a round.

Every result crosses an SQS event source to reach the aggregator. The bulk results queue's source
takes batches of up to 100 and, because AWS requires a batching window of at least 1 s above 10
records, waits up to ``results_batch_window_seconds`` (5 s by default) to fill them: cheap for a
flood of map results, but a FedAvg round crosses it twice on its critical path (the round's last
train result, then the reduce's result), ≈ 10 s of waiting per round.

The fast results queue's source takes batches of at most 10 with no window, so a message reaches the
aggregator as soon as a poller sees it (p50 16 ms, p99 105 ms for SQS standard → Lambda). It costs
more per result when results come in floods (up to one invocation and one counter write per
result instead of one per 100), so only the messages that can close or move a round take it:

* every **reduce** result: one per round, and it always moves the job on;
* the **train** results of a round of at most ``FAST_ROUTE_MAX_TASKS`` tasks, where any result may be
  the one that closes it. ``shard_count`` bounds the round's task count from above (participation and
  successive halving's rungs only ever plan fewer), so the rule needs no field of its own and a
  task planned before it existed is routed the same way.

Everything else (the results of big rounds, deadline ticks) takes the bulk queue. A worker with no
fast queue (a stack deployed before it, ``--fast-results-queue-url off``) sends everything to the bulk
queue, which is only slower: the aggregator reads both queues the same way.

The rule is written once here: the worker routes by it, and the latency and cost model
(``shardq.core.latency``) counts by it.
"""

from __future__ import annotations

from typing import Literal, Protocol

Route = Literal["fast", "bulk"]

# A round of at most this many tasks sends its train results on the fast path: the bulk source's
# batch (100), so a round that would have fitted one bulk invocation costs at most ten fast ones.
# Past it a round's results arrive as a flood, where the bulk source's batches save invocations and
# counter writes, and only its last result waits out a window (the reduce's result still goes fast).
FAST_ROUTE_MAX_TASKS = 100
# The fast event source: at most 10 records per batch (the largest AWS allows with no window).
FAST_BATCH_SIZE = 10
FAST_BATCH_WINDOW_SECONDS = 0
# Disables the fast queue for a worker (``shardq worker --fast-results-queue-url off``).
OFF = "off"


class RoutedTask(Protocol):
    """What the rule reads of a task (``ShardTask`` has it)."""

    @property
    def task_type(self) -> str: ...

    @property
    def shard_count(self) -> int: ...


def route_of(task: RoutedTask) -> Route:
    """The queue this task's result takes: ``"fast"`` when it may close or move its round."""
    if task.task_type == "reduce":
        return "fast"
    return "fast" if task.shard_count <= FAST_ROUTE_MAX_TASKS else "bulk"


def results_queue_for(task: RoutedTask | None, bulk_url: str, fast_url: str | None) -> str:
    """The URL to send ``task``'s result to: the fast queue where the rule says so and there is one.

    ``task`` is ``None`` when the body could not be read (the failure then names no round to move).
    """
    if task is None or not fast_url or fast_url == OFF:
        return bulk_url
    return fast_url if route_of(task) == "fast" else bulk_url
