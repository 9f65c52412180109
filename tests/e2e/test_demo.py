"""The README's main command, end to end: handlers in the local cloud, real workers, real training."""

from __future__ import annotations

from shardq import demo


def test_main_job_trains_and_verifies(capsys) -> None:
    # GIVEN the local cloud with the CDK stack deployed into it and 4 worker processes
    # WHEN the demo submits the 16-shard, 5-round FedAvg request through the splitter Lambda
    code = demo.main(["--workers", "4", "--timeout", "180"])
    out = capsys.readouterr().out
    # THEN the job succeeds, loss falls and the model matches the least-squares solution
    assert code == 0, out
    assert "linreg-fedavg-001: SUCCEEDED" in out
    assert "verified:" in out
