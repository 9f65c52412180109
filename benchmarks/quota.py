"""Fan-out against a model of the SQS FIFO quota: does ``FanOut`` reach the ceiling, and no further?

The local cloud has no quota, so this benchmark puts a model of one in front of the
client. Per SendMessageBatch call the model

* takes a token from a token bucket per action (300 calls/s; a burst of ``--burst-s``
  seconds of quota) or, in high-throughput mode, from the bucket of each partition the
  entries hash to (``crc32(MessageGroupId) % partitions``; each entry costs 1/10 of a
  call there, so a partition takes 300 full batches = 3,000 messages/s);
* sleeps a per-call latency drawn from ``--latency-ms`` (15–25 ms by default), throttled
  or not;
* above the quota fails the call with SQS's throttling error, alternating the two codes
  SQS clients see: ``RequestThrottled`` (JSON protocol, query-compatible header) and
  ``ThrottlingException``, both as ``botocore.exceptions.ClientError``;
* keeps accepted messages in memory by deduplication id (a repeat within the window is
  accepted and dropped, as SQS does). The model stands in for the rate limit, not for
  SQS's semantics.

The fan-out runs through the production client (``shardq.core.clients``) with the model
answering at the HTTP layer (botocore ``before-send``): request serialisation, signing, error
parsing and botocore's throttle retries all run as they would against AWS. (``FanOut`` no
longer retries a throttled call itself: botocore's retry mode is the one layer for calls that
fail as a whole, so handing the model to ``FanOut`` directly would measure nothing real.) The
production client's retry mode is ``adaptive``; one FIFO and one HT variant run botocore's
``standard`` mode beside it. The naive baseline calls the model object directly.

Messages are the ones the splitter builds (``Engine.enqueue``'s bodies, group ids and
deduplication ids for a data-parallel job of ``--tasks`` shards over ``max_parallel``
lanes), built before the timer starts; how fast they can be built is reported beside.
Every variant is verified by id: every deduplication id stored once, nothing else.
"Sustained" is the rate between the 10 % and the 90 % mark of the accepted messages.

Beyond what the model can run here (a million shards; high-throughput FIFO at its regional
ceiling, 70,000 calls/s per action in us-east-1, i.e. 700,000 msgs/s), the run ends with a
**projection**: the wall time the plane needs to dispatch and to count 1,000, 100,000 and
1,000,000 shards, from

* the quotas (``shardq/core/prices.json``) and the share of them the fan-out sustained above;
* what the fan-out's calls in flight offer (in flight / call latency);
* the splitter's CPU: the client-side CPU of one SendMessageBatch call through the production
  client (serialise, sign, parse; answered at the HTTP layer, no network) and of building one
  message, both measured here, against the vCPU share of a 512 MB Lambda (1,769 MB = 1 vCPU;
  one Python process uses at most one core for this work);
* counting: ``shardq.core.cost.plane_timing`` (aggregator concurrency × 100 results per
  invocation, bounded by the job's counter item).

    .venv/bin/python -m benchmarks.quota [--tasks 20000] [--partitions 4] [--ht-tasks 40000]
    .venv/bin/python -m benchmarks.quota --project-only     # the projection alone (≈ 10 s)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError

from benchmarks._common import describe, emit_json, machine, table
from benchmarks.fanout import request, task_messages
from shardq.core import cost
from shardq.core.fanout import FanOut, FanOutError, FanOutStats, Message
from shardq.core.settings import Settings

CALLS_PER_S = 300.0  # FIFO quota per action (per partition in high-throughput mode)
ENTRIES_PER_CALL = 10
TARGET_SHARE = 0.90  # of the modelled ceiling, sustained
THROTTLE_CODES = ("RequestThrottled", "ThrottlingException")


class Bucket:
    """A token bucket: ``rate`` tokens/s, at most ``capacity`` saved up."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.stamp = time.monotonic()

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now


@dataclass
class QuotaModel:
    """SQS FIFO's rate limit, per action, per partition; messages kept by dedup id."""

    partitions: int = 1
    calls_per_s: float = CALLS_PER_S
    burst_s: float = 0.1
    latency_s: tuple[float, float] = (0.015, 0.025)
    lock: threading.Lock = field(default_factory=threading.Lock)
    buckets: dict[tuple[str, int], Bucket] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)  # dedup id -> times accepted
    accepted: list[tuple[float, int]] = field(default_factory=list)  # (time, new messages)
    calls: dict[str, int] = field(default_factory=dict)
    throttles: dict[str, int] = field(default_factory=dict)
    partition_entries: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.partition_entries = [0] * self.partitions

    def partition(self, group_id: str | None) -> int:
        return zlib.crc32((group_id or "").encode()) % self.partitions if self.partitions > 1 else 0

    def _admit(self, action: str, entries: list[dict[str, Any]], now: float) -> bool:
        """Take the call's tokens (all or none); False means throttled."""
        if self.partitions == 1:
            cost = {0: 1.0}
        else:  # each entry costs 1/10 of a call on its partition
            cost = {}
            for e in entries:
                p = self.partition(e.get("MessageGroupId"))
                cost[p] = cost.get(p, 0.0) + 1.0 / ENTRIES_PER_CALL
        with self.lock:
            self.calls[action] = self.calls.get(action, 0) + 1
            buckets = []
            for p in cost:
                b = self.buckets.get((action, p))
                if b is None:
                    b = self.buckets[(action, p)] = Bucket(self.calls_per_s, self.calls_per_s * self.burst_s)
                b.refill(now)
                buckets.append(b)
            if any(b.tokens < cost[p] - 1e-9 for p, b in zip(cost, buckets, strict=True)):
                self.throttles[action] = self.throttles.get(action, 0) + 1
                return False
            for p, b in zip(cost, buckets, strict=True):
                b.tokens -= cost[p]
            return True

    def _store(self, entries: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        new = 0
        with self.lock:
            for e in entries:
                key = e.get("MessageDeduplicationId") or e["MessageBody"]
                seen = self.stored.get(key, 0)
                self.stored[key] = seen + 1
                if not seen:
                    new += 1
                    self.partition_entries[self.partition(e.get("MessageGroupId"))] += 1
            self.accepted.append((now, new))
        return [
            {"Id": e["Id"], "MessageId": str(uuid.uuid4()), "MD5OfMessageBody": "0" * 32} for e in entries
        ]

    def serve(self, action: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]] | str:
        """One call: latency, then the accepted entries, or the throttling code."""
        now = time.monotonic()  # the quota applies when the call arrives
        admitted = self._admit(action, entries, now)
        time.sleep(random.uniform(*self.latency_s))
        if not admitted:
            n = sum(self.throttles.values())
            return THROTTLE_CODES[n % len(THROTTLE_CODES)]
        return self._store(entries, now)

    def sustained(self, total: int) -> float:
        """Messages/s admitted between the 10 % and the 90 % mark."""
        events = sorted(self.accepted)
        done = 0
        marks: dict[float, float] = {}
        for t, n in events:
            done += n
            for q in (0.1, 0.9):
                if q not in marks and done >= q * total:
                    marks[q] = t
        return 0.8 * total / max(marks[0.9] - marks[0.1], 1e-9)


class ModelClient:
    """The quota model as an SQS client object (only what the fan-out and the baseline call)."""

    exceptions = None

    def __init__(self, model: QuotaModel) -> None:
        self.model = model

    def _answer(self, action: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = self.model.serve(action, entries)
        if isinstance(out, str):
            raise ClientError(
                {
                    "Error": {"Code": out, "Message": "Rate exceeded", "Type": "Sender"},
                    "ResponseMetadata": {"HTTPStatusCode": 400},
                },
                action,
            )
        return out

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        return {"Successful": self._answer("SendMessageBatch", Entries), "Failed": []}

    def send_message(self, QueueUrl: str, **kwargs: Any) -> dict[str, Any]:
        return self._answer("SendMessage", [{"Id": "0", **kwargs}])[0]


class _Raw:
    """Enough of a urllib3 response for botocore's AWSResponse."""

    def __init__(self, body: bytes) -> None:
        self._body = io.BytesIO(body)

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        yield self._body.read()


def boto3_client(model: QuotaModel, retry_mode: str | None = None) -> Any:
    """The production SQS client, answered by the model at the HTTP layer (no network).

    ``retry_mode`` overrides the production client's botocore retry mode (for comparison).
    """
    from botocore.awsrequest import AWSResponse

    from shardq.core.clients import client, new_client

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        os.environ.setdefault(k, v)
    endpoint = "https://sqs.us-east-1.amazonaws.com"
    if retry_mode is None:
        sqs = client.__wrapped__("sqs", "us-east-1", endpoint)
    else:
        sqs = new_client("sqs", region="us-east-1", endpoint_url=endpoint, retry_mode=retry_mode)

    def before_send(request: Any, **kwargs: Any) -> Any:
        target = dict(request.headers).get("X-Amz-Target", b"")
        action = (target.decode() if isinstance(target, bytes) else target).rpartition(".")[2]
        payload = json.loads(request.body or b"{}")
        if action == "SendMessageBatch":
            entries = payload["Entries"]
        elif action == "SendMessage":
            entries = [{"Id": "0", **payload}]
        else:
            raise RuntimeError(f"the quota model does not serve {action}")
        out = model.serve(action, entries)
        headers = {"Content-Type": "application/x-amz-json-1.0", "x-amzn-RequestId": str(uuid.uuid4())}
        if isinstance(out, str):
            if out == "RequestThrottled":  # JSON protocol with the query-compatible code header
                headers["x-amzn-query-error"] = "RequestThrottled;Sender"
                body = {"__type": "com.amazonaws.sqs#RequestThrottled", "message": "Request is throttled."}
            else:
                body = {"__type": "ThrottlingException", "message": "Rate exceeded"}
            return AWSResponse(request.url, 400, headers, _Raw(json.dumps(body).encode()))
        answer: dict[str, Any] = (
            {"MessageId": out[0]["MessageId"], "MD5OfMessageBody": out[0]["MD5OfMessageBody"]}
            if action == "SendMessage"
            else {"Successful": out, "Failed": []}
        )
        return AWSResponse(request.url, 200, headers, _Raw(json.dumps(answer).encode()))

    sqs.meta.events.register_first("before-send.sqs", before_send)
    return sqs


@dataclass
class Variant:
    name: str
    mode: str  # "fifo" | "ht"
    client: str  # "model" | "boto3" | "naive-model"
    max_in_flight: int = 8
    base_delay: float = 0.05
    retry_mode: str | None = None  # None: the production client's


def messages_for(tasks: int, max_parallel: int) -> tuple[list[Message], float]:
    """The splitter's messages for a job of ``tasks`` shards, and the seconds it took to build them."""
    payload = {**request(f"quota-{uuid.uuid4().hex[:8]}", tasks), "max_parallel": max_parallel}
    settings = Settings(job_table="t", task_queue_url="q", results_queue_url="r", artifact_bucket="b" * 20)
    started = time.perf_counter()
    msgs = list(task_messages(payload, settings))
    return msgs, time.perf_counter() - started


def run_variant(v: Variant, msgs: list[Message], partitions: int, args: argparse.Namespace) -> dict[str, Any]:
    model = QuotaModel(
        partitions=partitions if v.mode == "ht" else 1,
        burst_s=args.burst_s,
        latency_s=(args.latency_ms[0] / 1000, args.latency_ms[1] / 1000),
    )
    sqs: Any = boto3_client(model, v.retry_mode) if v.client == "boto3" else ModelClient(model)
    stats = FanOutStats()
    error = None
    started = time.perf_counter()
    if v.client == "naive-model":
        for m in msgs:
            while True:  # the naive loop retries a throttle at once (it never hits one at 50 calls/s)
                try:
                    sqs.send_message(
                        QueueUrl="q", MessageBody=m.body, MessageGroupId=m.group_id,
                        MessageDeduplicationId=m.dedup_id,
                    )  # fmt: skip
                    stats.add(sent=1, api_calls=1)
                    break
                except ClientError:
                    stats.add(api_calls=1, throttled_calls=1)
    else:
        fan = FanOut(sqs, "q", max_in_flight=v.max_in_flight, base_delay=v.base_delay)
        try:
            fan.send(msgs, stats=stats)
        except FanOutError as exc:
            error = f"{exc} ({len(exc.unsent)} unsent)"
    elapsed = time.perf_counter() - started
    expected = {m.dedup_id for m in msgs}
    lost = len(expected - set(model.stored))
    foreign = len(set(model.stored) - expected)
    resent = sum(c - 1 for c in model.stored.values())
    ceiling = CALLS_PER_S * ENTRIES_PER_CALL * (partitions if v.mode == "ht" else 1)
    if v.client == "naive-model":
        ceiling = CALLS_PER_S  # one message per call
    mid = model.sustained(len(msgs))
    shares = [n / max(1, len(msgs)) for n in model.partition_entries]
    return {
        "variant": v.name,
        "mode": v.mode,
        "client": v.client,
        "max_in_flight": v.max_in_flight,
        "base_delay_s": v.base_delay,
        "partitions": partitions if v.mode == "ht" else 1,
        "tasks": len(msgs),
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(len(msgs) / elapsed, 1),
        "sustained_msgs_per_s": round(mid, 1),
        "ceiling_msgs_per_s": ceiling,
        "share_of_ceiling": round(mid / ceiling, 3),
        "model_calls": dict(model.calls),
        "model_throttles": dict(model.throttles),
        "throttle_rate": round(sum(model.throttles.values()) / max(1, sum(model.calls.values())), 3),
        "fanout_api_calls": stats.api_calls,
        "fanout_throttled_calls": stats.throttled_calls,
        "calls_per_message": round(sum(model.calls.values()) / len(msgs), 4),
        "lost": lost,
        "unexpected": foreign,
        "resends_absorbed_by_dedup": resent,
        "hottest_partition_share": round(max(shares), 3) if shares else None,
        "error": error,
    }


def variants(args: argparse.Namespace) -> list[Variant]:
    """The fan-out through the production client (botocore retries throttles: shardq's one retry
    layer for whole-call failures since the fan-out stopped retrying them itself)."""
    # What the splitter uses: Settings.fanout_in_flight, 8 by default; the stack sets 32 when
    # fifo_high_throughput is on (SHARDQ_FANOUT_IN_FLIGHT).
    d = cost.FANOUT_IN_FLIGHT
    base = FanOut.__init__.__kwdefaults__["base_delay"]  # type: ignore[index]
    out = [
        Variant(f"FIFO, FanOut defaults ({d} in flight), boto3 client", "fifo", "boto3", d, base),
        Variant(f"FIFO, {d} in flight, boto3 standard retry mode", "fifo", "boto3", d, base, "standard"),
    ]
    for k in args.sweep:
        if k != d:
            out.append(Variant(f"FIFO, {k} in flight, boto3 client", "fifo", "boto3", k, base))
    out += [
        Variant(f"HT, FanOut defaults ({d} in flight), boto3 client", "ht", "boto3", d, base),
        Variant(
            f"HT, stack setting ({args.ht_in_flight} in flight), boto3 client",
            "ht",
            "boto3",
            args.ht_in_flight,
            base,
        ),
        Variant(
            f"HT, {args.ht_in_flight} in flight, boto3 standard retry mode",
            "ht",
            "boto3",
            args.ht_in_flight,
            base,
            "standard",
        ),
    ]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    fifo_msgs, fifo_build = messages_for(args.tasks, 64)
    ht_msgs, ht_build = messages_for(args.ht_tasks, args.lanes)
    naive_msgs = fifo_msgs[: args.naive_tasks]
    rows = [run_variant(Variant("FIFO, naive SendMessage loop", "fifo", "naive-model"), naive_msgs, 1, args)]
    print(f"  {rows[-1]['variant']:<52} {rows[-1]['sustained_msgs_per_s']:8.0f} msgs/s", flush=True)
    for v in variants(args):
        msgs = ht_msgs if v.mode == "ht" else fifo_msgs
        rows.append(run_variant(v, msgs, args.partitions, args))
        r = rows[-1]
        print(
            f"  {r['variant']:<52} {r['sustained_msgs_per_s']:8.0f} msgs/s sustained "
            f"({r['share_of_ceiling']:.0%} of {r['ceiling_msgs_per_s']:.0f}), "
            f"{r['msgs_per_s']:.0f} overall, {r['throttle_rate']:.1%} throttled",
            flush=True,
        )
    naive = rows[0]["sustained_msgs_per_s"]
    for r in rows:
        r["vs_naive"] = round(r["sustained_msgs_per_s"] / naive, 1) if naive else None
    bad = [r for r in rows if r["lost"] or r["unexpected"] or r["error"]]
    return {
        "tasks": args.tasks,
        "ht_tasks": args.ht_tasks,
        "naive_tasks": args.naive_tasks,
        "partitions": args.partitions,
        "lanes": args.lanes,
        "latency_ms": list(args.latency_ms),
        "burst_s": args.burst_s,
        "target_share": TARGET_SHARE,
        "message_build_per_s": {
            "fifo": round(args.tasks / fifo_build, 1),
            "ht": round(args.ht_tasks / ht_build, 1),
        },
        "rows": rows,
        "verified": not bad,
    }


def report(result: dict[str, Any]) -> None:
    print()
    print(
        f"Fan-out against a modelled SQS FIFO quota ({CALLS_PER_S:.0f} calls/s per action; "
        f"high throughput: {result['partitions']} partitions × {CALLS_PER_S:.0f}, {result['lanes']} lanes), "
        f"latency {result['latency_ms'][0]:g}–{result['latency_ms'][1]:g} ms, burst {result['burst_s']:g} s"
    )
    rows = []
    for r in result["rows"]:
        ok = "ok" if r["share_of_ceiling"] >= TARGET_SHARE else "under"
        rows.append(
            [
                r["variant"],
                r["tasks"],
                f"{r['sustained_msgs_per_s']:.0f}",
                f"{r['msgs_per_s']:.0f}",
                f"{r['ceiling_msgs_per_s']:.0f}",
                f"{r['share_of_ceiling']:.0%} {ok if r['client'] != 'naive-model' else ''}".rstrip(),
                f"{r['vs_naive']:.0f}×",
                f"{sum(r['model_calls'].values())}",
                f"{sum(r['model_throttles'].values())} ({r['throttle_rate']:.0%})",
                f"{r['calls_per_message']:.3f}",
                f"{r['lost']}/{r['resends_absorbed_by_dedup']}",
            ]
        )
    print(
        table(
            [
                "variant",
                "msgs",
                "sustained msgs/s",
                "overall msgs/s",
                "ceiling",
                "of ceiling",
                "vs naive",
                "calls",
                "throttled",
                "calls/msg",
                "lost/dup",
            ],
            rows,
        )
    )
    b = result["message_build_per_s"]
    print(f"building the splitter's messages (not timed above): {b['fifo']:.0f} msgs/s (one thread)")
    print(f"every message stored exactly once, nothing else: {result['verified']}")


# -- projection: a million shards, high-throughput FIFO at its regional ceiling ----------------

PROJECT_SHARDS = (1_000, 100_000, 1_000_000)
SPLITTER_MB = 512  # the stack's splitter (stacks/components/functions.py)


def measure_client_cpu(calls: int, msgs: list[Message]) -> float:
    """CPU seconds per SendMessageBatch call through the production client, answered at once."""
    from botocore.awsrequest import AWSResponse

    from shardq.core.clients import new_client

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        os.environ.setdefault(k, v)
    sqs = new_client("sqs", region="us-east-1", endpoint_url="https://sqs.us-east-1.amazonaws.com")

    def answer(request: Any, **kwargs: Any) -> Any:
        entries = json.loads(request.body)["Entries"]
        ok = [{"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "0" * 32} for e in entries]
        body = json.dumps({"Successful": ok, "Failed": []}).encode()
        return AWSResponse(request.url, 200, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body))

    sqs.meta.events.register_first("before-send.sqs", answer)
    batches = [msgs[i : i + ENTRIES_PER_CALL] for i in range(0, min(len(msgs), calls * 10), ENTRIES_PER_CALL)]
    sqs.send_message_batch(QueueUrl="q", Entries=[m.entry(str(i)) for i, m in enumerate(batches[0])])  # warm
    started = time.process_time()
    for batch in batches:
        sqs.send_message_batch(QueueUrl="q", Entries=[m.entry(str(i)) for i, m in enumerate(batch)])
    return (time.process_time() - started) / len(batches)


def project(
    result: dict[str, Any], cpu_per_call: float, build_per_msg: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Wall time to dispatch and count 1k / 100k / 1M shards, per queue mode (see the docstring).

    The bounds are ``shardq.core.cost``'s (``dispatch_bounds``, ``plane_timing``), fed with the
    CPU figures measured here; the quota bound is scaled by the share of it the fan-out sustained
    in the modelled runs above (when they ran).
    """
    # The shipped settings' rows: FIFO with FanOut's defaults, HT with the stack's in-flight setting.
    shipped = {"FIFO, FanOut defaults": "fifo", "HT, stack setting": "ht"}
    shares = {
        mode: r["share_of_ceiling"]
        for r in result.get("rows", [])
        for prefix, mode in shipped.items()
        if r["variant"].startswith(prefix)
    }
    latency_ms = sum(args.latency_ms) / 2
    cpu_ms = (cpu_per_call + ENTRIES_PER_CALL * build_per_msg) * 1000
    fifo_calls = cost.limit("sqs_fifo_calls_per_second")
    modes = [
        ("FIFO (300 calls/s)", False, None, SPLITTER_MB, shares.get("fifo", 1.0)),
        (f"HT, {args.partitions} partitions (modelled above)", True, fifo_calls * args.partitions,
         SPLITTER_MB, shares.get("ht", 1.0)),
        ("HT, us-east-1 ceiling (70,000 calls/s)", True, None, SPLITTER_MB, 1.0),
        ("HT, us-east-1 ceiling, 1,769 MB splitter", True, None, 1769, 1.0),
    ]  # fmt: skip
    rows = []
    for mode, high, quota, mb, share in modes:
        a = cost.Assumptions(
            high_throughput=high,
            quota_calls_per_second=quota,
            splitter_mb=mb,
            sqs_call_ms=latency_ms,
            splitter_cpu_ms_per_call=cpu_ms,
        )
        bounds = cost.dispatch_bounds(a)
        if min(bounds, key=lambda k: bounds[k]) == "queue quota" and share < 1.0:
            a = replace(a, quota_calls_per_second=bounds["queue quota"] * share)  # as sustained above
        for shards in PROJECT_SHARDS:
            job = cost.JobShape(kind="map", tasks_per_round=shards, max_parallel=min(shards, 10_000))
            plane = cost.plane_timing(job, a)
            rows.append(
                {
                    "mode": mode,
                    "splitter_mb": mb,
                    "shards": shards,
                    "msgs_per_s": round(plane["enqueue_messages_per_second"]),
                    "bound_by": plane["enqueue_bound"],
                    "dispatch_s": round(plane["enqueue_seconds_per_round"], 2),
                    "splitter_invocations": cost.lambda_usage(job, a, batches=0)["splitter_invocations"],
                    "count_results_per_s": round(plane["count_results_per_second"]),
                    "count_s": round(plane["count_seconds_per_round"], 2),
                }
            )
    return rows


def report_projection(rows: list[dict[str, Any]], cpu_per_call: float, build_per_msg: float) -> None:
    print()
    print(
        f"Projection: client CPU {cpu_per_call * 1000:.2f} ms per SendMessageBatch call + "
        f"{build_per_msg * 1e6:.0f} µs per message built (CPU time, this machine); counting by "
        "shardq.core.cost.plane_timing (5 aggregators, counter item)"
    )
    print(
        table(
            [
                "mode",
                "splitter MB",
                "shards",
                "msgs/s",
                "bound by",
                "dispatch",
                "invocations",
                "count/s",
                "count",
            ],
            [
                [
                    r["mode"],
                    r["splitter_mb"],
                    f"{r['shards']:,}",
                    f"{r['msgs_per_s']:,}",
                    r["bound_by"],
                    f"{r['dispatch_s']:,.1f} s",
                    r["splitter_invocations"],
                    f"{r['count_results_per_s']:,}",
                    f"{r['count_s']:,.1f} s",
                ]
                for r in rows
            ],
        )
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000, help="messages per FIFO fan-out (default 20000)")
    parser.add_argument("--ht-tasks", type=int, default=40000, help="messages per high-throughput fan-out")
    parser.add_argument("--naive-tasks", type=int, default=300, help="messages for the naive baseline")
    parser.add_argument("--partitions", type=int, default=4, help="high-throughput partitions (default 4)")
    parser.add_argument("--lanes", type=int, default=256, help="max_parallel (message groups) in HT mode")
    parser.add_argument(
        "--ht-in-flight", type=int, default=32, help="max_in_flight for the scaled HT variant"
    )
    parser.add_argument(
        "--sweep", type=lambda s: [int(x) for x in s.split(",") if x], default=[6, 12, 16],
        help="extra max_in_flight values for FIFO with the model client (comma list)",
    )  # fmt: skip
    parser.add_argument(
        "--latency-ms", type=lambda s: tuple(float(x) for x in s.split(",")), default=(15.0, 25.0),
        help="per-call latency range, ms (default 15,25)",
    )  # fmt: skip
    parser.add_argument("--burst-s", type=float, default=0.1, help="token bucket size, seconds of quota")
    parser.add_argument("--project-only", action="store_true", help="skip the modelled runs; project only")
    parser.add_argument("--cpu-calls", type=int, default=2000, help="calls timed for the client CPU figure")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"verified": True} if args.project_only else run(args)
    result["machine"] = machine()
    print(describe(result["machine"]))
    if not args.project_only:
        report(result)
    cpu_started = time.process_time()  # CPU, not wall time: other processes share the machine
    msgs, _ = messages_for(args.cpu_calls * ENTRIES_PER_CALL, 64)
    build_per_msg = (time.process_time() - cpu_started) / len(msgs)
    cpu_per_call = measure_client_cpu(args.cpu_calls, msgs)
    result["client_cpu_s_per_call"] = cpu_per_call
    result["build_cpu_s_per_message"] = build_per_msg
    result["projection"] = project(result, cpu_per_call, build_per_msg, args)
    report_projection(result["projection"], cpu_per_call, build_per_msg)
    emit_json("quota", result)
    if not result["verified"]:
        raise SystemExit("quota: messages lost, unexpected or a fan-out failed (see the JSON)")
    return result


if __name__ == "__main__":
    main()
