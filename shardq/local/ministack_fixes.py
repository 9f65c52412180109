"""Run ministack with its two waits brought to AWS's behaviour (``python -m shardq.local.ministack_fixes``).

``shardq.local.cloud`` starts the local cloud through this module instead of ``python -m ministack``.
Both fixes change how soon something happens, never what happens:

* **Long polls.** ministack answers a waiting ``ReceiveMessage`` by re-checking the queue every
  100 ms, so each task pickup waited 50 ms on average (a FedAvg round has two: the reduce, then the
  next round's tasks). SQS answers a long poll as soon as a message is available. Here the re-check
  runs every ``LONG_POLL_RECHECK_S``.
* **Event source wake-up.** After a wake-up that found no work (a send to a queue no mapping reads,
  such as the task queue), ministack's poller sleeps 50 ms before it listens again, so a result sent
  in that gap waited for it. Here the gap is ``ESM_IDLE_GAP_S``.

Measured in ``benchmarks.round_floor`` (BENCHMARKS.md, "A round at the floor"). Both are attributes of
ministack 1.5.33's modules (``services.sqs``'s ``asyncio.sleep`` in ``receive_message``,
``services.lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS``); if an upgrade drops them, ``patch`` raises
rather than silently running the slower emulator (``tests/e2e/test_local_fixes.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

LONG_POLL_RECHECK_S = 0.02
ESM_IDLE_GAP_S = 0.005


class _QuickerSleep:
    """``asyncio`` as ministack's SQS module sees it, with sleeps capped at the re-check interval."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        return await asyncio.sleep(min(delay, LONG_POLL_RECHECK_S), result)


def patch() -> None:
    """Apply both fixes to the imported ministack modules; raises if they are not where expected."""
    from ministack.services import lambda_svc, sqs

    if getattr(sqs, "asyncio", None) is not asyncio or not hasattr(lambda_svc, "_ESM_IDLE_WAKE_GAP_SECONDS"):
        raise RuntimeError(
            "shardq.local.ministack_fixes: this ministack release has no services.sqs.asyncio or "
            "services.lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS; pin ministack 1.5.33 (requirements-dev.txt) "
            "or update the fixes"
        )
    sqs.asyncio = _QuickerSleep()
    lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS = ESM_IDLE_GAP_S


def main() -> None:
    """Patch, then run ministack's own entry point (as ``python -m ministack`` does)."""
    patch()
    from ministack.app import main as ministack_main

    ministack_main()


if __name__ == "__main__":
    main()
