"""Preemption: what a Spot storm costs a job with checkpoints, without them, and with no storm at all.

Three scenarios run side by side on one local cloud, each on its own queues, table and bucket
(``provision``, the task queue's visibility = the worker's lease) with ``--workers`` real
``shardq worker`` processes and an in-process engine pumping the results (what the aggregator
Lambda does):

* **calm**: no interruption;
* **storm**: every ``--interrupt-every`` seconds a random *busy* worker is interrupted, SIGTERM
  and SIGKILL in turn (a Spot interruption with its notice, which ECS turns into a SIGTERM, and an
  instance that vanishes), and a fresh worker replaces it at once; the training function
  checkpoints every ``--checkpoint-every`` seconds and on a stop;
* **storm, no checkpoints**: the same storm (same seed) on the same function with checkpoints
  off: a stopped task is released at once, but its next attempt starts from zero.

The job is a ``map`` of ``--tasks`` tasks, each ``--task-seconds`` of sleep-based steps
(``benchmarks.preempt_workload``); its result state proves every step ran exactly once, in order.

Per interruption, from the workload's event log:

* **redone**: the steps the interrupted attempt had reached that the next attempt ran again
  (reached − resumed-from), in worker-seconds;
* **lost worker-seconds** = redone + the checkpoint written on the way out (SIGTERM) + the next
  attempt's restore (download, unpack, load);
* **delay**: interruption → the task back at the step it had reached (the lease's wait for a
  SIGKILL included, and any wait for a free worker).

Targets (issue #24): lost per SIGTERM ≤ one checkpoint write + 5 s; delay per SIGKILL ≤ τ/2 + 60 s
(mean); job wall time under the storm ≤ 1.25 × the calm run.

    .venv/bin/python -m benchmarks.preempt [--workers 4 --tasks 20 ...] [--plot docs/img/preempt.png]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._common import (
    ROOT,
    WORKER_START_TIMEOUT_S,
    describe,
    emit_json,
    machine,
    table,
    wait_for_workers,
)
from benchmarks.preempt_workload import LOG_ENV
from shardq.core.advance import results_message
from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls, provision, stack_template
from shardq.worker.lease import DEFAULT_LEASE_S

ENTRYPOINT = "benchmarks.preempt_workload:train"
CALM, STORM, NO_CHECKPOINTS = "calm", "storm", "storm, no checkpoints"


@dataclass(frozen=True)
class Plan:
    """The benchmark's sizes (the command line)."""

    workers: int = 4
    tasks: int = 20
    task_s: float = 36.0
    step_s: float = 0.5
    checkpoint_every_s: float = 10.0
    interrupt_every_s: float = 15.0
    lease_s: int = DEFAULT_LEASE_S
    grace_s: float = 10.0
    seed: int = 0
    timeout_s: float = 900.0
    storm_interruptions: int | None = None

    @property
    def interruptions(self) -> int:
        """How many the storm sends: by default, about one per ``interrupt_every_s`` of the calm run
        (a fixed count, so both storms are the same size even where one takes longer)."""
        if self.storm_interruptions is not None:
            return self.storm_interruptions
        waves = -(-self.tasks // self.workers)
        return max(2, round(waves * self.task_s / self.interrupt_every_s))

    @property
    def steps(self) -> int:
        """Steps per task."""
        return max(1, round(self.task_s / self.step_s))


@dataclass
class Interruption:
    """One signal sent by the storm."""

    kind: str  # "SIGTERM" | "SIGKILL"
    t: float
    pid: int
    shard: int


@dataclass
class Outcome:
    """One scenario's run."""

    name: str
    wall_s: float = 0.0
    interruptions: list[Interruption] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    max_receive_count: int = 0
    dead_lettered: int = 0


class Fleet:
    """``size`` worker processes on one scenario's resources; replacements on demand."""

    def __init__(self, cloud: LocalCloud, settings: Settings, where: Path, plan: Plan, log: Path) -> None:
        self.cloud, self.settings, self.where, self.plan, self.log = cloud, settings, where, plan, log
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def spawn(self) -> subprocess.Popen[bytes]:
        """One more ``shardq worker`` process (text logs in ``where``)."""
        n = len(self.procs)
        env = {**os.environ, **self.cloud.env(), "PYTHONPATH": str(ROOT), LOG_ENV: str(self.log)}
        path = self.where / f"worker-{n}.log"
        with path.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shardq.cli", "worker",
                 "--task-queue-url", self.settings.task_queue_url,
                 "--results-queue-url", self.settings.results_queue_url,
                 "--job-table", self.settings.job_table,
                 "--concurrency", "1", "--wait-seconds", "1",
                 "--visibility-timeout", str(self.plan.lease_s),
                 "--grace-seconds", str(self.plan.grace_s),
                 "--worker-id", f"{self.where.name}-{n}", "--log-format", "text",
                 "--allow", "benchmarks.preempt_workload"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs.append(proc)
        self.logs.append(path)
        return proc

    def alive(self, pid: int) -> subprocess.Popen[bytes] | None:
        """The live process with ``pid``, if any."""
        return next((p for p in self.procs if p.pid == pid and p.poll() is None), None)

    def stop(self) -> None:
        """SIGTERM every live worker and wait for it (SIGKILL past 30 s)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Every event the workload logged, oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def busy(events: list[dict[str, Any]]) -> dict[int, int]:
    """pid → shard of each attempt started and not yet ended or stopped."""
    running: dict[int, int] = {}
    for e in events:
        if e["e"] == "start":
            running[e["pid"]] = e["shard"]
        elif e["e"] in ("end", "stop"):
            running.pop(e["pid"], None)
    return running


def run_scenario(cloud: LocalCloud, name: str, plan: Plan, where: Path, template: dict[str, Any]) -> Outcome:
    """One scenario, start to end: resources, workers, submit, storm (unless calm), pump, stop."""
    out = Outcome(name)
    where.mkdir(parents=True)
    sqs, ddb, s3 = cloud.client("sqs"), cloud.client("dynamodb"), cloud.client("s3")
    # The stack's own redrive policy (maxReceiveCount 5): a graceful release re-sends the task
    # (shardq.worker.release), so only the SIGKILLs count receives; no task may dead-letter.
    settings = provision(sqs, ddb, s3, task_visibility_s=plan.lease_s, template=template)
    out.max_receive_count = settings.max_receive_count
    engine = Engine(settings=settings, ddb=ddb, sqs=sqs, s3=s3, events=cloud.client("events"))
    log = where / "events.log"
    fleet = Fleet(cloud, settings, where, plan, log)
    for _ in range(plan.workers):
        fleet.spawn()
    rng = random.Random(plan.seed)
    try:
        wait_for_workers(fleet.procs, fleet.logs, WORKER_START_TIMEOUT_S)
        time.sleep(1.0)  # every worker inside its first poll
        request = {
            "job_id": f"preempt-{where.name}",
            "kind": "map",
            "dataset": {"uri": "synthetic://linear?dim=2", "num_samples": plan.tasks},
            "sharding": {"shard_count": plan.tasks},
            "max_parallel": plan.tasks,  # one FIFO lane per task: none waits behind another
            "hyperparameters": {
                "steps": plan.steps,
                "step_s": plan.step_s,
                "checkpoint_every_s": 0.0 if name == NO_CHECKPOINTS else plan.checkpoint_every_s,
            },
            "entrypoint": ENTRYPOINT,
        }
        started = time.monotonic()
        job_id = engine.submit(request)["job_id"]
        next_at = started + plan.interrupt_every_s
        while True:
            pump(engine, sqs, settings)
            job = engine.store.get_job(job_id)
            if job.status in TERMINAL_STATUSES:
                out.wall_s = time.monotonic() - started
                out.dead_lettered = dead_lettered(sqs, settings)
                break
            if time.monotonic() - started > plan.timeout_s:
                raise TimeoutError(f"{name}: job {job_id} still {job.status} after {plan.timeout_s:.0f} s")
            storming = name != CALM and len(out.interruptions) < plan.interruptions
            if storming and time.monotonic() >= next_at:
                victims = {pid: shard for pid, shard in busy(read_events(log)).items() if fleet.alive(pid)}
                if victims:
                    pid = rng.choice(sorted(victims))
                    kind = "SIGTERM" if len(out.interruptions) % 2 == 0 else "SIGKILL"
                    proc = fleet.alive(pid)
                    assert proc is not None
                    out.interruptions.append(Interruption(kind, time.time(), pid, victims[pid]))
                    proc.send_signal(signal.SIGTERM if kind == "SIGTERM" else signal.SIGKILL)
                    fleet.spawn()  # the auto-scaling group's replacement
                    next_at += plan.interrupt_every_s
        check(engine, job_id, job.status, plan)
    except Exception as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        fleet.stop()
    out.events = read_events(log)
    return out


def pump(engine: Engine, sqs: Any, settings: Settings) -> None:
    """One receive from the results queue into ``Engine.ingest``; delete what it took."""
    msgs = sqs.receive_message(
        QueueUrl=settings.results_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
    ).get("Messages", [])
    if not msgs:
        return
    failures = engine.ingest([results_message(m["Body"]) for m in msgs])
    if failures:
        raise RuntimeError(f"the engine refused {len(failures)} results: {failures[0][1]}")
    sqs.delete_message_batch(
        QueueUrl=settings.results_queue_url,
        Entries=[{"Id": str(j), "ReceiptHandle": m["ReceiptHandle"]} for j, m in enumerate(msgs)],
    )


def check(engine: Engine, job_id: str, status: str, plan: Plan) -> None:
    """The job succeeded with every task recorded once, each having run every step once, in order."""
    results = engine.store.results(job_id, 0)
    shards = sorted(r.result.shard_id for r in results)
    if status != "SUCCEEDED" or shards != list(range(plan.tasks)):
        raise RuntimeError(f"job {job_id} {status}: shards recorded {shards}, expected 0..{plan.tasks - 1}")
    wrong = [r.result.shard_id for r in results if r.result.metrics.get("state_ok") != 1.0]
    if wrong:
        raise RuntimeError(
            f"job {job_id}: shards {wrong} ended with the wrong state (a step lost or run twice)"
        )


def costs(out: Outcome, plan: Plan) -> list[dict[str, Any]]:
    """What each interruption cost (see the module docstring); ``missed`` when the task had ended."""
    rows = []
    for i in out.interruptions:
        mine = [e for e in out.events if e["pid"] == i.pid and e["shard"] == i.shard]
        if any(e["e"] == "end" for e in mine):
            rows.append({"kind": i.kind, "missed": True})
            continue
        reached = max([e["step"] for e in mine if e["e"] in ("step", "ready")], default=0)
        written = [e["write_s"] for e in mine if e["e"] == "checkpoint" and e["t"] >= i.t]
        after = [e for e in out.events if e["shard"] == i.shard and e["t"] > i.t and e["pid"] != i.pid]
        start = next((e for e in after if e["e"] == "start"), None)
        ready = next((e for e in after if e["e"] == "ready" and start and e["pid"] == start["pid"]), None)
        if start is None or ready is None:
            rows.append({"kind": i.kind, "missed": True})
            continue
        redone = max(0, reached - int(ready["step"])) * plan.step_s
        restore = ready["t"] - start["t"]
        out_write = written[-1] if written else 0.0
        rows.append({
            "kind": i.kind, "missed": False, "reached": reached, "resumed_from": int(ready["step"]),
            "redone_s": round(redone, 2), "stop_write_s": round(out_write, 3), "restore_s": round(restore, 3),
            "lost_s": round(redone + out_write + restore, 2),
            "recovery_s": round(start["t"] - i.t, 2), "delay_s": round(ready["t"] + redone - i.t, 2),
        })  # fmt: skip
    return rows


def dead_lettered(sqs: Any, settings: Settings) -> int:
    """Tasks in the task queue's DLQ (the redrive policy moved them: none should be there)."""
    url = dlq_urls(sqs, settings)["tasks"]
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def summary(out: Outcome, plan: Plan, calm_s: float) -> dict[str, Any]:
    """One scenario's figures."""
    rows = costs(out, plan)
    hit = [r for r in rows if not r["missed"]]

    def stat(kind: str, key: str) -> dict[str, float] | None:
        values = [r[key] for r in hit if r["kind"] == kind]
        if not values:
            return None
        return {"mean": round(statistics.fmean(values), 2), "max": round(max(values), 2), "n": len(values)}

    writes = [e["write_s"] for e in out.events if e["e"] == "checkpoint"]
    return {
        "scenario": out.name,
        "wall_s": round(out.wall_s, 1),
        "wall_vs_calm": round(out.wall_s / calm_s, 3) if calm_s else None,
        "interruptions": {k: sum(1 for r in rows if r["kind"] == k) for k in ("SIGTERM", "SIGKILL")},
        "missed": sum(1 for r in rows if r["missed"]),
        "max_receive_count": out.max_receive_count,
        "dead_lettered": out.dead_lettered,
        "lost_per_sigterm_s": stat("SIGTERM", "lost_s"),
        "lost_per_sigkill_s": stat("SIGKILL", "lost_s"),
        "delay_per_sigterm_s": stat("SIGTERM", "delay_s"),
        "delay_per_sigkill_s": stat("SIGKILL", "delay_s"),
        "redone_worker_s": round(sum(r["redone_s"] for r in hit), 1),
        "checkpoint_write_median_s": round(statistics.median(writes), 3) if writes else None,
        "checkpoints": len(writes),
        "per_interruption": rows,
        "error": out.error,
    }


def targets(storm: dict[str, Any], calm: dict[str, Any], plan: Plan) -> dict[str, bool | None]:
    """Issue #24's three targets, met or not (None when the storm gave no such interruption)."""
    write = storm["checkpoint_write_median_s"] or 0.0
    term, kill = storm["lost_per_sigterm_s"], storm["delay_per_sigkill_s"]
    kill_bound = plan.checkpoint_every_s / 2 + 60
    return {
        "sigterm_lost_le_write_plus_5s": None if term is None else term["max"] <= write + 5.0,
        "sigkill_delay_le_tau_half_plus_60s": None if kill is None else kill["mean"] <= kill_bound,
        "storm_wall_le_1.25x_calm": storm["wall_s"] <= 1.25 * calm["wall_s"],
    }


def run(plan: Plan) -> dict[str, Any]:
    """The three scenarios side by side on one local cloud; their summaries and the targets."""
    outcomes: dict[str, Outcome] = {}
    with LocalCloud() as cloud:
        assert cloud.state_dir is not None
        base = cloud.state_dir / "preempt"

        template = stack_template()  # once: the three provisions copy the same one

        def scenario(name: str, slug: str) -> None:
            outcomes[name] = run_scenario(cloud, name, plan, base / slug, template)

        threads = [
            threading.Thread(target=scenario, args=(name, slug), name=slug)
            for name, slug in ((CALM, "calm"), (STORM, "storm"), (NO_CHECKPOINTS, "nockpt"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    errors = {n: o.error for n, o in outcomes.items() if o.error}
    if errors:
        raise RuntimeError(f"scenarios failed: {errors}")
    calm_s = outcomes[CALM].wall_s
    summaries = {name: summary(o, plan, calm_s) for name, o in outcomes.items()}
    return {
        "plan": {**plan.__dict__, "interruptions": plan.interruptions, "steps": plan.steps},
        "scenarios": summaries,
        "targets": targets(summaries[STORM], summaries[CALM], plan),
    }


def fmt(stat: dict[str, float] | None) -> str:
    """``mean (max)`` seconds, or a dash."""
    return "–" if stat is None else f"{stat['mean']:.1f} (max {stat['max']:.1f}, n={stat['n']})"


def report(r: dict[str, Any]) -> None:
    """The table printed after a run (what BENCHMARKS.md shows)."""
    p = r["plan"]
    print(
        f"\n{p['workers']} workers, {p['tasks']} tasks × {p['task_s']:g} s (steps of {p['step_s']} s), "
        f"checkpoint every τ = {p['checkpoint_every_s']:g} s, a busy worker interrupted every "
        f"{p['interrupt_every_s']:g} s (SIGTERM and SIGKILL in turn), lease {p['lease_s']} s"
    )
    rows = []
    for s in r["scenarios"].values():
        n = s["interruptions"]
        rows.append(
            [
                s["scenario"],
                f"{s['wall_s']:.1f} s",
                f"{s['wall_vs_calm']:.2f}×",
                f"{n['SIGTERM']} / {n['SIGKILL']}",
                fmt(s["lost_per_sigterm_s"]),
                fmt(s["lost_per_sigkill_s"]),
                fmt(s["delay_per_sigkill_s"]),
                f"{s['redone_worker_s']:.0f}",
            ]
        )
    print(
        table(
            ["scenario", "job wall", "vs calm", "SIGTERM / SIGKILL", "lost per SIGTERM (worker-s)",
             "lost per SIGKILL (worker-s)", "delay per SIGKILL (s)", "redone (worker-s)"],
            rows,
        )
    )  # fmt: skip
    write = r["scenarios"][STORM]["checkpoint_write_median_s"]
    print(f"checkpoint write (pack + upload + pointer), median: {write} s")
    print(
        "maxReceiveCount "
        + ", ".join(f"{s['scenario']} {s['max_receive_count']}" for s in r["scenarios"].values())
        + "; tasks dead-lettered: "
        + ", ".join(f"{s['scenario']} {s['dead_lettered']}" for s in r["scenarios"].values())
    )
    print(
        "targets: "
        + ", ".join(
            f"{k} {'met' if v else 'MISSED' if v is False else 'n/a'}" for k, v in r["targets"].items()
        )
    )


def plot(r: dict[str, Any], path: Path) -> None:
    """Two panels: job wall time per scenario; lost worker-seconds per interruption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(r["scenarios"].values())
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [s["scenario"] for s in scenarios]
    walls = [s["wall_s"] for s in scenarios]
    left.bar(names, walls, color=["#4c72b0", "#55a868", "#c44e52"])
    calm = r["scenarios"][CALM]["wall_s"]
    left.axhline(1.25 * calm, color="black", linestyle="--", linewidth=1, label="1.25 × calm (target)")
    left.set_ylabel("job wall time (s)")
    left.set_title("Job wall time")
    left.legend(loc="upper left", fontsize=8)
    for x, (name, s) in enumerate(zip(names, scenarios, strict=True)):
        for k, (kind, marker) in enumerate((("SIGTERM", "o"), ("SIGKILL", "x"))):
            values = [c["lost_s"] for c in s["per_interruption"] if not c["missed"] and c["kind"] == kind]
            color = {CALM: "#4c72b0", STORM: "#55a868"}.get(name, "#c44e52")
            right.scatter([x + (k - 0.5) * 0.25] * len(values), values, marker=marker, color=color)
    right.set_xticks(range(len(names)), names)
    right.set_ylabel("lost worker-seconds per interruption")
    right.set_title("Work lost per interruption (o SIGTERM, x SIGKILL)")
    p = r["plan"]
    fig.suptitle(
        f"{p['workers']} workers, {p['tasks']} tasks × {p['task_s']:g} s, "
        f"τ = {p['checkpoint_every_s']:g} s, interrupt every {p['interrupt_every_s']:g} s, "
        f"lease {p['lease_s']} s"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the sizes, run, print the table and the JSON line; plot with ``--plot``."""
    d = Plan()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--tasks", type=int, default=d.tasks)
    parser.add_argument("--task-seconds", type=float, default=d.task_s)
    parser.add_argument("--step-seconds", type=float, default=d.step_s)
    parser.add_argument("--checkpoint-every", type=float, default=d.checkpoint_every_s, help="τ, seconds")
    parser.add_argument("--interrupt-every", type=float, default=d.interrupt_every_s, help="X, seconds")
    parser.add_argument("--lease", type=int, default=d.lease_s, help="the workers' task lease, s")
    parser.add_argument("--grace", type=float, default=d.grace_s, help="the workers' --grace-seconds")
    parser.add_argument(
        "--interruptions", type=int, default=None, help="default: one per X s of the calm run"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds per scenario")
    parser.add_argument("--plot", type=Path, default=None, help="write the figure here (PNG)")
    args = parser.parse_args(argv)
    plan = Plan(
        workers=args.workers, tasks=args.tasks, task_s=args.task_seconds, step_s=args.step_seconds,
        checkpoint_every_s=args.checkpoint_every, interrupt_every_s=args.interrupt_every,
        lease_s=args.lease, grace_s=args.grace, seed=args.seed, timeout_s=args.timeout,
        storm_interruptions=args.interruptions,
    )  # fmt: skip
    result = {**run(plan), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    if args.plot is not None:
        plot(result, args.plot)
        print(f"figure: {args.plot}")
    emit_json("preempt", result)
    return result


if __name__ == "__main__":
    main()
