"""What one ASHA pass costs (DynamoDB read units and wall time) at 100, 1,000 and 10,000 trials.

An asynchronous sweep decides on every recorded result (``shardq.core.async_sweep``). On the local
cloud (freshly provisioned table, the stack's own indexes), an ASHA sweep of N random-search
trials (eta 3, budgets 1 → 3 → 9, ``max_parallel`` 8) is put in the state it has late in its
run: every rung-0 trial decided, all but 8 with their result, the top third promoted to rung 1
and the top third of those to rung 2, all of them finished (the decisions written through
``JobStore.decide``, the results through ``JobStore.record``, as the aggregator writes them).
Then the aggregator ingests the result of one running trial (``Engine.ingest``: the foreign-result
check, the recording transaction and the pass that decides what its freed slot takes) and
then of a second one:

* ``first``: the first result this aggregator container sees for the job (a cold container);
* ``steady``: the next one (a warm container, as most results meet).

Every DynamoDB read goes through ``benchmarks.read_units.Meter`` (DynamoDB's billing rules: 4 KB
steps of what a call evaluated; 1 unit strongly consistent, 0.5 eventually).

    .venv/bin/python -m benchmarks.asha_pass [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any

from benchmarks._common import describe, emit_json, machine, table
from benchmarks.read_units import Meter
from shardq.core import async_sweep
from shardq.core.contracts import ShardResult, TrainingRequest
from shardq.core.engine import Engine
from shardq.core.jobstore import JobRecord, Outcome, SweepDecision
from shardq.core.progress_reads import OVERLAP_S, SKEW_S
from shardq.core.store.sweeps import MAX_DECISIONS
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision

LANES = 8
ETA = 3
BATCH = 990


def request_of(job_id: str, trials: int) -> TrainingRequest:
    """The sweep: ``trials`` random-search trials under ASHA, ``LANES`` in flight."""
    return TrainingRequest.from_dict(
        {
            "job_id": job_id,
            "kind": "sweep",
            "dataset": {"uri": "s3://bench/data", "num_samples": 1000},
            "search_space": {"lr": {"log_uniform": [1e-4, 1e-1]}, "l2": {"uniform": [0.0, 0.1]}},
            "search": {"method": "random", "num_trials": trials, "seed": 7},
            "early_stopping": {"method": "asha", "eta": ETA, "min_budget": 1, "max_budget": 9},
            "objective": {"metric": "loss", "direction": "minimize"},
            "max_parallel": LANES,
            "max_failed_shards": trials,
            "entrypoint": "benchmarks.e2e:noop",
        }
    )


def result(job_id: str, rung: int, trial: int, loss: float) -> ShardResult:
    """A finished trial at ``rung`` with its model."""
    return ShardResult(
        job_id=job_id,
        round=rung,
        shard_id=trial,
        task_type="train",
        status="succeeded",
        metrics={"loss": loss},
        num_samples=1000,
        artifact_uri=f"s3://bench/jobs/{job_id}/round-{rung:04d}/shard-{trial:06d}/",
        duration_s=12.5,
        worker_id=f"worker-{trial % 16}",
    )


def fill(engine: Engine, request: TrainingRequest, job_id: str, trials: int) -> list[int]:
    """Put the sweep in its late state (module docstring); returns the running rung-0 trials."""
    store, rng = engine.store, random.Random(trials)
    params = {t: async_sweep.search.trial_params(request, t) for t in range(trials)}
    running = list(range(trials - LANES, trials))
    lanes = {t: i for i, t in enumerate(running)}
    decisions: list[SweepDecision] = [
        SweepDecision(rung=0, trial=t, lane=lanes.get(t, t % LANES), seq=0, params=params[t])
        for t in range(trials)
    ]
    results: list[ShardResult] = []
    rung_trials = [t for t in range(trials) if t not in lanes]
    for rung in range(3):
        losses = {t: rng.random() / (rung + 1) for t in rung_trials}
        results.extend(result(job_id, rung, t, loss) for t, loss in losses.items())
        if rung == 2:
            break
        best = sorted(rung_trials, key=lambda t: (losses[t], t))[: len(rung_trials) // ETA]
        decisions.extend(
            SweepDecision(rung=rung + 1, trial=t, lane=t % LANES, seq=0, params=params[t], rule="asha")
            for t in best
        )
        rung_trials = best
    seen = 0
    for lo in range(0, len(decisions), MAX_DECISIONS):
        assert store.decide(job_id, seen, decisions[lo : lo + MAX_DECISIONS])
        seen += 1
    store.sweep_sent(job_id, seen)
    for lo in range(0, len(results), BATCH):
        store.record([Outcome(r) for r in results[lo : lo + BATCH]])
    return running


def measure(meter: Meter, ingest: Any) -> dict[str, Any]:
    """One ingest's read calls, items, KiB and read units, and its wall time."""
    meter.reset()
    started = time.perf_counter()
    ingest()
    return {
        "calls": meter.calls,
        "items": meter.items,
        "kib": round(meter.bytes / 1024, 1),
        "rcu": round(meter.billed, 1),
        "seconds": round(time.perf_counter() - started, 3),
    }


def run_size(cloud: LocalCloud, trials: int) -> dict[str, Any]:
    """The first and the steady pass of one sweep of ``trials`` trials."""
    clients = {n: cloud.client(n) for n in ("sqs", "dynamodb", "s3", "events")}
    settings = provision(clients["sqs"], clients["dynamodb"], clients["s3"])
    meter = Meter(clients["dynamodb"])
    engine = Engine(
        settings=settings, ddb=meter, sqs=clients["sqs"], s3=clients["s3"], events=clients["events"]
    )
    job_id = f"asha-{trials}"
    request = request_of(job_id, trials)
    engine.store.create_job(JobRecord.new(request, job_id, "x"))
    started = time.perf_counter()
    running = fill(engine, request, job_id, trials)
    fill_s = time.perf_counter() - started
    # The sweep has been running a while: its results so far were recorded longer ago than a
    # read's overlap reaches (shardq.core.progress_reads), as they are after its first minute.
    time.sleep(OVERLAP_S + SKEW_S + 1)
    # A fresh container (its caches empty) meets the job's results from here on.
    engine = Engine(
        settings=settings, ddb=meter, sqs=clients["sqs"], s3=clients["s3"], events=clients["events"]
    )

    def arrive(trial: int) -> None:
        assert engine.ingest([Outcome(result(job_id, 0, trial, 0.5))]) == []

    first = measure(meter, lambda: arrive(running[0]))
    steady = measure(meter, lambda: arrive(running[1]))
    job = engine.store.get_job(job_id)
    assert job.status == "RUNNING", job.status
    return {"trials": trials, "fill_s": round(fill_s, 1), "first": first, "steady": steady}


def run(sizes: list[int]) -> dict[str, Any]:
    """Each size in its own freshly provisioned table on one local cloud."""
    with LocalCloud() as cloud:
        return {"sizes": [run_size(cloud, n) for n in sizes]}


def report(result: dict[str, Any]) -> None:
    """The table BENCHMARKS.md shows."""
    rows = []
    for size in result["sizes"]:
        for name in ("first", "steady"):
            m = size[name]
            rows.append(
                (f"{size['trials']:,}", name, m["calls"], m["items"], m["kib"], m["rcu"], m["seconds"])
            )
    heads = ["trials", "pass", "read calls", "items read", "KiB read", "RCU (billed rules)", "wall s"]
    print(table(heads, rows))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sizes, print the table, emit the JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="comma-separated trial counts")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) <= 2 * LANES:
        parser.error(f"--sizes: each size must be above {2 * LANES} trials")
    result = {**run(sizes), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("asha_pass", result)
    return result


if __name__ == "__main__":
    main()
