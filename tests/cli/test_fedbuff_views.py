"""A FedBuff job read back: ``status`` (human and ``--json``) and ``result --json`` show its versions,
the updates applied and late per version and their staleness, equal to its recorded updates."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from shardq.core.engine import Engine
from shardq.core.store.fedbuff import FedBuffStore
from tests.cli.conftest import Shardq
from tests.finished import run_job


def _init(engine: Engine) -> str:
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(8), b=np.array(0.0))
    engine.s3.put_object(Bucket=engine.settings.artifact_bucket, Key="init/model.npz", Body=buf.getvalue())
    return f"s3://{engine.settings.artifact_bucket}/init/model.npz"


def fedbuff_request(engine: Engine, job_id: str, **strategy: Any) -> dict[str, Any]:
    """A FedBuff job of 3 clients, K = 2, 3 versions (``strategy``: more of its fields)."""
    return {
        "job_id": job_id,
        "kind": "data_parallel",
        "dataset": {"uri": "synthetic://linear?dim=8&seed=5", "num_samples": 600},
        "sharding": {"shard_count": 3},
        "rounds": 3,
        "max_parallel": 3,
        "hyperparameters": {"lr": 0.05, "epochs": 1, "batch_size": 64},
        "model": {"init_uri": _init(engine)},
        "entrypoint": "examples.linear:train",
        "strategy": {"name": "fedbuff", "buffer_size": 2, "max_staleness": 3, **strategy},
    }


def test_status_and_result_show_versions_and_staleness(engine: Engine, shardq: Shardq) -> None:
    # GIVEN a FedBuff job run to its end by two real workers (3 clients, K = 2, 3 versions)
    request = fedbuff_request(engine, "fb-views")
    job = run_job(engine, request)
    assert job.status == "SUCCEEDED", job.error
    recorded = FedBuffStore(engine.store).all_updates("fb-views")
    applied = [u for u in recorded if u.state == "applied"]
    # WHEN read with status --json
    data = shardq("status", "fb-views", "--json").json()["fedbuff"]
    # THEN its numbers are the recorded updates'
    assert data["versions_made"] == 3 and data["versions"] == 3 and data["buffer_size"] == 2
    assert data["calibration"] == "none"  # FedBuff as the paper (no CA2FL calibration)
    assert data["cache_weight"] is None
    assert (data["server_lr_schedule"], data["server_lr_floor"]) == ("constant", None)  # the default
    assert (data["model_average"], data["ema_decay"]) == ("none", None)  # returns its last version
    assert data["updates_applied"] == len(applied) == 6
    assert data["updates_late"] == sum(u.state == "late" for u in recorded)
    assert [v["applied"] for v in data["per_version"]] == [2, 2, 2]
    for v in data["per_version"]:
        mine = [u.tau for u in applied if u.version == v["version"]]
        assert v["mean_staleness"] == sum(mine) / len(mine)
        assert sum(v["staleness_histogram"].values()) == len(mine)
    # ... and the human view says the same
    human = shardq("status", "fb-views")
    out = human.out
    assert human.code == 0, human.err
    assert f"FedBuff: 3/3 versions made; buffer 0/2; updates {len(applied)} applied" in out
    assert "VERSION  APPLIED  LATE  MEAN τ" in out
    assert "cached update calibration" not in out and "server lr" not in out and "moving average" not in out
    # result --json (the manifest) carries each version's accounting in its rounds
    manifest = shardq("result", "fb-views", "--json").json()
    assert [r["fedbuff"]["applied"] for r in manifest["rounds"]] == [2, 2, 2]


def test_a_calibrated_job_says_so_in_status_and_result(engine: Engine, shardq: Shardq) -> None:
    # GIVEN a FedBuff job with CA2FL's cached calibration, run to its end by two real workers
    request = fedbuff_request(engine, "fb-cached", calibration="cached")
    job = run_job(engine, request)
    assert job.status == "SUCCEEDED", job.error
    # THEN status --json, the human status and the manifest name the calibration
    data = shardq("status", "fb-cached", "--json").json()["fedbuff"]
    assert (data["calibration"], data["cache_weight"]) == ("cached", "staleness")  # the default weight
    human = shardq("status", "fb-cached")
    assert human.code == 0, human.err
    assert "failed; cached update calibration (CA2FL, cached mean weighted by s(τ))" in human.out
    manifest = shardq("result", "fb-cached", "--json").json()
    assert (manifest["fedbuff"]["calibration"], manifest["fedbuff"]["cache_weight"]) == (
        "cached",
        "staleness",
    )


def test_a_scheduled_server_lr_shows_in_status_and_result(engine: Engine, shardq: Shardq) -> None:
    # GIVEN a FedBuff job whose server step size decays by cosine from 1 to 0.2 over its 3 versions
    request = fedbuff_request(engine, "fb-cos", server_lr_schedule="cosine", server_lr_floor=0.2)
    job = run_job(engine, request)
    assert job.status == "SUCCEEDED", job.error
    # THEN status --json names the schedule and each version's step size: 0.2 + 0.8 (1 + cos πr) / 2
    data = shardq("status", "fb-cos", "--json").json()["fedbuff"]
    assert (data["server_lr"], data["server_lr_schedule"], data["server_lr_floor"]) == (1.0, "cosine", 0.2)
    assert [v["server_lr"] for v in data["per_version"]] == pytest.approx([1.0, 0.6, 0.2])
    human = shardq("status", "fb-cos")
    assert human.code == 0, human.err
    assert "; server lr 1 → 0.2 (cosine over 3 versions)" in human.out
    manifest = shardq("result", "fb-cos", "--json").json()["fedbuff"]
    assert (manifest["server_lr_schedule"], manifest["server_lr_floor"]) == ("cosine", 0.2)
    assert [v["server_lr"] for v in manifest["per_version"]] == pytest.approx([1.0, 0.6, 0.2])


@pytest.mark.parametrize(
    ("average", "shown", "said"),
    [
        ({"model_average": "ema", "ema_decay": 0.5}, (0.5, None), "the versions' moving average (decay 0.5)"),
        (
            {"model_average": "polynomial", "average_eta": 2.0},
            (None, 2.0),
            "the versions' polynomial-decay average (η 2: mean age 1/4 of them)",
        ),
    ],
)
def test_an_averaged_job_says_which_model_it_returns(
    engine: Engine, shardq: Shardq, average: dict[str, Any], shown: tuple[Any, Any], said: str
) -> None:
    # GIVEN a FedBuff job that returns an average of its versions (EMA at decay 0.5, or polynomial)
    job_id = f"fb-{average['model_average']}"
    job = run_job(engine, fedbuff_request(engine, job_id, **average))
    assert job.status == "SUCCEEDED", job.error
    # THEN status --json and the human status name the average and its parameter
    data = shardq("status", job_id, "--json").json()["fedbuff"]
    assert (data["model_average"], data["ema_decay"], data["average_eta"]) == (
        average["model_average"],
        *shown,
    )
    human = shardq("status", job_id)
    assert human.code == 0, human.err
    assert f"the job's model: {said}" in human.out
    # ... and the manifest returns the average, naming the last version's own model beside it
    manifest = shardq("result", job_id, "--json").json()
    last = manifest["fedbuff"]["last_version_model_uri"]
    assert last.endswith("/model.npz") and "/average/" not in last
    assert manifest["fedbuff"]["model_average"] == average["model_average"]
    assert manifest["final_model_uri"] == last.rsplit("/", 1)[0] + "/average/model.npz"
