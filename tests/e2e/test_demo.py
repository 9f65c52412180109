"""The README's main command, end to end: handlers in the local cloud, real workers, real training."""

from __future__ import annotations

from shardq import demo
from shardq.local.functions import ROOT, asset_files


def test_main_job_trains_and_verifies(capsys) -> None:
    # GIVEN the local cloud, the Lambdas behind their event sources and 4 workers
    # WHEN the demo submits the 8-shard, 5-round FedAvg request
    code = demo.main(["--workers", "4", "--timeout", "180"])
    out = capsys.readouterr().out
    # THEN the job succeeds, loss falls and the model recovers the generating weights
    assert code == 0, out
    assert "linreg-fedavg-001: SUCCEEDED" in out
    assert "verified:" in out


def test_lambda_asset_holds_only_handlers_and_core() -> None:
    rel = {p.relative_to(ROOT).as_posix() for p in asset_files()}
    assert "lambdas/aggregator.py" in rel
    assert "shardq/core/engine.py" in rel
    assert all(r.startswith(("lambdas/", "shardq/core/")) or r == "shardq/__init__.py" for r in rel)
