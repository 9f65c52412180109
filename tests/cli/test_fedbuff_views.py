"""A FedBuff job read back: ``status`` (human and ``--json``) and ``result --json`` show its versions,
the updates applied and late per version and their staleness, equal to its recorded updates."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

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
    assert "cached update calibration" not in out
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
