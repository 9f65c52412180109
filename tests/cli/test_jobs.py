"""shardq submit / status / list / watch / result / cancel / retry against the local cloud."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from shardq.core.contracts import JobView, ShardResult, ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.local.cloud import free_port
from tests.cli.conftest import Background, Shardq, Transcript
from tests.helpers import count_messages, receive_all, result_for

MAP = {"kind": "map", "dataset": {"uri": "s3://data/set", "num_samples": 40}, "sharding": {"shard_count": 4}}
SWEEP = {
    "kind": "sweep",
    "dataset": {"uri": "s3://data/set", "num_samples": 100},
    "search_space": {"lr": [0.1, 0.01, 0.001]},
    "objective": {"metric": "loss", "direction": "minimize"},
}


def take_tasks(engine: Engine) -> list[tuple[ShardTask, dict[str, Any]]]:
    """Every queued task with its message (deleted from the queue, as a worker would)."""
    msgs = receive_all(engine.sqs, engine.settings.task_queue_url)
    return [(ShardTask.from_json(m["Body"]), m) for m in msgs]


def work(engine: Engine, *, fail: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """A worker stand-in: run every queued task and record its result (as the aggregator would)."""
    done = 0
    for task, _ in take_tasks(engine):
        status = "failed" if task.shard_id in fail else "succeeded"
        engine.ingest([Outcome(result_for(task, status=status))])
        done += 1
    return done


def submit(shardq: Shardq, write_request: Any, request: dict[str, Any], *extra: str) -> str:
    run = shardq("submit", write_request(request), "--direct", *extra)
    assert run.code == 0, run.err
    return run.out.strip().splitlines()[0]


# -- submit -------------------------------------------------------------------------------


def test_invalid_request_exits_2_naming_the_field_and_creates_nothing(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a request with a misspelt field and a shard count above the sample count
    bad = {**MAP, "sharding": {"shard_count": 400}, "max_paralel": 4}
    # WHEN it is submitted (through the Lambda path: validation happens before any call)
    run = shardq("submit", write_request(bad))
    # THEN exit 2 with the contract's own problems text, and no job, no task
    assert run.code == 2
    assert "invalid TrainingRequest (2 problems)" in run.err
    assert "unknown field 'max_paralel': did you mean 'max_parallel'?" in run.err
    assert "sharding.shard_count (400) exceeds dataset.num_samples (40)" in run.err
    assert "nothing was submitted" in run.err
    assert "Traceback" not in run.err
    assert shardq("list", "--json").json() == []
    assert count_messages(engine.sqs, engine.settings.task_queue_url) == 0


def test_submit_without_a_deployed_splitter_says_how(shardq: Shardq, write_request: Any) -> None:
    run = shardq("submit", write_request(MAP))
    assert run.code == 3
    assert "no output SplitterFunctionName" in run.err


def test_submit_prints_the_job_id_and_status_json_matches_the_model(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a submitted map job with one shard done
    job_id = submit(shardq, write_request, MAP, "--job-id", "cli-status")
    assert job_id == "cli-status"
    tasks = take_tasks(engine)
    assert len(tasks) == 4
    engine.ingest([Outcome(result_for(tasks[0][0]))])
    # WHEN its status is read as JSON
    data = shardq("status", job_id, "--json").json()
    # THEN it is the engine's JobView plus per-round progress
    view = JobView(**{k: data[k] for k in JobView.__dataclass_fields__})
    assert view == engine.status(job_id)
    assert view.status == "RUNNING" and view.done == 1 and view.shard_count == 4
    assert data["progress"] == [
        {
            "round": 0,
            "phase": "train",
            "total": 4,
            "enqueued": 4,
            "done": 1,
            "failed": 0,
            "diverged": 0,
            "cost_usd": 0.0,
        }
    ]
    # AND the human view says the same
    human = shardq("status", job_id)
    assert human.code == 0
    assert "RUNNING" in human.out and "1/1 (train)" in human.out
    assert "\033[" not in human.out  # no colours when stdout is not a TTY
    # AND submitting the same request under the same id is the same job
    again = shardq("submit", write_request(MAP), "--direct", "--job-id", "cli-status", "--json")
    assert again.code == 0 and again.json()["created"] is False


def test_list_shows_recent_jobs_by_status(shardq: Shardq, write_request: Any, engine: Engine) -> None:
    first = submit(shardq, write_request, {**MAP, "job_id": "cli-list-a"})
    work(engine)
    second = submit(shardq, write_request, {**MAP, "job_id": "cli-list-b"})
    listed = shardq("list", "--json").json()
    assert [v["job_id"] for v in listed] == [second, first]
    # Each entry is a JobView plus the job's task totals (shardq.core.tally)
    views = [JobView(**{k: v[k] for k in JobView.__dataclass_fields__}) for v in listed]
    assert [v.status for v in views] == ["RUNNING", "SUCCEEDED"]
    assert listed[1]["tasks_completed"] == listed[1]["tasks_total"] == 4
    assert [v["job_id"] for v in shardq("list", "--status", "SUCCEEDED", "--json").json()] == [first]
    table = shardq("list", "--limit", "1")
    assert table.code == 0 and second in table.out and first not in table.out


# -- failure paths ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "watch", "result", "cancel", "retry"])
def test_unknown_job_exits_3_with_the_fix(shardq: Shardq, command: str) -> None:
    run = shardq(command, "no-such-job")
    assert run.code == 3
    assert "no job 'no-such-job' in table" in run.err and "shardq list" in run.err
    assert "Traceback" not in run.err


def test_endpoint_down_exits_4_with_the_url_it_tried(shardq: Shardq, monkeypatch: pytest.MonkeyPatch) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    run = shardq("status", "any-job", "--endpoint-url", down)
    assert run.code == 4
    assert f"cannot reach {down}" in run.err
    assert "Traceback" not in run.err
    # and with --debug, the traceback too
    assert "Traceback" in shardq("status", "any-job", "--endpoint-url", down, "--debug").err
    # and through CloudFormation, when no outputs file is given
    monkeypatch.delenv("SHARDQ_OUTPUTS_JSON")
    run = shardq("--endpoint-url", down, "outputs")
    assert run.code == 4 and f"cannot reach {down}" in run.err


def test_missing_stack_exits_3(shardq: Shardq, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDQ_OUTPUTS_JSON")
    run = shardq("outputs", "--stack", "no-such-stack")
    assert run.code == 3 and "stack 'no-such-stack' does not exist" in run.err


# -- watch --------------------------------------------------------------------------------


def test_watch_prints_a_line_per_change_and_exits_0_on_success(
    shardq: Shardq, shardq_into: Any, write_request: Any, engine: Engine
) -> None:
    # GIVEN a map job whose tasks a worker completes one by one, each once watch has shown the last
    job_id = submit(shardq, write_request, MAP, "--job-id", "cli-watch")
    out = Transcript()

    def worker() -> None:
        out.wait_for("round 1/1 train: 0/4 done")
        for n, (task, _) in enumerate(take_tasks(engine), start=1):
            engine.ingest([Outcome(result_for(task))])
            out.wait_for(f"round 1/1 train: {n}/4 done")

    working = Background(worker)
    # WHEN it is watched without a TTY
    run = shardq_into(out, "watch", job_id, "--interval", "0.05", "--timeout", "60")
    working.join()
    # THEN plain lines, one per change, then the outcome and the result; exit 0
    assert run.code == 0, run.out + run.err
    lines = run.out.splitlines()
    assert lines[0] == "watching cli-watch (map, 4 shard(s))"
    progress = [ln for ln in lines if ln.startswith("round ")]
    assert [p.split(" · ")[0] for p in progress] == [
        f"round 1/1 train: {n}/4 done, 0 failed" for n in range(5)
    ]
    assert all("tasks/s · ETA" in p for p in progress[1:])
    assert "cli-watch SUCCEEDED" in run.out
    assert "result: s3://" in run.out
    assert "\r" not in run.out and "\033[" not in run.out


def test_watch_reports_failures_as_they_happen_and_exits_1(
    shardq: Shardq, shardq_into: Any, write_request: Any, engine: Engine
) -> None:
    job_id = submit(shardq, write_request, MAP, "--job-id", "cli-watch-fail")
    out = Transcript()

    def worker() -> None:
        out.wait_for("round 1/1 train: 0/4 done")  # watch follows the job before any result
        work(engine, fail={2})

    working = Background(worker)
    run = shardq_into(out, "watch", job_id, "--interval", "0.05", "--timeout", "60")
    working.join()
    assert run.code == 1
    assert "failed: round 1 shard 2 (train): CUDA out of memory [worker, attempt 1]" in run.out
    assert "cli-watch-fail FAILED" in run.out and "over max_failed_shards=0" in run.out


def test_watch_json_lines_for_scripts(shardq: Shardq, write_request: Any, engine: Engine) -> None:
    job_id = submit(shardq, write_request, MAP, "--job-id", "cli-watch-json")
    work(engine)
    run = shardq("watch", job_id, "--json", "--interval", "0.05")
    events = [json.loads(line) for line in run.out.splitlines()]
    assert run.code == 0
    assert events[0]["event"] == "progress" and events[0]["done"] == 4
    assert events[-1]["event"] == "finished"
    assert JobView(**{k: events[-1][k] for k in JobView.__dataclass_fields__}) == engine.status(job_id)


def test_submit_wait_and_status_wait_follow_the_job(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    def work_until_done() -> None:
        # The CLI enqueues on its own schedule: keep taking tasks until all MAP's shards ran.
        deadline, done = time.monotonic() + 30, 0
        while done < 4 and time.monotonic() < deadline:  # MAP has 4 shards
            done += work(engine)
            time.sleep(0.05)

    worker = Background(work_until_done)
    run = shardq(
        "submit", write_request(MAP), "--direct", "--job-id", "cli-wait", "--wait", "--interval", "0.05",
        "--timeout", "60",
    )  # fmt: skip
    worker.join()
    assert run.code == 0, run.err
    assert run.out.splitlines()[0] == "cli-wait"
    assert "cli-wait SUCCEEDED" in run.out
    assert shardq("status", "cli-wait", "--wait").code == 0


# -- result -------------------------------------------------------------------------------


def test_result_of_a_sweep_shows_the_best_trial_and_downloads_its_model(
    shardq: Shardq, write_request: Any, engine: Engine, tmp_path: Path
) -> None:
    # GIVEN a finished sweep whose best trial saved a model
    job_id = submit(shardq, write_request, SWEEP, "--job-id", "cli-sweep")
    tasks = [t for t, _ in take_tasks(engine)]
    losses = {0: 0.5, 1: 0.1, 2: 0.9}
    engine.ingest([Outcome(result_for(t, loss=losses[t.shard_id])) for t in tasks])
    best = next(t for t in tasks if t.shard_id == 1)
    bucket, key = best.output_prefix[5:].split("/", 1)
    engine.s3.put_object(Bucket=bucket, Key=key + "model.npz", Body=b"weights")
    # WHEN its result is read
    manifest = shardq("result", job_id, "--json").json()
    human = shardq("result", job_id)
    fetched = shardq("result", job_id, "--download", str(tmp_path / "model"))
    # THEN the JSON is the stored manifest, the table ranks trial 1 first, the model is downloaded
    assert manifest["status"] == "SUCCEEDED"
    assert manifest["best"]["trial"] == 1 and manifest["best"]["hyperparameters"] == {"lr": 0.01}
    assert [row["trial"] for row in manifest["leaderboard"]] == [1, 0, 2]
    assert "best trial 1: loss = 0.1 (minimize)" in human.out
    assert "leaderboard (top 3 of 3)" in human.out
    assert fetched.code == 0
    assert (tmp_path / "model" / "model.npz").read_bytes() == b"weights"
    assert json.loads((tmp_path / "model" / "result.json").read_text()) == manifest


def test_result_of_a_running_job_is_not_there_yet(shardq: Shardq, write_request: Any) -> None:
    job_id = submit(shardq, write_request, MAP)
    run = shardq("result", job_id)
    assert run.code == 3 and "has no result yet" in run.err and f"shardq watch {job_id}" in run.err


# -- cancel -------------------------------------------------------------------------------


def test_cancel_marks_the_job_and_says_what_still_runs(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a job with one task done and one held by a worker
    job_id = submit(shardq, write_request, MAP, "--job-id", "cli-cancel")
    msgs = engine.sqs.receive_message(QueueUrl=engine.settings.task_queue_url, MaxNumberOfMessages=2)[
        "Messages"
    ]
    engine.ingest([Outcome(result_for(ShardTask.from_json(msgs[0]["Body"])))])
    engine.sqs.delete_message(QueueUrl=engine.settings.task_queue_url, ReceiptHandle=msgs[0]["ReceiptHandle"])
    # WHEN it is cancelled
    run = shardq("cancel", job_id, "--json")
    # THEN it is CANCELLED; 3 tasks have no result, at most 1 of them is held by a worker
    assert run.code == 0
    report = run.json()
    assert report["cancelled"] is True and report["status"] == "CANCELLED"
    assert report["outstanding"] == 3 and report["queue_in_flight"] == 1
    assert engine.status(job_id).status == "CANCELLED"
    # AND a late result changes nothing, a second cancel is a no-op, and watch exits 1
    engine.ingest([Outcome(result_for(ShardTask.from_json(msgs[1]["Body"])))])
    assert engine.status(job_id).status == "CANCELLED"
    again = shardq("cancel", job_id)
    assert again.code == 0 and "already CANCELLED" in again.out
    assert shardq("watch", job_id, "--interval", "0.05").code == 1


def test_after_a_cancel_status_and_result_show_the_late_results(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a 3-trial sweep whose trials are all held by workers
    job_id = submit(shardq, write_request, SWEEP, "--job-id", "cli-cancel-late")
    held = take_tasks(engine)
    assert len(held) == 3
    # WHEN it is cancelled, and the workers post their results afterwards
    run = shardq("cancel", job_id)
    assert run.code == 0, run.err
    # THEN cancel says what happens to those results: kept apart as late, not counted
    assert "kept apart as late and not counted" in run.out and "recorded but" not in run.out
    engine.ingest([Outcome(result_for(task)) for task, _ in held])
    # AND status counts none of them, says so on its late line, and says when the job was cancelled
    status = shardq("status", job_id)
    assert status.code == 0, status.err
    assert "0/3 (0%) recorded" in status.out
    assert "late:" in status.out
    assert (
        "3 result(s) arrived after their round closed or the job ended (kept apart, not counted)"
        in status.out
    )
    assert "cancelling" not in status.out
    finished = engine.store.get_job(job_id).finished_at
    assert f"cancelled: at {finished}" in " ".join(status.out.split())
    # AND result says the same of the manifest, written before they came
    result = shardq("result", job_id)
    assert result.code == 0, result.err
    assert "3 result(s) arrived after their round closed or the job ended" in result.out


def test_cancel_of_a_finished_job_is_refused(shardq: Shardq, write_request: Any, engine: Engine) -> None:
    job_id = submit(shardq, write_request, MAP)
    work(engine)
    run = shardq("cancel", job_id)
    assert run.code == 2 and "already finished as SUCCEEDED" in run.err


# -- retry --------------------------------------------------------------------------------


def test_retry_resumes_a_job_failed_by_an_over_budget_shard(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    # GIVEN a map job FAILED by two shards over a budget of 0: one reported failed by its worker,
    # one dead-lettered (its task body kept on the outcome, as the DLQ handler records it)
    job_id = submit(shardq, write_request, MAP, "--job-id", "cli-retry")
    tasks = {t.shard_id: t for t, _ in take_tasks(engine)}
    engine.ingest(
        [
            Outcome(result_for(tasks[0])),
            Outcome(result_for(tasks[3])),
            Outcome(result_for(tasks[1], status="failed")),
            Outcome(
                ShardResult(job_id, 0, 2, "train", "failed", error="dead-lettered", attempt=5),
                source="dlq",
                task_body=tasks[2].to_json(),
                receive_count=5,
            ),
        ]
    )
    assert engine.status(job_id).status == "FAILED"
    # WHEN it is retried
    run = shardq("retry", job_id, "--json")
    # THEN the failed shards go back on the queue with fresh deduplication ids and the job runs again
    assert run.code == 0, run.err
    report = run.json()
    assert report["retried"] == [1, 2] and report["generation"] == 1 and report["status"] == "RUNNING"
    job = engine.store.get_job(job_id)
    assert job.status == "RUNNING" and job.failed_total == 0 and job.failed(0, "train") == 0
    assert (job.finished_at, job.result_uri, job.error, job.expires_at) == (None, None, None, None)
    assert engine.store.retry_pending(job_id) == frozenset()
    requeued = take_tasks(engine)
    assert sorted(t.shard_id for t, _ in requeued) == [1, 2]
    assert {m["Attributes"]["MessageDeduplicationId"] for _, m in requeued} == {
        f"{job_id}:0:1:train:g1",
        f"{job_id}:0:2:train:g1",
    }
    # the same tasks, stamped with the retry's generation (their checkpoints are the new attempt's own)
    assert {t.shard_id: t for t, _ in requeued} == {
        1: dataclasses.replace(tasks[1], generation=1),
        2: dataclasses.replace(tasks[2], generation=1),
    }
    # AND when the worker stand-in completes them, the job SUCCEEDS with every output
    for task, _ in requeued:
        engine.ingest([Outcome(result_for(task))])
    assert engine.status(job_id).status == "SUCCEEDED"
    manifest = shardq("result", job_id, "--json").json()
    assert [o["shard_id"] for o in manifest["outputs"]] == [0, 1, 2, 3]
    assert manifest["failed"] == []


def test_retry_of_a_succeeded_job_is_refused(shardq: Shardq, write_request: Any, engine: Engine) -> None:
    job_id = submit(shardq, write_request, MAP)
    work(engine)
    run = shardq("retry", job_id)
    assert run.code == 2 and "is SUCCEEDED" in run.err


def test_retry_of_a_running_job_with_failures_within_budget(
    shardq: Shardq, write_request: Any, engine: Engine
) -> None:
    job_id = submit(shardq, write_request, {**MAP, "max_failed_shards": 2}, "--job-id", "cli-retry-running")
    tasks = {t.shard_id: t for t, _ in take_tasks(engine)}
    engine.ingest([Outcome(result_for(tasks[0], status="failed"))])
    run = shardq("retry", job_id)
    assert run.code == 0 and "re-enqueued 1 train task(s) of round 1 (shards 0; generation 1)" in run.out
    work(engine)
    for shard in (1, 2, 3):
        engine.ingest([Outcome(result_for(tasks[shard]))])
    view = engine.status(job_id)
    assert view.status == "SUCCEEDED" and view.failed == 0 and view.done == 4


def deploy_splitter(lam: Any, engine: Engine) -> str:
    """The splitter handler as a Lambda function in the local cloud (asset: handlers + shardq.core)."""
    import io
    import uuid
    import zipfile

    from stacks.components.lambda_asset import asset_files

    root = Path(__file__).resolve().parents[2]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for rel in asset_files(root):  # what the stack ships, subpackages included
            z.writestr(rel.as_posix(), (root / rel).read_bytes())
    name = f"cli-splitter-{uuid.uuid4().hex[:6]}"
    lam.create_function(
        FunctionName=name,
        Runtime="python3.13",
        Role="arn:aws:iam::000000000000:role/shardq-local",
        Handler="lambdas.splitter.handler",
        Code={"ZipFile": buf.getvalue()},
        Timeout=120,
        MemorySize=512,
        Environment={"Variables": {**engine.settings.as_env(), "POWERTOOLS_TRACE_DISABLED": "true"}},
    )
    return name


def test_submit_invokes_the_splitter_lambda(
    shardq: Shardq, write_request: Any, engine: Engine, clients: dict[str, Any], outputs: dict[str, str]
) -> None:
    # GIVEN the splitter deployed into the local cloud, its name in the outputs file
    import os

    name = deploy_splitter(clients["lambda"], engine)
    Path(os.environ["SHARDQ_OUTPUTS_JSON"]).write_text(json.dumps({**outputs, "SplitterFunctionName": name}))
    # WHEN a request is submitted the default way
    run = shardq("submit", write_request(MAP), "--job-id", "cli-lambda", "--json")
    # THEN the splitter created the job and enqueued its tasks
    assert run.code == 0, run.err
    answer = run.json()
    assert answer["ok"] is True and answer["job_id"] == "cli-lambda" and answer["shards"] == 4
    assert engine.status("cli-lambda").status == "RUNNING"
    assert count_messages(engine.sqs, engine.settings.task_queue_url) == 4
