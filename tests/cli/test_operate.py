"""shardq dlq / estimate / outputs / --help against the local cloud."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest

from shardq.cli import build_parser
from shardq.cli.estimate import PRICES_USD
from shardq.core.contracts import TrainingRequest
from shardq.core.engine import Engine
from tests.cli.conftest import Shardq
from tests.helpers import count_messages, receive_all

# -- dlq ----------------------------------------------------------------------------------


def fill_dlqs(engine: Engine, outputs: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Dead tasks in three message groups (one already sent once to the task queue) and dead results."""
    sqs = engine.sqs
    tasks = [
        {
            "body": json.dumps({"job_id": "j", "round": 0, "shard_id": i, "task_type": "train"}),
            "group": f"j:{i % 3}",
        }
        for i in range(7)
    ]
    # shard 0 was sent to the task queue under its dedup id moments ago (and consumed): a redrive
    # that reused that id would be dropped by the queue as a duplicate.
    sqs.send_message(
        QueueUrl=outputs["TaskQueueUrl"],
        MessageBody=tasks[0]["body"],
        MessageGroupId=tasks[0]["group"],
        MessageDeduplicationId="j:0:0:train",
    )
    receive_all(sqs, outputs["TaskQueueUrl"])
    for i, t in enumerate(tasks):
        sqs.send_message(
            QueueUrl=outputs["TaskDlqUrl"],
            MessageBody=t["body"],
            MessageGroupId=t["group"],
            MessageDeduplicationId=f"j:0:{i}:train",
        )
    results = [json.dumps({"job_id": "j", "round": 0, "shard_id": i, "status": "bogus"}) for i in range(4)]
    for body in results:
        sqs.send_message(QueueUrl=outputs["ResultsDlqUrl"], MessageBody=body)
    return tasks, results


def test_dlq_list_and_show_leave_the_messages_in_place(
    shardq: Shardq, engine: Engine, outputs: dict[str, str]
) -> None:
    fill_dlqs(engine, outputs)
    listed = {row["queue"]: row["visible"] for row in shardq("dlq", "list", "--json").json()}
    assert listed == {"tasks": 7, "results": 4}
    shown = shardq("dlq", "show", "--queue", "tasks", "--json").json()
    assert sorted(m["body"]["shard_id"] for m in shown) == list(range(7))
    assert {m["group_id"] for m in shown} == {"j:0", "j:1", "j:2"}
    human = shardq("dlq", "show", "--queue", "results", "--max", "2")
    assert human.code == 0 and "results DLQ: 2 message(s) shown" in human.out
    assert count_messages(engine.sqs, outputs["TaskDlqUrl"]) == 7
    assert count_messages(engine.sqs, outputs["ResultsDlqUrl"]) == 4


def test_dlq_redrive_moves_every_message_back_with_none_lost(
    shardq: Shardq, engine: Engine, outputs: dict[str, str]
) -> None:
    # GIVEN 7 dead tasks in 3 FIFO groups and 4 dead results
    sqs = engine.sqs
    tasks, results = fill_dlqs(engine, outputs)
    before = {q: count_messages(sqs, outputs[q]) for q in outputs if q.endswith("Url")}
    assert before == {"TaskQueueUrl": 0, "TaskDlqUrl": 7, "ResultsQueueUrl": 0, "ResultsDlqUrl": 4}
    # WHEN both DLQs are redriven (this endpoint has no StartMessageMoveTask: receive/resend/delete)
    run = shardq("dlq", "redrive", "--json")
    # THEN every message is back on its queue and none is left in a DLQ
    assert run.code == 0, run.err
    reports = {r["queue"]: r for r in run.json()}
    assert {q: (r["method"], r["before"], r["moved"], r["after"]) for q, r in reports.items()} == {
        "tasks": ("resend", 7, 7, 0),
        "results": ("resend", 4, 4, 0),
    }
    after = {q: count_messages(sqs, outputs[q]) for q in before}
    assert after == {"TaskQueueUrl": 7, "TaskDlqUrl": 0, "ResultsQueueUrl": 4, "ResultsDlqUrl": 0}
    # AND bodies and message groups are kept, with fresh deduplication ids
    moved = receive_all(sqs, outputs["TaskQueueUrl"])
    assert sorted((m["Body"], m["Attributes"]["MessageGroupId"]) for m in moved) == sorted(
        (t["body"], t["group"]) for t in tasks
    )
    assert all(":redrive:" in m["Attributes"]["MessageDeduplicationId"] for m in moved)
    assert sorted(m["Body"] for m in receive_all(sqs, outputs["ResultsQueueUrl"])) == sorted(results)


def test_dlq_redrive_move_task_is_refused_where_unsupported(shardq: Shardq) -> None:
    run = shardq("dlq", "redrive", "--queue", "results", "--method", "move-task")
    assert run.code == 2 and "does not support StartMessageMoveTask" in run.err


# -- estimate -----------------------------------------------------------------------------

REQUEST = {
    "kind": "map",
    "dataset": {"uri": "s3://data/set", "num_samples": 1000},
    "sharding": {"shard_count": 100},
}


def test_estimate_matches_a_hand_computation(shardq: Shardq, write_request: Any) -> None:
    # GIVEN 100 map tasks on 10 workers, 250 s each, the default 30 s lease
    # (a heartbeat every 10 s: 25 per task)
    path = write_request(REQUEST)
    job_bytes = len(TrainingRequest.from_dict(REQUEST).to_json()) + 700 + 20 * 3
    assert math.ceil(job_bytes / 1024) == 1  # the job record is charged as 1 KB per write
    # WHEN estimated
    run = shardq("estimate", path, "--workers", "10", "--task-seconds", "250", "--json")
    e = run.json()
    # THEN, by hand:
    # task queue: 10 send batches + 100 receives + 100 deletes + 2,500 heartbeats
    # (10 full waves: no idle polls)
    assert e["sqs"]["task_queue_requests"] == 10 + 100 + 100 + 2500
    assert e["sqs"]["worker_idle_polls"] == 0
    # results: 100 sends; 10 waves of 10 results → 10 aggregator batches: 10 receives + 10 deletes
    assert e["sqs"]["results_queue_requests"] == 100 + 10 + 10
    # Lambda: 1 splitter + 10 aggregator calls; (0.3 s + 100/3000 s) + 10 x 0.2 s at 0.5 GB
    assert e["lambda"]["invocations"] == 11
    assert e["lambda"]["gb_seconds"] == pytest.approx((0.3 + 100 / 3000 + 2.0) * 0.5)
    # DynamoDB: create 1 + transactions 2 x (100 results + 10 counter updates x 1 KB)
    #           + 100 by_recorded index writes + (1 cursor + 3 finalize updates) x 1 + 1 round summary
    #           + the job record's 15 writes again in the by_status index, + 1 as its status changes
    assert e["dynamodb"]["write_request_units"] == 1 + 2 * (100 + 10 * 1) + 100 + 4 * 1 + 1 + 16 == 342
    # reads: 100 worker checks x 0.5 + 11 consistent job reads + 2 queries of 100 x 1 KB / 4 KB
    assert e["dynamodb"]["read_request_units"] == 50 + 11 + 50
    # S3: one artifact per task + the manifest
    assert e["s3"] == {"put_requests": 101, "get_requests": 0}
    expected = (
        2710 * 0.50e-6
        + 120 * 0.40e-6
        + 11 * 0.20e-6
        + 1.1666667 * 0.0000133334
        + 342 * 0.625e-6
        + 111 * 0.125e-6
        + 101 * 0.005e-3
        + 1e-6
    )
    assert e["total_usd"] == pytest.approx(expected, rel=1e-6)
    # enqueue at the FIFO quota: 10 calls / 300 calls/s
    assert e["min_enqueue_seconds_per_round"] == pytest.approx(10 / 300)
    assert e["min_wall_seconds"] == 2500
    assert e["prices_usd"] == PRICES_USD
    # AND the table shows the same total
    human = shardq("estimate", path, "--workers", "10", "--task-seconds", "250")
    assert f"${expected:.6f}" in human.out and "minimum enqueue time per round: 0.03 s" in human.out


def test_estimate_rejects_an_invalid_request(shardq: Shardq, write_request: Any) -> None:
    run = shardq("estimate", write_request({"kind": "map"}))
    assert run.code == 2 and "dataset is required" in run.err


# -- outputs and help ---------------------------------------------------------------------


def test_outputs_prints_the_stack_outputs(shardq: Shardq, outputs: dict[str, str]) -> None:
    assert shardq("outputs", "--json").json() == outputs
    human = shardq("outputs")
    assert "JobTableName" in human.out and outputs["JobTableName"] in human.out


def commands() -> list[list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = [[n] for n in sub.choices if n not in ("dlq", "worker", "local")]  # type: ignore[union-attr]
    return [*names, ["dlq", "list"], ["dlq", "show"], ["dlq", "redrive"]]


@pytest.mark.parametrize("argv", commands(), ids=" ".join)
def test_every_command_has_help_with_an_example(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "example:\n  shardq " in capsys.readouterr().out


def test_python_dash_m_shardq_works() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "shardq", "--help"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0 and "exit codes:" in run.stdout


def test_usage_errors_exit_2(shardq: Shardq) -> None:
    with pytest.raises(SystemExit) as exit_info:
        shardq("list", "--status", "DONE")
    assert exit_info.value.code == 2
