"""The soak run: many small jobs at once, workers SIGKILLed at random, results duplicated, for a bounded time.

Not part of the default test run (marker ``soak``); run it with ``make soak``
(``SOAK_JOBS``, ``SOAK_SECONDS``, ``CHAOS_SEED`` tune it). It prints one ``SOAK {...}`` JSON
line — jobs, shards, faults injected, lost, double-counted — which docs/RELIABILITY.md quotes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from shardq.core.contracts import TERMINAL_STATUSES
from tests.chaos.conftest import BASE_SEED, Rig
from tests.chaos.harness import (
    InjectedCrash,
    assert_same_model,
    load_model,
    reference_model,
    request,
    running,
    settle,
)
from tests.chaos.history import check, collect


@pytest.mark.soak
def test_soak_many_jobs_with_random_worker_kills_and_duplicate_results(rig: Callable[..., Rig]) -> None:
    jobs_n = int(os.environ.get("SOAK_JOBS", "40"))
    budget_s = float(os.environ.get("SOAK_SECONDS", "150"))
    rng = random.Random(BASE_SEED + 4242)
    r = rig(task_visibility_s=2, workers=4)
    payloads = {
        f"soak-{i:03d}": request(f"soak-{i:03d}", shards=4, rounds=2, sleep=0.25) for i in range(jobs_n)
    }
    for payload in payloads.values():
        r.engine.submit(payload)
    r.pool.start()
    kills = duplicates = 0
    next_fault = time.monotonic() + rng.uniform(0.5, 1.5)
    sqs = r.clients["sqs"]

    def duplicate(msgs: list[dict[str, Any]]) -> None:
        # Post a copy of one result in every few batches: delivery is at-least-once.
        nonlocal duplicates
        if msgs and rng.random() < 0.5:
            sqs.send_message(QueueUrl=r.settings.results_queue_url, MessageBody=rng.choice(msgs)["Body"])
            duplicates += 1

    r.pump.on_receive = duplicate
    handler = r.pump.aggregator

    def crashing_aggregator(event: dict[str, Any], context: Any) -> dict[str, Any]:
        # One aggregator invocation in ten dies after its writes and before the batch is acknowledged.
        response = handler(event, context)
        if rng.random() < 0.1:
            raise InjectedCrash("aggregator died before acknowledging its batch")
        return dict(response)

    r.pump.aggregator = crashing_aggregator
    started = time.monotonic()
    deadline = started + budget_s
    while time.monotonic() < deadline:
        r.pool.tick()
        if time.monotonic() >= next_fault:
            busy = [t for job in payloads for t in running(r.dir, job) if r.pool.by_pid(t["pid"])]
            if busy:
                proc = r.pool.by_pid(rng.choice(sorted(busy, key=lambda t: t["pid"]))["pid"])
                if proc is not None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
            next_fault = time.monotonic() + rng.uniform(0.5, 1.5)
        if not r.pump.step():
            time.sleep(0.1)
        statuses = [r.engine.store.get_job(j).status for j in payloads]
        if all(s in TERMINAL_STATUSES for s in statuses):
            break
    elapsed = time.monotonic() - started
    settle(r.pump, pool=r.pool, timeout=60)

    violations: dict[str, list[str]] = {}
    lost = double = 0
    reference = reference_model(r.clients, next(iter(payloads.values())))
    for job_id in payloads:
        h = collect(r.engine, job_id, r.dir)
        problems = check(h, status="SUCCEEDED")
        lost += sum(
            1 for p in problems if "expected all of" in p or "left on the" in p or "not recorded" in p
        )
        double += sum(1 for p in problems if " times" in p or p.startswith("counter "))
        if problems:
            violations[job_id] = problems
        elif h.job.status == "SUCCEEDED":
            assert_same_model(load_model(r.clients["s3"], h.job.model_uri), reference)
    shards = sum(p["sharding"]["shard_count"] * p["rounds"] for p in payloads.values())
    report = {
        "jobs": jobs_n,
        "train_shards": shards,
        "reduce_tasks": sum(p["rounds"] for p in payloads.values()),
        "workers": 4,
        "seconds": round(elapsed, 1),
        "faults": {
            "worker_sigkills": kills,
            "duplicate_results": duplicates,
            "aggregator_crashes": r.pump.crashes,
        },
        "lost": lost,
        "double_counted": double,
        "jobs_with_violations": len(violations),
        "seed": BASE_SEED + 4242,
    }
    print("SOAK " + json.dumps(report))
    assert not violations, json.dumps(violations, indent=2)
    assert kills > 0
    assert duplicates > 0
    assert r.pump.crashes > 0
