"""Training functions for ``benchmarks.rounds``: the example problem, with a straggler on demand.

``straggling_train`` is ``examples.linear.train`` after a sleep of ``hyperparameters.delay_s``
seconds, ``slow_factor`` times longer on the shard named by ``hyperparameters.straggler``: one
worker that is 10× slower than the others, as a slow or throttled GPU box is. The sleep holds
no CPU, so the figures measure coordination, not this shared machine's two cores.
"""

from __future__ import annotations

import time
from typing import Any

from examples import linear


def delay_of(hyperparameters: dict[str, Any], shard_id: int) -> float:
    """Seconds shard ``shard_id`` sleeps before it trains."""
    delay = float(hyperparameters.get("delay_s", 0.0))
    if shard_id == int(hyperparameters.get("straggler", -1)):
        delay *= float(hyperparameters.get("slow_factor", 10.0))
    return delay


def straggling_train(task: Any, ctx: Any) -> dict[str, Any]:
    """Sleep this shard's delay, then train as ``examples.linear.train`` does."""
    time.sleep(delay_of(task.hyperparameters, task.shard_id))
    return linear.train(task, ctx)
