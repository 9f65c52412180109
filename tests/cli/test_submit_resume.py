"""shardq submit is all or nothing as the user sees it: the id comes first, a fan-out that dies
midway shows as ENQUEUING, and submitting the same request under that id finishes it (local cloud)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from shardq.cli import common
from shardq.core.contracts import ShardTask
from shardq.core.engine import Engine
from tests.cli.conftest import Shardq
from tests.helpers import FlakySQS, receive_all
from tests.requests import make_request


def test_submit_fanout_dies_midway_resubmit_with_the_printed_id_finishes(
    shardq: Shardq, write_request: Any, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a 700-task map request without a job id, and an SQS client that dies after 55
    # SendMessageBatch calls (550 tasks; the cursor checkpointed 500)
    path = write_request(make_request("map", job_id=None, shards=700, num_samples=7000))
    real = common.session_client

    def dying(service: str, args: Any) -> Any:
        client = real(service, args)
        return FlakySQS(client, die_after=55) if service == "sqs" else client

    monkeypatch.setattr(common, "session_client", dying)
    # WHEN it is submitted
    run = shardq("submit", path, "--direct")
    # THEN the id the CLI chose came out first, and the error says how to finish the job under it
    assert run.code == 4, run.err
    job_id = run.out.strip()
    assert job_id.startswith("job-") and "\n" not in job_id
    assert f"shardq submit {path} --job-id {job_id} --direct" in run.err
    assert "nothing is sent twice" in run.err and "Traceback" not in run.err, run.err
    # AND status shows the job still enqueuing, not RUNNING with tasks missing
    data = shardq("status", job_id, "--json").json()
    assert (data["status"], data["enqueuing"]) == ("RUNNING", "ENQUEUING 500/700 sent")
    assert "ENQUEUING 500/700 sent" in shardq("status", job_id).out
    # WHEN the same request is submitted again under that id, with a working client
    monkeypatch.setattr(common, "session_client", real)
    again = shardq("submit", path, "--direct", "--job-id", job_id)
    # THEN it is the same job, every task on the queue exactly once, and no longer enqueuing
    assert again.code == 0, again.err
    assert again.out.strip() == job_id and "already submitted" in again.err
    tasks = [ShardTask.from_json(m["Body"]) for m in receive_all(engine.sqs, engine.settings.task_queue_url)]
    assert Counter(t.shard_id for t in tasks) == Counter(range(700))
    assert shardq("status", job_id, "--json").json()["enqueuing"] is None
