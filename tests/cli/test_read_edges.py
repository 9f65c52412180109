"""Read views of jobs at the edges the read matrix (test_read_matrix.py) does not run: a round
whose weighted mean overflowed, a job cancelled before any result (local cloud)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shardq.core.engine import Engine
from shardq.core.fanout import FanOutError
from shardq.core.jobstore import Outcome
from tests.cli.conftest import Shardq
from tests.helpers import FlakySQS, receive_all, result_for, tasks_of
from tests.requests import make_request

pytestmark = pytest.mark.local_cloud


@pytest.mark.parametrize("kind", ["map", "data_parallel"])
def test_result_reads_a_round_whose_mean_overflowed(
    shardq: Shardq, engine: Engine, kind: str, tmp_path: Path
) -> None:
    # GIVEN a job whose shards each reported a finite loss near float's limit: accepted (finite),
    # but their weighted sum overflowed, so the manifest holds the mean as "inf" (standard JSON)
    job_id = engine.submit(make_request(kind, job_id=f"huge-{kind}", shards=2))["job_id"]
    for _ in range(2):  # the training round, then (data_parallel) its reduce
        tasks = tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
        engine.ingest([Outcome(result_for(t, loss=1e307)) for t in tasks])
    assert engine.store.get_job(job_id).status == "SUCCEEDED"
    manifest = shardq("result", job_id, "--json").json()
    stats = manifest["rounds"][0]["metrics"]["loss"]
    assert stats["mean"] == "inf" and stats["max"] == 1e307
    # WHEN a person reads the result (and plots it, where the dashboard's packages are installed)
    run = shardq("result", job_id)
    # THEN it prints, the overflowed mean as "inf" and the finite figures as numbers
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("ROUND"))
    row = dict(zip(lines[at].split(), lines[at + 1].split(), strict=True))
    assert (row["OK"], row["FAILED"], row["loss"]) == ("2", "0", "inf")
    if kind == "map":
        (loss,) = [ln.split() for ln in lines if ln.startswith("loss ")]
        assert loss == ["loss", "inf", "1e+307", "1e+307"]
    pytest.importorskip("matplotlib", reason="dashboard packages not installed: run `make dashboard`")
    plotted = shardq("result", job_id, "--plot", str(tmp_path / "plot.png"))
    assert plotted.code == 0, plotted.err
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind", ["data_parallel", "sweep", "map"])
def test_every_view_of_a_job_cancelled_before_any_result(shardq: Shardq, engine: Engine, kind: str) -> None:
    # GIVEN a job cancelled before any task reported
    job_id = engine.submit(make_request(kind, job_id=f"early-{kind}", shards=3))["job_id"]
    cancel = shardq("cancel", job_id)
    assert cancel.code == 0
    # AND the cancel says no worker holds a task (the queue has none in flight), so they are
    # dropped unrun, rather than "at most 0 of them ... will run to the end"
    assert "the task queue reports none of them held by a worker right now" in cancel.out, cancel.out
    assert "at most 0" not in cancel.out and "will run to the end" not in cancel.out
    # WHEN each read view shows it THEN none fails, and each says CANCELLED with nothing recorded
    status = shardq("status", job_id, "--json").json()
    assert (status["status"], status["tasks_completed"], status["progress_pct"]) == ("CANCELLED", 0, 0.0)
    assert "0/" in shardq("status", job_id).out
    (row,) = [r for r in shardq("list", "--json").json() if r["job_id"] == job_id]
    assert (row["status"], row["tasks_completed"]) == ("CANCELLED", 0)
    events = [json.loads(ln) for ln in shardq("watch", job_id, "--json").out.splitlines()]
    assert [e["event"] for e in events] == ["progress", "finished"]
    manifest = shardq("result", job_id, "--json").json()
    assert manifest["status"] == "CANCELLED" and manifest.get("best") is None
    human = shardq("result", job_id)
    assert human.code == 0 and "CANCELLED" in human.out
    # The cancel is the end: the finished time is the cancel's, never before it.
    assert manifest["finished_at"] >= status["cancel_requested_at"]


def test_watch_says_a_job_is_still_enqueuing(shardq: Shardq, engine: Engine) -> None:
    # GIVEN a job whose fan-out died after 3 SendMessageBatch calls (its status: ENQUEUING n/N)
    dying = Engine(
        settings=engine.settings,
        ddb=engine.ddb,
        sqs=FlakySQS(engine.sqs, die_after=3),
        s3=engine.s3,
        events=engine.events,
    )
    with pytest.raises(FanOutError):
        dying.submit(make_request("map", job_id="half-sent", shards=100, num_samples=1000))
    enqueuing = engine.store.get_job("half-sent").enqueuing()
    assert enqueuing is not None and enqueuing.startswith("ENQUEUING ")
    # WHEN watch follows it for a moment
    run = shardq("watch", "half-sent", "--interval", "0.1", "--timeout", "0.3")
    timed_out = shardq("watch", "half-sent", "--json", "--timeout", "0")
    # (stdout stays JSON lines when --timeout ends the watch: the note goes to stderr)
    events = [json.loads(ln) for ln in timed_out.out.splitlines()]
    assert timed_out.code == 1 and "half-sent is still RUNNING after" in timed_out.err
    # THEN it says so, as status does, with what finishes it, instead of a job waiting for tasks
    # nobody sent
    assert run.code == 1
    assert f"round 1/1 train: 0/100 done, 0 failed · {enqueuing}" in run.out.splitlines(), run.out
    assert "submit the same request again under this id" in run.out
    assert events[0]["enqueuing"] == enqueuing
