"""The local cloud's SQS event source mappings behave as Lambda's do (checked, not assumed).

A probe function records every invocation and fails the records whose body says "fail";
short visibility timeouts make retries and redrives observable in seconds.
"""

from __future__ import annotations

import io
import json
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

from shardq.local.cloud import LocalCloud

PROBE = """
import json, os, time

def handler(event, context):
    start = time.time()
    time.sleep(float(os.environ.get("PROBE_SLEEP", "0")))
    fifo = os.environ.get("PROBE_FIFO") == "1"
    failures, failing = [], False
    for record in event["Records"]:
        # FIFO: the first failure and every record after it (what SqsFifoPartialProcessor reports)
        failing = (failing and fifo) or "fail" in record["body"]
        if failing:
            failures.append({"itemIdentifier": record["messageId"]})
    with open(os.environ["PROBE_LOG"], "a") as log:
        log.write(json.dumps({"start": start, "end": time.time(),
                              "bodies": [r["body"] for r in event["Records"]],
                              "failed": [f["itemIdentifier"] for f in failures],
                              "ids": [r["messageId"] for r in event["Records"]],
                              "attributes": [r.get("attributes", {}) for r in event["Records"]]}) + "\\n")
    return {"batchItemFailures": failures}
"""


VISIBILITY_S = 2  # the probe queues' visibility timeout: retries and redrives in seconds


def probe_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("probe.py", PROBE)
    return buf.getvalue()


def setup(
    cloud: LocalCloud,
    log: Path,
    *,
    fifo: bool,
    max_receives: int = 2,
    sleep: float = 0,
    batch: int = 10,
    max_concurrency: int | None = None,
) -> tuple[str, str]:
    sqs, lam = cloud.client("sqs"), cloud.client("lambda")
    name = f"probe{uuid.uuid4().hex[:8]}"
    suffix = ".fifo" if fifo else ""
    base = {"FifoQueue": "true"} if fifo else {}
    dlq = sqs.create_queue(QueueName=f"{name}-dlq{suffix}", Attributes=base)["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName=f"{name}{suffix}",
        Attributes={
            **base,
            "VisibilityTimeout": str(VISIBILITY_S),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}),
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    lam.create_function(
        FunctionName=name,
        Runtime="python3.13",
        Role="arn:aws:iam::000000000000:role/probe",
        Handler="probe.handler",
        Code={"ZipFile": probe_zip()},
        Timeout=30,
        Environment={
            "Variables": {
                "PROBE_LOG": str(log),
                "PROBE_FIFO": "1" if fifo else "0",
                "PROBE_SLEEP": str(sleep),
            }
        },
    )
    mapping: dict[str, Any] = {
        "EventSourceArn": arn,
        "FunctionName": name,
        "BatchSize": batch,
        "FunctionResponseTypes": ["ReportBatchItemFailures"],
    }
    if max_concurrency:
        mapping["ScalingConfig"] = {"MaximumConcurrency": max_concurrency}
    lam.create_event_source_mapping(**mapping)
    return queue, dlq


def invocations(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_until(predicate: Any, timeout: float = 120) -> None:
    # A bound on waiting for state, not a timing assert: on 2 busy cores (the whole suite in two
    # workers) redrive after maxReceiveCount x 2 s visibility, plus the mapping's polls, once took
    # longer than 45 s. Each wait returns as soon as its state holds.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError("condition not met in time")


def depth(cloud: LocalCloud, url: str) -> int:
    a = cloud.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def test_partial_batch_response_retries_only_failures_then_redrives(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    log = tmp_path / "probe.log"
    queue, dlq = setup(cloud, log, fifo=False)
    sqs = cloud.client("sqs")
    sqs.send_message_batch(
        QueueUrl=queue,
        Entries=[
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(["ok-0", "ok-1", "fail-2", "ok-3"])
        ],
    )
    wait_until(lambda: depth(cloud, dlq) == 1)
    seen = [b for inv in invocations(log) for b in inv["bodies"]]
    # successes were deleted after one delivery; the failure came back after the visibility timeout
    assert sorted(b for b in seen if b.startswith("ok")) == ["ok-0", "ok-1", "ok-3"]
    assert seen.count("fail-2") == 2
    # (measured from the first receive, which SQS stamps, not from the first handler's start: a
    # cold start between receive and handler shortens the gap between the handlers' starts)
    deliveries = [
        (inv["start"], attrs)
        for inv in invocations(log)
        for body, attrs in zip(inv["bodies"], inv["attributes"], strict=True)
        if body == "fail-2"
    ]
    assert [attrs["ApproximateReceiveCount"] for _, attrs in deliveries] == ["1", "2"]
    first_receive = int(deliveries[1][1]["ApproximateFirstReceiveTimestamp"]) / 1000
    assert deliveries[1][0] - first_receive >= VISIBILITY_S - 0.01  # stamps in milliseconds
    # ... and after maxReceiveCount it moved to the DLQ, nothing left on the source queue
    assert depth(cloud, queue) == 0
    (dead,) = sqs.receive_message(QueueUrl=dlq).get("Messages", [])
    assert dead["Body"] == "fail-2"


def test_fifo_failure_retries_it_and_everything_after_it_in_order(cloud: LocalCloud, tmp_path: Path) -> None:
    # GIVEN a FIFO group a, fail-b, c whose handler reports the first failure and everything after it
    log = tmp_path / "probe.log"
    queue, dlq = setup(cloud, log, fifo=True)
    sqs = cloud.client("sqs")
    for i, body in enumerate(["a", "fail-b", "c"]):
        sqs.send_message(QueueUrl=queue, MessageBody=body, MessageGroupId="g", MessageDeduplicationId=str(i))
    wait_until(lambda: depth(cloud, dlq) == 2 and depth(cloud, queue) == 0)
    runs = invocations(log)
    # THEN "a" succeeded once; "c" never ran ahead of "fail-b": they came back together, in order,
    # maxReceiveCount times, and then both moved to the DLQ in order (as on AWS: a record reported
    # failed counts a receive even when it only followed the failure)
    with_b = [inv["bodies"] for inv in runs if "fail-b" in inv["bodies"]]
    assert len(with_b) == 2  # maxReceiveCount
    assert all(bodies[bodies.index("fail-b") :] == ["fail-b", "c"] for bodies in with_b)
    assert all("c" not in inv["bodies"] or "fail-b" in inv["bodies"] for inv in runs)
    succeeded = [
        b for inv in runs for b, i in zip(inv["bodies"], inv["ids"], strict=True) if i not in inv["failed"]
    ]
    assert succeeded == ["a"]
    dead = []
    for _ in range(4):
        msgs = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", [])
        for m in msgs:
            dead.append(m["Body"])
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=m["ReceiptHandle"])
    assert dead == ["fail-b", "c"]


def test_maximum_concurrency_caps_parallel_invocations(cloud: LocalCloud, tmp_path: Path) -> None:
    limit = 2
    log = tmp_path / "probe.log"
    queue, _ = setup(cloud, log, fifo=False, sleep=1.0, batch=1, max_concurrency=limit)
    cloud.client("sqs").send_message_batch(
        QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": f"ok-{i}"} for i in range(8)]
    )
    wait_until(lambda: len(invocations(log)) >= 8 and depth(cloud, queue) == 0)
    spans = [(inv["start"], inv["end"]) for inv in invocations(log)]
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert overlap <= limit
