"""The CLI's engine is built from every setting the stack outputs, as the Lambdas' is from their env."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.jobstore import JobNotFound
from tests.cli.conftest import Shardq

MAP = {"kind": "map", "dataset": {"uri": "s3://data/set", "num_samples": 40}, "sharding": {"shard_count": 4}}


def add_outputs(outputs: dict[str, str], **extra: str) -> None:
    """Rewrite this test's outputs file with ``extra`` outputs (what a current stack exposes)."""
    path = os.environ["SHARDQ_OUTPUTS_JSON"]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**outputs, **extra}, f)


def test_submit_direct_refuses_a_bucket_the_workers_cannot_read(
    shardq: Shardq, write_request: Any, outputs: dict[str, str], engine: Engine
) -> None:
    # GIVEN a stack whose workers can read only the artifact bucket and 'datasets'
    add_outputs(outputs, DataBuckets=f"{outputs['ArtifactBucketName']},datasets")
    # WHEN a request naming another bucket is submitted in-process (--direct)
    run = shardq("submit", write_request(MAP), "--direct", "--job-id", "elsewhere")
    # THEN it is refused before anything is created, as the splitter Lambda refuses it
    assert run.code == 2, run.out + run.err
    assert "dataset.uri 's3://data/set' is in bucket 'data', which the workers cannot read" in run.err
    assert "datasets" in run.err
    with pytest.raises(JobNotFound):
        engine.store.get_job("elsewhere")
    # AND a bucket the workers can read is accepted
    ok = shardq(
        "submit", write_request({**MAP, "dataset": {"uri": "s3://datasets/x", "num_samples": 40}}), "--direct"
    )
    assert ok.code == 0, ok.err


def test_cancel_finalizes_with_the_stacks_job_ttl(
    shardq: Shardq, write_request: Any, outputs: dict[str, str], engine: Engine
) -> None:
    # GIVEN a stack configured with job_ttl_days = 7 (not the default 90)
    add_outputs(outputs, JobTtlDays="7")
    run = shardq("submit", write_request(MAP), "--direct", "--job-id", "ttl")
    assert run.code == 0, run.err
    # WHEN the job is cancelled from the CLI
    assert shardq("cancel", "ttl").code == 0
    # THEN its record expires 7 days from now, as it would had a Lambda finalized it
    job = engine.store.get_job("ttl")
    # a typed JobRecord (the store's record; a dict before the store was typed)
    expires = int(job.expires_at or 0)
    assert abs(expires - (time.time() + 7 * 86400)) < 3600


def test_the_cli_engine_hands_a_big_close_to_the_stacks_splitter(outputs: dict[str, str]) -> None:
    import argparse

    from shardq.cli.common import engine_for

    args = argparse.Namespace(region=None, endpoint_url=None, stack="shardq")
    # GIVEN outputs without a splitter (resources made by hand): a cancel's ranges run in the CLI
    assert (
        engine_for(args, {k: v for k, v in outputs.items() if k != "SplitterFunctionName"}).dispatch_ranges
        is None
    )
    # AND with the stack's splitter: they go to it, one asynchronous invocation each
    engine = engine_for(args, {**outputs, "SplitterFunctionName": "shardq-Splitter"})
    assert engine.dispatch_ranges is not None and engine.advancer.dispatch_ranges is engine.dispatch_ranges
