"""The examples' numerical claims, through the real queues, job table, bucket and worker runtime."""

from __future__ import annotations

import io
import itertools
import json
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from examples import linear
from shardq.core.contracts import TERMINAL_STATUSES, ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from shardq.worker.runtime import Worker
from tests.checkpoint_ctx import FakeContext
from tests.helpers import TRUSTED, receive_all

ROOT = Path(__file__).resolve().parents[2]


def run_job(
    engine: Engine, settings: Settings, clients: dict[str, Any], request: dict[str, Any]
) -> dict[str, Any]:
    """Submit, then alternate real workers and aggregation until the job ends; return the manifest."""
    job_id = engine.submit(request)["job_id"]
    workers = [
        Worker(
            allow=TRUSTED,
            sqs=clients["sqs"],
            s3=clients["s3"],
            task_queue_url=settings.task_queue_url,
            results_queue_url=settings.results_queue_url,
            wait_s=1,
        )
        for _ in range(2)
    ]
    for _ in range(50):
        threads = [threading.Thread(target=w.poll_once) for w in workers for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        posted = receive_all(clients["sqs"], settings.results_queue_url)
        engine.ingest([Outcome(ShardResult.from_json(m["Body"])) for m in posted])
        job = engine.store.get_job(job_id)
        if job.status in TERMINAL_STATUSES:
            bucket, key = split_s3(job.result_uri)
            return dict(json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read()))
    raise AssertionError("job did not finish")


def test_fedavg_approaches_the_centralized_least_squares_solution(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    request = json.loads((ROOT / "examples/requests/data_parallel.json").read_text())
    manifest = run_job(engine, settings, clients, request)
    assert manifest["status"] == "SUCCEEDED"
    val = [r["metrics"]["val_loss"]["mean"] for r in manifest["rounds"]]
    assert len(val) == request["rounds"]
    # validation loss falls to the noise floor and stays there
    assert val[-1] < val[0] / 10
    assert all(b <= a * 1.01 for a, b in itertools.pairwise(val)), val
    bucket, key = split_s3(manifest["final_model_uri"])
    with np.load(io.BytesIO(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())) as m:
        learned = np.append(m["w"], float(m["b"]))
    w_ls, b_ls = linear.least_squares(request["dataset"]["uri"], request["dataset"]["num_samples"])
    exact = np.append(w_ls, b_ls)
    relative = float(np.linalg.norm(learned - exact) / np.linalg.norm(exact))
    assert relative < 0.01, relative


def test_sweep_best_trial_is_the_true_argmin(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    request = json.loads((ROOT / "examples/requests/sweep.json").read_text())
    manifest = run_job(engine, settings, clients, request)
    assert manifest["status"] == "SUCCEEDED"
    assert len(manifest["leaderboard"]) == 9
    # train every configuration directly, outside shardq, and take the argmin of val_loss
    direct = {}
    for lr in request["search_space"]["lr"]:
        for l2 in request["search_space"]["l2"]:
            hp = {**request["hyperparameters"], "lr": lr, "l2": l2}
            task = SimpleNamespace(
                data={"uri": request["dataset"]["uri"], "start": 0, "end": request["dataset"]["num_samples"]},
                hyperparameters=hp,
                round=0,
                shard_id=0,
            )
            trial_index = next(
                row["trial"]
                for row in manifest["leaderboard"]
                if row["hyperparameters"] == {"lr": lr, "l2": l2}
            )
            task.shard_id = trial_index
            with tempfile.TemporaryDirectory() as tmp:
                direct[(lr, l2)] = linear.train(task, FakeContext(Path(tmp)))["metrics"]["val_loss"]
    best = min(direct, key=direct.get)  # type: ignore[arg-type]
    assert manifest["best"]["hyperparameters"] == {"lr": best[0], "l2": best[1]}
    assert manifest["best"]["objective"] == direct[best]
