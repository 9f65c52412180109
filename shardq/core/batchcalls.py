"""DynamoDB batch calls that leave work undone: ask again after a pause, give up after a cap.

``BatchGetItem`` and ``BatchWriteItem`` succeed as calls while leaving some keys or items
unprocessed (throttling, the response size cap). botocore's retry mode cannot see that, so the
caller retries, and DynamoDB asks for a growing, jittered pause between tries. One loop serves
both calls (``JobStore`` hands it the call; the table's schema stays in the store).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

# Calls of one batch (the first and its retries) before its unprocessed part is an error.
MAX_BATCH_ATTEMPTS = 8


class JobStoreError(RuntimeError):
    """A write could not complete within its attempts or its deadline."""


def pause(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` of a call DynamoDB refused in part (a
    conflict, keys left unprocessed): growing, with full jitter, at most 2 s."""
    return random.uniform(0, min(2.0, 0.05 * 2**attempt))


def until_processed(
    call: Callable[..., dict[str, Any]],
    request: dict[str, Any],
    *,
    leftover: str,
    action: str,
    describe: Callable[[dict[str, Any]], str],
) -> Iterator[dict[str, Any]]:
    """Run ``call(RequestItems=request)`` until DynamoDB leaves nothing in ``leftover``, yielding
    each response; each retry carries only what was left, after ``pause``.

    ``action`` (the API action's name) and ``describe`` (what a leftover request holds, e.g.
    "table T: 3 keys") word the ``JobStoreError`` raised when ``MAX_BATCH_ATTEMPTS`` calls all
    left some: never a tight loop, never a silent gap.
    """
    for attempt in range(MAX_BATCH_ATTEMPTS):
        resp = call(RequestItems=request)
        yield resp
        request = resp.get(leftover) or {}
        if not request:
            return
        if attempt + 1 < MAX_BATCH_ATTEMPTS:
            time.sleep(pause(attempt))
    raise JobStoreError(
        f"{describe(request)} still unprocessed after {MAX_BATCH_ATTEMPTS} {action} calls; DynamoDB "
        "held them back (throttling): run the operation again in a minute"
    )


__all__ = ["MAX_BATCH_ATTEMPTS", "JobStoreError", "pause", "until_processed"]
