"""Two independent calls of an aggregator step at once: one call's latency instead of two.

A round's critical path runs through the aggregator's steps, each a run of DynamoDB, S3 and SQS
calls (``benchmarks/round_calls.py`` counts them). Where two of them neither read what the other
writes nor must be ordered against each other (a round's summary and the reduce's inputs and task;
the reduce's metrics joining the summary and the next round's tasks), they run side by side: the
step waits for both, so what comes after them (the transition that records them) still happens
only once both are done, and the first error is raised as if they had run in turn.

boto3 clients are thread-safe (sessions are not; the clients are made once, before); the second
call runs in a short-lived thread, as the fan-out's sends do (``shardq.core.fanout``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def both(first: Callable[[], T], second: Callable[[], object]) -> T:
    """Run ``first`` here and ``second`` in a thread; wait for both; ``first``'s value.

    An error in either is raised after both ended (``first``'s when both failed), so neither is
    left running behind its caller's back.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="side-by-side") as pool:
        beside = pool.submit(second)
        try:
            value = first()
        finally:
            error = beside.exception()  # waits for it
        if error is not None:
            raise error
        return value
