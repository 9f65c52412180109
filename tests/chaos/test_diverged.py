"""Issue #22: non-finite and invalid results never hang or poison a job; none is lost in silence.

Each scenario runs the real handlers (aggregator, results DLQ handler) and, where a worker
matters, the real worker runtime in-process, against the local cloud. Named after the promises:

* ``sweep_with_diverged_trial_ends``: a trial whose loss is NaN is *diverged*, the sweep ends;
* ``negative_num_samples_recorded_as_failure``: a body the parser rejects fails its shard now;
* ``inf_metric_manifest_is_standard_json``: what shardq writes parses with a strict parser;
* ``rejected_result_recorded_as_task_failure``: the results DLQ handler records a dead result;
* ``result_naming_no_task_is_parked_with_reason``: what names no task is parked at once with its
  reason, shown by ``dlq show`` and moved back by ``dlq redrive``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from lambdas import aggregator, common, results_dlq_handler
from shardq.cli import main
from shardq.core.contracts import ShardResult, ShardTask, ValidationError
from shardq.core.verdicts import REJECTED_SOURCE, RESULTS_DLQ_SOURCE, checked, vet
from shardq.worker.runtime import Worker
from tests.chaos.conftest import Rig
from tests.chaos.harness import load_model, run_until
from tests.helpers import (
    TRUSTED,
    LambdaContext,
    body_event,
    count_messages,
    gather_batch,
    post_bodies,
    queue_arn,
    receive_all,
    result_body,
    result_for,
    sqs_event,
    tasks_of,
)


def strict_json(raw: bytes | str) -> Any:
    """``json.loads`` that refuses NaN and Infinity, as JSON.parse and most other parsers do."""

    def refuse(token: str) -> Any:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(raw, parse_constant=refuse)


def manifest(r: Rig, job_id: str) -> Any:
    body = r.clients["s3"].get_object(Bucket=r.settings.artifact_bucket, Key=f"jobs/{job_id}/result.json")
    return strict_json(body["Body"].read())


def worker(r: Rig) -> Worker:
    return Worker(
        sqs=r.clients["sqs"],
        s3=r.clients["s3"],
        task_queue_url=r.settings.task_queue_url,
        results_queue_url=r.settings.results_queue_url,
        allow=TRUSTED,
        wait_s=0,
    )


def map_job(job_id: str, shards: int, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"num_samples": 10 * shards},
        "sharding": {"shard_count": shards},
        **extra,
    }


def sweep(job_id: str, lrs: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "sweep",
        "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=11", "num_samples": 256},
        "hyperparameters": {"epochs": 20, "batch_size": 32},
        "search_space": {"lr": lrs},
        "objective": {"metric": "loss", "direction": "minimize"},
        "entrypoint": "examples.linear:train",
        **extra,
    }


@pytest.mark.local_cloud
def test_sweep_with_diverged_trial_ends(rig: Callable[..., Rig]) -> None:
    # GIVEN the sweep: lr 0.1 and 0.05 train, lr 100 overflows to NaN; no failure allowed
    r = rig()
    r.engine.submit(sweep("sw", [0.1, 100.0, 0.05], max_failed_shards=0))
    w = worker(r)
    # WHEN real workers train every trial and the real aggregator takes their results
    job = run_until(
        r.engine, "sw", r.pump, chaos=lambda: [None for _ in iter(w.poll_once, False)], timeout=60
    )
    # THEN the job ends SUCCEEDED: the diverged trial is done, not failed
    assert job.status == "SUCCEEDED", job.error
    view = job.view()
    assert (view.done, view.failed, view.diverged) == (3, 0, 1)
    m = manifest(r, "sw")
    board = m["leaderboard"]
    assert [row["outcome"] for row in board] == ["succeeded", "succeeded", "diverged"]
    assert board[-1]["trial"] == 1 and board[-1]["objective"] is None
    assert board[-1]["metrics"]["loss"] in ("nan", "inf")
    assert m["best"]["trial"] in (0, 2) and m["diverged_count"] == 1
    assert m["failed"] == [] and m["rounds"][0]["shards_diverged"] == 1
    (row,) = [o for o in r.engine.store.all_results("sw") if o.result.shard_id == 1]
    assert row.result.status == "diverged" and "trial diverged: non-finite objective loss=" in (
        row.result.error or ""
    )


def test_a_sweep_whose_every_trial_diverged_fails_naming_the_fix(rig: Callable[..., Rig]) -> None:
    # GIVEN a sweep of learning rates that all overflow to NaN
    r = rig()
    r.engine.submit(sweep("all-nan", [100.0, 200.0], max_failed_shards=0))
    w = worker(r)
    # WHEN every trial is trained and recorded
    job = run_until(
        r.engine, "all-nan", r.pump, chaos=lambda: [None for _ in iter(w.poll_once, False)], timeout=60
    )
    # THEN the sweep ends FAILED (there is no trial to use), saying why and what to change
    assert job.status == "FAILED"
    assert "every trial diverged" in (job.error or "") and "search space" in (job.error or "")
    view = job.view()
    assert (view.done, view.failed, view.diverged) == (2, 0, 2)
    m = manifest(r, "all-nan")
    assert m["best"] is None and m["diverged_count"] == 2


def test_a_diverged_trial_is_never_promoted_and_ranks_last() -> None:
    from shardq.core import search
    from shardq.core.contracts import TrainingRequest

    request = TrainingRequest.from_dict(
        {
            **sweep("sh", [0.1, 0.2, 0.3, 0.4]),
            "early_stopping": {"method": "successive_halving", "min_budget": 1, "max_budget": 4, "eta": 2},
            "hyperparameters": {},
        }
    )

    def trial(i: int, loss: float) -> ShardResult:
        return vet(
            ShardResult(
                job_id="sh",
                round=0,
                shard_id=i,
                task_type="train",
                status="succeeded",
                metrics={"loss": loss},
            ),
            "sweep",
            "loss",
        )

    rung = [trial(0, float("nan")), trial(1, 0.5), trial(2, float("-inf")), trial(3, 0.7)]
    # -inf would be the best "loss" of all: a diverged trial must never win on a non-finite value
    assert [i for i, _ in search.promote(request, rung)] == [1, 3]
    section = search.sweep_section(request, rung)
    assert [row["trial"] for row in section["leaderboard"]] == [1, 3, 0, 2]
    assert section["best"]["trial"] == 1
    strict_json(json.dumps(section))


@pytest.mark.local_cloud
def test_negative_num_samples_recorded_as_failure(rig: Callable[..., Rig]) -> None:
    # GIVEN a 2-shard map job allowing no failure, and an (older) worker posting num_samples=-1
    r = rig()
    r.engine.submit(
        {"job_id": "neg", "kind": "map", "dataset": {"num_samples": 20}, "sharding": {"shard_count": 2}}
    )
    tasks = tasks_of(receive_all(r.clients["sqs"], r.settings.task_queue_url))
    post_bodies(
        r.clients["sqs"],
        r.settings.results_queue_url,
        [result_body(tasks[0], num_samples=-1), result_for(tasks[1]).to_json()],
    )
    # WHEN the aggregator takes them, once
    job = run_until(r.engine, "neg", r.pump, timeout=30)
    # THEN the job ends at once, FAILED over its budget, naming the field; nothing reaches the DLQ
    assert job.status == "FAILED"
    assert "num_samples must be between 0" in (job.error or "")
    (failure,) = r.engine.store.failed_results("neg")
    assert failure.source == REJECTED_SOURCE and failure.result.shard_id == 0
    assert count_messages(r.clients["sqs"], r.pump.results_dlq_url) == 0
    assert manifest(r, "neg")["failed"][0]["error"].startswith("result rejected by the aggregator")


def test_a_worker_checks_its_result_with_the_aggregators_parser() -> None:
    task = ShardTask(
        job_id="j", round=0, shard_id=3, shard_count=4, task_type="train", kind="data_parallel",
        entrypoint="examples.linear:train", data={}, hyperparameters={}, output_prefix="s3://b/p/",
    )  # fmt: skip
    bad = ShardResult.for_task(task, "succeeded", num_samples=-1, metrics={"loss": 0.1})
    posted = checked(bad, "data_parallel")
    assert posted.status == "failed" and "num_samples must be between 0" in (posted.error or "")
    ShardResult.from_json(posted.to_json())  # what it posts, the aggregator accepts
    nan = checked(ShardResult.for_task(task, "succeeded", metrics={"loss": math.nan}), "data_parallel")
    assert nan.status == "failed" and "loss=nan" in (nan.error or "") and "average" in (nan.error or "")
    # A sweep trial's verdict needs its objective, which a worker does not know: the aggregator's
    inf = checked(ShardResult.for_task(task, "succeeded", metrics={"acc": math.inf}), "sweep")
    assert inf.status == "succeeded" and inf.to_dict()["metrics"] == {"acc": "inf"}
    assert (
        checked(ShardResult.for_task(task, "succeeded", metrics={"loss": 0.1}), "map").status == "succeeded"
    )


@pytest.mark.local_cloud
def test_inf_metric_manifest_is_standard_json(rig: Callable[..., Rig]) -> None:
    # GIVEN a sweep whose trial 1 reports loss=Infinity and a map job whose shard 0 does
    r = rig()
    r.engine.submit(sweep("inf-sweep", [0.1, 0.2], max_failed_shards=0))
    r.engine.submit(map_job("inf-map", 2, max_failed_shards=1))
    tasks = {
        (t.job_id, t.shard_id): t for t in tasks_of(receive_all(r.clients["sqs"], r.settings.task_queue_url))
    }
    bodies = [
        result_body(tasks[("inf-sweep", 0)], metrics={"loss": 0.25}),
        result_body(tasks[("inf-sweep", 1)], metrics={"loss": math.inf, "val_loss": -math.inf}),
        result_body(tasks[("inf-map", 0)], metrics={"loss": math.inf}),
        result_body(tasks[("inf-map", 1)], metrics={"loss": 0.5}),
    ]
    assert "Infinity" in bodies[1]  # the non-standard token an older worker writes
    # WHEN the aggregator takes them
    assert aggregator.aggregate(body_event(bodies), LambdaContext()) == {"batchItemFailures": []}
    # THEN both jobs end, and every manifest is standard JSON
    assert r.engine.store.get_job("inf-sweep").status == "SUCCEEDED"
    m = manifest(r, "inf-sweep")
    assert [(row["trial"], row["outcome"], row["objective"]) for row in m["leaderboard"]] == [
        (0, "succeeded", 0.25),
        (1, "diverged", None),
    ]
    assert m["leaderboard"][1]["metrics"] == {"loss": "inf", "val_loss": "-inf"}
    assert r.engine.store.get_job("inf-map").status == "SUCCEEDED"
    mm = manifest(r, "inf-map")
    assert [o["shard_id"] for o in mm["outputs"]] == [1]
    assert mm["metrics"]["loss"]["mean"] == 0.5  # the inf shard never enters the mean
    assert "non-finite metric loss=inf" in mm["failed"][0]["error"]
    # AND the recorded result (what `shardq result` and the dashboard read) is standard JSON too
    (row,) = [o for o in r.engine.store.all_results("inf-sweep") if o.result.shard_id == 1]
    strict_json(row.result.to_json())


def test_only_the_objective_decides_that_a_trial_diverged() -> None:
    trial = ShardResult(
        job_id="s", round=0, shard_id=0, task_type="train", status="succeeded",
        metrics={"loss": 0.4, "grad_norm": math.inf},
    )  # fmt: skip
    # A finite objective beside a non-finite metric: an ordinary trial
    assert vet(trial, "sweep", "loss") is trial
    # A non-finite objective: diverged, naming it (and the others)
    diverged = vet(trial, "sweep", "grad_norm")
    assert diverged.status == "diverged" and "non-finite objective grad_norm=inf" in (diverged.error or "")
    # data_parallel and map keep the rule: any non-finite metric fails the shard, naming it
    for kind in ("data_parallel", "map"):
        failed = vet(trial, kind, None)
        assert failed.status == "failed" and "non-finite metric grad_norm=inf" in (failed.error or "")


@pytest.mark.local_cloud
def test_a_trial_with_a_finite_objective_and_a_nonfinite_metric_succeeds(rig: Callable[..., Rig]) -> None:
    # GIVEN a 3-trial sweep: trial 1's objective overflows; trial 2's objective is finite but its
    # val_loss is NaN
    r = rig()
    r.engine.submit(sweep("half-nan", [0.1, 0.2, 0.3], max_failed_shards=0))
    tasks = {t.shard_id: t for t in tasks_of(receive_all(r.clients["sqs"], r.settings.task_queue_url))}
    bodies = [
        result_body(tasks[0], metrics={"loss": 0.25, "val_loss": 0.3}),
        result_body(tasks[1], metrics={"loss": math.inf, "val_loss": 0.1}),
        result_body(tasks[2], metrics={"loss": 0.4, "val_loss": math.nan}),
    ]
    # WHEN the aggregator takes them
    assert aggregator.aggregate(body_event(bodies), LambdaContext()) == {"batchItemFailures": []}
    # THEN only trial 1 diverged; trial 2 is an ordinary trial ranked by its objective
    job = r.engine.store.get_job("half-nan")
    assert job.status == "SUCCEEDED" and (job.view().done, job.view().diverged) == (3, 1)
    raw = (
        r.clients["s3"]
        .get_object(Bucket=r.settings.artifact_bucket, Key=job.result_uri.split("/", 3)[3])["Body"]
        .read()
    )
    m = strict_json(raw)  # standard JSON throughout
    board = m["leaderboard"]
    assert [(row["trial"], row["outcome"], row["objective"]) for row in board] == [
        (0, "succeeded", 0.25),
        (2, "succeeded", 0.4),
        (1, "diverged", None),
    ]
    assert board[1]["metrics"] == {"loss": 0.4, "val_loss": "nan"}
    # and the round's means leave the NaN out (the diverged trial is not in them either)
    summary = m["rounds"][0]
    assert (summary["shards_succeeded"], summary["shards_diverged"]) == (2, 1)
    assert summary["metrics"]["val_loss"]["mean"] == 0.3 and summary["metrics"]["val_loss"]["count"] == 1
    assert summary["metrics"]["loss"]["count"] == 2


@pytest.mark.local_cloud
def test_rejected_result_recorded_as_task_failure(rig: Callable[..., Rig]) -> None:
    # GIVEN a 3-shard map job whose results died in the results DLQ (e.g. posted while the job store
    # failed, or by an aggregator that predates issue #22): one rejected, one valid
    r = rig()
    r.engine.submit(map_job("dead", 3, max_failed_shards=1))
    tasks = tasks_of(receive_all(r.clients["sqs"], r.settings.task_queue_url))
    post_bodies(
        r.clients["sqs"],
        r.pump.results_dlq_url,
        [result_body(tasks[0], metrics={"loss": "low"}), result_for(tasks[1]).to_json()],
    )
    post_bodies(r.clients["sqs"], r.settings.results_queue_url, [result_for(tasks[2]).to_json()])
    # WHEN the results DLQ handler runs beside the aggregator
    job = run_until(r.engine, "dead", r.pump, timeout=30)
    # THEN the rejected one is its shard's failure with the parser's reason, the valid one counts
    assert job.status == "SUCCEEDED"
    outcomes = {o.result.shard_id: o for o in r.engine.store.all_results("dead")}
    assert outcomes[0].result.status == "failed" and outcomes[0].source == REJECTED_SOURCE
    assert "metrics.loss must be a number" in (outcomes[0].result.error or "")
    assert outcomes[1].result.status == "succeeded" and outcomes[1].source == RESULTS_DLQ_SOURCE
    assert count_messages(r.clients["sqs"], r.pump.results_dlq_url) == 0


def dlq_outputs(r: Rig, path: Path, *, parked: bool = True) -> dict[str, str]:
    """The stack outputs the `shardq dlq` verbs read, pointed at this rig's queues."""
    outputs = {
        "TaskQueueUrl": r.settings.task_queue_url,
        "TaskDlqUrl": r.pump.task_dlq_url,
        "ResultsQueueUrl": r.settings.results_queue_url,
        "ResultsDlqUrl": r.pump.results_dlq_url,
        "JobTableName": r.settings.job_table,
        "ArtifactBucketName": r.settings.artifact_bucket,
    }
    if parked:
        assert r.settings.parked_results_queue_url, "the stack's template has no parked-results queue"
        outputs["ParkedResultsQueueUrl"] = r.settings.parked_results_queue_url
    path.write_text(json.dumps(outputs))
    return outputs


@pytest.mark.local_cloud
def test_result_naming_no_task_is_parked_with_reason(
    rig: Callable[..., Rig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN dead results that name no planned task: an unknown job, a shard the job lacks, no JSON
    r = rig()
    r.engine.submit(map_job("known", 2))
    (task, _) = tasks_of(receive_all(r.clients["sqs"], r.settings.task_queue_url))
    good = result_for(task).to_dict()
    bodies = [json.dumps({**good, "job_id": "no-such-job"}), json.dumps({**good, "shard_id": 7}), "{not json"]
    sqs, dlq = r.clients["sqs"], r.pump.results_dlq_url
    parked = r.settings.parked_results_queue_url
    assert parked
    post_bodies(sqs, dlq, bodies)
    # WHEN the results DLQ handler gets them (as its event source mapping hands them over)
    msgs = gather_batch(sqs, dlq, 10)
    response = results_dlq_handler.handle_dead_results(sqs_event(msgs, queue_arn(sqs, dlq)), LambdaContext())
    # THEN it records none, parks all three at once (none fails, so the DLQ deletes them), none lost
    assert response == {"batchItemFailures": []}
    r.pump.delete(dlq, msgs)  # what the event source mapping does with the records not failed
    assert r.engine.store.all_results("known") == []
    assert count_messages(sqs, dlq) == 0
    assert count_messages(sqs, parked) == 3
    # AND `shardq dlq show` lists them, each with why it was not recorded
    monkeypatch.setenv("SHARDQ_OUTPUTS_JSON", str(tmp_path / "outputs.json"))
    dlq_outputs(r, tmp_path / "outputs.json")
    capsys.readouterr()
    assert main(["dlq", "show", "--queue", "results", "--json"]) == 0
    shown = strict_json(capsys.readouterr().out)
    assert len(shown) == 3, shown
    assert {d["held_in"] for d in shown} == {"parked"}
    reasons = sorted(d["reason"] for d in shown)
    assert any("job no-such-job does not exist" in x for x in reasons), reasons
    assert any("shard_id 7 does not exist: job known has 2 tasks per round" in x for x in reasons), reasons
    assert any(x.startswith("names no task") and "not valid JSON" in x for x in reasons), reasons
    assert count_messages(sqs, parked) == 3  # shown, not taken
    assert main(["dlq", "show", "--queue", "results"]) == 0
    human = capsys.readouterr().out
    assert "(0 in the DLQ, 3 parked)" in human and "job no-such-job does not exist" in human
    assert main(["dlq", "list", "--queue", "results", "--json"]) == 0
    counted = {row["queue"]: row["visible"] for row in strict_json(capsys.readouterr().out)}
    assert counted == {"results": 0, "results (parked)": 3}
    # AND `shardq dlq redrive` gives them another try on the results queue, none lost
    assert main(["dlq", "redrive", "--queue", "results", "--json"]) == 0
    moved = {row["queue"]: row["moved"] for row in strict_json(capsys.readouterr().out)}
    assert moved == {"results": 0, "results (parked)": 3}
    assert count_messages(sqs, parked) == 0
    assert sorted(m["Body"] for m in gather_batch(sqs, r.settings.results_queue_url, 10)) == sorted(bodies)


@pytest.mark.local_cloud
def test_without_a_parked_queue_a_dead_result_stays_in_the_dlq(
    rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a stack deployed before the parked queue existed (its handler has no parked URL)
    r = rig()
    monkeypatch.delenv("SHARDQ_PARKED_RESULTS_QUEUE_URL")
    common.engine.cache_clear()
    sqs, dlq = r.clients["sqs"], r.pump.results_dlq_url
    post_bodies(sqs, dlq, ["{not json"])
    msgs = gather_batch(sqs, dlq, 10)
    # WHEN the handler gets it, THEN it fails the record as before: it stays in the DLQ, unparked
    with pytest.raises(BatchProcessingError, match="All records failed"):
        results_dlq_handler.handle_dead_results(sqs_event(msgs, queue_arn(sqs, dlq)), LambdaContext())
    assert count_messages(sqs, dlq) == 1
    assert count_messages(sqs, r.settings.parked_results_queue_url) == 0


def test_parser_reads_nonfinite_metrics_and_writes_standard_json() -> None:
    raw = (
        '{"job_id":"j","round":0,"shard_id":0,"task_type":"train","status":"succeeded",'
        '"metrics":{"a":NaN,"b":"-inf"}}'
    )
    r = ShardResult.from_json(raw)
    assert math.isnan(r.metrics["a"]) and r.metrics["b"] == -math.inf
    assert strict_json(r.to_json())["metrics"] == {"a": "nan", "b": "-inf"}
    with pytest.raises(ValidationError, match=r"metrics\.c must be a number"):
        ShardResult.from_json(raw.replace('"b":"-inf"', '"c":"lots"'))


def nan_model(task: Any, ctx: Any) -> dict[str, Any]:
    """examples.linear.train, except that shard 1's model is NaN (its metrics stay finite)."""
    from examples import linear

    out = linear.train(task, ctx)
    if task.shard_id == 1:
        with np.load(ctx.output_dir / "model.npz") as m:
            arrays = {k: m[k] for k in m.files}
        arrays["w"] = np.full_like(arrays["w"], np.nan)
        np.savez(ctx.output_dir / "model.npz", **arrays)
    return out


@pytest.mark.local_cloud
def test_a_nan_shard_model_fails_its_shard_and_never_enters_the_average(rig: Callable[..., Rig]) -> None:
    # GIVEN a 2-shard data_parallel job whose shard 1 trains a NaN model, one failure allowed
    r = rig()
    r.engine.submit(
        {
            "job_id": "dp",
            "kind": "data_parallel",
            "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=11", "num_samples": 128},
            "sharding": {"shard_count": 2},
            "hyperparameters": {"lr": 0.05, "epochs": 1, "batch_size": 32},
            "entrypoint": "tests.chaos.test_diverged:nan_model",
            "max_failed_shards": 1,
        }
    )
    w = worker(r)
    # WHEN real workers train and reduce
    job = run_until(
        r.engine, "dp", r.pump, chaos=lambda: [None for _ in iter(w.poll_once, False)], timeout=60
    )
    # THEN shard 1 failed naming the array, and the final model (shard 0's alone) is finite
    assert job.status == "SUCCEEDED", job.error
    (failure,) = r.engine.store.failed_results("dp")
    assert failure.result.shard_id == 1 and "array 'w' of the model model.npz holds NaN" in (
        failure.result.error or ""
    )
    final = load_model(r.clients["s3"], job.model_uri)
    assert all(np.isfinite(a).all() for a in final.values())
