"""The global model's metrics reach ``watch`` and ``status`` while a job runs, round after round.

The report: a data_parallel job of 4 rounds over 12 shards, 75 % participation and an 80 % quorum,
whose built-in reduce scored each global model (an ``evaluate_global`` hook), showed only the
shards' means in ``watch`` and ``status`` as it ran. The records were right (the manifest has every
round's global model); the readers looked at the wrong round: a round whose training closed has
its summary before its reduce reports, and ``watch`` took that round as already headlined, while
``status`` showed the latest summary's (empty) global model. The job is driven step by step with
real workers on the local cloud, and read after every step as a person polling it would.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import pytest

from shardq.cli.status import render_status, status_data
from shardq.cli.watch import Watch
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord
from shardq.core.planning import split_s3
from tests.finished import run_job

pytestmark = pytest.mark.local_cloud

DATA = "synthetic://linear?dim=8&noise=0.05&seed=7"
ROUNDS = 4
REQUEST: dict[str, Any] = {
    "job_id": "sampled-quorum-evaluated",
    "kind": "data_parallel",
    "dataset": {"uri": DATA, "num_samples": 2400},
    "sharding": {"shard_count": 12},
    "rounds": ROUNDS,
    "hyperparameters": {"lr": 0.05, "epochs": 1, "batch_size": 64},
    "evaluation": {"uri": DATA},
    "participation": {"fraction": 0.75},
    "quorum": {"fraction": 0.8, "deadline_seconds": 600},
    # The built-in FedAvg reduce, then the module's evaluate_global hook (no reduce of its own).
    "entrypoint": "tests.dashboard.evaluated:train",
}


def test_sampled_quorum_job_shows_each_rounds_global_model_in_watch_and_status(engine: Engine) -> None:
    # GIVEN two watches in line mode (a pipe, a CI log): one polls after every step; the other's
    # polls land in reduce phases only (fast training, a slow reduce, a 2 s interval), where a
    # round's summary already exists and its global model does not yet
    watches = {
        "every step": Watch(engine=engine, job_id=REQUEST["job_id"], out=io.StringIO(), interval=0),
        "reduce phases": Watch(engine=engine, job_id=REQUEST["job_id"], out=io.StringIO(), interval=0),
    }
    statuses: list[tuple[JobRecord, str]] = []

    def poll(job: JobRecord) -> None:
        watches["every step"].observe(job)
        if job.phase == "reduce" or job.terminal:
            watches["reduce phases"].observe(job)
        summaries = engine.store.round_summaries(job.job_id)
        statuses.append((job, render_status(status_data(job), io.StringIO(), summaries=summaries)))

    # WHEN the job runs to its end with real workers
    job = run_job(engine, REQUEST, each=poll)
    assert job.status == "SUCCEEDED", job.error
    bucket, key = split_s3(job.result_uri or "")
    manifest = json.loads(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    models = [r["reduce"]["metrics"]["val_loss"] for r in manifest["rounds"]]
    assert len(models) == ROUNDS
    # ... and the quorum did close rounds early: some round ran fewer shards than it sampled
    assert any(r["shards_succeeded"] < 9 for r in manifest["rounds"]), manifest["rounds"]

    # THEN each watch headlined every round's global model once, in order, with the manifest's value
    for name, watcher in watches.items():
        text = watcher.out.getvalue()
        headlines = [ln.split(" · ")[0] for ln in text.splitlines() if " global model: " in ln]
        assert headlines == [
            f"round {k + 1}/{ROUNDS} global model: val_loss {v:.6g}" for k, v in enumerate(models)
        ], (name, text)
        # ... and the live view's reduce rows have every round's value
        assert watcher.global_text == {k: f"val_loss {v:.6g}" for k, v in enumerate(models)}, name
    # ... and status, from the first reduce on, always names the latest global model, even while
    # the next round's reduce runs (its shards' means already summarized)
    reduced = [(j, text) for j, text in statuses if j.round > 0 or j.terminal]
    assert any(j.phase == "reduce" and j.round > 0 for j, _ in reduced), "no poll saw a reduce phase"
    for j, text in reduced:
        found = re.search(r"^global model:\s+round (\d+): val_loss (\S+)$", text, re.M)
        assert found, text
        latest = j.round + (1 if j.terminal else 0)
        assert found.groups() == (str(latest), f"{models[latest - 1]:.6g}"), text
