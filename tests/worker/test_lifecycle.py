"""When a worker process ends on its own (idle, its jobs finished), its CLI, and its GPU per slot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from shardq.cli import build_parser
from shardq.cli.worker import build_workers
from shardq.core.contracts import ShardResult
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.worker.devices import SlotDevice, assign, visible_devices
from shardq.worker.runtime import Worker
from tests.helpers import TRUSTED, receive_all

ROOT = Path(__file__).resolve().parents[2]


def spawn(
    cloud: LocalCloud, settings: Settings, log: Path, *extra: str, **env: str
) -> subprocess.Popen[bytes]:
    """``shardq worker`` as a process on this test's queues, JSON log lines to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                sys.executable, "-m", "shardq.cli", "worker",
                "--task-queue-url", settings.task_queue_url,
                "--results-queue-url", settings.results_queue_url,
                "--job-table", settings.job_table,
                "--wait-seconds", "1",
                "--allow", "tests.*",
                *extra,
            ],
            cwd=ROOT,
            env={**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT), **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]


def stamp(line: dict[str, Any]) -> float:
    return datetime.fromisoformat(line["timestamp"]).timestamp()


def submit_map(engine: Engine, job_id: str, shards: int, entrypoint: str = "tests.workloads:ok") -> None:
    engine.submit(
        {
            "job_id": job_id,
            "kind": "map",
            "dataset": {"num_samples": shards * 10},
            "sharding": {"shard_count": shards},
            "entrypoint": entrypoint,
        }
    )


def test_idle_exit_waits_for_the_work_then_exits_0_after_the_idle_time(
    cloud: LocalCloud, engine: Engine, settings: Settings, clients: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN 3 tasks on the queue and a 2-slot worker started with --idle-exit 2
    submit_map(engine, "idle", 3)
    log = tmp_path / "worker.log"
    proc = spawn(cloud, settings, log, "--idle-exit", "2", "--concurrency", "2")
    # WHEN it runs out of work, it exits by itself, 0
    assert proc.wait(timeout=120) == 0, log.read_text()
    # THEN every task was done first, and the exit came no sooner than 2 s after the last one
    posted = receive_all(clients["sqs"], settings.task_queue_url)
    assert posted == []
    results = receive_all(clients["sqs"], settings.results_queue_url)
    assert sorted(json.loads(m["Body"])["shard_id"] for m in results) == [0, 1, 2]
    entries = lines(log)
    done = [stamp(e) for e in entries if e.get("status") == "succeeded"]
    (end,) = [e for e in entries if e.get("reason") == "idle" and "exit_code" in e]
    assert len(done) == 3 and stamp(end) - max(done) >= 2.0
    assert end["exit_code"] == 0


def test_a_worker_started_for_a_job_exits_0_once_it_is_finished(
    cloud: LocalCloud, engine: Engine, settings: Settings, clients: dict[str, Any], tmp_path: Path
) -> None:
    # GIVEN a worker started for job "mine" (no idle exit: only the job's end stops it)
    submit_map(engine, "mine", 2)
    log = tmp_path / "worker.log"
    proc = spawn(cloud, settings, log, "--job-id", "mine", "--concurrency", "1")
    # WHEN its results are recorded and the job succeeds
    got: list[ShardResult] = []
    deadline = time.monotonic() + 60
    while len(got) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        got += [
            ShardResult.from_json(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)
        ]
    assert proc.poll() is None  # still running: the job is not finished until the results are in
    engine.ingest([Outcome(r) for r in got])
    assert engine.status("mine").status == "SUCCEEDED"
    # THEN the worker notices and exits 0
    assert proc.wait(timeout=60) == 0, log.read_text()
    assert any(e.get("reason") == "jobs" for e in lines(log))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--idle-exit", "-1"], "--idle-exit must be > 0"),
        (["--max-tasks", "0"], "--max-tasks must be >= 1"),
        (["--job-id", "x"], "--job-id needs the job table"),
        (["--allow", "tests/*"], "--allow 'tests/*': a pattern is a module"),
    ],
)
def test_bad_worker_options_are_usage_errors_naming_the_fix(
    cloud: LocalCloud, settings: Settings, tmp_path: Path, extra: list[str], message: str
) -> None:
    # the stack's outputs without a job table
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps({"TaskQueueUrl": settings.task_queue_url, "ResultsQueueUrl": settings.results_queue_url})
    )
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT), "SHARDQ_OUTPUTS_JSON": str(outputs),
           "SHARDQ_ALLOW": "tests.*"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "shardq.cli", "worker", *extra],
        cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert message in out.stderr


def test_worker_takes_the_common_options_after_the_command(cloud: LocalCloud, tmp_path: Path) -> None:
    args = build_parser().parse_args(["worker", "--stack", "other", "--endpoint-url", "http://e:1"])
    assert (args.stack, args.endpoint_url) == ("other", "http://e:1")
    # and uses them: the stack named after the command is the one looked up
    out = subprocess.run(
        [sys.executable, "-m", "shardq.cli", "worker", "--stack", "no-such-stack", "--allow", "tests.*"],
        cwd=ROOT, env={**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 3, out.stderr
    assert "stack 'no-such-stack' does not exist" in out.stderr


# -- one GPU per slot -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("visible", "devices"),
    [
        ("0,1", ["0", "1"]),
        ("3, 5", ["3", "5"]),
        ("GPU-8f2a,GPU-77c1", ["GPU-8f2a", "GPU-77c1"]),
        ("", []),
        ("-1", []),
        ("2,-1,4", ["2"]),  # CUDA stops at the first invalid id
    ],
)
def test_devices_come_from_cuda_visible_devices(visible: str, devices: list[str]) -> None:
    assert visible_devices({"CUDA_VISIBLE_DEVICES": visible, "PATH": ""}) == devices


def test_devices_come_from_nvidia_smi_when_cuda_visible_devices_is_unset(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA A10G (UUID: GPU-a)'\n"
        "echo 'GPU 1: NVIDIA A10G (UUID: GPU-b)'\n"
        "echo 'GPU 2: NVIDIA A10G (UUID: GPU-c)'\n"
    )
    smi.chmod(0o755)
    assert visible_devices({"PATH": str(tmp_path)}) == ["0", "1", "2"]
    assert visible_devices({"PATH": str(tmp_path / "none")}) == []


def test_slots_get_one_device_each_round_robin() -> None:
    assert assign(4, ["3", "5"]) == [
        SlotDevice("cuda:0", "3"),
        SlotDevice("cuda:1", "5"),
        SlotDevice("cuda:0", "3"),
        SlotDevice("cuda:1", "5"),
    ]
    assert assign(2, []) == [SlotDevice("cpu"), SlotDevice("cpu")]


def test_shardq_worker_builds_one_slot_per_visible_gpu_each_on_its_own_device(
    cloud: LocalCloud, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in cloud.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6,7")
    args = build_parser().parse_args(["worker", "--allow", "tests.*"])
    workers = build_workers(args, settings.task_queue_url, settings.results_queue_url, settings.job_table)
    assert [(w.device.device, w.device.physical) for w in workers] == [
        ("cuda:0", "4"),
        ("cuda:1", "6"),
        ("cuda:2", "7"),
    ]
    assert len({id(w.activity) for w in workers}) == 1  # one idle clock for the whole worker


def test_the_training_function_sees_its_slots_device(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit_map(engine, "dev", 2, "tests.worker.workloads:device")
    slots = [
        Worker(
            allow=TRUSTED,
            sqs=clients["sqs"],
            s3=clients["s3"],
            task_queue_url=settings.task_queue_url,
            results_queue_url=settings.results_queue_url,
            wait_s=1,
            device=device,
        )
        for device in assign(2, ["0", "1"])
    ]
    for w in slots:
        w.run(threading.Event(), max_tasks=1)
    written = []
    for m in receive_all(clients["sqs"], settings.results_queue_url):
        prefix = json.loads(m["Body"])["artifact_uri"]
        bucket, key = prefix.removeprefix("s3://").split("/", 1)
        written.append(
            clients["s3"].get_object(Bucket=bucket, Key=key + "device.txt")["Body"].read().decode()
        )
    assert sorted(written) == ["cuda:0", "cuda:1"]
