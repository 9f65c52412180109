"""``shardq track`` / ``watch --mlflow``: jobs written into a real MLflow tracking server.

The server is MLflow's own (``mlflow server``, from ``make mlflow``'s server venv .venv/mlflow) on
127.0.0.1 with a SQLite backend store and a temporary artifact root, stopped by its PID. What was
written is read back with ``MlflowClient`` and checked against the job's own records: each round's
metrics as steps, each trial as a child run, the artifacts, and that a second run adds nothing.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardq.cli import main, mlflow_writer
from shardq.cli.mlflow_writer import JOB_TAG, TRIAL_TAG
from shardq.core.engine import Engine
from shardq.local.cloud import LocalCloud, free_port
from shardq.local.resources import provision
from tests.cli.conftest import Run
from tests.cli.test_read_matrix import REQUESTS
from tests.finished import run_job

pytestmark = pytest.mark.local_cloud

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / ".venv" / "mlflow" / "bin" / "mlflow"
# Imported where a test reads the server back, not at collection (≈ 2 s of CPU in every xdist worker).
if importlib.util.find_spec("mlflow") is None:
    pytest.skip("the MLflow client is optional: `make mlflow` installs it", allow_module_level=True)


def kept_store() -> Path:
    """An empty SQLite store with the server's schema, kept by the server's MLflow version: a fresh
    store costs the server its schema migrations at every start (≈ 7 s of CPU of ≈ 16 s)."""
    [dist] = sorted(SERVER.parents[1].glob("lib/python*/site-packages/mlflow-*.dist-info")) or [Path("none")]
    return Path(tempfile.gettempdir()) / f"shardq-mlflow-store-{dist.name.removesuffix('.dist-info')}.db"


def keep_store(db: Path) -> None:
    """Keep ``db`` (migrated, nothing tracked yet) for the next start: copied whole, then renamed."""
    if kept_store().is_file():
        return
    staging = kept_store().with_name(f"{kept_store().name}.{os.getpid()}.tmp")
    src, dst = sqlite3.connect(db), sqlite3.connect(staging)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    staging.rename(kept_store())


@pytest.fixture(scope="module")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """``mlflow server`` on 127.0.0.1 (SQLite store, temp artifact root), stopped by its PID; started
    before the jobs run, so it boots while they train."""
    if not SERVER.exists():
        pytest.skip("no MLflow server venv: `make mlflow` creates .venv/mlflow")
    tmp = tmp_path_factory.mktemp("mlflow")
    if kept_store().is_file():
        shutil.copyfile(kept_store(), tmp / "mlflow.db")
    port = free_port()
    log_path = tmp / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [
            str(SERVER),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))},
            # MLflow's job runner (8 huey consumer processes for its GenAI jobs) is off: shardq
            # starts no job, and the runner cost ≈ 15 s of CPU per start (BENCHMARKS.md §11, round 6).
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
    )
    try:
        yield proc, f"http://127.0.0.1:{port}", log_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def tracking_uri(mlflow_server: tuple[subprocess.Popen[bytes], str, Path]) -> str:
    """The server's URI once it answers ``/health`` (its first start creates the SQLite schema)."""
    proc, uri, log_path = mlflow_server
    deadline = time.monotonic() + 300
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    keep_store(log_path.parent / "mlflow.db")
                    return uri
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def world(
    cloud: LocalCloud, tmp_path_factory: pytest.TempPathFactory, mlflow_server: Any
) -> Iterator[dict[str, Any]]:
    """A finished job of each kind (and a diverged and a halving sweep); the CLI pointed at them."""
    clients = {name: cloud.client(name) for name in ("sqs", "dynamodb", "s3", "events")}
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    engine = Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    jobs = {}
    asha = {
        **REQUESTS["sweep_halving"],
        "early_stopping": {**REQUESTS["sweep_halving"]["early_stopping"], "method": "asha"},
    }
    for name, request in [
        *((n, REQUESTS[n]) for n in ("data_parallel", "sweep_halving", "sweep_diverged", "map")),
        ("sweep_asha", asha),
    ]:
        job = run_job(engine, {"job_id": f"mlf-{name.replace('_', '-')}", **request})
        assert job.status == "SUCCEEDED", (name, job.error)
        jobs[name] = job
    path = tmp_path_factory.mktemp("mlflow-outputs") / "outputs.json"
    path.write_text(
        json.dumps(
            {
                "TaskQueueUrl": settings.task_queue_url,
                "ResultsQueueUrl": settings.results_queue_url,
                "JobTableName": settings.job_table,
                "ArtifactBucketName": settings.artifact_bucket,
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cloud.env().items():
            mp.setenv(key, value)
        mp.setenv("SHARDQ_OUTPUTS_JSON", str(path))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield {"engine": engine, "jobs": jobs}


def shardq(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    capsys.readouterr()
    code = main(list(argv))
    captured = capsys.readouterr()
    return Run(code=code, out=captured.out, err=captured.err)


def client(uri: str) -> Any:
    import mlflow

    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def runs_of(uri: str, experiment: str, job_id: str) -> list[Any]:
    c = client(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None
    return list(
        c.search_runs([exp.experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{job_id}'", max_results=1000)
    )


def history(uri: str, run_id: str, key: str) -> dict[int, float]:
    """Step → value of one metric (a step logged twice would show as a longer raw history)."""
    raw = client(uri).get_metric_history(run_id, key)
    steps = {m.step: m.value for m in raw}
    assert len(steps) == len(raw), f"{key}: a step was logged twice"
    return steps


def artifacts(uri: str, run_id: str, path: str | None = None) -> set[str]:
    found: set[str] = set()
    for info in client(uri).list_artifacts(run_id, path):
        found |= artifacts(uri, run_id, info.path) if info.is_dir else {info.path}
    return found


def test_a_data_parallel_job_is_one_run_with_a_step_per_round_and_its_artifacts(
    world: dict[str, Any], tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN a finished 2-round data_parallel job
    job = world["jobs"]["data_parallel"]
    summaries = world["engine"].store.round_summaries(job.job_id)
    # WHEN it is tracked into MLflow
    r = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "dp")
    assert r.code == 0, r.err
    assert "1 run(s) created" in r.out
    # THEN one run holds its request as params, each round as a step, its model and manifest
    (run,) = runs_of(tracking_uri, "dp", job.job_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == job.job_id
    assert run.data.params["hyperparameters.lr"] == "0.05"
    assert run.data.params["rounds"] == "2"
    assert run.data.params["kind"] == "data_parallel"
    want = {int(s["round"]): s["metrics"]["val_loss"]["mean"] for s in summaries}
    assert history(tracking_uri, run.info.run_id, "val_loss") == pytest.approx(want)
    global_want = {int(s["round"]): s["reduce"]["metrics"]["val_loss"] for s in summaries}
    assert history(tracking_uri, run.info.run_id, "global_val_loss") == pytest.approx(global_want)
    assert artifacts(tracking_uri, run.info.run_id) == {"manifest.json", "model/model.npz"}
    manifest = json.loads(
        Path(client(tracking_uri).download_artifacts(run.info.run_id, "manifest.json")).read_text()
    )
    assert manifest["job_id"] == job.job_id
    assert run.data.tags["shardq.final_model_uri"] == manifest["final_model_uri"]

    # WHEN it is tracked again THEN nothing is added twice
    again = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "dp")
    assert again.code == 0, again.err
    assert "0 run(s) created, 0 metric step(s), 0 param(s), 0 artifact(s) logged" in again.out
    assert len(runs_of(tracking_uri, "dp", job.job_id)) == 1
    assert history(tracking_uri, run.info.run_id, "val_loss") == pytest.approx(want)


def test_a_halving_sweep_is_a_parent_run_with_a_child_per_trial_and_rungs_as_steps(
    world: dict[str, Any], tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = world["jobs"]["sweep_halving"]
    manifest = json.loads(
        world["engine"]
        .s3.get_object(Bucket=world["engine"].settings.artifact_bucket, Key=f"jobs/{job.job_id}/result.json")[
            "Body"
        ]
        .read()
    )
    r = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "sweeps")
    assert r.code == 0, r.err
    runs = runs_of(tracking_uri, "sweeps", job.job_id)
    parents = [x for x in runs if TRIAL_TAG not in x.data.tags]
    children = {int(x.data.tags[TRIAL_TAG]): x for x in runs if TRIAL_TAG in x.data.tags}
    (parent,) = parents
    assert len(children) == job.request.task_count == 9
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())
    best = manifest["best"]
    assert parent.data.tags["shardq.best_trial"] == str(best["trial"])
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best["objective"])
    assert children[best["trial"]].data.tags["shardq.best"] == "true"
    for row in manifest["leaderboard"]:
        child = children[row["trial"]]
        assert float(child.data.params["lr"]) == pytest.approx(row["hyperparameters"]["lr"])
        # each rung the trial ran is a step: its objective and the rung's budget (epochs)
        want = {p["rung"]: p["objective"] for p in row["rungs"]}
        assert history(tracking_uri, child.info.run_id, "val_loss") == pytest.approx(want)
        assert history(tracking_uri, child.info.run_id, "budget") == {
            p["rung"]: p["budget"] for p in row["rungs"]
        }
        assert child.data.tags["shardq.rung"] == str(row["rung"])
        assert child.info.status == "FINISHED"
    assert artifacts(tracking_uri, parent.info.run_id) == {"manifest.json"}
    again = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "sweeps")
    assert "0 run(s) created, 0 metric step(s), 0 param(s), 0 artifact(s) logged" in again.out
    assert len(runs_of(tracking_uri, "sweeps", job.job_id)) == 10


def test_tracking_a_sweep_of_more_trials_than_a_search_page_twice_keeps_one_parent_run(
    world: dict[str, Any],
    tracking_uri: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN a finished grid sweep of 12 trials, and the writer reading MLflow's runs 1 to a page
    # (found on the local cloud: a second `track` of a 27-trial sweep added a second parent run;
    # its search read one page of 10 runs, all trials, and took that for "no parent yet"). The runs
    # share a start time, so MLflow orders them by run id: the parent lands on a random page, and
    # with one run a page a reader of the first page alone misses it 12 times in 13.
    monkeypatch.setattr(mlflow_writer, "SEARCH_PAGE", 1)
    request = {
        **REQUESTS["sweep_halving"],
        "job_id": "mlf-sweep-12",
        "search_space": {"lr": [0.01 * (k + 1) for k in range(12)]},
    }
    del request["search"], request["early_stopping"]
    job = run_job(world["engine"], request)
    assert job.status == "SUCCEEDED", job.error
    # WHEN it is tracked twice
    first = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "paged")
    assert first.code == 0, first.err
    assert "13 run(s) created" in first.out
    again = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "paged")
    # THEN the second adds nothing: one parent, one child per trial, each child under that parent
    assert again.code == 0, again.err
    assert "0 run(s) created, 0 metric step(s), 0 param(s), 0 artifact(s) logged" in again.out
    runs = runs_of(tracking_uri, "paged", job.job_id)
    (parent,) = [x for x in runs if TRIAL_TAG not in x.data.tags]
    children = [x for x in runs if TRIAL_TAG in x.data.tags]
    assert sorted(int(x.data.tags[TRIAL_TAG]) for x in children) == list(range(12))
    assert {x.data.tags["mlflow.parentRunId"] for x in children} == {parent.info.run_id}


def test_an_asha_sweep_writes_each_trial_with_the_rungs_it_reached(
    world: dict[str, Any], tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an asynchronous (ASHA) halving sweep: trials are promoted result by result
    job = world["jobs"]["sweep_asha"]
    bucket = world["engine"].settings.artifact_bucket
    manifest = json.loads(
        world["engine"].s3.get_object(Bucket=bucket, Key=f"jobs/{job.job_id}/result.json")["Body"].read()
    )
    r = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "asha")
    assert r.code == 0, r.err
    runs = runs_of(tracking_uri, "asha", job.job_id)
    children = {int(x.data.tags[TRIAL_TAG]): x for x in runs if TRIAL_TAG in x.data.tags}
    assert sorted(children) == sorted(row["trial"] for row in manifest["leaderboard"])
    # THEN every trial's rungs are its steps, a promoted trial has more than one
    for row in manifest["leaderboard"]:
        steps = history(tracking_uri, children[row["trial"]].info.run_id, "budget")
        assert steps == {p["rung"]: p["budget"] for p in row["rungs"]}
    assert max(len(row["rungs"]) for row in manifest["leaderboard"]) > 1
    assert children[manifest["best"]["trial"]].data.tags["shardq.best"] == "true"


def test_a_diverged_trial_is_tagged_and_keeps_its_nan_objective(
    world: dict[str, Any], tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = world["jobs"]["sweep_diverged"]
    r = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "sweeps")
    assert r.code == 0, r.err
    children = {
        float(x.data.params["lr"]): x
        for x in runs_of(tracking_uri, "sweeps", job.job_id)
        if TRIAL_TAG in x.data.tags
    }
    assert children[100.0].data.tags["shardq.outcome"] == "diverged"
    assert math.isnan(children[100.0].data.metrics["loss"])
    # MLflow's SQL store writes inf as the largest float; the tag says which metrics were not finite
    assert children[0.2].data.metrics["grad_norm"] == sys.float_info.max
    assert children[0.2].data.tags["shardq.nonfinite_metrics"] == "grad_norm"
    assert children[100.0].data.tags["shardq.nonfinite_metrics"] == "grad_norm,loss,val_loss"
    assert children[0.2].data.tags["shardq.outcome"] == "succeeded"  # a finite objective: an ordinary trial
    assert children[0.05].data.tags["shardq.best"] == "true"


def test_a_map_job_is_one_run_with_its_metrics_and_the_outputs_list(
    world: dict[str, Any], tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job = world["jobs"]["map"]
    r = shardq(capsys, "track", job.job_id, "--mlflow", tracking_uri, "--experiment", "maps")
    assert r.code == 0, r.err
    (run,) = runs_of(tracking_uri, "maps", job.job_id)
    manifest = json.loads(
        Path(client(tracking_uri).download_artifacts(run.info.run_id, "manifest.json")).read_text()
    )
    assert run.data.metrics["y_mean"] == pytest.approx(manifest["metrics"]["y_mean"]["mean"])
    assert run.data.metrics["outputs_count"] == 4
    lines = (
        Path(client(tracking_uri).download_artifacts(run.info.run_id, "outputs.jsonl"))
        .read_text()
        .splitlines()
    )
    assert sorted(json.loads(x)["shard_id"] for x in lines) == [0, 1, 2, 3]


def test_watch_mlflow_follows_a_running_job_step_by_step(
    world: dict[str, Any], tracking_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN the tracker ``watch --mlflow`` calls after every poll
    from shardq.cli import build_parser
    from shardq.cli.track import new_tracker

    engine = world["engine"]
    args = build_parser().parse_args(
        ["watch", "mlf-follow", "--mlflow", tracking_uri, "--experiment", "follow"]
    )
    track = new_tracker(args, engine)
    seen: list[tuple[str, int, str]] = []

    def each(job: Any) -> None:
        track(job)
        (run,) = runs_of(tracking_uri, "follow", job.job_id)
        seen.append((job.status, len(history(tracking_uri, run.info.run_id, "val_loss")), run.info.status))

    # WHEN a 3-round job runs and is written after every poll
    request = {**REQUESTS["data_parallel"], "rounds": 3, "job_id": "mlf-follow"}
    job = run_job(engine, request, each=each)
    # THEN the run was RUNNING with the rounds closed so far, and ends FINISHED with each round once
    assert ("RUNNING", 1, "RUNNING") in seen
    assert seen[-1] == ("SUCCEEDED", 3, "FINISHED")
    (run,) = runs_of(tracking_uri, "follow", job.job_id)
    assert sorted(history(tracking_uri, run.info.run_id, "val_loss")) == [0, 1, 2]
    # AND watch of the finished job with --mlflow (one frame) adds nothing
    r = shardq(capsys, "watch", job.job_id, "--mlflow", tracking_uri, "--experiment", "follow")
    assert r.code == 0, r.err
    assert sorted(history(tracking_uri, run.info.run_id, "val_loss")) == [0, 1, 2]


def test_without_mlflow_installed_track_exits_2_naming_the_make_target(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` meets without the extra
    r = shardq(capsys, "track", "mlf-map", "--mlflow", "http://127.0.0.1:1")
    assert r.code == 2
    assert "make mlflow" in r.err
    r = shardq(capsys, "watch", "mlf-map", "--mlflow", "http://127.0.0.1:1")
    assert r.code == 2
    assert "make mlflow" in r.err


def test_track_says_what_is_wrong_without_a_uri_or_a_server_or_a_job(
    world: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    r = shardq(capsys, "track", "mlf-map")
    assert r.code == 2
    assert "--mlflow URI is required" in r.err
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    r = shardq(capsys, "track", "mlf-map", "--mlflow", f"http://127.0.0.1:{free_port()}")
    assert r.code == 4, r.err
    assert "could not be reached" in r.err
    r = shardq(capsys, "track", "no-such-job", "--mlflow", "http://127.0.0.1:1")
    assert r.code == 3
    assert "no job 'no-such-job'" in r.err
