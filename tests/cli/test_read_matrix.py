"""Every read command, right for every job kind: numbers checked against the job's own records.

One finished job per kind (run once for the module with real workers on the local cloud), read
with ``status``, ``watch`` (one frame), ``list``, ``result``, ``result --plot`` and the
dashboard's job API and page, in human and JSON output. "Right" means the totals equal the
recorded outcomes, no percentage passes 100 %, the best trial is the manifest's, and the global
model's metrics are shown first where a reduce reported them.
"""

from __future__ import annotations

import importlib.util
import io
import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shardq.cli import main
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, ResultRecord
from shardq.core.planning import split_s3
from shardq.core.tally import plan_text, rung_sizes
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls, provision
from shardq.worker.code import fingerprint
from tests.cli.conftest import Run
from tests.finished import run_job

pytestmark = pytest.mark.local_cloud

DATA = "synthetic://linear?dim=8&noise=0.05&seed=7"
TRAIN = "tests.dashboard.training:train"
HP = {"lr": 0.05, "epochs": 1, "batch_size": 64}
# ``evaluation`` makes the test reduce score the global model it made (tests/dashboard/training.py).
EVALUATION = {"uri": DATA}
SPACE = {"lr": [0.2, 0.05, 0.01], "epochs": [1, 2]}
OBJECTIVE = {"metric": "val_loss", "direction": "minimize"}
REQUESTS: dict[str, dict[str, Any]] = {
    "data_parallel": {
        "kind": "data_parallel",
        "dataset": {"uri": DATA, "num_samples": 800},
        "sharding": {"shard_count": 3},
        "rounds": 2,
        "hyperparameters": HP,
        "evaluation": EVALUATION,
        "entrypoint": TRAIN,
    },
    "data_parallel_sampled": {
        "kind": "data_parallel",
        "dataset": {"uri": DATA, "num_samples": 1200},
        "sharding": {"shard_count": 6},
        "rounds": 2,
        "hyperparameters": HP,
        "evaluation": EVALUATION,
        "participation": {"fraction": 0.5, "min_shards": 2, "seed": 3},
        "quorum": {"fraction": 0.6, "deadline_seconds": 600},
        "max_parallel": 3,
        "entrypoint": TRAIN,
    },
    "sweep_grid": {
        "kind": "sweep",
        "dataset": {"uri": DATA, "num_samples": 600},
        "search_space": SPACE,
        "objective": OBJECTIVE,
        "max_failed_shards": 1,
        "max_parallel": 3,
        "entrypoint": "tests.dashboard.training:train_except_shard_2",
    },
    "sweep_random": {
        "kind": "sweep",
        "dataset": {"uri": DATA, "num_samples": 600},
        "search_space": {"lr": {"log_uniform": [0.005, 0.2]}},
        "search": {"method": "random", "num_trials": 4, "seed": 5},
        "hyperparameters": {"epochs": 1},
        "objective": OBJECTIVE,
        "max_parallel": 4,
        "entrypoint": TRAIN,
    },
    "sweep_halving": {
        "kind": "sweep",
        "dataset": {"uri": DATA, "num_samples": 600},
        "search_space": {"lr": {"log_uniform": [0.005, 0.2]}},
        "search": {"method": "random", "num_trials": 9, "seed": 7},
        "early_stopping": {"eta": 3, "min_budget": 1, "max_budget": 9, "budget_param": "epochs"},
        "objective": OBJECTIVE,
        "max_parallel": 9,
        "entrypoint": TRAIN,
    },
    # Asynchronous successive halving (issue #27): the same rungs, each trial promoted as soon as it
    # ranks in the top third of its rung's results so far; 3 in flight, so the rungs overlap.
    "sweep_asha": {
        "kind": "sweep",
        "dataset": {"uri": DATA, "num_samples": 600},
        "search_space": {"lr": {"log_uniform": [0.005, 0.2]}},
        "search": {"method": "random", "num_trials": 9, "seed": 7},
        "early_stopping": {"method": "asha", "eta": 3, "min_budget": 1, "max_budget": 9},
        "objective": OBJECTIVE,
        "max_parallel": 3,
        "entrypoint": TRAIN,
    },
    # The same ASHA sweep with the eager rule (``early_stopping.promotion``): a rung's best result
    # so far goes on while it has fewer than eta, as Optuna's and Ray Tune's (issue #27).
    "sweep_asha_eager": {
        "kind": "sweep",
        "dataset": {"uri": DATA, "num_samples": 600},
        "search_space": {"lr": {"log_uniform": [0.005, 0.2]}},
        "search": {"method": "random", "num_trials": 9, "seed": 7},
        "early_stopping": {
            "method": "asha",
            "eta": 3,
            "min_budget": 1,
            "max_budget": 9,
            "promotion": "eager",
        },
        "objective": OBJECTIVE,
        "max_parallel": 3,
        "entrypoint": TRAIN,
    },
    # Optuna's TPE (issue #26): each trial asked on its worker by replaying the job's log, 3 in flight.
    # Optuna is optional (make optuna, which make test runs): without it, the kind is left out.
    **(
        {
            "sweep_optuna": {
                "kind": "sweep",
                "dataset": {"uri": DATA, "num_samples": 600},
                "search_space": {"lr": {"log_uniform": [0.005, 0.2]}},
                "search": {"method": "optuna", "sampler": "tpe", "num_trials": 6, "seed": 3},
                "hyperparameters": {"epochs": 1},
                "objective": OBJECTIVE,
                "max_parallel": 3,
                "entrypoint": TRAIN,
            }
        }
        if importlib.util.find_spec("optuna")
        else {}
    ),
    # lr 100 overflows to NaN (as in tests/chaos/test_diverged.py): that trial is *diverged*. At
    # lr 0.2 only the secondary metric grad_norm overflows: an ordinary trial, ranked by its
    # finite objective (only the objective decides "diverged").
    "sweep_diverged": {
        "kind": "sweep",
        "dataset": {"uri": DATA, "num_samples": 600},
        "search_space": {"lr": [0.05, 100.0, 0.01, 0.2]},
        "hyperparameters": {"epochs": 20, "batch_size": 32},
        "objective": OBJECTIVE,
        "max_failed_shards": 0,
        "max_parallel": 4,
        "entrypoint": "tests.dashboard.training:train_reporting_grad_norm",
    },
    "map": {
        "kind": "map",
        "dataset": {"uri": DATA, "num_samples": 1000},
        "sharding": {"shard_size": 250},
        "entrypoint": "examples.linear:evaluate",
    },
}
KINDS = list(REQUESTS)
# The kinds whose views show rungs (successive halving and ASHA, both promotion rules).
RUNG_KINDS = ("sweep_halving", "sweep_asha", "sweep_asha_eager")
# The workers' price (``shardq worker --price-per-hour``): every job's tasks carry a cost (issue #25).
PRICE_PER_HOUR = 3600.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class Finished:
    """One finished job and what it recorded."""

    job: JobRecord
    records: list[ResultRecord]
    manifest: dict[str, Any]

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def failed(self) -> int:
        return sum(1 for r in self.records if r.result.status == "failed")

    @property
    def diverged(self) -> int:
        """Sweep trials recorded as diverged (a non-finite objective: done, never ranked)."""
        return sum(1 for r in self.records if r.result.status == "diverged")

    @property
    def counts(self) -> str:
        """``n failed``, and ``, n diverged`` where a trial diverged: what the human views print."""
        return f"{self.failed} failed" + (f", {self.diverged} diverged" if self.diverged else "")


@dataclass
class World:
    """The module's resources, its finished jobs, and the dashboard's data access over them."""

    engine: Engine
    jobs: dict[str, Finished]
    data: Any


@pytest.fixture(scope="module")
def world(cloud: LocalCloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Every kind's job run to its end once; the CLI pointed at their table and bucket."""
    clients = {name: cloud.client(name) for name in ("sqs", "dynamodb", "s3", "events", "lambda")}
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    engine = Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    jobs = {}
    for name, request in REQUESTS.items():
        job = run_job(
            engine, {"job_id": f"matrix-{name.replace('_', '-')}", **request}, price_per_hour=PRICE_PER_HOUR
        )
        assert job.status == "SUCCEEDED", (name, job.error)
        assert job.result_uri is not None
        bucket, key = split_s3(job.result_uri)
        manifest = json.loads(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        jobs[name] = Finished(job, engine.store.all_results(job.job_id), manifest)
    dlqs = dlq_urls(clients["sqs"], settings)
    outputs = {
        "TaskQueueUrl": settings.task_queue_url,
        "TaskDlqUrl": dlqs["tasks"],
        "ResultsQueueUrl": settings.results_queue_url,
        "ResultsDlqUrl": dlqs["results"],
        "JobTableName": settings.job_table,
        "ArtifactBucketName": settings.artifact_bucket,
    }
    path = tmp_path_factory.mktemp("matrix") / "outputs.json"
    path.write_text(json.dumps(outputs))
    data = None
    try:
        from shardq.dashboard.data import DashboardData

        data = DashboardData.from_outputs(outputs, lambda name: clients[name])
    except ImportError:  # the dashboard's packages are optional (make dashboard)
        pass
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cloud.env().items():
            mp.setenv(key, value)
        mp.setenv("SHARDQ_OUTPUTS_JSON", str(path))
        mp.delenv("NO_COLOR", raising=False)
        yield World(engine, jobs, data)


@pytest.fixture
def shardq(world: World, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``shardq ARGS...`` in this process, stdout a pipe (plain text)."""

    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main(list(argv))
        captured = capsys.readouterr()
        return Run(code=code, out=captured.out, err=captured.err)

    return run


def strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as JSON.parse and most other parsers do."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def field(out: str, name: str) -> str:
    """The value of a ``name: value`` line of a human view (values are aligned with spaces)."""
    found = re.search(rf"^{re.escape(name)}:\s+(.*)$", out, re.M)
    assert found, f"no {name!r} line in:\n{out}"
    return found.group(1)


def per_round(f: Finished) -> dict[tuple[int, str], tuple[int, int, int]]:
    """(round, phase) → (done, failed, diverged), counted from the records themselves; a diverged
    trial is among ``done`` (it ended), as every view counts it."""
    counts: dict[tuple[int, str], list[int]] = {}
    for r in f.records:
        c = counts.setdefault((r.result.round, r.result.task_type), [0, 0, 0])
        c[0] += r.result.status != "failed"
        c[1] += r.result.status == "failed"
        c[2] += r.result.status == "diverged"
    return {key: (c[0], c[1], c[2]) for key, c in counts.items()}


def progress_counts(rows: list[dict[str, Any]]) -> dict[tuple[int, str], tuple[int, int, int]]:
    """The same mapping, as a view's progress rows state it (rows without an outcome left out)."""
    return {
        (p["round"], p["phase"]): (p["done"], p["failed"], p["diverged"])
        for p in rows
        if p["done"] or p["failed"]
    }


def expected_total(f: Finished) -> int:
    """Tasks the finished job ran, from its request: rungs, participants and reduces included."""
    request = f.job.request
    if request.asynchronous:  # open-ended: every task it decided ran (each decision once)
        decided = world_decisions(f)
        assert len(decided) == len(set(decided))
        return len(decided)
    if request.early_stopping is not None:
        return sum(rung_sizes(request))
    return len(f.records)


def world_decisions(f: Finished) -> list[tuple[int, int]]:
    """An asynchronous sweep's decided tasks ``(rung, trial)``, from the manifest's rung histories."""
    return [(h["rung"], row["trial"]) for row in f.manifest["leaderboard"] for h in row["rungs"]]


def tasks_line(f: Finished) -> str:
    """What ``status`` says of a finished job's tasks: an asynchronous sweep's count is open-ended."""
    n = len(f.records)
    if f.job.request.asynchronous:
        return f"{n} tasks done, 0 in flight, up to {n}, {f.counts}"
    return f"{n}/{n} (100%) recorded, {f.counts} in all"


# -- status ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_status_json_counts_every_recorded_task(world: World, shardq: Any, kind: str) -> None:
    f = world.jobs[kind]
    data = strict(shardq("status", f.job_id, "--json").out)
    # Every outcome the table holds is counted once, and the job ran every task it planned.
    assert data["tasks_completed"] == data["tasks_total"] == len(f.records) == expected_total(f)
    assert data["progress_pct"] == 100.0
    assert data["tasks_failed"] == f.failed == data["failed"]
    assert data["tasks_diverged"] == f.diverged == sum(p["diverged"] for p in data["progress"])
    assert sum(p["done"] + p["failed"] for p in data["progress"]) == len(f.records)
    assert all(p["done"] + p["failed"] <= p["total"] for p in data["progress"])
    # Round by round and phase by phase, the counts are the records' own (not just their sum).
    assert progress_counts(data["progress"]) == per_round(f)
    assert data["plan"] == plan_text(f.job)


@pytest.mark.parametrize("kind", KINDS)
def test_status_human_shows_the_plan_the_totals_and_the_global_model(
    world: World, shardq: Any, kind: str
) -> None:
    f = world.jobs[kind]
    run = shardq("status", f.job_id)
    assert run.code == 0
    assert field(run.out, "tasks") == tasks_line(f)
    header = next(ln for ln in run.out.splitlines() if ln.startswith("ROUND"))
    assert ("DIVERGED" in header) == bool(f.diverged)
    assert field(run.out, "plan") == plan_text(f.job)
    if kind.startswith("data_parallel"):
        last = f.manifest["rounds"][-1]
        value = last["reduce"]["metrics"]["val_loss"]
        assert field(run.out, "global model") == f"round {len(f.manifest['rounds'])}: val_loss {value:.6g}"
        assert run.out.index("global model:") < run.out.index("shards' mean:")
    else:
        assert "global model:" not in run.out


def test_a_quorum_job_reads_alike_in_estimate_and_status(world: World, shardq: Any, tmp_path: Path) -> None:
    # GIVEN the finished job whose rounds train a sample of 3 of 6 shards and close at a 60 % quorum
    f = world.jobs["data_parallel_sampled"]
    n = len(f.records)
    # 2 rounds x (3 participants + 1 reduce) may run; a round counts at least ceil(0.6 x 3) = 2
    assert 2 * (2 + 1) <= n <= 2 * (3 + 1)
    # WHEN status and estimate read it
    data = strict(shardq("status", f.job_id, "--json").out)
    human = shardq("status", f.job_id).out
    path = tmp_path / "quorum.json"
    path.write_text(json.dumps(REQUESTS["data_parallel_sampled"]))
    estimated = strict(shardq("estimate", str(path), "--json").out)["request"]
    estimate_text = shardq("estimate", str(path)).out
    # THEN both say what may run (the plan, every participant) and what counts (the quorum's share)
    assert data["tasks_planned"] == estimated["tasks"] == 8
    assert data["tasks_total"] == n and estimated["tasks_at_least"] == 6
    assert field(human, "planned") == (
        f"up to 8 tasks may run (every participant and reduce); a round closes once 60% of its "
        f"training succeeded, so {n} count"
    )
    assert (
        "= up to 8 tasks (a round may close once 60% of its training succeeded: at least 6;" in estimate_text
    )
    # AND a job without a quorum has one number: no "up to" anywhere
    plain = strict(shardq("status", world.jobs["data_parallel"].job_id, "--json").out)
    assert "tasks_planned" not in plain
    assert "planned:" not in shardq("status", world.jobs["data_parallel"].job_id).out


# -- list -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_list_shows_each_job_complete_never_past_100_percent(world: World, shardq: Any, kind: str) -> None:
    f = world.jobs[kind]
    rows = {v["job_id"]: v for v in strict(shardq("list", "--json").out)}
    assert len(rows) == len(world.jobs)
    assert all(0 <= v["progress_pct"] <= 100 for v in rows.values())
    row = rows[f.job_id]
    assert (row["tasks_completed"], row["tasks_total"], row["failed"]) == (len(f.records),) * 2 + (f.failed,)
    assert row["tasks_diverged"] == f.diverged
    lines = shardq("list").out.splitlines()
    (line,) = [ln for ln in lines if ln.startswith(f.job_id + " ")]
    assert f" {len(f.records)}/{len(f.records)} (100%) " in line
    # The module's sweep with a diverged trial gives the list a DIVERGED column, after FAILED.
    assert lines[0].split()[-3:] == ["FAILED", "DIVERGED", "CREATED"]
    assert line.split()[-3:-1] == [str(f.failed), str(f.diverged)]


# -- watch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_watch_of_a_finished_job_draws_one_frame_with_its_totals(
    world: World, shardq: Any, kind: str
) -> None:
    f = world.jobs[kind]
    run = shardq("watch", f.job_id, "--interval", "0")
    lines = run.out.splitlines()
    assert run.code == 0
    assert lines[0] == f"watching {f.job_id} ({f.job.kind}, {plan_text(f.job)})"
    assert any(ln.startswith(f"{f.job_id} SUCCEEDED") for ln in lines)
    last = f.job.rounds - 1
    phase = "reduce" if kind.startswith("data_parallel") else "train"
    done, failed, diverged = per_round(f)[(last, phase)]
    total = next(p["total"] for p in strict(shardq("status", f.job_id, "--json").out)["progress"][-1:])
    counted = f"{failed} failed" + (f", {diverged} diverged" if diverged else "")
    # The counters first; what follows " · " (the job's cost, a rate) varies.
    heads = [ln.split(" · ")[0] for ln in lines]
    if f.job.request.asynchronous:  # every rung at once: the sweep's tasks, not the last rung's
        assert f"{tasks_line(f).rsplit(',', 1)[0]}, {f.counts}" in heads, run.out
    else:
        assert f"round {last + 1}/{f.job.rounds} {phase}: {done}/{total} done, {counted}" in heads, run.out
    assert (f"  {f.diverged} trial(s) diverged" in run.out) == bool(f.diverged)
    if f.diverged:
        assert f"done, {f.counts}" in run.out
    if kind.startswith("data_parallel"):
        value = f.manifest["rounds"][-1]["reduce"]["metrics"]["val_loss"]
        assert any(
            ln.startswith(f"round {f.job.rounds}/{f.job.rounds} global model: val_loss {value:.6g}")
            for ln in lines
        ), run.out
    events = [strict(ln) for ln in shardq("watch", f.job_id, "--json").out.splitlines()]
    assert [e["event"] for e in events] == ["progress", *["failure"] * f.failed, "finished"]
    done = events[-1]
    assert done["tasks_completed"] == done["tasks_total"] == len(f.records) and done["progress_pct"] == 100
    assert done["tasks_diverged"] == f.diverged
    assert events[0]["diverged"] == sum(
        1
        for r in f.records
        if r.result.status == "diverged" and (r.result.round == last or f.job.request.asynchronous)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_watch_live_frame_counts_the_whole_job(world: World, kind: str) -> None:
    from shardq.cli.live import LiveView
    from shardq.cli.watch import Snapshot
    from shardq.core.operations import progress
    from shardq.core.tally import tasks_left

    f = world.jobs[kind]
    job = world.engine.store.get_job(f.job_id)
    out = io.StringIO()
    view = LiveView(out)
    rows = progress(job)
    snap = Snapshot(job.status, job.round, job.rounds, job.phase, 0, 0, 0, None, None)
    view.update(job, rows, snap, left=tasks_left(job, rows[-1]), late=0)
    view.console.print(view.renderable())
    frame = ANSI.sub("", out.getvalue())
    n = len(f.records)
    job_line = next((ln for ln in frame.splitlines() if " job " in ln), frame)
    assert f"{n}/{n}" in job_line and "succeeded" in job_line
    assert (f"{f.diverged} diverged" in job_line) == bool(f.diverged)


# -- result ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_result_json_is_the_manifest(world: World, shardq: Any, kind: str) -> None:
    f = world.jobs[kind]
    assert strict(shardq("result", f.job_id, "--json").out) == f.manifest


@pytest.mark.parametrize("kind", KINDS)
def test_result_human_shows_what_matters_for_the_kind(world: World, shardq: Any, kind: str) -> None:
    f = world.jobs[kind]
    m = f.manifest
    run = shardq("result", f.job_id)
    assert run.code == 0, run.err
    out = run.out
    # Every kind names the code its outcomes came from (a data_parallel manifest reads no success
    # row, so its versions come from the reduces and the last round, which made the final model).
    version = fingerprint(f.job.request.entrypoint)
    assert version is not None and m["code_versions"] == [version]
    assert field(out, "code") == version
    if kind not in RUNG_KINDS:
        # The rounds table's outcome columns are the records' training outcomes, round by round.
        lines = out.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("ROUND"))
        heads = lines[at].split()
        shown = {}
        for ln in lines[at + 1 : at + 1 + len(m["rounds"])]:
            row = dict(zip(heads, ln.split(), strict=False))
            shown[int(row["ROUND"]) - 1] = (int(row["OK"]), int(row["FAILED"]), int(row.get("DIVERGED", 0)))
        counts = {r: c for (r, phase), c in per_round(f).items() if phase == "train"}
        assert shown == {r: (done - div, failed, div) for r, (done, failed, div) in counts.items()}, out
    if kind.startswith("data_parallel"):
        # The global model's metric is a column of its own, ahead of the shards' means.
        header = next(ln for ln in out.splitlines() if ln.startswith("ROUND"))
        assert header.index("global val_loss") < header.index(" loss")
        for r in m["rounds"]:
            assert f"{r['reduce']['metrics']['val_loss']:.6g}" in out
    if kind.startswith("sweep"):
        best = m["best"]
        assert f"best trial {best['trial']}: val_loss = {best['objective']} (minimize)" in out
        lines = out.splitlines()
        first = lines[next(i for i, ln in enumerate(lines) if ln.startswith("RANK")) + 1]
        assert first.split()[:2] == ["1", str(best["trial"])]
    if kind in RUNG_KINDS:
        es = m["early_stopping"]
        assert f"budget spent: {es['budget_spent']} of {es['budget_without_stopping']} epochs" in out
        # An asynchronous sweep says which promotion rule ran it (shardq.core.asha_rules).
        if kind.startswith("sweep_asha"):
            assert f"(ASHA, {es['promotion']} promotion)" in out, out
        else:
            assert "promotion" not in es and "ASHA" not in out, out
        assert f"at rung {len(es['budgets'])} (epochs {es['budgets'][-1]})" in out
        header = next(ln for ln in out.splitlines() if ln.startswith("RANK"))
        assert "RUNG" in header and "EPOCHS" in header
        lines = out.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("RUNG"))
        assert lines[at].split()[:5] == ["RUNG", "EPOCHS", "TRIALS", "OK", "FAILED"]
        # Each rung's row: its budget, and the trials it trained and their outcomes, per the records.
        rows = [[int(v) for v in ln.split()[:5]] for ln in lines[at + 1 : at + 1 + len(es["budgets"])]]
        counts = per_round(f)
        assert rows == [
            [k + 1, budget, sum(counts[(k, "train")][:2]), counts[(k, "train")][0], counts[(k, "train")][1]]
            for k, budget in enumerate(es["budgets"])
        ], out
    if kind == "map":
        count = m["outputs_count"]
        assert count == len(f.records) == 4
        assert f"all {count} outputs, as JSON Lines in {len(m['outputs_parts'])} part(s): " in out
        for part in m["outputs_parts"]:
            assert part["uri"] in out


@pytest.mark.parametrize("kind", KINDS)
def test_result_plot_draws_every_kind(world: World, shardq: Any, kind: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="dashboard packages not installed: run `make dashboard`")
    f = world.jobs[kind]
    target = tmp_path / f"{kind}.png"
    run = shardq("result", f.job_id, "--plot", str(target))
    assert run.code == 0, run.err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kind", ["sweep_grid", "sweep_random", "sweep_diverged"])
def test_result_plot_of_a_plain_sweep_draws_each_trial(
    world: World, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib", reason="dashboard packages not installed: run `make dashboard`")
    from shardq.dashboard import plot

    # GIVEN a finished sweep of one round (no halving): each trial's objective, finite ones only
    m = world.jobs[kind].manifest
    finite = {
        int(row["trial"]): float(row["objective"]) for row in m["leaderboard"] if row["objective"] is not None
    }
    drawn: list[Any] = []
    monkeypatch.setattr(plot, "_save", lambda plt, fig, manifest, target: drawn.append(fig) or target)
    # WHEN it is plotted
    plot.plot_manifest(m, tmp_path / f"{kind}.png")
    # THEN the objective's panel comes first, with one dot per trial at its own value (not a mean)
    (fig,) = drawn
    ax = fig.axes[0]
    assert ax.get_title() == f"{m['objective']['metric']} (objective)"
    dots = {(int(x), float(y)) for x, y in ax.collections[0].get_offsets()}
    assert dots == set(finite.items())
    assert len(dots) == (len(m["leaderboard"]) - (1 if kind == "sweep_diverged" else 0)) > 1


# -- dashboard ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dashboard_job_api_and_page_agree_with_the_records(world: World, kind: str) -> None:
    if world.data is None:
        pytest.skip("dashboard packages not installed: run `make dashboard`")
    from shardq.dashboard.server import start_in_background

    f = world.jobs[kind]
    running = start_in_background(world.data, port=0, refresh_s=0.5, source="test")
    try:
        with urllib.request.urlopen(running.url + f"api/jobs/{f.job_id}", timeout=30) as resp:
            assert resp.status == 200
            detail = strict(resp.read())
        with urllib.request.urlopen(running.url + "api/jobs", timeout=30) as resp:
            rows = strict(resp.read())
        with urllib.request.urlopen(running.url, timeout=30) as resp:
            assert resp.status == 200 and b"app.js" in resp.read()
    finally:
        running.stop()
    job = detail["job"]
    n = len(f.records)
    assert (job["tasks_completed"], job["tasks_total"], job["progress_pct"]) == (n, n, 100.0)
    assert all(0 <= r["progress_pct"] <= 100 for r in rows)
    assert len(detail["timeline"]["entries"]) == n
    assert progress_counts(detail["progress"]) == per_round(f)
    assert len(detail["failures"]) == f.failed
    assert job["tasks_diverged"] == f.diverged
    assert sum(p["diverged"] for p in detail["progress"]) == f.diverged
    assert sum(e["status"] == "diverged" for e in detail["timeline"]["entries"]) == f.diverged
    assert next(r for r in rows if r["job_id"] == f.job_id)["tasks_diverged"] == f.diverged
    if kind.startswith("sweep"):
        board = detail["leaderboard"]["rows"]
        assert board[0]["trial"] == f.manifest["best"]["trial"]
        # Each row says its outcome, as the manifest's leaderboard does: diverged trials last.
        assert [r["outcome"] for r in board] == [r["outcome"] for r in f.manifest["leaderboard"]]
        assert sum(r["outcome"] == "diverged" for r in board) == f.diverged
    if kind.startswith("data_parallel"):
        assert detail["global_metric_names"] == ["val_loss"]
        assert [r["reduce"]["metrics"] for r in detail["rounds"]] == [
            r["reduce"]["metrics"] for r in f.manifest["rounds"]
        ]
    if kind in RUNG_KINDS:
        trials = detail["trial_curves"]
        assert trials["budget_param"] == "epochs" and trials["x"] == [1, 3, 9]
        assert len(trials["trials"]) == 9
        best = next(t for t in trials["trials"] if t["trial"] == f.manifest["best"]["trial"])
        assert [p["budget"] for p in best["points"]] == [1, 3, 9]


# -- cost (issue #25) -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cost_reads_alike_in_every_view_and_equals_the_counted_results(
    world: World, shardq: Any, kind: str
) -> None:
    from shardq.core.budgets import money

    f = world.jobs[kind]
    micro = sum(r.result.cost_micro_usd for r in f.records)
    assert micro > 0 and f.job.cost_micro_usd == micro
    per_phase: dict[tuple[int, str], int] = {}
    for r in f.records:
        key = (r.result.round, r.result.task_type)
        per_phase[key] = per_phase.get(key, 0) + r.result.cost_micro_usd
    # status --json: the job's total and each (round, phase)'s
    data = strict(shardq("status", f.job_id, "--json").out)
    assert data["cost_usd"] == pytest.approx(micro / 1e6) and data["budget_usd"] is None
    assert {
        (p["round"], p["phase"]): round(p["cost_usd"] * 1e6) for p in data["progress"] if p["cost_usd"]
    } == {k: v for k, v in per_phase.items() if v}
    # status, result and watch (human): one wording of the same figure
    assert field(shardq("status", f.job_id).out, "cost") == money(micro)
    assert field(shardq("result", f.job_id).out, "cost") == money(micro)
    assert f"cost: {money(micro)}" in shardq("watch", f.job_id).out
    # the manifest (result --json)
    assert f.manifest["cost"]["cost_usd"] == pytest.approx(micro / 1e6)
    assert sum(p["cost_usd"] for p in f.manifest["cost"]["per_round"]) == pytest.approx(micro / 1e6)
    if kind.startswith("sweep"):
        # Per trial: its results over every rung.
        trials: dict[int, int] = {}
        for r in f.records:
            trials[r.result.shard_id] = trials.get(r.result.shard_id, 0) + r.result.cost_micro_usd
        board = f.manifest["leaderboard"]
        assert {row["trial"]: round(row["cost_usd"] * 1e6) for row in board} == {
            t: trials[t] for t in (row["trial"] for row in board)
        }
    if world.data is not None:
        detail = world.data.job(f.job_id)
        assert detail["job"]["cost_usd"] == pytest.approx(micro / 1e6)
        assert detail["job"]["cost_text"] == money(micro)
        if kind.startswith("sweep"):
            assert [r.get("cost_usd") for r in detail["leaderboard"]["rows"]] == [
                r.get("cost_usd") for r in f.manifest["leaderboard"]
            ]


# -- a sweep with a diverged trial (issue #22) ------------------------------------------------


def test_a_diverged_trial_reads_as_diverged_in_every_view(world: World, shardq: Any) -> None:
    # GIVEN the finished lr sweep whose lr 100 trial (trial 1) trained into NaN
    f = world.jobs["sweep_diverged"]
    (trial,) = [r.result for r in f.records if r.result.status == "diverged"]
    assert trial.shard_id == 1 and f.failed == 0
    # WHEN each read view shows it, THEN each says "diverged", never a number or a blank:
    # status: the per-round table's DIVERGED column
    out = shardq("status", f.job_id).out
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("ROUND"))
    assert dict(zip(lines[at].split(), lines[at + 1].split(), strict=True))["DIVERGED"] == "1"
    # result: the rounds table's column, and the trial's leaderboard row (ranked last)
    out = shardq("result", f.job_id).out
    lines = out.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("ROUND"))
    assert dict(zip(lines[at].split(), lines[at + 1].split(), strict=True))["DIVERGED"] == "1"
    start = next(i for i, ln in enumerate(lines) if ln.startswith("RANK"))
    board = [ln.split() for ln in lines[start + 1 : start + 5]]
    assert board[-1][:3] == ["4", "1", "diverged"], out
    # result --json and the dashboard: the manifest's row, with its outcome and no objective
    manifest = strict(shardq("result", f.job_id, "--json").out)
    last = manifest["leaderboard"][-1]
    assert (last["trial"], last["outcome"], last["objective"]) == (1, "diverged", None)
    assert manifest["diverged_count"] == 1 and manifest["rounds"][0]["shards_diverged"] == 1


def test_an_optuna_sweep_reads_the_params_its_sampler_asked_in_every_view(world: World, shardq: Any) -> None:
    if "sweep_optuna" not in world.jobs:
        pytest.skip("optuna is optional: make optuna installs it")
    # GIVEN the finished TPE sweep: each trial's params exist only as its worker asked and reported them
    f = world.jobs["sweep_optuna"]
    asked = {r.result.shard_id: r.result.params for r in f.records}
    assert sorted(asked) == list(range(6)) and all(p and set(p) == {"lr"} for p in asked.values())
    assert all(0.005 <= p["lr"] <= 0.2 for p in asked.values() if p)
    # THEN result --json ranks them with those params, the best among them
    manifest = strict(shardq("result", f.job_id, "--json").out)
    assert {row["trial"]: row["hyperparameters"] for row in manifest["leaderboard"]} == asked
    objective = {r.result.shard_id: r.result.metrics["val_loss"] for r in f.records}
    assert manifest["best"]["trial"] == min(objective, key=objective.__getitem__)
    # result (human) names the best trial's asked params; status counts an open-ended sweep
    out = shardq("result", f.job_id).out
    assert json.dumps(asked[manifest["best"]["trial"]], sort_keys=True) in out
    assert field(shardq("status", f.job_id).out, "tasks") == tasks_line(f)
    if world.data is not None:  # the dashboard's job API: the same rows
        board = world.data.job(f.job_id)["leaderboard"]["rows"]
        assert {row["trial"]: row["hyperparameters"] for row in board} == asked


def test_a_trial_with_a_finite_objective_and_a_nonfinite_metric_reads_as_succeeded(
    world: World, shardq: Any
) -> None:
    # GIVEN the lr sweep whose lr 0.2 trial (trial 3) reported grad_norm=inf and a finite val_loss
    f = world.jobs["sweep_diverged"]
    (trial,) = [r.result for r in f.records if r.result.shard_id == 3]
    assert trial.status == "succeeded" and trial.metrics["grad_norm"] == float("inf")
    # WHEN result --json shows the sweep
    manifest = strict(shardq("result", f.job_id, "--json").out)
    # THEN the trial ranks by its objective, its row keeps grad_norm as the standard-JSON "inf"
    (row,) = [r for r in manifest["leaderboard"] if r["trial"] == 3]
    assert row["outcome"] == "succeeded" and row["objective"] == trial.metrics["val_loss"]
    assert row["metrics"]["grad_norm"] == "inf"
    # and the round's means leave it out: grad_norm's mean is over the finite trials (0 and 2)
    finite = [r.result for r in f.records if r.result.shard_id in (0, 2)]
    summary = manifest["rounds"][0]["metrics"]["grad_norm"]
    assert summary["count"] == 2 and summary["max"] == max(r.metrics["grad_norm"] for r in finite)
    # status shows the job done with one diverged trial, none failed
    out = shardq("status", f.job_id).out
    assert "0 failed, 1 diverged" in out, out
    # (the dashboard's API serves this job as strict JSON: test_dashboard_job_api_and_page_agree...)


def test_watch_live_view_shows_the_global_model_on_each_reduce_row(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shardq.cli.watch import Watch

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    # GIVEN a finished data_parallel job whose reduce scored each round's global model
    f = world.jobs["data_parallel"]
    monkeypatch.setenv("COLUMNS", "200")
    out = Terminal()
    # WHEN watch draws its live view on a terminal
    code = Watch(engine=world.engine, job_id=f.job_id, out=out, interval=0).run(timeout=60)
    # THEN each reduce row carries its round's global val_loss, the round's headline
    assert code == 0
    frame = ANSI.sub("", out.getvalue())
    for r in f.manifest["rounds"]:
        value = r["reduce"]["metrics"]["val_loss"]
        (row,) = {ln for ln in frame.splitlines() if f"round {r['round'] + 1}/2 reduce" in ln}
        assert f"global val_loss {value:.6g}" in row, frame


@pytest.mark.parametrize("kind", ["sweep_halving", "sweep_asha", "sweep_asha_eager", "data_parallel_sampled"])
def test_submit_says_the_plan_status_and_watch_show(
    world: World, shardq: Any, kind: str, tmp_path: Path
) -> None:
    # GIVEN a request already run (submitting it again under its id creates nothing)
    f = world.jobs[kind]
    path = tmp_path / "request.json"
    path.write_text(json.dumps({"job_id": f.job_id, **REQUESTS[kind]}))
    # WHEN it is submitted again
    run = shardq("submit", str(path), "--direct")
    # THEN stderr words the plan as status does: rungs or the round's sample, not "N per round"
    assert run.code == 0, run.err
    assert f"already submitted (same request, same id): {plan_text(f.job)}; " in run.err
    assert "tasks per round" not in run.err


# -- a pipeline job waiting for the job it follows (issue #26) --------------------------------


def test_a_waiting_pipeline_job_reads_as_waiting_in_every_view(world: World, shardq: Any) -> None:
    # GIVEN an upstream sweep still running (nothing drives it) and a job that follows it
    upstream, follower = "matrix-pipe-upstream", "matrix-pipe-follower"
    world.engine.submit({"job_id": upstream, **REQUESTS["sweep_random"]})
    answer = world.engine.submit(
        {"job_id": follower, **REQUESTS["data_parallel"], "after": {"job_id": upstream, "use": "best"}}
    )
    assert answer["status"] == "WAITING"
    try:
        waits = f"waiting for job {upstream} to succeed, then takes its best trial's hyperparameters"
        # status, human and JSON: WAITING, what it waits for, no task recorded
        human = shardq("status", follower)
        assert human.code == 0, human.err
        assert field(human.out, "status") == "WAITING"
        assert field(human.out, "after") == waits
        data = shardq("status", follower, "--json").json()
        assert data["status"] == "WAITING"
        assert data["after"] == {"job_id": upstream, "use": "best", "waiting": True, "text": waits}
        assert (data["tasks_completed"], data["progress_pct"]) == (0, 0.0)
        # list: under its own status, and among all jobs
        listed = shardq("list", "--status", "WAITING", "--json").json()
        assert [j["job_id"] for j in listed] == [follower]
        assert follower in shardq("list").out
        # watch: it keeps waiting (not an ended job), says for what, and times out as for a running job
        watched = shardq("watch", follower, "--timeout", "0", "--interval", "0")
        assert watched.code == 1
        assert waits in watched.out
        assert f"{follower} is still" in watched.out
        # result: none yet, and says how to follow it
        result = shardq("result", follower)
        assert result.code == 3
        assert f"job {follower} is WAITING and has no result yet" in result.err
        if world.data is not None:  # the dashboard's job API
            job = world.data.job(follower)["job"]
            assert job["status"] == "WAITING"
    finally:
        # cancel both: the follower ends CANCELLED at once, the upstream's queued tasks are dropped
        assert shardq("cancel", follower).code == 0
        assert world.engine.store.get_job(follower).status == "CANCELLED"
        shardq("cancel", upstream)
