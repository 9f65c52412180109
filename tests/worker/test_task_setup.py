"""A task's context on the local cloud when it has both an init model and a checkpoint: the two
reads run side by side (``shardq.worker.task_setup.both``), and the function gets both, or the
attempt fails as before when either read fails."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from shardq.core.contracts import ShardTask
from shardq.core.settings import Settings
from shardq.worker.checkpoints import TaskCheckpoints
from shardq.worker.runtime import Worker
from shardq.worker.task_setup import both
from tests.helpers import TRUSTED, receive_all

SEEN: list[dict[str, Any]] = []


def probe(task: Any, ctx: Any) -> dict[str, Any]:
    """Note what the context holds: the init model's bytes and the restored checkpoint's."""
    SEEN.append(
        {
            "init": ctx.init_model_path.read_text() if ctx.init_model_path else None,
            "resume": (ctx.resume_path / "state.json").read_text() if ctx.resume_path else None,
            "resume_step": ctx.resume_step,
        }
    )
    (ctx.output_dir / "model.json").write_text("{}")
    return {"metrics": {"loss": 1.0}}


def promoted_task(settings: Settings, model_key: str) -> ShardTask:
    """A rung-1 task of a sweep, continuing from ``model_key`` in the artifact bucket."""
    bucket = settings.artifact_bucket
    return ShardTask(
        job_id="setup", round=1, shard_id=3, shard_count=9, task_type="train", kind="sweep",
        data={"start": 0, "end": 10}, hyperparameters={}, entrypoint=f"{__name__}:probe",
        output_prefix=f"s3://{bucket}/jobs/setup/r1/s3/", init_model_uri=f"s3://{bucket}/{model_key}",
    )  # fmt: skip


def worker(settings: Settings, clients: dict[str, Any], **kw: Any) -> Worker:
    return Worker(
        allow=TRUSTED,
        sqs=clients["sqs"],
        s3=clients["s3"],
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        wait_s=1,
        **kw,
    )


def send(settings: Settings, clients: dict[str, Any], task: ShardTask) -> None:
    clients["sqs"].send_message(
        QueueUrl=settings.task_queue_url, MessageBody=task.to_json(), MessageGroupId="g",
        MessageDeduplicationId=task.key,
    )  # fmt: skip


def test_a_promoted_task_gets_its_init_model_and_its_checkpoint(
    settings: Settings, clients: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a promoted trial's task whose earlier attempt saved a checkpoint at step 2
    s3, bucket = clients["s3"], settings.artifact_bucket
    s3.put_object(Bucket=bucket, Key="jobs/setup/r0/s3/model.json", Body=b'{"from": "rung 0"}')
    task = promoted_task(settings, "jobs/setup/r0/s3/model.json")
    state = tmp_path / "ckpt"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"step": 2}))
    assert TaskCheckpoints(s3, bucket, task, attempt=1).save(2, state, tmp_path / "scratch")
    send(settings, clients, task)
    SEEN.clear()
    # WHEN a worker runs it
    assert worker(settings, clients).poll_once() is True
    # THEN the function saw both the init model and the restored checkpoint
    assert SEEN == [{"init": '{"from": "rung 0"}', "resume": '{"step": 2}', "resume_step": 2}]
    (result,) = [json.loads(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)]
    assert (result["status"], result["resume_step"]) == ("succeeded", 2)


def test_a_missing_init_model_fails_the_attempt_as_before(
    settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a promoted task whose init model does not exist, on its last receive
    send(settings, clients, promoted_task(settings, "jobs/setup/r0/s3/missing.json"))
    SEEN.clear()
    # WHEN a worker runs it
    assert worker(settings, clients, max_receive_count=1).poll_once() is True
    # THEN the function never ran and the task failed with the download's error
    assert SEEN == []
    (result,) = [json.loads(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)]
    assert result["status"] == "failed" and "NoSuchKey" in result["error"] and "_download" in result["error"]


def test_both_returns_both_results_and_raises_only_once_both_ended() -> None:
    assert both(lambda: 1, lambda: "two") == (1, "two")
    ended = threading.Event()

    def slow_failure() -> None:
        ended.wait(0.2)
        ended.set()
        raise KeyError("there")

    # GIVEN the other side failing later: its error is raised, once it ended
    with pytest.raises(KeyError, match="there"):
        both(lambda: None, slow_failure)
    assert ended.is_set()

    # AND with both failing, this side's error comes first, still after the other ended
    def here() -> None:
        raise ValueError("here")

    ended.clear()
    with pytest.raises(ValueError, match="here") as raised:
        both(here, slow_failure)
    assert ended.is_set()
    # AND the other's error is not lost: it is noted on the one raised
    assert any("KeyError('there')" in note for note in raised.value.__notes__)
