"""SCRATCH (helper B2, deleted before the report)."""
from __future__ import annotations
import io, json
from typing import Any
import numpy as np
from shardq.core.engine import Engine
from tests.cli.conftest import Shardq
from tests.finished import run_job


def _init(engine: Engine) -> str:
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(8), b=np.array(0.0))
    engine.s3.put_object(Bucket=engine.settings.artifact_bucket, Key="init/model.npz", Body=buf.getvalue())
    return f"s3://{engine.settings.artifact_bucket}/init/model.npz"


def test_scratch(engine: Engine, shardq: Shardq, outputs: Any, clients: Any) -> None:
    request: dict[str, Any] = {
        "job_id": "fb-views",
        "kind": "data_parallel",
        "dataset": {"uri": "synthetic://linear?dim=8&seed=5", "num_samples": 600},
        "sharding": {"shard_count": 3},
        "rounds": 3,
        "max_parallel": 3,
        "hyperparameters": {"lr": 0.05, "epochs": 1, "batch_size": 64},
        "model": {"init_uri": _init(engine)},
        "entrypoint": "examples.linear:train",
        "strategy": {"name": "fedbuff", "buffer_size": 2, "max_staleness": 3},
    }
    job = run_job(engine, request, price_per_hour=3600.0)
    out = []
    for argv in (["status", "fb-views"], ["status", "fb-views", "--json"], ["list"], ["list", "--json"],
                 ["watch", "fb-views"], ["result", "fb-views"], ["result", "fb-views", "--json"]):
        r = shardq(*argv)
        out.append(f"=== {argv} rc={r.code}\n{r.out}\n{r.err}")
    try:
        from shardq.dashboard.data import DashboardData
        data = DashboardData.from_outputs(outputs, lambda name: clients[name])
        out.append("=== dashboard\n" + json.dumps(data.job("fb-views"), indent=1, default=str)[:6000])
    except Exception as exc:  # noqa
        out.append(f"dashboard: {exc!r}")
    open("/tmp/b2/views.txt", "w").write("\n".join(out))
