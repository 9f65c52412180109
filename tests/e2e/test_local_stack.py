"""The deployed stack on the local cloud: every job kind, the AWS CLI, queue attributes, `shardq local up`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shardq.local.cloud import LocalCloud
from tests.e2e.conftest import ROOT, wait_for_status

VENV_BIN = Path(sys.executable).parent


def invoke(cloud: LocalCloud, stack: dict[str, str], payload: dict[str, Any]) -> dict[str, Any]:
    response = cloud.client("lambda").invoke(
        FunctionName=stack["SplitterFunctionName"], Payload=json.dumps(payload).encode()
    )
    assert "FunctionError" not in response, response["Payload"].read()
    return dict(json.loads(response["Payload"].read()))


def manifest(cloud: LocalCloud, job: dict[str, Any]) -> dict[str, Any]:
    bucket, key = job.result_uri.removeprefix("s3://").split("/", 1)
    return dict(json.loads(cloud.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()))


SYNTH = "synthetic://linear?dim=4&noise=0.05&seed=3"
JOBS = {
    "data_parallel": {
        "job_id": "e2e-dp",
        "kind": "data_parallel",
        "dataset": {"uri": SYNTH, "num_samples": 2_000},
        "sharding": {"shard_count": 4},
        "rounds": 2,
        "hyperparameters": {"lr": 0.05, "epochs": 2},
        "entrypoint": "examples.linear:train",
    },
    "sweep": {
        "job_id": "e2e-sweep",
        "kind": "sweep",
        "dataset": {"uri": SYNTH, "num_samples": 1_000},
        "search_space": {"lr": [0.001, 0.05]},
        "objective": {"metric": "val_loss"},
        "entrypoint": "examples.linear:train",
    },
    "map": {
        "job_id": "e2e-map",
        "kind": "map",
        "dataset": {"uri": SYNTH, "num_samples": 1_000},
        "sharding": {"shard_size": 250},
        "entrypoint": "examples.linear:evaluate",
    },
}


def test_every_job_kind_end_to_end_through_the_deployed_stack(
    cloud: LocalCloud, stack: dict[str, str], workers: list[Any]
) -> None:
    # GIVEN the deployed stack and two worker processes
    # WHEN one job of each kind is submitted through the splitter Lambda
    answers = {kind: invoke(cloud, stack, request) for kind, request in JOBS.items()}
    assert all(a["ok"] for a in answers.values()), answers
    jobs = {kind: wait_for_status(cloud, stack, request["job_id"]) for kind, request in JOBS.items()}
    # THEN each succeeds with the result its kind promises
    assert {kind: job.status for kind, job in jobs.items()} == dict.fromkeys(JOBS, "SUCCEEDED")
    dp = manifest(cloud, jobs["data_parallel"])
    assert [r["round"] for r in dp["rounds"]] == [0, 1]
    assert dp["final_model_uri"].endswith("round-0001/reduce/model.npz")
    sweep = manifest(cloud, jobs["sweep"])
    assert sweep["best"]["hyperparameters"] == {"lr": 0.05}
    assert len(sweep["leaderboard"]) == 2
    mapped = manifest(cloud, jobs["map"])
    assert [o["shard_id"] for o in mapped["outputs"]] == [0, 1, 2, 3]
    assert all(o["artifact_uri"].endswith("stats.json") for o in mapped["outputs"])


def test_a_pipeline_runs_through_the_deployed_job_finished_rule(
    cloud: LocalCloud, stack: dict[str, str], workers: list[Any]
) -> None:
    # GIVEN a sweep, a training after it (best) and an evaluation after that (final_model), submitted
    # through the splitter at once
    sweep = {**JOBS["sweep"], "job_id": "e2e-pipe-sweep"}
    train = {
        **JOBS["data_parallel"],
        "job_id": "e2e-pipe-train",
        "rounds": 1,
        "hyperparameters": {"epochs": 2},
        "after": {"job_id": "e2e-pipe-sweep", "use": "best"},
    }
    score = {
        "job_id": "e2e-pipe-eval",
        "kind": "map",
        "dataset": {"uri": SYNTH, "num_samples": 1_000},
        "sharding": {"shard_count": 2},
        "entrypoint": "examples.linear:score",
        "after": {"job_id": "e2e-pipe-train", "use": "final_model"},
    }
    answers = [invoke(cloud, stack, r) for r in (sweep, train, score)]
    # (each follower WAITING; or, on a fast machine, RUNNING at once because its upstream had already
    # ended by its submit: checked below from the records)
    assert answers[0]["status"] == "RUNNING" and all(a["status"] in ("WAITING", "RUNNING") for a in answers)
    # WHEN the sweep ends, its Job Finished event reaches the pipeline Lambda through the deployed
    # EventBridge rule (nothing in this test calls the handler), and so on down the chain
    jobs = {
        r["job_id"]: wait_for_status(cloud, stack, r["job_id"], timeout=240) for r in (sweep, train, score)
    }
    # THEN all three succeed, each with what it took from the one before
    assert [j.status for j in jobs.values()] == ["SUCCEEDED"] * 3, [j.error for j in jobs.values()]
    chain = list(jobs.values())
    for answer, upstream, follower in zip(answers[1:], chain[:-1], chain[1:], strict=True):
        if answer["status"] == "RUNNING":  # started at submit: only if its upstream had ended
            assert upstream.finished_at and upstream.finished_at <= follower.created_at, (upstream, follower)
    best = manifest(cloud, jobs["e2e-pipe-sweep"])["best"]
    assert jobs["e2e-pipe-train"].request.hyperparameters == {"epochs": 2, **best["hyperparameters"]}
    final = manifest(cloud, jobs["e2e-pipe-train"])["final_model_uri"]
    assert jobs["e2e-pipe-eval"].request.model["init_uri"] == final
    # scored with that model (examples.linear:score fails without one): a finite error on every shard
    scored = manifest(cloud, jobs["e2e-pipe-eval"])
    assert scored["metrics"]["mse"]["count"] == 2
    assert 0 < scored["metrics"]["mse"]["mean"] < float("inf")


def aws(cloud: LocalCloud, *args: str) -> Any:
    env = {**os.environ, **cloud.env()}
    out = subprocess.run(
        [str(VENV_BIN / "aws"), "--endpoint-url", cloud.endpoint_url, "--output", "json", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    # AWS CLI v1 (the pinned dev requirement) sends --payload as given; v2 would need
    # --cli-binary-format raw-in-base64-out for the same call.
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def test_aws_cli_speaks_to_the_local_cloud(cloud: LocalCloud, stack: dict[str, str], tmp_path: Path) -> None:
    # the AWS CLI invokes the splitter exactly as against AWS ...
    payload = {
        "job_id": "cli-job",
        "kind": "map",
        "dataset": {"num_samples": 30},
        "sharding": {"shard_count": 3},
        "entrypoint": "tests.workloads:ok",
    }
    out = tmp_path / "out.json"
    aws(
        cloud,
        "lambda",
        "invoke",
        "--function-name",
        stack["SplitterFunctionName"],
        "--payload",
        json.dumps(payload),
        str(out),
    )
    answer = json.loads(out.read_text())
    assert (answer["ok"], answer["job_id"], answer["shards"]) == (True, "cli-job", 3)
    # ... reads the stack and the queues ...
    described = aws(cloud, "cloudformation", "describe-stacks", "--stack-name", "shardq")
    keys = {o["OutputKey"] for o in described["Stacks"][0]["Outputs"]}
    assert {"TaskQueueUrl", "SplitterFunctionName", "WorkerPolicyArn"} <= keys
    attrs = aws(
        cloud,
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        stack["TaskQueueUrl"],
        "--attribute-names",
        "FifoQueue",
        "ContentBasedDeduplication",
    )
    assert attrs["Attributes"] == {"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    # ... and a bad request gets the splitter's field-naming error, creating nothing
    aws(
        cloud,
        "lambda",
        "invoke",
        "--function-name",
        stack["SplitterFunctionName"],
        "--payload",
        '{"kind": "map"}',
        str(out),
    )
    rejected = json.loads(out.read_text())
    assert rejected["ok"] is False
    assert any("dataset is required" in p for p in rejected["problems"])


def test_deployed_queues_match_the_synthesized_template(
    cloud: LocalCloud, stack: dict[str, str], template: dict[str, Any]
) -> None:
    sqs = cloud.client("sqs")
    queues = {
        logical: r["Properties"]
        for logical, r in template["Resources"].items()
        if r["Type"] == "AWS::SQS::Queue"
    }
    task = next(p for lid, p in queues.items() if lid.startswith("TaskQueue"))
    results = next(p for lid, p in queues.items() if lid.startswith("ResultsQueue"))
    for props, output in ((task, "TaskQueueUrl"), (results, "ResultsQueueUrl")):
        live = sqs.get_queue_attributes(QueueUrl=stack[output], AttributeNames=["All"])["Attributes"]
        assert live.get("FifoQueue", "false") == str(props.get("FifoQueue", False)).lower()
        assert (
            live.get("ContentBasedDeduplication", "false")
            == str(props.get("ContentBasedDeduplication", False)).lower()
        )
        assert int(live["VisibilityTimeout"]) == props["VisibilityTimeout"]
        redrive = json.loads(live["RedrivePolicy"])
        assert redrive["maxReceiveCount"] == props["RedrivePolicy"]["maxReceiveCount"]
        assert redrive["deadLetterTargetArn"].endswith(".fifo") == bool(props.get("FifoQueue"))


def test_local_up_serves_until_sigterm_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # GIVEN `shardq local up` with its own local cloud
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shardq.cli", "local", "up", "--run-file", str(tmp_path / "local.json")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if not first:
        proc.wait(timeout=30)
        raise AssertionError(f"shardq local up printed nothing: {proc.stderr.read() if proc.stderr else ''}")
    info = json.loads(first)
    # THEN its first line says where everything is, with the same output keys as on AWS
    assert info["endpoint_url"].startswith("http://127.0.0.1:")
    assert info["region"] == "us-east-1"
    assert {"TaskQueueUrl", "ResultsQueueUrl", "SplitterFunctionName", "JobTableName"} <= set(info["outputs"])
    state_dir = Path(info["state_dir"])
    assert state_dir.is_dir()
    # WHEN it gets SIGTERM
    proc.send_signal(signal.SIGTERM)
    # THEN it exits 0, the local cloud process is gone, and so is its temp state
    assert proc.wait(timeout=60) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(info["pid"], 0)
    assert not state_dir.exists()
