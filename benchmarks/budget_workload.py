"""The budget benchmark's training function: sleep ``seconds``, log when it started and ended.

Each attempt appends one JSON line ``{"shard", "start", "end"}`` (seconds since the epoch) to
``$SHARDQ_BUDGET_LOG`` (O_APPEND: concurrent worker processes never interleave a line), so the
benchmark can tell which tasks were running when the job's budget was spent.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

LOG_ENV = "SHARDQ_BUDGET_LOG"


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Sleep ``hyperparameters.seconds`` (default 1), then report one sample."""
    start = time.time()
    time.sleep(float(task.hyperparameters.get("seconds", 1.0)))
    end = time.time()
    path = os.environ.get(LOG_ENV)
    if path:
        line = json.dumps({"shard": task.shard_id, "start": start, "end": end}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    return {"metrics": {"seconds": end - start}, "num_samples": 1}
