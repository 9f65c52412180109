"""One job of N shards end to end on the deployed local stack, with no-op workers.

One ``LocalCloud``; the real CDK stack deployed into it (``shardq.local.deploy.deploy_stack``);
W no-op worker processes (``benchmarks.scale_worker``: ten tasks per receive, one
``SendMessageBatch`` of results, one ``DeleteMessageBatch``, nothing uploaded); a ``map`` job of
N shards submitted by invoking the deployed splitter Lambda; the deployed aggregator records
the results behind its event source mapping and finishes the job. An EventBridge rule on the
stack's bus sends the ``Job Finished`` event to a queue the benchmark reads.

Measured:

* splitter invocations and continuations, aggregator and DLQ handler invocations (the
  ``AWS/Lambda`` ``Invocations`` metric the local cloud records per invocation);
* fan-out time: ``created_at`` → the job's enqueue cursor at N (the job record, read every 0.5 s);
* DynamoDB items of the job by kind (``Query`` ``Select=COUNT``) and write requests per shard
  (counted in the Lambda processes, see below), the job record's and a result item's size
  (DynamoDB's item-size rules), the manifest's size and its part files;
* each Lambda's peak memory: ``benchmarks/scale_probe/sitecustomize.py`` is on the local
  cloud's ``PYTHONPATH``, so every Lambda process it spawns counts its AWS calls and reports its
  peak resident set (``VmHWM``; with ``--tracemalloc`` also Python's allocation peak);
* last result sent (the workers' clocks) → the ``Job Finished`` event received, and → the job
  record seen terminal.

Correctness (exit 1 when broken): the job SUCCEEDED, the table holds exactly N result items,
the manifest (inline and part files) lists every shard exactly once.

    .venv/bin/python -m benchmarks.scale [--shards 100000] [--workers 4] [--timeout 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, describe, emit_json, machine, table
from benchmarks.scale_sizes import ddb_item_size, manifest_outputs
from shardq.core.clients import new_client
from shardq.core.contracts import TERMINAL_STATUSES
from shardq.core.jobstore import JobRecord, JobStore
from shardq.core.planning import split_s3
from shardq.local.cloud import CREDENTIALS, REGION, LocalCloud
from shardq.local.deploy import deploy_stack

PROBE_DIR = Path(__file__).resolve().parent / "scale_probe"
POLL_S = 0.5


def ts(iso: str) -> float:
    """ISO 8601 (``Z`` or offset) → seconds since the epoch."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def probe_env(probe_out: Path, tracemalloc: bool) -> None:
    """Put the Lambda probe on the path of every process the local cloud will spawn."""
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(PROBE_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    os.environ["SHARDQ_SCALE_PROBE_DIR"] = str(probe_out)
    os.environ["SHARDQ_SCALE_TRACEMALLOC"] = "1" if tracemalloc else "0"


def catch_events(cloud: LocalCloud) -> str:
    """A queue that receives the default bus's ``Job Finished`` events; returns its URL."""
    sqs, events = cloud.client("sqs"), cloud.client("events")
    url = sqs.create_queue(QueueName="scale-finished-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    pattern = {"source": ["shardq"], "detail-type": ["Job Finished"]}
    events.put_rule(Name="scale-finished", EventPattern=json.dumps(pattern), State="ENABLED")
    events.put_targets(Rule="scale-finished", Targets=[{"Id": "q", "Arn": arn}])
    return str(url)


def start_workers(
    cloud: LocalCloud, outputs: dict[str, str], count: int, work: Path, deadline: float
) -> list[subprocess.Popen[bytes]]:
    """``count`` no-op worker processes (``benchmarks.scale_worker``)."""
    env = {**os.environ, **cloud.env(), "PYTHONPATH": str(ROOT)}
    procs = []
    for i in range(count):
        args = ["--tasks", outputs["TaskQueueUrl"], "--results", outputs["ResultsQueueUrl"]]
        args += ["--stats", str(work / f"worker-{i}.json"), "--stop-file", str(work / "stop")]
        args += ["--deadline", str(deadline), "--worker-id", f"scale-{i}"]
        with (work / f"worker-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.scale_worker", *args],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
    return procs


def worker_figures(path: Path) -> dict[str, Any]:
    """A worker's figures; a worker killed before it wrote them reports nothing (and says so)."""
    if path.exists():
        return dict(json.loads(path.read_text()))
    return {"worker_id": path.stem, "missing": True, "tasks": 0, "receives": 0, "sends": 0, "deletes": 0,
            "empty_receives": 0, "first_result_at": None, "last_result_at": None}  # fmt: skip


def stop_workers(procs: list[subprocess.Popen[bytes]], work: Path) -> list[int | None]:
    """Touch the stop file; wait (bounded) for every worker; kill a straggler by its PID."""
    (work / "stop").touch()
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=30))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(None)
    return codes


def submit(cloud: LocalCloud, outputs: dict[str, str], shards: int, max_parallel: int) -> dict[str, Any]:
    """Invoke the deployed splitter with a ``map`` job of ``shards`` no-op shards."""
    request = {
        "job_id": f"scale-{shards}-{int(time.time())}",
        "kind": "map",
        "dataset": {"uri": "synthetic://linear?dim=8&noise=0.05&seed=7", "num_samples": shards},
        "sharding": {"shard_count": shards},
        "max_parallel": max_parallel,
        "max_failed_shards": 0,
        "entrypoint": "benchmarks.e2e:noop",
    }
    # The first invocation runs until its fan-out hands on (up to the function's 120 s).
    lam = new_client(
        "lambda", region=REGION, endpoint_url=cloud.endpoint_url, read_timeout=900, credentials=CREDENTIALS
    )
    started = time.time()
    resp = lam.invoke(FunctionName=outputs["SplitterFunctionName"], Payload=json.dumps(request).encode())
    answer = json.loads(resp["Payload"].read())
    if not answer.get("ok"):
        raise RuntimeError(f"splitter rejected the request: {answer}")
    return {"answer": answer, "submitted_at": started, "answered_at": time.time(), "request": request}


def watch(
    cloud: LocalCloud, store: JobStore, job_id: str, shards: int, events_url: str, limits: tuple[float, float]
) -> dict[str, Any]:
    """Poll the job record (and the event queue) until the job ends and its event arrived.

    ``limits`` = (timeout, stall): give up after ``timeout`` seconds, or ``stall`` seconds after
    every result was counted without the job ending (the round's close keeps failing).
    """
    timeout, stall = limits
    sqs = cloud.client("sqs")
    marks: dict[str, Any] = {"enqueued_at": None, "terminal_seen_at": None, "event_at": None, "event": None}
    marks.update(counted_at=None, stalled=False)
    end_by = time.monotonic() + timeout
    last_print = 0.0
    job: JobRecord | None = None
    while time.monotonic() < end_by:
        job = store.get_job(job_id)
        now = time.time()
        if marks["enqueued_at"] is None and job.enqueued(0, "train") >= shards:
            marks["enqueued_at"] = now
        if marks["terminal_seen_at"] is None and job.status in TERMINAL_STATUSES:
            marks["terminal_seen_at"] = now
        if marks["counted_at"] is None and job.done(0, "train") >= shards:
            marks["counted_at"] = now
        if marks["counted_at"] and not marks["terminal_seen_at"] and now - marks["counted_at"] > stall:
            marks["stalled"] = True
            break
        if marks["event_at"] is None:
            got = sqs.receive_message(QueueUrl=events_url, MaxNumberOfMessages=1, WaitTimeSeconds=0)
            for m in got.get("Messages", []):
                marks["event_at"], marks["event"] = time.time(), json.loads(m["Body"])
        if marks["terminal_seen_at"] and (marks["event_at"] or now - marks["terminal_seen_at"] > 30):
            break
        if now - last_print > 30:
            last_print = now
            done = job.done(0, "train")
            print(f"[{now:.0f}] {job.status} enqueued {job.enqueued(0, 'train')}/{shards} counted {done}",
                  file=sys.stderr, flush=True)  # fmt: skip
        time.sleep(POLL_S)
    else:
        raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {job}")
    assert job is not None
    marks["job"] = job
    return marks


def invocations(cloud: LocalCloud, functions: dict[str, str], since: float) -> dict[str, int]:
    """Invocations per function, from the ``AWS/Lambda`` metric the local cloud records."""
    cw = cloud.client("cloudwatch")
    out = {}
    for label, name in functions.items():
        resp = cw.get_metric_statistics(
            Namespace="AWS/Lambda",
            MetricName="Invocations",
            Dimensions=[{"Name": "FunctionName", "Value": name}],
            StartTime=datetime.fromtimestamp(since - 60, UTC),
            EndTime=datetime.now(UTC) + timedelta(minutes=5),
            Period=86400,
            Statistics=["Sum"],
        )
        out[label] = int(sum(p["Sum"] for p in resp.get("Datapoints", [])))
    return out


def probes(probe_out: Path, functions: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per function: processes, peak RSS (max over its processes), AWS calls and DDB write requests."""
    by_name = {name: label for label, name in functions.items()}
    out: dict[str, dict[str, Any]] = {
        label: {"processes": 0, "invocations": 0, "peak_rss_mib": 0.0, "calls": {}, "ddb_write_requests": 0,
                "tracemalloc_peak_mib": None}
        for label in functions
    }  # fmt: skip
    for path in probe_out.glob("*.json"):
        data = json.loads(path.read_text())
        label = by_name.get(data["function"])
        if label is None:
            continue
        row = out[label]
        row["processes"] += 1
        row["peak_rss_mib"] = max(row["peak_rss_mib"], round(data["vmhwm_kib"] / 1024, 1))
        row["ddb_write_requests"] += data["ddb_write_requests"]
        row["invocations"] += data.get("invocations", 0)
        for call, n in data["calls"].items():
            row["calls"][call] = row["calls"].get(call, 0) + n
        if data.get("tracemalloc_peak_bytes") is not None:
            peak = round(data["tracemalloc_peak_bytes"] / 2**20, 1)
            row["tracemalloc_peak_mib"] = max(row["tracemalloc_peak_mib"] or 0.0, peak)
    return out


def table_items(cloud: LocalCloud, table_name: str, job_id: str) -> dict[str, Any]:
    """The job's items by kind, the job record's size and one result item's size."""
    ddb = cloud.client("dynamodb")
    counts: dict[str, int] = {}
    for prefix in ("JOB", "RES#", "ROUND#", "LATE#", "CLOSE#"):
        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": {"S": f"JOB#{job_id}"}, ":p": {"S": prefix}},
            "Select": "COUNT",
        }
        n = 0
        for _ in range(100_000):  # bounded paging
            resp = ddb.query(**kwargs)
            n += resp["Count"]
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        counts[prefix.rstrip("#")] = n
    key = {"pk": {"S": f"JOB#{job_id}"}}
    job_item = ddb.get_item(TableName=table_name, Key={**key, "sk": {"S": "JOB"}})["Item"]
    res_item = ddb.get_item(TableName=table_name, Key={**key, "sk": {"S": "RES#r0000#train#000000"}})
    round_item = ddb.get_item(TableName=table_name, Key={**key, "sk": {"S": "ROUND#0000"}})
    close_item = ddb.get_item(TableName=table_name, Key={**key, "sk": {"S": "CLOSE#r0000#00000"}})
    return {
        "close_digest_bytes": ddb_item_size(close_item["Item"]) if "Item" in close_item else None,
        "items": counts,
        "job_record_bytes": ddb_item_size(job_item),
        "result_item_bytes": ddb_item_size(res_item["Item"]) if "Item" in res_item else None,
        "round_summary_bytes": ddb_item_size(round_item["Item"]) if "Item" in round_item else None,
    }


def manifest_figures(cloud: LocalCloud, result_uri: str, shards: int) -> dict[str, Any]:
    """The manifest's size, its part files, and whether it lists every shard once."""
    s3 = cloud.client("s3")
    bucket, key = split_s3(result_uri)
    head = s3.head_object(Bucket=bucket, Key=key)
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    listing = manifest_outputs(s3, manifest)
    ids = sorted(o["shard_id"] for o in listing["outputs"])
    return {
        "manifest_bytes": head["ContentLength"],
        "manifest_schema_version": manifest.get("schema_version"),
        "manifest_parts": listing["parts"],
        "manifest_parts_bytes": listing["parts_bytes"],
        "manifest_inline_outputs": len(manifest.get("outputs") or []),
        "manifest_outputs_complete": ids == list(range(shards)),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="shardq-scale-"))
    probe_out = work / "probe"
    probe_out.mkdir()
    probe_env(probe_out, args.tracemalloc)
    with LocalCloud() as cloud:
        t0 = time.monotonic()
        outputs = deploy_stack(cloud)
        deploy_s = time.monotonic() - t0
        functions = {
            "splitter": outputs["SplitterFunctionName"],
            "aggregator": outputs["AggregatorFunctionName"],
            "dlq_handler": outputs["DlqHandlerFunctionName"],
        }
        events_url = catch_events(cloud)
        store = JobStore(outputs["JobTableName"], cloud.client("dynamodb"))
        procs = start_workers(cloud, outputs, args.workers, work, time.time() + args.timeout + 120)
        try:
            sub = submit(cloud, outputs, args.shards, args.max_parallel)
            job_id = sub["answer"]["job_id"]
            marks = watch(cloud, store, job_id, args.shards, events_url, (args.timeout, args.stall))
        finally:
            codes = stop_workers(procs, work)
        time.sleep(2.5)  # one more probe dump (every 2 s) after the last invocation
        workers = [worker_figures(work / f"worker-{i}.json") for i in range(args.workers)]
        job: JobRecord = marks["job"]
        assert cloud.state_dir is not None
        log = (cloud.state_dir / "ministack.log").read_text(errors="replace")
        figures = {
            "lambda_timeouts": log.count("errorType=Sandbox.Timedout"),
            "invocations_metric": invocations(cloud, functions, sub["submitted_at"]),
            "lambdas": probes(probe_out, functions),
            **table_items(cloud, outputs["JobTableName"], job_id),
            **(manifest_figures(cloud, job.result_uri, args.shards) if job.result_uri else {}),
            "counted_to_terminal_s": round(marks["terminal_seen_at"] - marks["counted_at"], 2)
            if marks["terminal_seen_at"] and marks["counted_at"]
            else None,
            "stalled": marks["stalled"],
        }
    return summarize(args, deploy_s, sub, marks, workers, codes, figures)


def summarize(
    args: argparse.Namespace,
    deploy_s: float,
    sub: dict[str, Any],
    marks: dict[str, Any],
    workers: list[dict[str, Any]],
    codes: list[int | None],
    figures: dict[str, Any],
) -> dict[str, Any]:
    """The figures of one run, and the correctness checks."""
    job: JobRecord = marks["job"]
    n = args.shards
    created = ts(job.created_at)
    last_result = max(w["last_result_at"] or 0.0 for w in workers)
    first_result = min(w["first_result_at"] or float("inf") for w in workers)
    lam = figures["lambdas"]
    writes = sum(row["ddb_write_requests"] for row in lam.values())
    splitter_calls = lam["splitter"]["invocations"]
    out = {
        "shards": n,
        "workers": args.workers,
        "max_parallel": args.max_parallel,
        "job_id": job.job_id,
        "job_status": job.status,
        "deploy_s": round(deploy_s, 1),
        "first_splitter_call_s": round(sub["answered_at"] - sub["submitted_at"], 2),
        "first_splitter_answer": sub["answer"],
        "splitter_invocations": splitter_calls,
        # The splitter also runs each range of the round's close (one CLOSE# digest per range).
        "close_ranges": figures["items"]["CLOSE"],
        "continuations": max(0, splitter_calls - 1 - figures["items"]["CLOSE"]),
        "fanout_s": round(marks["enqueued_at"] - created, 1) if marks["enqueued_at"] else None,
        "fanout_tasks_per_s": round(n / (marks["enqueued_at"] - created), 1)
        if marks["enqueued_at"]
        else None,
        "first_to_last_result_s": round(last_result - first_result, 1),
        "end_to_end_s": round((marks["terminal_seen_at"] or time.time()) - sub["submitted_at"], 1),
        "shards_per_s": round(n / (last_result - created), 1),
        "aggregator_invocations": lam["aggregator"]["invocations"],
        "dlq_handler_invocations": lam["dlq_handler"]["invocations"],
        "ddb_write_requests": writes,
        "ddb_write_requests_per_shard": round(writes / n, 3),
        "ddb_items_per_shard": round(sum(figures["items"].values()) / n, 4),
        "last_result_to_event_s": round(marks["event_at"] - last_result, 2) if marks["event_at"] else None,
        "last_result_to_terminal_seen_s": round(marks["terminal_seen_at"] - last_result, 2)
        if marks["terminal_seen_at"]
        else None,
        "worker_tasks": sum(w["tasks"] for w in workers),
        "max_task_message_bytes": max(w.get("max_task_bytes", 0) for w in workers),
        "max_result_message_bytes": max(w.get("max_result_bytes", 0) for w in workers),
        "worker_exit_codes": codes,
        "workers_detail": workers,
        **figures,
    }
    problems = []
    if marks["stalled"]:
        problems.append(
            f"every result was counted but the job did not end within {args.stall:.0f} s "
            f"({figures['lambda_timeouts']} Lambda invocations timed out): the round's close keeps failing"
        )
    elif job.status != "SUCCEEDED":
        problems.append(f"job ended {job.status}: {job.error}")
    if figures["items"]["RES"] != n:
        problems.append(f"{figures['items']['RES']} result items for {n} shards")
    if not figures.get("manifest_outputs_complete"):
        problems.append("the manifest does not list every shard exactly once")
    out["problems"] = problems
    return out


def report(r: dict[str, Any]) -> None:
    """The run's figures as Markdown tables."""
    print(f"\n{r['shards']:,} no-op shards (map, max_parallel {r['max_parallel']}), "
          f"{r['workers']} batch no-op workers, deployed stack on the local cloud")  # fmt: skip
    rows = [
        ["deploy (cdk bootstrap + deploy)", f"{r['deploy_s']} s"],
        ["splitter invocations (continuations; close ranges)",
         f"{r['splitter_invocations']} ({r['continuations']}; {r['close_ranges']})"],
        ["close range digest item", f"{r['close_digest_bytes'] or '—'} B"],
        ["first splitter invocation (submit → answer)", f"{r['first_splitter_call_s']} s"],
        ["fan-out (created_at → cursor at N)", f"{r['fanout_s']} s ({r['fanout_tasks_per_s']} tasks/s)"],
        ["first → last result sent", f"{r['first_to_last_result_s']} s"],
        ["end to end (submit → job seen SUCCEEDED)", f"{r['end_to_end_s']} s ({r['shards_per_s']} shards/s)"],
        ["aggregator invocations (per 100 shards)",
         f"{r['aggregator_invocations']} ({100 * r['aggregator_invocations'] / r['shards']:.2f})"],
        ["DLQ handler invocations", r["dlq_handler_invocations"]],
        ["DynamoDB items (per shard)", f"{r['items']} ({r['ddb_items_per_shard']})"],
        ["DynamoDB write requests (per shard)",
         f"{r['ddb_write_requests']} ({r['ddb_write_requests_per_shard']})"],
        ["job record item", f"{r['job_record_bytes']:,} B"],
        ["result item / round summary item", f"{r['result_item_bytes']} B / {r['round_summary_bytes']} B"],
        ["manifest (schema version)",
         f"{r.get('manifest_bytes', 0):,} B (v{r.get('manifest_schema_version')})"],
        ["manifest part files", f"{r.get('manifest_parts')} ({r.get('manifest_parts_bytes', 0):,} B)"],
        ["largest task / result message",
         f"{r['max_task_message_bytes']} B / {r['max_result_message_bytes']} B"],
        ["last result sent → Job Finished event", f"{r['last_result_to_event_s']} s"],
        ["last result sent → job seen SUCCEEDED", f"{r['last_result_to_terminal_seen_s']} s"],
        ["every result counted → job seen SUCCEEDED", f"{r['counted_to_terminal_s']} s"],
        ["Lambda invocations timed out", r["lambda_timeouts"]],
    ]  # fmt: skip
    print(table(["figure", "value"], rows))
    lam_rows = []
    for label, row in r["lambdas"].items():
        calls = ", ".join(f"{k} {v}" for k, v in sorted(row["calls"].items()))
        traced = row["tracemalloc_peak_mib"] or "—"
        lam_rows.append([label, row["invocations"], row["processes"], row["peak_rss_mib"], traced, calls])
    heads = ["Lambda", "invocations", "processes", "peak RSS MiB", "tracemalloc peak MiB", "AWS calls"]
    print(table(heads, lam_rows))
    if r["problems"]:
        print("PROBLEMS: " + "; ".join(r["problems"]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4, help="no-op worker processes")
    parser.add_argument("--max-parallel", type=int, default=64, help="the job's FIFO lanes")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds the job may take")
    parser.add_argument(
        "--stall",
        type=float,
        default=420.0,
        help="give up this long after every result was counted without the job ending",
    )
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python allocations")
    args = parser.parse_args(argv)
    # A background run ignores SIGINT: let SIGTERM unwind, so the local cloud and workers stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = {**run(args), "machine": machine()}
    print(describe(result["machine"]))
    report(result)
    emit_json("scale", result)
    if result["problems"]:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
