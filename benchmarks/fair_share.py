"""No job waits behind another's backlog: windows, priorities and weights (issue #25, items 6.1-6.3).

The real stack deployed into the local cloud (as ``benchmarks.e2e``), W ``shardq worker``
processes, jobs submitted by invoking the deployed splitter. Scenarios, one after another on one
stack (each flood is cancelled and the queue drained before the next):

1. **small alone**: a 4-shard job, submit → SUCCEEDED (after a warm-up job, the median of 3);
2. **small beside a flood**: a 4-shard job submitted ``--gap`` s after a flood of 3,000 and of
   30,000 shards; its submit → SUCCEEDED, against 1. The goal: within 2×;
3. **priority**: a flood at priority 0, then a 4-shard job at priority 1000: its submit → first
   task start (the goal: within 5 s);
4. **weights 2:1**: tenants ``heavy`` (weight 2) and ``light`` (weight 1) each run a job far
   bigger than a minute's work, of tasks that sleep ``--task-s``; their results recorded over
   ``--window-s`` seconds once both run. The goal: a ratio within 10 % of 2:1.

The small jobs, the floods and the priority job run training-length tasks: each sleeps
``--train-s`` (default 1 s, a busy GPU; the ``sleepy`` entrypoint), so "alone" is about two task
times (4 tasks on 3 workers) and a flood's queued work is measured in tasks, not in round trips of
the local cloud. ``--train-s 0`` runs no-op tasks (BENCHMARKS §15's runs up to C).

``--baseline`` also deploys a second stack with ``scheduling`` null (rounds sent whole, FIFO as
before #25) and runs scenario 2 with the 3,000-shard flood there: the same machine, the same run.
A small job behind a FIFO flood of training-length tasks waits for the whole flood (3,000 s of
GPU time over the workers), so its wait there is cut at ``--fifo-wait-s`` and reported as a lower
bound.

    .venv/bin/python -m benchmarks.fair_share [--workers 3] [--train-s 1] [--baseline]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._common import WORKER_START_TIMEOUT_S, describe, emit_json, machine, table, wait_for_workers
from benchmarks.e2e import start_workers, stop_workers
from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.engine import Engine
from shardq.core.jobstore import JobStore
from shardq.core.operations import cancel
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.deploy import deploy_stack

DATA = "synthetic://linear?dim=8&noise=0.05&seed=7"
SCHEDULING = {
    "window_per_lane": 2,
    "priority_aging_seconds": 60,
    "tenants": {"default": {}, "heavy": {"weight": 2}, "light": {"weight": 1}},
}


def noop(task: Any, ctx: Any) -> dict[str, Any]:
    """A task that notes when it started and does nothing."""
    return {"metrics": {"started_at": time.time()}, "num_samples": 1}


def sleepy(task: Any, ctx: Any) -> dict[str, Any]:
    """A task that notes when it started and sleeps ``hyperparameters.sleep_s`` (a busy GPU)."""
    started = time.time()
    time.sleep(float(task.hyperparameters.get("sleep_s", 0.2)))
    return {"metrics": {"started_at": started}, "num_samples": 1}


def request(job_id: str, shards: int, *, entrypoint: str = "noop", **fields: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"uri": DATA, "num_samples": shards},
        "sharding": {"shard_count": shards},
        "max_parallel": 8,
        "entrypoint": f"benchmarks.fair_share:{entrypoint}",
        **fields,
    }


class Bench:
    """One deployed stack and the engine over it."""

    def __init__(self, cloud: LocalCloud, outputs: dict[str, str], train_s: float = 0.0) -> None:
        self.cloud = cloud
        self.outputs = outputs
        self.train_s = train_s  # each task's sleep in the scenarios 1-3 (0: no-op tasks)
        self.lam = cloud.client("lambda")
        settings = Settings.from_outputs(outputs)
        clients = {n: cloud.client(n) for n in ("dynamodb", "sqs", "s3", "events")}
        self.engine = Engine(
            settings=settings,
            ddb=clients["dynamodb"],
            sqs=clients["sqs"],
            s3=clients["s3"],
            events=clients["events"],
        )
        self.store: JobStore = self.engine.store
        self.submitted: dict[str, float] = {}  # job id → just before its submit

    def job(self, job_id: str, shards: int, **fields: Any) -> dict[str, Any]:
        """A request whose tasks take ``train_s`` each (``sleepy``), or no-op tasks at 0."""
        if self.train_s > 0:
            fields = {"entrypoint": "sleepy", "hyperparameters": {"sleep_s": self.train_s}, **fields}
        return request(job_id, shards, **fields)

    def submit(self, payload: dict[str, Any]) -> float:
        """Invoke the splitter; returns the time just before the invoke."""
        at = self.submitted[payload["job_id"]] = time.time()
        raw = self.lam.invoke(
            FunctionName=self.outputs["SplitterFunctionName"], Payload=json.dumps(payload).encode()
        )
        answer = json.loads(raw["Payload"].read())
        if not answer.get("ok"):
            raise RuntimeError(f"splitter rejected {payload['job_id']}: {answer}")
        return at

    def wait_done(self, job_id: str, timeout: float) -> float:
        """Poll every 0.1 s until the job ends; returns when it ended (the record's ``finished_at``,
        this machine's clock: the poll's 0.1 s would blur a job of 0.2 s; else when seen ended)."""
        end_by = time.monotonic() + timeout
        while time.monotonic() < end_by:
            job = self.store.get_job(job_id)
            if job.status in TERMINAL_STATUSES:
                if job.status != "SUCCEEDED":
                    raise RuntimeError(f"{job_id} ended {job.status}: {job.error}")
                return _epoch(job.finished_at) if job.finished_at else time.time()
            time.sleep(0.1)
        raise TimeoutError(f"{job_id} not finished in {timeout:.0f} s")

    def first_start(self, job_id: str, timeout: float) -> float:
        """When the job's first task started (its earliest recorded ``started_at``)."""
        end_by = time.monotonic() + timeout
        while time.monotonic() < end_by:
            rows = self.store.results(job_id, 0)
            if rows:
                return min(float(r.result.metrics["started_at"]) for r in rows)
            time.sleep(0.1)
        raise TimeoutError(f"no task of {job_id} started in {timeout:.0f} s")

    def starts(self, job_id: str) -> list[float]:
        """When each of the job's tasks started, in seconds after its submit (sorted)."""
        at, rows = self.submitted[job_id], self.store.results(job_id, 0)
        return sorted(round(float(r.result.metrics["started_at"]) - at, 3) for r in rows)

    def timeline(self, job_id: str) -> dict[str, float]:
        """Where a finished job's time went, from its submit (s): the splitter's invoke until the job
        was created, then until its first task started (its wait in the task queue), until its
        last result was recorded (its runs, the results queue, the aggregator), until it ended."""
        job = self.store.get_job(job_id)
        rows = self.store.results(job_id, 0)
        created, submitted = _epoch(job.created_at), self.submitted[job_id]
        starts = [float(r.result.metrics["started_at"]) for r in rows]
        recorded = max(_epoch(r.recorded_at) for r in rows)
        ended = _epoch(job.finished_at or job.updated_at)
        return {
            "invoke_s": round(created - submitted, 3),
            "queue_wait_s": round(min(starts) - created, 3),
            "run_and_count_s": round(recorded - min(starts), 3),
            "finish_s": round(ended - recorded, 3),
        }

    def counted(self, job_id: str) -> int:
        return self.store.get_job(job_id).done(0, "train")

    def stop(self, *job_ids: str) -> None:
        """Cancel floods, then wait for the task queue to drain (workers drop a cancelled job's tasks)."""
        for job_id in job_ids:
            cancel(self.engine, job_id)
        url = self.outputs["TaskQueueUrl"]
        end_by = time.monotonic() + 600
        while time.monotonic() < end_by:
            attrs = self.engine.sqs.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
            )["Attributes"]
            if sum(int(v) for v in attrs.values()) == 0:
                return
            time.sleep(0.5)

    def small_alone(self, tag: str, runs: int = 3) -> float:
        """A 4-shard job on a warm, idle stack: the median submit → done of ``runs`` (after one
        warm-up job, so no figure includes a Lambda's cold start)."""
        times = []
        for i in range(runs + 1):
            at = self.submit(self.job(f"alone-{tag}-{i}", 4))
            took = self.wait_done(f"alone-{tag}-{i}", 300) - at
            if i:
                times.append(took)
        return round(sorted(times)[len(times) // 2], 2)

    def small_beside(self, tag: str, flood: int, gap: float, timeout: float = 900) -> dict[str, Any]:
        """A 4-shard job ``gap`` s after a flood: its submit → done and first task start, against a
        4-shard job alone measured just before (the machine's load moves: compare neighbours), and
        where each one's time went (``timeline``, each task's start). Not done within ``timeout``:
        the flood and the job are cancelled and the wait is reported as a lower bound."""
        alone = self.small_alone(f"{tag}-before", runs=1)
        out: dict[str, Any] = {
            "alone_before_s": alone,
            "alone_timeline": self.timeline(f"alone-{tag}-before-1"),
            "alone_task_starts_s": self.starts(f"alone-{tag}-before-1"),
        }
        flood_at = self.submit(self.job(f"flood-{tag}", flood))
        time.sleep(gap)
        small = f"small-{tag}"
        submitted = self.submit(self.job(small, 4, priority=500))
        try:
            done = self.wait_done(small, timeout=timeout)
        except TimeoutError:
            flood_done = self.counted(f"flood-{tag}")
            self.stop(f"flood-{tag}", small)
            return {
                **out,
                "submit_to_done_s": None,
                "not_done_after_s": timeout,
                "x_alone_at_least": round(timeout / alone, 1),
                "small_tasks_started": len(self.starts(small)),
                "flood_tasks_done_meanwhile": flood_done,
                "flood_tasks_per_s": round(flood_done / (time.time() - flood_at), 2),
            }
        first = self.first_start(small, timeout=10)
        flood_done = self.counted(f"flood-{tag}")
        flood_window = self.store.get_job(f"flood-{tag}").window
        self.stop(f"flood-{tag}")
        return {
            **out,
            "timeline": self.timeline(small),
            "task_starts_s": self.starts(small),
            "flood_window": flood_window,
            "submit_to_done_s": round(done - submitted, 2),
            "x_alone": round((done - submitted) / alone, 2),
            "submit_to_first_start_s": round(first - submitted, 2),
            "flood_tasks_done_meanwhile": flood_done,
            "flood_tasks_per_s": round(flood_done / (done - flood_at), 2),
        }


def _epoch(iso: str | None) -> float:
    return datetime.fromisoformat((iso or "").replace("Z", "+00:00")).timestamp()


def flood_rate(bench: Bench, tag: str, shards: int, seconds: float) -> dict[str, Any]:
    """A flood alone: its tasks counted per second over ``seconds``, from 3 s after its submit
    (the windowed and the FIFO stack's figures side by side say what windows cost a big job)."""
    bench.submit(bench.job(f"rate-{tag}", shards))
    time.sleep(3.0)
    c0, t0 = bench.counted(f"rate-{tag}"), time.time()
    time.sleep(seconds)
    c1, t1 = bench.counted(f"rate-{tag}"), time.time()
    window = bench.store.get_job(f"rate-{tag}").window  # the depth its last top-up was held to
    bench.stop(f"rate-{tag}")
    return {
        "seconds": round(t1 - t0, 1),
        "tasks": c1 - c0,
        "tasks_per_s": round((c1 - c0) / (t1 - t0), 2),
        "window": window,
    }


def scenario_weights(bench: Bench, shards: int, task_s: float, window_s: float) -> dict[str, Any]:
    """Tenants weighted 2:1 both saturating the fleet: results counted over ``window_s``."""
    hp = {"sleep_s": task_s}
    bench.submit(request("heavy-job", shards, entrypoint="sleepy", tenant="heavy", hyperparameters=hp))
    bench.submit(request("light-job", shards, entrypoint="sleepy", tenant="light", hyperparameters=hp))
    time.sleep(10.0)  # both running; the first windows went out together
    h0, l0, t0 = bench.counted("heavy-job"), bench.counted("light-job"), time.time()
    time.sleep(window_s)
    h1, l1, t1 = bench.counted("heavy-job"), bench.counted("light-job"), time.time()
    bench.stop("heavy-job", "light-job")
    heavy, light = h1 - h0, l1 - l0
    ratio = heavy / light if light else float("inf")
    return {
        "seconds": round(t1 - t0, 1),
        "heavy_tasks": heavy,
        "light_tasks": light,
        "ratio": round(ratio, 3),
        "off_by_pct": round(abs(ratio - 2.0) / 2.0 * 100, 1),
    }


def run(
    workers: int,
    gap: float,
    floods: list[int],
    task_s: float,
    window_s: float,
    baseline: bool,
    rate_s: float = 20.0,
    train_s: float = 0.0,
    fifo_wait_s: float = 900.0,
) -> dict[str, Any]:
    out: dict[str, Any] = {"workers": workers, "gap_s": gap, "floods": floods, "train_s": train_s}
    with LocalCloud() as cloud:
        assert cloud.state_dir is not None
        stacks = {"shardq": SCHEDULING}
        if baseline:
            stacks["shardqfifo"] = None  # type: ignore[assignment]
        deployed = {}
        for name, scheduling in stacks.items():
            ctx = {"scheduling": json.dumps(scheduling) if scheduling is not None else "null"}
            deployed[name] = deploy_stack(cloud, stack_name=name, context=ctx)
        for name, outputs in deployed.items():
            bench = Bench(cloud, outputs, train_s)
            logs = Path(cloud.state_dir) / f"workers-{name}"
            logs.mkdir()
            procs = start_workers(cloud, workers, logs, stack=name, allow="benchmarks.fair_share")
            try:
                wait_for_workers(
                    procs, [logs / f"worker-{i}.log" for i in range(workers)], WORKER_START_TIMEOUT_S
                )
                time.sleep(2.0)
                if name == "shardq":
                    out["small_alone_s"] = bench.small_alone("w")
                    out["flood_rate"] = flood_rate(bench, "w", 3000, rate_s)
                    for n in floods:
                        out[f"beside_{n}"] = bench.small_beside(f"w{n}", n, gap)
                    bench.submit(bench.job("flood-prio", 3000, priority=0))
                    time.sleep(gap)
                    high_at = bench.submit(bench.job("high", 4, priority=1000))
                    out["priority_first_start_s"] = round(bench.first_start("high", 60) - high_at, 2)
                    out["priority_done_s"] = round(bench.wait_done("high", 300) - high_at, 2)
                    bench.stop("flood-prio")
                    out["weights"] = scenario_weights(bench, 20_000, task_s, window_s)
                else:
                    out["fifo_small_alone_s"] = bench.small_alone("fifo")
                    out["fifo_flood_rate"] = flood_rate(bench, "fifo", 3000, rate_s)
                    out["fifo_beside_3000"] = bench.small_beside("fifo", 3000, gap, timeout=fifo_wait_s)
            except Exception:
                print("PARTIAL", json.dumps(out), flush=True)  # what was measured before the failure
                raise
            finally:
                stop_workers(procs)
    return out


def _steps(t: dict[str, float]) -> str:
    """A timeline (``Bench.timeline``) in one line."""
    return (
        f"invoke {t['invoke_s']} + queue {t['queue_wait_s']} + run/count {t['run_and_count_s']} "
        f"+ end {t['finish_s']}"
    )


def _starts(starts: list[float]) -> str:
    return ", ".join(f"{s:.2f}" for s in starts) + " s"


def report(r: dict[str, Any]) -> None:
    train_s = r.get("train_s", 0.0)
    tasks = f"tasks of {train_s:g} s" if train_s else "no-op tasks"
    rows = [[f"4-shard job alone (windows), {tasks}", f"{r['small_alone_s']} s", ""]]
    for key, name in (("flood_rate", "windows"), ("fifo_flood_rate", "FIFO, no windows")):
        if key in r:
            f = r[key]
            rows.append(
                [
                    f"a 3,000-shard flood alone, {name}: over {f['seconds']} s",
                    f"{f['tasks_per_s']} tasks/s",
                    "",
                ]
            )
    for n in r["floods"]:
        b = r[f"beside_{n}"]
        rows.append(
            [
                f"4-shard job {r['gap_s']:g} s after {n:,} shards (alone before: {b['alone_before_s']} s)",
                f"{b['submit_to_done_s']} s",
                f"{b['x_alone']}× alone; flood {b['flood_tasks_per_s']} tasks/s",
            ]
        )
        if "timeline" in b:
            rows.append(
                [f"  where it went (alone: {_steps(b['alone_timeline'])})", _steps(b["timeline"]), ""]
            )
            rows.append(
                [
                    f"  its tasks' starts after submit (alone: {_starts(b['alone_task_starts_s'])})",
                    _starts(b["task_starts_s"]),
                    f"flood window {b['flood_window']}",
                ]
            )
    if "fifo_beside_3000" in r:
        rows.append(["4-shard job alone, FIFO (no windows)", f"{r['fifo_small_alone_s']} s", ""])
        f = r["fifo_beside_3000"]
        done, ratio = (
            (f"{f['submit_to_done_s']} s", f"{f['x_alone']}×")
            if f["submit_to_done_s"] is not None
            else (f"> {f['not_done_after_s']:g} s (cut)", f"> {f['x_alone_at_least']}×")
        )
        rows.append(
            [
                f"  beside a 3,000-shard flood, FIFO (alone just before: {f['alone_before_s']} s)",
                done,
                f"{ratio} alone; flood {f['flood_tasks_per_s']} tasks/s",
            ]
        )
    rows.append(
        [
            "priority 1000 job's first task start beside a priority-0 flood",
            f"{r['priority_first_start_s']} s",
            "goal ≤ 5 s",
        ]
    )
    w = r["weights"]
    rows.append(
        [
            f"weights 2:1 over {w['seconds']} s: heavy/light tasks",
            f"{w['heavy_tasks']}/{w['light_tasks']} = {w['ratio']}",
            f"{w['off_by_pct']} % off 2:1",
        ]
    )
    print(table(["scenario", "figure", "vs goal"], rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument(
        "--gap", type=float, default=3.0, help="seconds between a flood's submit and the small job's"
    )
    parser.add_argument("--floods", type=int, nargs="+", default=[3000, 30000])
    parser.add_argument(
        "--task-s", type=float, default=0.2, help="seconds each task sleeps in the weights run"
    )
    parser.add_argument("--window-s", type=float, default=60.0, help="seconds the weights run counts over")
    parser.add_argument("--rate-s", type=float, default=20.0, help="seconds a flood's rate is counted over")
    parser.add_argument(
        "--train-s",
        type=float,
        default=1.0,
        help="seconds each task of the small jobs and the floods sleeps (a busy GPU); 0: no-op tasks",
    )
    parser.add_argument(
        "--fifo-wait-s",
        type=float,
        default=None,
        help="longest wait for the small job beside the FIFO flood (--baseline; default 120 s with "
        "training-length tasks, 900 s with no-op ones); a longer wait is reported as a lower bound",
    )
    parser.add_argument(
        "--baseline", action="store_true", help="also measure FIFO without windows (a second stack)"
    )
    args = parser.parse_args(argv)
    m = machine()
    if args.train_s < 0:
        parser.error(f"--train-s must be 0 (no-op tasks) or more, got {args.train_s}")
    fifo_wait_s = args.fifo_wait_s if args.fifo_wait_s is not None else (120.0 if args.train_s else 900.0)
    if fifo_wait_s <= 0:
        parser.error(f"--fifo-wait-s must be more than 0, got {fifo_wait_s}")
    result = run(
        args.workers,
        args.gap,
        args.floods,
        args.task_s,
        args.window_s,
        args.baseline,
        args.rate_s,
        train_s=args.train_s,
        fifo_wait_s=fifo_wait_s,
    )
    print(describe(m))
    report(result)
    emit_json("fair_share", {**result, "machine": m})
    return result


if __name__ == "__main__":
    main()
