"""The chaos harness: real worker processes, an in-process event source for the Lambdas, fault hooks.

* ``WorkerPool`` runs ``shardq worker`` processes (the CLI, as on a GPU box) and, like an
  auto-scaling group, replaces any that die. Tests SIGKILL or SIGTERM them.
* ``Pump`` does what the event source mappings do: receive a batch from the results
  queue (aggregator), the task DLQ (DLQ handler) or the results DLQ (results DLQ handler),
  invoke the real handler, delete the
  records it did not report as failed. When the handler *crashes* (any exception,
  including the ``InjectedCrash`` the tests throw), nothing is deleted: the batch comes back
  after the queue's visibility timeout, as it does from a Lambda that died.
* ``reference_model`` trains the same request once without faults (in-process workers)
  and returns the final model's arrays, the yardstick every chaos run must equal.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls, provision
from shardq.worker.runtime import Worker, split_s3
from tests.helpers import HttpFaults, LambdaContext, count_messages, gather_batch, queue_arn, sqs_event

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = "tests.chaos.workloads:train"


class InjectedCrash(BaseException):
    """A process death injected by a test: BaseException, so no ``except Exception`` swallows it."""


def request(
    job_id: str, *, shards: int = 4, rounds: int = 2, sleep: float = 0.0, **extra: Any
) -> dict[str, Any]:
    """A small deterministic data_parallel job on the synthetic linear dataset."""
    return {
        "job_id": job_id,
        "kind": "data_parallel",
        "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=11", "num_samples": 256 * shards},
        "sharding": {"shard_count": shards},
        "rounds": rounds,
        "hyperparameters": {"lr": 0.05, "epochs": 2, "batch_size": 32, "sleep": sleep},
        "max_parallel": shards,
        "entrypoint": ENTRYPOINT,
        **extra,
    }


# -- worker processes ----------------------------------------------------------------------


class WorkerPool:
    """``size`` worker processes; dead ones are replaced (``respawn``) by ``tick``.

    ``faults(n)`` gives the n-th process (1-based) a faulty network: a ``FaultInjector`` spec
    (tests/chaos/faults.py) wired into every client it makes, or None for a healthy one.
    ``extra_args`` are appended to every ``shardq worker`` command line. Every exit code, of
    processes reaped by ``tick`` or stopped by ``stop``/``wait_exit``, lands in ``exit_codes``.
    """

    def __init__(
        self,
        cloud: LocalCloud,
        settings: Settings,
        chaos_dir: Path,
        *,
        size: int = 2,
        faults: Callable[[int], dict[str, Any] | None] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.cloud = cloud
        self.settings = settings
        self.chaos_dir = chaos_dir
        self.size = size
        self.procs: list[subprocess.Popen[bytes]] = []
        self.spawned = 0
        self.respawn = True
        self.exit_codes: list[int] = []
        self.faults = faults
        self.extra_args = extra_args

    def spawn(self) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **self.cloud.env(),
            "PYTHONPATH": str(ROOT),
            "SHARDQ_CHAOS_DIR": str(self.chaos_dir),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.spawned += 1
        spec = self.faults(self.spawned) if self.faults else None
        # A faulty worker is the same CLI, started through the injector's entry point.
        program = ["tests.chaos.faults", "--"] if spec is not None else ["shardq.cli"]
        if spec is not None:
            env["SHARDQ_FAULTS"] = json.dumps(spec)
        log = (self.chaos_dir / f"worker-{self.spawned}.log").open("wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                *program,
                "worker",
                "--task-queue-url",
                self.settings.task_queue_url,
                "--results-queue-url",
                self.settings.results_queue_url,
                "--job-table",
                self.settings.job_table,
                "--concurrency",
                "1",
                "--wait-seconds",
                "1",
                "--grace-seconds",
                "0.2",
                "--worker-id",
                f"chaos-{self.spawned}",
                "--log-format",
                "text",
                "--allow",
                "examples.*,tests.*",
                *self.extra_args,
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        """Every worker's log, concatenated in spawn order."""
        return "".join(
            (self.chaos_dir / f"worker-{n}.log").read_text(errors="replace")
            for n in range(1, self.spawned + 1)
        )

    def wait_exit(self, timeout: float) -> list[int]:
        """Wait (no respawn) for every process to exit on its own; their exit codes."""
        self.respawn = False
        deadline = time.monotonic() + timeout
        codes = []
        for p in list(self.procs):
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
            self.procs.remove(p)
        self.exit_codes += codes
        return codes

    def start(self) -> WorkerPool:
        for _ in range(self.size):
            self.spawn()
        return self

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def tick(self) -> None:
        """Reap dead workers and, when ``respawn`` is on, start replacements."""
        for p in list(self.procs):
            if p.poll() is not None:
                self.procs.remove(p)
                self.exit_codes.append(int(p.returncode))
        while self.respawn and len(self.procs) < self.size:
            self.spawn()

    def by_pid(self, pid: int) -> subprocess.Popen[bytes] | None:
        return next((p for p in self.procs if p.pid == pid and p.poll() is None), None)

    def stop(self) -> None:
        self.respawn = False
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.exit_codes.append(int(p.returncode))
        self.procs.clear()


# -- the training log ------------------------------------------------------------------------


def trainings(chaos_dir: Path, job_id: str | None = None) -> list[dict[str, Any]]:
    """Every logged training event (start/end), oldest first."""
    path = chaos_dir / "trainings.log"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if job_id is None or r["job"] == job_id]


def running(chaos_dir: Path, job_id: str) -> list[dict[str, Any]]:
    """Trainings started and not (yet) ended, by worker pid, newest start per pid."""
    open_: dict[int, dict[str, Any]] = {}
    for r in trainings(chaos_dir, job_id):
        if r["event"] == "start":
            open_[r["pid"]] = r
        else:
            open_.pop(r["pid"], None)
    return list(open_.values())


# -- the event sources -----------------------------------------------------------------------

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass
class Pump:
    """The aggregator's and the DLQ handler's event source mappings, one pass per ``step``."""

    sqs: Any
    settings: Settings
    aggregator: Handler
    dlq_handler: Handler
    batch: int = 100
    invocations: int = 0
    crashes: int = 0
    on_receive: Callable[[list[dict[str, Any]]], None] | None = None
    # The results DLQ's consumer (lambdas.results_dlq_handler); None leaves that queue unread.
    results_dlq_handler: Handler | None = None
    task_dlq_url: str = field(init=False)
    results_dlq_url: str = field(init=False)
    arns: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        dlqs = dlq_urls(self.sqs, self.settings)
        self.task_dlq_url, self.results_dlq_url = dlqs["tasks"], dlqs["results"]
        for url in (self.settings.results_queue_url, self.task_dlq_url, self.results_dlq_url):
            self.arns[url] = queue_arn(self.sqs, url)

    def receive(self, url: str, limit: int) -> list[dict[str, Any]]:
        return gather_batch(self.sqs, url, limit)

    def invoke(self, url: str, msgs: list[dict[str, Any]], handler: Handler) -> None:
        """Invoke ``handler`` on ``msgs``; delete what it did not fail; nothing if it crashed."""
        self.invocations += 1
        try:
            response = handler(sqs_event(msgs, self.arns[url]), LambdaContext())
        except (InjectedCrash, Exception):  # the invocation died: the batch returns after its timeout
            self.crashes += 1
            return
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        self.delete(url, [m for m in msgs if m["MessageId"] not in failed])

    def delete(self, url: str, msgs: list[dict[str, Any]]) -> None:
        for i in range(0, len(msgs), 10):
            chunk = msgs[i : i + 10]
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(chunk)],
            )

    def step(self) -> int:
        """One pass over both sources; returns the records handed to handlers."""
        handled = 0
        msgs = self.receive(self.settings.results_queue_url, self.batch)
        if msgs:
            if self.on_receive is not None:
                self.on_receive(msgs)
            self.invoke(self.settings.results_queue_url, msgs, self.aggregator)
            handled += len(msgs)
        dead = self.receive(self.task_dlq_url, 10)
        if dead:
            self.invoke(self.task_dlq_url, dead, self.dlq_handler)
            handled += len(dead)
        if self.results_dlq_handler is not None:
            dead = self.receive(self.results_dlq_url, 10)
            if dead:
                self.invoke(self.results_dlq_url, dead, self.results_dlq_handler)
                handled += len(dead)
        return handled


def run_until(
    engine: Engine,
    job_id: str,
    pump: Pump,
    *,
    pool: WorkerPool | None = None,
    timeout: float = 60,
    chaos: Callable[[], None] | None = None,
    statuses: tuple[str, ...] = TERMINAL_STATUSES,
) -> dict[str, Any]:
    """Pump (and run ``chaos`` between passes) until the job reaches one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pool is not None:
            pool.tick()
        if chaos is not None:
            chaos()
        if not pump.step():
            time.sleep(0.1)
        job = engine.store.get_job(job_id)
        if job.status in statuses:
            return job
    raise AssertionError(
        f"job {job_id} did not reach {statuses} in {timeout} s: {engine.store.get_job(job_id)}"
    )


def settle(pump: Pump, *, pool: WorkerPool | None = None, timeout: float = 30) -> None:
    """Keep pumping until the task queue, the results queue and the task DLQ are empty twice in a row."""
    sqs, s = pump.sqs, pump.settings
    deadline = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < deadline:
        if pool is not None:
            pool.tick()
        pump.step()
        counts = [
            count_messages(sqs, url) for url in (s.task_queue_url, s.results_queue_url, pump.task_dlq_url)
        ]
        quiet = quiet + 1 if not any(counts) else 0
        if quiet >= 2:
            return
        time.sleep(0.3)
    raise AssertionError(f"queues never drained (tasks, results, task DLQ) = {counts}")


# -- seeded fault injection at the client --------------------------------------------------


class SeededFlakySQS:
    """SendMessageBatch faults with a seeded RNG: throttled calls, dropped entries, lost answers.

    ``p_throttle``: SQS answers the call's first attempt with its throttling error (botocore's
    retry sends it again). ``p_drop``: an
    entry is not sent and reported as a retryable failure. ``p_lost``: an entry *is* sent but
    reported failed, as when SQS accepted it and the answer was lost; the retry must be
    absorbed by the deduplication id.
    """

    def __init__(
        self, real: Any, seed: int, *, p_throttle: float = 0.0, p_drop: float = 0.0, p_lost: float = 0.0
    ):
        self.real = real
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.p_throttle, self.p_drop, self.p_lost = p_throttle, p_drop, p_lost
        self.injected = {"throttled": 0, "dropped": 0, "lost": 0}
        self.script = self.rng.sample(["throttle", "drop", "lost"], 3)
        self.exceptions = real.exceptions
        # A throttle is SQS's answer at the HTTP layer, below the client's botocore retry mode
        # (shardq's one retry layer for whole-call failures), which must absorb it.
        self.http = HttpFaults(real)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        with self.lock:
            # The first three calls each carry one fault of every kind (in seeded order), so
            # every seed injects all three whatever the batching; later calls are random.
            forced = self.script.pop(0) if self.script else None
            throttle = forced == "throttle" or (forced is None and self.rng.random() < self.p_throttle)
            fates = [
                self.rng.choices(
                    ("ok", "drop", "lost"), (1 - self.p_drop - self.p_lost, self.p_drop, self.p_lost)
                )[0]
                for _ in Entries
            ]
            if forced in ("drop", "lost"):
                fates[0] = forced
            if throttle:
                self.injected["throttled"] += 1
            else:
                self.injected["dropped"] += fates.count("drop")
                self.injected["lost"] += fates.count("lost")
            if throttle:
                self.http.fail("SendMessageBatch", times=1)
                fates = ["ok"] * len(Entries)
        send = [e for e, f in zip(Entries, fates, strict=True) if f != "drop"]
        response: dict[str, Any] = {"Successful": [], "Failed": []}
        if send:
            response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=send)
            response.setdefault("Failed", [])
        lost = {e["Id"] for e, f in zip(Entries, fates, strict=True) if f == "lost"}
        response["Successful"] = [s for s in response["Successful"] if s["Id"] not in lost]
        response["Failed"] += [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"}
            for e, f in zip(Entries, fates, strict=True)
            if f != "ok"
        ]
        return response


# -- the fault-free yardstick ----------------------------------------------------------------

_REFERENCE: dict[str, dict[str, np.ndarray]] = {}


def load_model(s3: Any, uri: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` model in the bucket."""
    import io

    bucket, key = split_s3(uri)
    with np.load(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as data:
        return {name: data[name] for name in data.files}


def reference_model(clients: dict[str, Any], payload: dict[str, Any]) -> dict[str, np.ndarray]:
    """The final model of ``payload`` trained without faults (cached per request for the session)."""
    from shardq.core.contracts import ShardResult
    from shardq.core.jobstore import Outcome
    from tests.helpers import receive_all

    body = {k: v for k, v in payload.items() if k not in ("job_id", "max_failed_shards")}
    key = json.dumps(body, sort_keys=True)
    if key in _REFERENCE:
        return _REFERENCE[key]
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    engine = Engine(
        settings=settings,
        ddb=clients["dynamodb"],
        sqs=clients["sqs"],
        s3=clients["s3"],
        events=clients["events"],
    )
    engine.submit({**body, "job_id": "reference"})
    worker = Worker(
        sqs=clients["sqs"],
        s3=clients["s3"],
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        entrypoint="examples.linear:train",
        wait_s=0,
    )
    for _ in range(100):
        while worker.poll_once():
            pass
        results = [
            Outcome(ShardResult.from_json(m["Body"]))
            for m in receive_all(clients["sqs"], settings.results_queue_url)
        ]
        assert engine.ingest(results) == []
        if engine.status("reference").status in TERMINAL_STATUSES:
            break
    job = engine.store.get_job("reference")
    assert job.status == "SUCCEEDED", job
    _REFERENCE[key] = load_model(clients["s3"], job.model_uri)
    return _REFERENCE[key]


def assert_same_model(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    """Bit-for-bit equal arrays (same names, shapes, dtypes and values)."""
    assert sorted(got) == sorted(want)
    for name, array in want.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].tobytes() == array.tobytes(), f"{name}: {got[name]} != {array}"
