"""The read-view matrix for a FedBuff job (buffered asynchronous FedAvg, issue #27): ``status``,
``watch`` (a finished job's frame, the live frame, ``--json``), ``list``, ``result`` and
``result --plot``, the dashboard's job API and page, human and JSON, each checked against the job's
own records: its recorded updates (``UPD#`` items), not round results, which a FedBuff job's
training never writes.

A sibling of ``test_read_matrix.py`` (whose kinds are all checked against per-round result items),
with its own module world: one FedBuff job run to its end by two real workers; client 2's first
update fails and client 1's second reports a NaN loss (failed updates for the views to show),
K = 2, S = 0 (stale updates are late).
"""

from __future__ import annotations

import io
import json
import math
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.linear import train as linear_train
from shardq.cli import main
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, ResultRecord
from shardq.core.planning import split_s3
from shardq.core.store.fedbuff import FedBuffStore, Update
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls, provision
from tests.cli.conftest import Run
from tests.cli.test_read_matrix import ANSI, DATA, EVALUATION, HP, PRICE_PER_HOUR, field, strict
from tests.finished import run_job

pytestmark = pytest.mark.local_cloud

JOB_ID = "matrix-fedbuff"
VERSIONS, K = 3, 2


def train_with_bad_updates(task: Any, ctx: Any) -> dict[str, Any]:
    """The job's trainer (its ``entrypoint``): examples.linear, but client 2's first update fails
    with an error and client 1's second one reports a NaN loss (a failed update: never applied)."""
    if task.shard_id == 2 and task.round == 0:
        raise RuntimeError("client 2 lost its data loader")
    out = linear_train(task, ctx)
    if task.shard_id == 1 and task.round == 1:
        out["metrics"]["loss"] = math.nan
    return out


@dataclass
class Finished:
    """The finished FedBuff job and what it recorded."""

    job: JobRecord
    updates: list[Update]  # every recorded update (client, then number order)
    reduces: list[ResultRecord]
    manifest: dict[str, Any]

    def of(self, state: str) -> list[Update]:
        return [u for u in self.updates if u.state == state]

    @property
    def counted(self) -> list[Update]:
        """Updates a version's accounting counts: applied, late or failed (not surplus, past the last
        version, nor after the end)."""
        return [u for u in self.updates if u.state in ("applied", "late", "failed") and u.version < VERSIONS]

    @property
    def tasks(self) -> int:
        return len(self.counted) + len(self.reduces)

    @property
    def cost_micro_usd(self) -> int:
        return sum(u.cost_micro_usd for u in self.updates if u.state != "after_end") + sum(
            r.result.cost_micro_usd for r in self.reduces
        )


@dataclass
class World:
    engine: Engine
    f: Finished
    data: Any


@pytest.fixture(scope="module")
def world(cloud: LocalCloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    clients = {name: cloud.client(name) for name in ("sqs", "dynamodb", "s3", "events", "lambda")}
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    engine = Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(8), b=np.array(0.0))
    engine.s3.put_object(Bucket=settings.artifact_bucket, Key="init/model.npz", Body=buf.getvalue())
    request = {
        "job_id": JOB_ID,
        "kind": "data_parallel",
        "dataset": {"uri": DATA, "num_samples": 600},
        "sharding": {"shard_count": 3},
        "rounds": VERSIONS,
        "max_parallel": 3,
        "max_failed_shards": 2,
        "hyperparameters": HP,
        "evaluation": EVALUATION,
        "model": {"init_uri": f"s3://{settings.artifact_bucket}/init/model.npz"},
        "entrypoint": f"{__name__}:train_with_bad_updates",
        "strategy": {"name": "fedbuff", "buffer_size": K, "max_staleness": 0},
    }
    job = run_job(engine, request, price_per_hour=PRICE_PER_HOUR)
    assert job.status == "SUCCEEDED", job.error
    assert job.result_uri is not None
    bucket, key = split_s3(job.result_uri)
    manifest = json.loads(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    f = Finished(
        job,
        FedBuffStore(engine.store).all_updates(JOB_ID),
        engine.store.all_results(JOB_ID),
        manifest,
    )
    assert [(u.client, u.seq) for u in sorted(f.of("failed"), key=lambda u: u.order)] in (
        [(2, 0), (1, 1)],
        [(1, 1), (2, 0)],
    )
    assert not [r for r in f.reduces if r.result.task_type != "reduce"]
    dlqs = dlq_urls(clients["sqs"], settings)
    outputs = {
        "TaskQueueUrl": settings.task_queue_url,
        "TaskDlqUrl": dlqs["tasks"],
        "ResultsQueueUrl": settings.results_queue_url,
        "ResultsDlqUrl": dlqs["results"],
        "JobTableName": settings.job_table,
        "ArtifactBucketName": settings.artifact_bucket,
    }
    path = tmp_path_factory.mktemp("matrix-fedbuff") / "outputs.json"
    path.write_text(json.dumps(outputs))
    data = None
    try:
        from shardq.dashboard.data import DashboardData

        data = DashboardData.from_outputs(outputs, lambda name: clients[name])
    except ImportError:  # the dashboard's packages are optional (make dashboard)
        pass
    with pytest.MonkeyPatch.context() as mp:
        for k, value in cloud.env().items():
            mp.setenv(k, value)
        mp.setenv("SHARDQ_OUTPUTS_JSON", str(path))
        mp.delenv("NO_COLOR", raising=False)
        yield World(engine, f, data)


@pytest.fixture
def shardq(world: World, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code=code, out=captured.out, err=captured.err)

    return run


def per_version(f: Finished) -> dict[int, tuple[int, int, int]]:
    """Version → (applied, late, failed), from the recorded updates."""
    out: dict[int, list[int]] = {}
    for u in f.counted:
        row = out.setdefault(u.version, [0, 0, 0])
        row[("applied", "late", "failed").index(u.state)] += 1
    return {v: (a, la, fa) for v, (a, la, fa) in out.items()}


def first_line(error: str | None) -> str:
    return (error or "").strip().splitlines()[0]


def fedbuff_line(f: Finished) -> str:
    """What ``watch`` says of the finished job's versions and updates."""
    applied = [u for u in f.of("applied") if u.version < VERSIONS]
    mean = sum(u.tau for u in applied) / len(applied)
    return (
        f"version {VERSIONS}/{VERSIONS} · buffer 0/{K} · {len(applied)} applied, "
        f"{len(f.of('late'))} late · mean staleness {mean:.2f}, {len(f.of('failed'))} failed"
    )


# -- status, list -----------------------------------------------------------------------------


def test_status_json_counts_every_recorded_update(world: World, shardq: Any) -> None:
    f = world.f
    data = strict(shardq("status", JOB_ID, "--json").out)
    fb = data["fedbuff"]
    versions = per_version(f)
    assert (fb["versions_made"], fb["versions"], fb["buffer_size"], fb["buffer_fill"]) == (
        VERSIONS,
        VERSIONS,
        K,
        0,
    )
    assert fb["updates_applied"] == sum(a for a, _, _ in versions.values()) == VERSIONS * K
    assert fb["updates_late"] == len(f.of("late")) and fb["updates_failed"] == len(f.of("failed"))
    assert [(v["version"], v["applied"], v["late"]) for v in fb["per_version"]] == [
        (v, versions[v][0], versions[v][1]) for v in range(VERSIONS)
    ]
    for v in fb["per_version"]:
        taus = [u.tau for u in f.of("applied") if u.version == v["version"]]
        assert v["mean_staleness"] == sum(taus) / len(taus)
        assert {int(t): n for t, n in v["staleness_histogram"].items()} == {
            t: taus.count(t) for t in set(taus)
        }
    assert [(x["client"], x["update"]) for x in fb["failed_updates"]] == [
        (u.client, u.seq) for u in sorted(f.of("failed"), key=lambda u: u.order)
    ][:20]
    # Every update and reduce counted once; each version's row its own updates
    assert data["tasks_completed"] == data["tasks_total"] == f.tasks and data["progress_pct"] == 100.0
    assert data["tasks_failed"] == data["failed"] == len(f.of("failed"))
    rows = {(p["round"], p["phase"]): (p["done"], p["failed"]) for p in data["progress"]}
    assert rows == {
        **{(v, "train"): (a + la, fa) for v, (a, la, fa) in versions.items()},
        **{(r.result.round, "reduce"): (1, 0) for r in f.reduces},
    }
    assert all(p["done"] + p["failed"] <= p["total"] for p in data["progress"])
    assert round(data["cost_usd"], 6) == round(f.cost_micro_usd / 1e6, 6) > 0


def test_status_human_shows_versions_staleness_and_failed_updates(world: World, shardq: Any) -> None:
    f = world.f
    run = shardq("status", JOB_ID)
    assert run.code == 0, run.err
    n, failed = f.tasks, len(f.of("failed"))
    assert field(run.out, "tasks") == f"{n}/{n} (100%) recorded, {failed} failed in all"
    applied = sum(1 for u in f.of("applied") if u.version < VERSIONS)
    assert (
        f"FedBuff: {VERSIONS}/{VERSIONS} versions made; buffer 0/{K}; updates {applied} applied, "
        f"{len(f.of('late'))} late, {failed} failed"
    ) in run.out
    for u in f.of("failed"):
        assert (
            f"failed: update {u.seq} of client {u.client} (version {u.version}): {first_line(u.error)}"
            in run.out
        )


def test_list_shows_the_job_complete(world: World, shardq: Any) -> None:
    f = world.f
    (row,) = [v for v in strict(shardq("list", "--json").out) if v["job_id"] == JOB_ID]
    assert (row["tasks_completed"], row["tasks_total"], row["failed"]) == (
        f.tasks,
        f.tasks,
        len(f.of("failed")),
    )
    (line,) = [ln for ln in shardq("list").out.splitlines() if ln.startswith(JOB_ID + " ")]
    assert f" {f.tasks}/{f.tasks} (100%) " in line


# -- watch ------------------------------------------------------------------------------------


def test_watch_of_the_finished_job_says_versions_buffer_late_and_staleness(world: World, shardq: Any) -> None:
    f = world.f
    run = shardq("watch", JOB_ID, "--interval", "0")
    assert run.code == 0, run.err
    heads = [ln.split(" · $")[0] for ln in run.out.splitlines()]
    assert fedbuff_line(f) in heads, run.out
    failed = sorted(f.of("failed"), key=lambda u: u.order)
    lines = [ln for ln in run.out.splitlines() if ln.startswith("  failed: update")]
    assert lines == [
        f"  failed: update {u.seq} of client {u.client} (version {u.version}): {first_line(u.error)}"
        for u in failed
    ]
    events = [strict(ln) for ln in shardq("watch", JOB_ID, "--json").out.splitlines()]
    assert [e["event"] for e in events] == ["progress", *["failure"] * len(failed), "finished"]
    assert events[0]["fedbuff"] == fedbuff_line(f).rsplit(",", 1)[0]
    assert [(e["client"], e["update"]) for e in events[1:-1]] == [(u.client, u.seq) for u in failed]
    assert events[-1]["tasks_completed"] == events[-1]["tasks_total"] == f.tasks


def test_watch_live_frame_counts_the_whole_job(world: World) -> None:
    from shardq.cli.live import LiveView
    from shardq.cli.watch import Snapshot
    from shardq.core.operations import progress
    from shardq.core.tally import tasks_left

    job = world.engine.store.get_job(JOB_ID)
    out = io.StringIO()
    view = LiveView(out)
    rows = progress(job)
    snap = Snapshot(job.status, job.round, job.rounds, job.phase, 0, 0, 0, None, None)
    view.update(job, rows, snap, left=tasks_left(job, rows[-1]), late=0)
    view.console.print(view.renderable())
    frame = ANSI.sub("", out.getvalue())
    job_line = next((ln for ln in frame.splitlines() if " job " in ln), frame)
    assert f"{world.f.tasks}/{world.f.tasks}" in job_line


def test_the_running_job_reads_its_open_buffer(world: World) -> None:
    # The live numbers come from the job record alone: an open buffer's applied updates of K
    from shardq.core import fedbuff_view

    job = world.f.job
    running = replace(job, status="RUNNING", round=1, phase="train")
    data = fedbuff_view.live(running)
    assert data is not None
    assert (data["versions_made"], data["buffer_fill"]) == (1, per_version(world.f)[1][0])


# -- result -----------------------------------------------------------------------------------


def test_result_json_is_the_manifest_with_every_failed_update(world: World, shardq: Any) -> None:
    f = world.f
    manifest = strict(shardq("result", JOB_ID, "--json").out)
    assert manifest == f.manifest
    fb = manifest["fedbuff"]
    assert fb["versions_made"] == VERSIONS and fb["updates_failed"] == len(f.of("failed"))
    assert [(x["client"], x["update"]) for x in fb["failed_updates"]] == [
        (u.client, u.seq) for u in sorted(f.of("failed"), key=lambda u: u.order)
    ]
    assert [r["fedbuff"]["applied"] for r in manifest["rounds"]] == [K] * VERSIONS
    assert manifest["final_model_uri"] == f.job.model_uri


def test_result_human_and_plot(world: World, shardq: Any, tmp_path: Path) -> None:
    run = shardq("result", JOB_ID)
    assert run.code == 0, run.err
    table = [ln.split() for ln in run.out.splitlines() if ln[:1].isdigit()]
    assert [(row[0], row[1]) for row in table] == [(str(v + 1), str(K)) for v in range(VERSIONS)]
    pytest.importorskip("matplotlib", reason="dashboard packages not installed: run `make dashboard`")
    target = tmp_path / "fedbuff.png"
    plot = shardq("result", JOB_ID, "--plot", str(target))
    assert plot.code == 0, plot.err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- dashboard --------------------------------------------------------------------------------


def test_dashboard_job_api_and_page_agree_with_the_records(world: World) -> None:
    if world.data is None:
        pytest.skip("dashboard packages not installed: run `make dashboard`")
    from shardq.dashboard.server import start_in_background

    f = world.f
    running = start_in_background(world.data, port=0, refresh_s=0.5, source="test")
    try:
        with urllib.request.urlopen(running.url + f"api/jobs/{JOB_ID}", timeout=30) as resp:
            detail = strict(resp.read())
        with urllib.request.urlopen(running.url + "api/jobs", timeout=30) as resp:
            rows = strict(resp.read())
        with urllib.request.urlopen(running.url + "static/app.js", timeout=30) as resp:
            script = resp.read().decode()
    finally:
        running.stop()
    job = detail["job"]
    assert (job["tasks_completed"], job["tasks_total"], job["progress_pct"]) == (f.tasks, f.tasks, 100.0)
    assert job["fedbuff_text"] == fedbuff_line(f).rsplit(",", 1)[0]
    (row,) = [r for r in rows if r["job_id"] == JOB_ID]
    assert row["fedbuff"] == job["fedbuff"]
    versions = per_version(f)
    assert [(v["version"], v["applied"], v["late"]) for v in detail["fedbuff"]["per_version"]] == [
        (v, versions[v][0], versions[v][1]) for v in range(VERSIONS)
    ]
    failed = sorted(f.of("failed"), key=lambda u: u.order)
    fb_failures = [x for x in detail["failures"] if "version" in x]
    assert [(x["round"], x["shard_id"]) for x in fb_failures] == [(u.seq, u.client) for u in failed]
    assert len(detail["failures"]) == len(failed)
    assert {(p["round"], p["phase"]): p["done"] for p in detail["progress"]} == {
        **{(v, "train"): a + la for v, (a, la, _) in versions.items()},
        **{(r.result.round, "reduce"): 1 for r in f.reduces},
    }
    # The page shows them: the job's FedBuff line and each version's accounting
    assert '["fedbuff", job.fedbuff_text]' in script and "versionsText(fedbuff)" in script
