"""A submit the splitter refuses says that nothing was created, though the id went to stdout.

Found on the local cloud: ``shardq submit`` prints the job id first (so that ``JOB=$(shardq submit
…)`` gets it, and a fan-out cut short can be finished under it), then the splitter refused the
request (an ``after.job_id`` naming no job) with exit 2; the id on stdout read like a job, and
``shardq status`` of it answered "no job". The refusal now says that the id names nothing new.
"""

from __future__ import annotations

from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.jobstore import JobNotFound
from tests.cli.conftest import Shardq

FOLLOWER = {
    "kind": "map",
    "dataset": {"uri": "synthetic://linear?dim=8&seed=7", "num_samples": 800},
    "sharding": {"shard_count": 2},
    "entrypoint": "examples.linear:score",
    "after": {"job_id": "no-such-upstream", "use": "final_model"},
}


def test_a_refused_submit_says_its_printed_id_names_no_new_job(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # WHEN a follower of a job that does not exist is submitted
    run = shardq("submit", write_request(FOLLOWER), "--direct", "--job-id", "orphan")
    # THEN it exits 2 naming the field and the fix; the id is on stdout, as for every submit
    assert run.code == 2, run.out + run.err
    assert run.out.strip() == "orphan"
    assert "after.job_id 'no-such-upstream' names no job" in run.err
    # AND it says that nothing was created under that id, and nothing was
    assert "nothing was created by this submit (the id orphan printed above names no new job)" in run.err
    with pytest.raises(JobNotFound):
        engine.store.get_job("orphan")
    assert shardq("status", "orphan").code == 3
