"""``watch`` / ``submit --wait``: one line per failed task; its traceback with ``--traceback``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from tests.cli.conftest import Shardq
from tests.helpers import receive_all, result_for

MAP = {
    "kind": "map",
    "dataset": {"uri": "s3://data/set", "num_samples": 40},
    "sharding": {"shard_count": 4},
    "max_failed_shards": 1,
}
TRACEBACK = 'ValueError: bad batch\nTraceback (most recent call last):\n  File "train.py", line 3, in train\n'


def fail_two(engine: Engine) -> None:
    """Shards 1 and 2 fail with a worker's error (first line, then the traceback); the rest succeed."""
    tasks = [ShardTask.from_json(m["Body"]) for m in receive_all(engine.sqs, engine.settings.task_queue_url)]
    outcomes = []
    for task in tasks:
        if task.shard_id in (1, 2):
            outcomes.append(Outcome(replace(result_for(task, status="failed"), error=TRACEBACK)))
        else:
            outcomes.append(Outcome(result_for(task)))
    engine.ingest(outcomes)


def test_failures_are_one_line_each_and_tracebacks_on_request(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a job whose two failed shards carry a worker's traceback
    run = shardq("submit", write_request(MAP), "--direct", "--job-id", "cli-tb")
    assert run.code == 0, run.err
    fail_two(engine)
    # WHEN it is watched without --traceback
    plain = shardq("watch", "cli-tb", "--interval", "0.05", "--timeout", "60")
    # THEN each failure is one line, and one hint says how to see the tracebacks
    assert plain.code == 1
    failed = [ln for ln in plain.out.splitlines() if "failed: round" in ln]
    assert len(failed) == 2 and all(ln.endswith("ValueError: bad batch [worker, attempt 1]") for ln in failed)
    assert "Traceback" not in plain.out
    assert plain.out.count("add --traceback") == 1
    # WHEN it is watched with --traceback THEN the tracebacks are there
    full = shardq("watch", "cli-tb", "--interval", "0.05", "--timeout", "60", "--traceback")
    assert full.out.count("Traceback (most recent call last):") == 2
    assert "add --traceback" not in full.out
