"""``shardq status`` names the current round's tasks that took several attempts and where each resumed
(issue #24 item 7), human and ``--json``, from real workers' results on the local cloud."""

from __future__ import annotations

import threading
import time
from typing import Any

from shardq.cli.status import ATTEMPTS_SHOWN, attempts_text
from shardq.core.engine import Engine
from shardq.core.settings import Settings
from tests.cli.conftest import Shardq
from tests.finished import aggregate
from tests.worker.test_checkpoints_worker import in_process_worker, pointer_step

COUNTING = "tests.worker.ckpt_workloads:counting"


def test_status_shows_a_resumed_task_its_attempts_and_its_step(
    engine: Engine, settings: Settings, clients: dict[str, Any], shardq: Shardq
) -> None:
    # GIVEN a two-shard job: one shard stopped after its 2nd checkpoint and finished elsewhere
    engine.submit(
        {
            "job_id": "tries",
            "kind": "map",
            "dataset": {"num_samples": 20},
            "sharding": {"shard_count": 2},
            "max_parallel": 2,
            "entrypoint": COUNTING,
            "hyperparameters": {"steps": 8, "pause": 0.1},
        }
    )
    first = in_process_worker(settings, clients, worker_id="first")
    stopped: list[int] = []

    def stop_at_step_2() -> None:  # whichever shard it received (two lanes: either may come first)
        while not stopped:
            for shard in (0, 1):
                if (pointer_step(clients["s3"], settings.artifact_bucket, "tries", shard=shard) or 0) >= 2:
                    stopped.append(shard)
            time.sleep(0.05)
        first.stop_signal.request("test")

    stopper = threading.Thread(target=stop_at_step_2)
    stopper.start()
    assert first.poll_once() is True
    stopper.join()
    (resumed,) = stopped
    saved = pointer_step(clients["s3"], settings.artifact_bucket, "tries", shard=resumed)
    assert saved is not None
    second = in_process_worker(settings, clients, worker_id="second")
    assert second.poll_once() is True and second.poll_once() is True
    assert aggregate(engine) == 2
    # WHEN status reads the job
    human = shardq("status", "tries")
    data = shardq("status", "tries", "--json").json()
    # THEN it names the resumed shard alone, its attempts and the step it resumed at
    assert human.code == 0 and data["status"] == "SUCCEEDED"
    assert f"attempts: round 1: shard {resumed}: 2 attempts, resumed at step {saved}" in human.out
    assert f"shard {1 - resumed}" not in human.out
    (task,) = data["attempts"]["tasks"]
    assert (task["shard_id"], task["attempts"], task["resume_step"]) == (resumed, 2, saved)
    assert [a["worker_id"] for a in task["earlier"]] == ["first"]
    assert data["attempts"]["complete"] is True


def test_status_without_repeated_attempts_prints_no_attempts_line() -> None:
    assert attempts_text({"round": 0, "tasks": [], "scanned": 5, "complete": True}) is None


def test_many_resumed_tasks_are_named_up_to_a_limit_and_counted_beyond() -> None:
    tasks = [
        {"shard_id": i, "task_type": "train", "attempts": 2, "resume_step": None, "earlier": []}
        for i in range(ATTEMPTS_SHOWN + 3)
    ]
    text = attempts_text({"round": 2, "tasks": tasks, "scanned": 2000, "complete": False})
    assert text is not None
    assert text.startswith("round 3 (of the first 2000 results): shard 0: 2 attempts, started over;")
    assert text.endswith("; and 3 more (--json)")
