"""Test helpers: real SQS messages as real Lambda event shapes, a LambdaContext, a worker stand-in."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from shardq.core.contracts import ShardResult, ShardTask
from shardq.worker.trust import AllowList

# What the suite's in-process workers may run: the repository's examples and the tests' workloads.
TRUSTED = AllowList.parse("examples.*,tests.*")


@dataclass
class LambdaContext:
    """The slice of the Lambda context the handlers read."""

    function_name: str = "shardq-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:shardq-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_ms: int = 300_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


class Clock:
    """Seconds since the epoch that move only when the test says (``clock.advance(0.5)``, or
    ``clock.now = ...``). Given to an engine (``make_engine(clock=clock)``) it is the engine's one
    time: its deadlines and every stamp it compares (``StoreBase.stamp``: ``recorded_at``,
    ``decided_at``...), so what the engine measures does not depend on the machine's load."""

    def __init__(self, now: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def receive_all(
    sqs: Any, url: str, *, max_empty: int = 2, attributes: bool = True, delete: bool = True
) -> list[dict[str, Any]]:
    """Receive every message; deleted by default, since a FIFO group hides the rest while one is in flight."""
    out: list[dict[str, Any]] = []
    empty = 0
    while empty < max_empty:
        resp = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            AttributeNames=["All"] if attributes else [],
            MessageSystemAttributeNames=["All"],
        )
        msgs = resp.get("Messages", [])
        if not msgs:
            empty += 1
            continue
        empty = 0
        out.extend(msgs)
        if delete:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
            )
    return out


def count_messages(sqs: Any, url: str) -> int:
    """Visible + in-flight + delayed messages on a queue."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return sum(int(v) for v in attrs.values())


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The Lambda SQS event an event source mapping builds from these received messages."""
    records = []
    for m in messages:
        attrs = m.get("Attributes", {})
        records.append(
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": attrs.get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": attrs.get("SentTimestamp", str(int(time.time() * 1000))),
                    "SenderId": attrs.get("SenderId", "AIDAEXAMPLE"),
                    "ApproximateFirstReceiveTimestamp": attrs.get(
                        "ApproximateFirstReceiveTimestamp", str(int(time.time() * 1000))
                    ),
                    **{
                        k: attrs[k]
                        for k in ("MessageGroupId", "MessageDeduplicationId", "SequenceNumber")
                        if k in attrs
                    },
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
        )
    return {"Records": records}


def body_event(
    bodies: list[str], queue_arn: str = "arn:aws:sqs:us-east-1:000000000000:results"
) -> dict[str, Any]:
    """An SQS event from raw bodies (for records that never touched a queue, e.g. malformed ones)."""
    return sqs_event(
        [{"MessageId": f"m-{i}", "ReceiptHandle": f"rh-{i}", "Body": b} for i, b in enumerate(bodies)],
        queue_arn,
    )


def queue_arn(sqs: Any, url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


def result_for(task: ShardTask, *, status: str = "succeeded", loss: float | None = None) -> ShardResult:
    """What a deterministic worker reports for a task (no training: the aggregator is under test),
    with the task's retry generation, as ``shardq worker`` reports it."""
    if task.task_type == "reduce":
        return ShardResult(
            job_id=task.job_id,
            round=task.round,
            shard_id=0,
            task_type="reduce",
            status=status,  # type: ignore[arg-type]
            artifact_uri=task.output_prefix + "model.npz" if status == "succeeded" else None,
            error=None if status == "succeeded" else "reduce blew up",
            generation=task.generation,  # as a worker does (ShardResult.for_task)
        )
    n = int(task.data.get("end", 0)) - int(task.data.get("start", 0)) if "start" in task.data else 1
    value = loss if loss is not None else 1.0 / (1 + task.shard_id + task.round)
    return ShardResult(
        job_id=task.job_id,
        round=task.round,
        shard_id=task.shard_id,
        task_type="train",
        status=status,  # type: ignore[arg-type]
        metrics={"loss": value, "accuracy": 1 - value} if status == "succeeded" else {},
        num_samples=n if status == "succeeded" else 0,
        artifact_uri=task.output_prefix + "model.npz" if status == "succeeded" else None,
        duration_s=0.5,
        worker_id="test-worker",
        error=None if status == "succeeded" else "CUDA out of memory",
        generation=task.generation,
    )


def tasks_of(messages: list[dict[str, Any]]) -> list[ShardTask]:
    return [ShardTask.from_json(m["Body"]) for m in messages]


def results_event(results: list[ShardResult]) -> dict[str, Any]:
    return body_event([r.to_json() for r in results])


def json_lines(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in messages]


class FlakySQS:
    """Fault injection in front of a real SQS client (the queue semantics stay real).

    ``drop_every``: every n-th entry of a batch is not sent and is reported as a
    retryable per-entry failure. ``die_after``: calls after the n-th raise, as if the
    process was killed mid fan-out. (Whole-call throttling is injected below the client's
    retry layer instead: ``HttpFaults``.)
    """

    def __init__(self, real: Any, *, drop_every: int = 0, die_after: int | None = None):
        self.real = real
        self.drop_every = drop_every
        self.die_after = die_after
        self.calls = 0
        self.exceptions = real.exceptions

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        if self.die_after is not None and self.calls > self.die_after:
            raise RuntimeError("injected crash: the splitter died here")
        keep: list[dict[str, Any]] = []
        drop: list[dict[str, Any]] = []
        for i, e in enumerate(Entries):
            (drop if self.drop_every and (self.calls + i) % self.drop_every == 0 else keep).append(e)
        response: dict[str, Any] = {"Successful": [], "Failed": []}
        if keep:
            response = self.real.send_message_batch(QueueUrl=QueueUrl, Entries=keep)
            response.setdefault("Failed", [])
        response["Failed"] += [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"}
            for e in drop
        ]
        return response


class HttpFaults:
    """Answers chosen calls of a real client with an AWS error at the HTTP layer.

    The fault is injected *below* botocore's retry handler (a ``before-send`` hook), so the
    client's real retry mode sees it exactly as it would see AWS's answer: this is how the
    tests prove botocore is the retry layer for whole-call failures.

    ``HttpFaults(sqs).fail("SendMessageBatch", times=2)`` answers the next two calls with
    SQS's throttling error; ``times=None`` fails every call.
    """

    THROTTLED = (400, "RequestThrottled", "Request is throttled.")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.plan: dict[str, list[Any]] = {}
        self.injected: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        client.meta.events.register_first("before-send", self._before_send)

    def fail(self, operation: str, *, times: int | None = 1, error: tuple[int, str, str] = THROTTLED) -> None:
        """Fail the next ``times`` calls of ``operation`` (every call when None)."""
        self.plan[operation] = [times, error]

    def close(self) -> None:
        """Stop injecting."""
        self.client.meta.events.unregister("before-send", self._before_send)

    def _before_send(self, request: Any, **kwargs: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        target = dict(request.headers).get("X-Amz-Target", b"")
        operation = (target.decode() if isinstance(target, bytes) else str(target)).rpartition(".")[2]
        self.calls[operation] = self.calls.get(operation, 0) + 1
        plan = self.plan.get(operation)
        if not plan or plan[0] == 0:
            return None
        if plan[0] is not None:
            plan[0] -= 1
        status, code, message = plan[1]
        self.injected[operation] = self.injected.get(operation, 0) + 1
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "x-amzn-query-error": f"{code};Sender",
            "x-amzn-RequestId": "injected",
        }
        body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message}).encode()
        return AWSResponse(request.url, status, headers, _RawBody(body))


class _RawBody:
    """The raw stream botocore reads an HTTP answer from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **kwargs: Any) -> Any:
        yield self.data


class CountingClient:
    """Counts API calls per operation on a real client (nothing else changes); ``calls`` keeps
    each call's operation, arguments and answer."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.exceptions = real.exceptions
        self.counts: dict[str, int] = {}
        self.calls: list[tuple[str, dict[str, Any], Any]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] = self.counts.get(name, 0) + 1
            answer = attr(*args, **kwargs)
            self.calls.append((name, kwargs, answer))
            return answer

        return call


class CutShort(CountingClient):
    """The real client, whose first ``cuts`` GetObject bodies claim one byte more than they hold (a
    connection dropped mid-object): botocore's own length check raises at the end of the stream."""

    def __init__(self, real: Any, cuts: int = 10**6) -> None:
        super().__init__(real)
        self.cuts = cuts

    def get_object(self, **kwargs: Any) -> Any:
        response = self.real.get_object(**kwargs)
        self.counts["get_object"] = self.counts.get("get_object", 0) + 1
        if self.counts["get_object"] <= self.cuts:
            body = response["Body"]
            body._content_length = int(response["ContentLength"]) + 1
        return response


def result_body(task: ShardTask, **fields: Any) -> str:
    """The JSON body ``result_for(task)`` posts, with ``fields`` replaced, written as an older worker
    (or a hand-rolled poster) would: ``json.dumps`` with its non-standard ``NaN``/``Infinity``.

    ``result_body(task, metrics={"loss": float("nan")})`` is a diverged trial (or, outside a sweep,
    a failed shard); ``result_body(task, num_samples=-1)`` a body the parser rejects, which the
    aggregator records as the task's failure (issue #22, ``shardq.core.verdicts``).
    """
    return json.dumps({**result_for(task).to_dict(), **fields})


def post_bodies(sqs: Any, url: str, bodies: list[str]) -> None:
    """Send raw bodies to a (standard) queue: the results queue, or its DLQ as a redrive left them."""
    for i in range(0, len(bodies), 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(j), "MessageBody": b} for j, b in enumerate(bodies[i : i + 10])],
        )


def post_results(sqs: Any, url: str, results: list[ShardResult]) -> None:
    """Send results to the (standard) results queue, as workers do."""
    for i in range(0, len(results), 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(j), "MessageBody": r.to_json()} for j, r in enumerate(results[i : i + 10])],
        )


def gather_batch(sqs: Any, url: str, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` messages from several receives of 10, as an event source mapping gathers them."""
    msgs: list[dict[str, Any]] = []
    while len(msgs) < limit:
        got = sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=min(10, limit - len(msgs)),
            AttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        ).get("Messages", [])
        if not got:
            break
        msgs.extend(got)
    return msgs


def run_event_source(
    sqs: Any, url: str, handler: Any, *, batch: int = 10, context: Any = None
) -> list[dict[str, Any]]:
    """Do what a Lambda event source mapping does, once: receive a batch, invoke, delete what succeeded.

    Returns the handler's responses (one per non-empty batch) until the queue is empty.
    """
    arn = queue_arn(sqs, url)
    responses: list[dict[str, Any]] = []
    while True:
        msgs = gather_batch(sqs, url, batch)
        if not msgs:
            return responses
        response = handler(sqs_event(msgs, arn), context or LambdaContext())
        responses.append(response)
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        done = [m for m in msgs if m["MessageId"] not in failed]
        for lo in range(0, len(done), 10):  # DeleteMessageBatch takes 10 entries at most
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(done[lo : lo + 10])
                ],
            )
        if failed:
            return responses


def work_tasks(sqs: Any, settings: Any, outcome: Any = None) -> int:
    """A worker stand-in: take every queued task, post its result, delete the task. Returns tasks done."""
    msgs = receive_all(sqs, settings.task_queue_url)
    tasks = tasks_of(msgs)
    post_results(sqs, settings.results_queue_url, [(outcome or result_for)(t) for t in tasks])
    return len(tasks)
