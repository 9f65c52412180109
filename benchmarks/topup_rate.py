"""How fast one top-up sends a deep window, against a round's fan-out (issue #25 item 1: "a job
of a million shards must still fan out at the rates BENCHMARKS §3 and §10 show").

On one ``LocalCloud`` (fresh queues, table and bucket per measurement, as ``benchmarks.fanout``):

1. **top-up**: a ``map`` job of ``--shards`` over ``--lanes`` lanes with windows on; its first
   window (2 per lane, unmeasured) is taken off the queue and its results counted by
   ``Engine.ingest``, stamped as no-op tasks answered 5 s after their send (AWS's batching
   window): the measured depth hits its cap (``shardq.core.depth.DEPTH_CAP`` per lane). Slow
   start (``Admission.slow_start``) lets a window only double per round trip, so the job's
   recorded window is first set to half of ``cap × lanes``, where its doublings would have
   brought it; that one ``ingest`` then records the results and sends ``cap × lanes`` tasks.
   Timed: the ``ingest``.
2. **fan-out**: the same job shape with windows off (``scheduling`` null): ``Engine.submit``
   sends ``cap × lanes`` tasks; the §2/§3 path, timed the same way, in the same run.
3. **hand-off**: as 1, with a deadline that cuts the top-up after its first chunk: the aggregator
   hands the job on (``EnqueueIncomplete``) and a fresh engine (a new container: no measurement)
   ``resume``s it from the cursor. Verified: every shard of the window went on the queue once.

    .venv/bin/python -m benchmarks.topup_rate [--shards 20000] [--lanes 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

from benchmarks._common import describe, emit_json, machine, median, table
from shardq.core.depth import DEPTH_CAP
from shardq.core.engine import Engine
from shardq.core.enqueue import HANDOFF_MARGIN_S
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.core.store.keys import job_key
from shardq.local.cloud import LocalCloud
from shardq.local.resources import dlq_urls, provision
from tests.helpers import receive_all, result_for, tasks_of

WINDOWS = json.dumps({"window_per_lane": 2})
ROUND_TRIP_S = 5.0


def request(job_id: str, shards: int, lanes: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": "map",
        "dataset": {"uri": "synthetic://linear?dim=8&noise=0.05&seed=7", "num_samples": shards},
        "sharding": {"shard_count": shards},
        "max_parallel": lanes,
    }


class Bench:
    def __init__(self, cloud: LocalCloud) -> None:
        self.clients = {n: cloud.client(n) for n in ("sqs", "dynamodb", "s3", "events")}

    def engine(self, settings: Settings, scheduling: str | None) -> Engine:
        c = self.clients
        s = replace(settings, scheduling=scheduling)
        return Engine(settings=s, ddb=c["dynamodb"], sqs=c["sqs"], s3=c["s3"], events=c["events"])

    def fresh(self) -> Settings:
        return provision(self.clients["sqs"], self.clients["dynamodb"], self.clients["s3"])

    def drop(self, settings: Settings) -> None:
        sqs = self.clients["sqs"]
        dlqs = dlq_urls(sqs, settings)
        for url in (settings.task_queue_url, settings.results_queue_url, dlqs["tasks"], dlqs["results"]):
            sqs.delete_queue(QueueUrl=url)
        self.clients["dynamodb"].delete_table(TableName=settings.job_table)
        self.clients["s3"].delete_bucket(Bucket=settings.artifact_bucket)

    def first_window(self, engine: Engine, settings: Settings, job_id: str) -> list[Outcome]:
        """Take the job's first window off the queue; its outcomes, stamped as no-op tasks of one
        worker answered ``ROUND_TRIP_S`` after their send."""
        tasks = tasks_of(receive_all(self.clients["sqs"], settings.task_queue_url, attributes=False))
        lanes = engine.store.get_job(job_id).request.max_parallel
        # As after slow start's doublings: the next top-up may send the depth's cap on every lane.
        self.clients["dynamodb"].update_item(
            TableName=settings.job_table,
            Key=job_key(job_id),
            UpdateExpression="SET #w = :w",
            ExpressionAttributeNames={"#w": "window"},
            ExpressionAttributeValues={":w": {"N": str(DEPTH_CAP * lanes // 2)}},
        )
        now = time.time()
        return [
            Outcome(
                replace(result_for(t), worker_id="w", duration_s=0.001),
                sent_at=now - ROUND_TRIP_S + 0.01 * i,
            )
            for i, t in enumerate(tasks)
        ]

    def top_up(self, shards: int, lanes: int) -> dict[str, Any]:
        settings = self.fresh()
        try:
            engine = self.engine(settings, WINDOWS)
            engine.submit(request("t", shards, lanes))
            outcomes = self.first_window(engine, settings, "t")
            before = engine.store.get_job("t").enqueued(0, "train")
            t0 = time.perf_counter()
            assert not engine.ingest(outcomes)
            took = time.perf_counter() - t0
            sent = engine.store.get_job("t").enqueued(0, "train") - before
            return {
                "results": len(outcomes),
                "sent": sent,
                "s": round(took, 3),
                "tasks_per_s": round(sent / took),
            }
        finally:
            self.drop(settings)

    def fan_out(self, tasks: int, lanes: int) -> dict[str, Any]:
        settings = self.fresh()
        try:
            engine = self.engine(settings, None)
            t0 = time.perf_counter()
            engine.submit(request("f", tasks, lanes))
            took = time.perf_counter() - t0
            return {"sent": tasks, "s": round(took, 3), "tasks_per_s": round(tasks / took)}
        finally:
            self.drop(settings)

    def hand_off(self, shards: int, lanes: int) -> dict[str, Any]:
        settings = self.fresh()
        try:
            engine = self.engine(settings, WINDOWS)
            engine.submit(request("h", shards, lanes))
            outcomes = self.first_window(engine, settings, "h")
            handed: list[str] = []
            # Time for about one 500-task chunk before the margin: the top-up must hand on.
            deadline = time.time() + HANDOFF_MARGIN_S + 0.05
            assert not engine.ingest(outcomes, deadline=deadline, hand_on=handed.append)
            cut = engine.store.get_job("h").enqueued(0, "train")
            fresh = self.engine(settings, WINDOWS)  # a new container: no measurement of its own
            fresh.resume("h")
            job = fresh.store.get_job("h")
            window = job.enqueued(0, "train")
            got = tasks_of(receive_all(self.clients["sqs"], settings.task_queue_url, attributes=False))
            shards_seen = sorted(t.shard_id for t in got)
            expected = list(range(len(outcomes), window))
            return {
                "handed_on": handed == ["h"],
                "cursor_at_cut": cut,
                "cursor_after_resume": window,
                "exactly_once": shards_seen == expected,
            }
        finally:
            self.drop(settings)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=20_000)
    parser.add_argument("--lanes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    m = machine()
    out: dict[str, Any] = {"shards": args.shards, "lanes": args.lanes, "depth_cap": DEPTH_CAP}
    with LocalCloud() as cloud:
        bench = Bench(cloud)
        tops, fans = [], []
        for i in range(args.repeats):
            # alternate the order: the machine's load moves
            if i % 2:
                fans.append(bench.fan_out(DEPTH_CAP * args.lanes, args.lanes))
                tops.append(bench.top_up(args.shards, args.lanes))
            else:
                tops.append(bench.top_up(args.shards, args.lanes))
                fans.append(bench.fan_out(DEPTH_CAP * args.lanes, args.lanes))
        out["top_up"], out["fan_out"] = tops, fans
        out["hand_off"] = bench.hand_off(args.shards, args.lanes)
    top_rate = median([t["tasks_per_s"] for t in tops])
    fan_rate = median([f["tasks_per_s"] for f in fans])
    out["top_up_tasks_per_s"], out["fan_out_tasks_per_s"] = top_rate, fan_rate
    out["ratio"] = round(top_rate / fan_rate, 2)
    print(describe(m))
    rows = [
        [
            f"one top-up: {tops[0]['results']} results counted, {tops[0]['sent']} tasks sent",
            f"{top_rate} tasks/s",
            ", ".join(f"{t['s']} s" for t in tops),
        ],
        [
            f"a round's fan-out (windows off), {fans[0]['sent']} tasks",
            f"{fan_rate} tasks/s",
            ", ".join(f"{f['s']} s" for f in fans),
        ],
        ["top-up vs fan-out (medians)", f"{out['ratio']}×", ""],
        [
            "hand-off: cut, resumed by a fresh engine",
            f"cursor {out['hand_off']['cursor_at_cut']} → {out['hand_off']['cursor_after_resume']}",
            f"exactly once: {out['hand_off']['exactly_once']}",
        ],
    ]
    print(table(["measurement", "figure", "each repeat"], rows))
    emit_json("topup_rate", {**out, "machine": m})
    return out


if __name__ == "__main__":
    main()
