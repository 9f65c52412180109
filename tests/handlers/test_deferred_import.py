"""Deferred module bodies (lambdas/deferred.py): never run on the handlers' path, whole when used.

The handler cases run in a fresh interpreter, as a Lambda container imports them: the test
runner itself has imported asyncio long before, where deferring it is (rightly) a no-op. The
mechanism's own cases use small packages written for the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lambdas.deferred import defer_import, import_deferring, is_deferred
from shardq.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEFERRED = ("asyncio", "aws_lambda_powertools.utilities.data_classes")

# Imports both batch handlers, submits a 4-shard map job, dead-letters two of its tasks through
# the DLQ handler and reports the other two through the aggregator (so the job finishes), and
# says after each step whether the deferred modules have still not run.
HANDLER_PROBE = """
import json
from lambdas import aggregator, dlq_handler
from lambdas.common import engine
from lambdas.deferred import is_deferred
from shardq.core.clients import client
from tests.helpers import LambdaContext, body_event, receive_all, result_for, sqs_event, tasks_of

deferred = {deferred!r}
after_import = {{m: is_deferred(m) for m in deferred}}
eng = engine()
eng.submit({{"job_id": "deferred", "kind": "map", "dataset": {{"num_samples": 40}},
            "sharding": {{"shard_count": 4}}, "max_parallel": 4, "max_failed_shards": 4}})
msgs = receive_all(client("sqs"), eng.settings.task_queue_url)
dead = [{{**m, "Attributes": {{**m["Attributes"], "ApproximateReceiveCount": "5"}}}} for m in msgs[:2]]
dlq_arn = "arn:aws:sqs:us-east-1:000000000000:tasks-dlq.fifo"
dlq = dlq_handler.handler(sqs_event(dead, dlq_arn), LambdaContext())
results = body_event([result_for(t).to_json() for t in tasks_of(msgs[2:])])
agg = aggregator.handler(results, LambdaContext())
print(json.dumps({{
    "after_import": after_import,
    "after_invocations": {{m: is_deferred(m) for m in deferred}},
    "answers": [dlq, agg],
    "status": eng.status("deferred").status,
    "tasks": len(msgs),
}}))
"""

# The deferred modules in full use: Powertools' own asyncio user (AsyncBatchProcessor), the
# data-classes package's every name, a submodule, and identity with what the handlers took.
USE_PROBE = """
import json, sys
import lambdas.batch
from lambdas.deferred import is_deferred
import asyncio
bound_deferred = is_deferred("asyncio")
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor, EventType, async_process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes import S3Event, SQSEvent, event_source
from aws_lambda_powertools.utilities.data_classes.s3_event import S3Event as S3EventItself
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

async def handle(record):
    await asyncio.sleep(0)
    if record.body == "bad":
        raise ValueError("bad record")

record = lambda mid, body: {"messageId": mid, "receiptHandle": "rh", "body": body, "attributes": {},
                            "messageAttributes": {}, "eventSource": "aws:sqs", "awsRegion": "us-east-1"}
answer = async_process_partial_response(
    event={"Records": [record("a", "ok"), record("b", "bad")]}, record_handler=handle,
    processor=AsyncBatchProcessor(event_type=EventType.SQS),
)
import asyncio.subprocess
print(json.dumps({
    "bound_deferred": bound_deferred,
    "answer": answer,
    "deferred_after_use": {m: is_deferred(m) for m in {deferred!r}},
    "same_module": sys.modules["asyncio"] is asyncio,
    "same_s3event": S3Event is S3EventItself,
    "sqs_event_first_id": next(SQSEvent({"Records": [record("c", "x")]}).records).message_id,
    "record_class_same": SQSRecord is sys.modules["aws_lambda_powertools.utilities.data_classes"].SQSRecord,
    "has_event_source": callable(event_source),
}))
"""


def run_probe(code: str, env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,  # a failing probe is reported with its stderr below
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def fresh_env(**changes: str) -> dict[str, str]:
    env = {**os.environ, **changes}
    env.pop("PYTHONPATH", None)
    return env


@pytest.mark.parametrize("in_lambda", [False, True], ids=["outside-lambda", "in-lambda"])
def test_batch_handlers_never_run_the_deferred_modules(lambda_env: Settings, in_lambda: bool) -> None:
    # GIVEN a fresh interpreter with the stack's environment (tracing off)
    env = fresh_env(**({"LAMBDA_TASK_ROOT": str(ROOT)} if in_lambda else {}))
    # WHEN both batch handlers are imported and handle real records until the job finishes
    got = run_probe(HANDLER_PROBE.format(deferred=DEFERRED), env)
    # THEN every record succeeded and the job finished...
    assert got["tasks"] == 4
    assert all(not a.get("batchItemFailures") for a in got["answers"]), got["answers"]
    assert got["status"] == "SUCCEEDED", got
    # ...without asyncio or Powertools' data-classes package body ever running
    expected = dict.fromkeys(DEFERRED, True)
    assert got["after_import"] == expected, (
        "a deferred module ran at import: lambdas/deferred.py's saving is lost (a newer Powertools?)"
    )
    assert got["after_invocations"] == expected


def test_deferred_modules_are_whole_when_used() -> None:
    got = run_probe(USE_PROBE.replace("{deferred!r}", repr(DEFERRED)), fresh_env())
    assert got["bound_deferred"] is True  # ``import asyncio`` alone runs nothing
    assert got["answer"] == {"batchItemFailures": [{"itemIdentifier": "b"}]}
    assert got["deferred_after_use"] == dict.fromkeys(DEFERRED, False)
    assert got["same_module"] is True
    assert got["same_s3event"] is True
    assert got["sqs_event_first_id"] == "c"
    assert got["record_class_same"] is True
    assert got["has_event_source"] is True


@pytest.fixture
def packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A unique prefix for throwaway packages importable from ``tmp_path``; removed afterwards."""
    prefix = f"dfr_{abs(hash(request.node.nodeid)) % 10**8}_"
    monkeypatch.syspath_prepend(str(tmp_path))
    yield prefix
    for name in [m for m in sys.modules if m.startswith(prefix)]:
        del sys.modules[name]


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_a_deferred_package_runs_once_whole_on_first_use_from_many_threads(
    tmp_path: Path, packages: str
) -> None:
    pkg = f"{packages}slow"
    write(
        tmp_path,
        {
            f"{pkg}/__init__.py": """
                import time
                RUNS = [1]
                time.sleep(0.05)  # a body long enough for every thread to arrive while it runs
                from .part import PART
                LAST = "set at the end of the body"
            """,
            f"{pkg}/part.py": "PART = 7\n",
        },
    )
    assert defer_import(pkg) is True
    module = sys.modules[pkg]
    assert is_deferred(pkg)
    seen: list[tuple[str, int]] = []
    start = threading.Barrier(8)

    def first_touch() -> None:
        start.wait()
        seen.append((module.LAST, module.PART))

    threads = [threading.Thread(target=first_touch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every thread saw the finished body, and the body ran once, in the object bound before.
    assert seen == [("set at the end of the body", 7)] * 8
    assert module.RUNS == [1]
    assert sys.modules[pkg] is module
    assert not is_deferred(pkg)


def test_a_provided_name_imports_only_its_submodule(tmp_path: Path, packages: str) -> None:
    pkg, consumer = f"{packages}pkg", f"{packages}consumer"
    write(
        tmp_path,
        {
            f"{pkg}/__init__.py": "from .a import A\nfrom .b import B\nfrom .heavy import HEAVY\nOTHER = 1\n",
            f"{pkg}/a.py": "A = 'a'\n",
            f"{pkg}/b.py": f"from {pkg} import A\nB = A + 'b'\n",
            f"{pkg}/heavy.py": "HEAVY = 'only the body imports me'\n",
            f"{consumer}.py": f"from {pkg}.b import B\n",
        },
    )
    module = import_deferring(consumer, package=pkg, provides={"A": ".a"})
    assert module.B == "ab"
    assert is_deferred(pkg)
    assert f"{pkg}.heavy" not in sys.modules
    # Any other name runs the package's body, in the same object.
    assert sys.modules[pkg].OTHER == 1
    assert not is_deferred(pkg)
    assert sys.modules[pkg].A is sys.modules[f"{pkg}.a"].A
    assert sys.modules[pkg].HEAVY == "only the body imports me"


def test_a_deferral_that_cannot_hold_falls_back_to_a_normal_import(tmp_path: Path, packages: str) -> None:
    # A submodule takes a name the deferral does not provide: the package's body then runs from inside
    # that half-imported submodule and fails; the import must still succeed, the usual way.
    pkg, consumer = f"{packages}pkg", f"{packages}consumer"
    write(
        tmp_path,
        {
            f"{pkg}/__init__.py": "from .a import A\nOTHER = 1\nfrom .b import B\n",
            f"{pkg}/a.py": "A = 'a'\n",
            f"{pkg}/b.py": f"from {pkg} import A, OTHER\nB = A + str(OTHER)\n",
            f"{consumer}.py": f"from {pkg}.b import B\n",
        },
    )
    module = import_deferring(consumer, package=pkg, provides={"A": ".a"})
    assert module.B == "a1"
    assert not is_deferred(pkg)
    assert sys.modules[pkg].B == "a1"


def test_defer_import_leaves_imported_and_unknown_modules_alone() -> None:
    assert defer_import("json") is False
    assert not is_deferred("json")
    assert defer_import("no_such_module_for_shardq") is False
    assert "no_such_module_for_shardq" not in sys.modules
