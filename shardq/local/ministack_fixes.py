"""Run ministack with its two waits brought to AWS's behaviour (``python -m shardq.local.ministack_fixes``).

``shardq.local.cloud`` starts the local cloud through this module instead of ``python -m ministack``.
Both fixes change how soon something happens, never what happens:

* **Long polls.** ministack answers a waiting ``ReceiveMessage`` by re-checking the queue every
  100 ms, so each task pickup waited 50 ms on average (a FedAvg round has two: the reduce, then the
  next round's tasks). SQS answers a long poll as soon as a message is available. Here a waiting
  receive still re-checks every 100 ms (messages whose visibility or delay runs out announce
  nothing), and is also woken at once by every send or visibility change: no extra polling, so an
  idle worker costs the emulator no more CPU than before.
* **Event source wake-up.** After a wake-up that found no work (a send to a queue no mapping reads,
  such as the task queue), ministack's poller sleeps 50 ms before it listens again, so a result sent
  in that gap waited for it. Here the gap is ``ESM_IDLE_GAP_S``.

Measured in ``benchmarks.round_floor`` (BENCHMARKS.md, "A round at the floor"). Both hook ministack
1.5.33's modules (``services.sqs``'s ``asyncio.sleep`` in ``receive_message`` and its ``_dispatch``,
``services.lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS``); if an upgrade drops them, ``patch`` raises
rather than silently running the slower emulator (``tests/unit/test_ministack_fixes.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

ESM_IDLE_GAP_S = 0.005
# SQS actions after which a waiting receive may find a message.
_WAKING_ACTIONS = frozenset(
    {"SendMessage", "SendMessageBatch", "ChangeMessageVisibility", "ChangeMessageVisibilityBatch"}
)
_waiters: set[asyncio.Future[None]] = set()


def _wake_waiters() -> None:
    for fut in list(_waiters):
        fut.get_loop().call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _WakeableSleep:
    """``asyncio`` as ministack's SQS module sees it: its ``sleep`` also ends when a message may
    have arrived (``_wake_waiters``), and everything else is ``asyncio`` itself."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        _waiters.add(fut)
        try:
            await asyncio.wait_for(fut, delay)
        except TimeoutError:
            pass
        finally:
            _waiters.discard(fut)
        return result


def _waking(dispatch: Any) -> Any:
    """ministack's SQS ``_dispatch`` (every API action passes it), waking receives after a send."""

    async def dispatch_and_wake(action: str, data: dict[str, Any], qurl: str) -> Any:
        try:
            return await dispatch(action, data, qurl)
        finally:
            if action in _WAKING_ACTIONS:
                _wake_waiters()

    return dispatch_and_wake


def patch() -> None:
    """Apply both fixes to the imported ministack modules; raises if they are not where expected."""
    from ministack.services import lambda_svc, sqs

    if (
        getattr(sqs, "asyncio", None) is not asyncio
        or not asyncio.iscoroutinefunction(getattr(sqs, "_dispatch", None))
        or not hasattr(lambda_svc, "_ESM_IDLE_WAKE_GAP_SECONDS")
    ):
        raise RuntimeError(
            "shardq.local.ministack_fixes: this ministack release has no services.sqs.asyncio, "
            "services.sqs._dispatch or services.lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS; pin ministack "
            "1.5.33 (requirements-dev.txt) or update the fixes"
        )
    sqs.asyncio = _WakeableSleep()
    sqs._dispatch = _waking(sqs._dispatch)
    lambda_svc._ESM_IDLE_WAKE_GAP_SECONDS = ESM_IDLE_GAP_S


def main() -> None:
    """Patch, then run ministack's own entry point (as ``python -m ministack`` does)."""
    patch()
    from ministack.app import main as ministack_main

    ministack_main()


if __name__ == "__main__":
    main()
