"""``shardq estimate`` beyond the hand computation in test_operate.py: lanes, --compare, what-ifs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shardq.cli import main

REQUEST = {
    "kind": "map",
    "dataset": {"uri": "s3://data/set", "num_samples": 100_000},
    "sharding": {"shard_count": 1000},
    "max_parallel": 100,
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def request_file(tmp_path: Path) -> str:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(REQUEST))
    return str(path)


def test_more_workers_than_lanes_is_warned_and_changes_no_wall_time(
    capsys: pytest.CaptureFixture[str], request_file: str
) -> None:
    # GIVEN a request of 1,000 shards in 100 lanes, estimated for 100 and for 400 workers
    _, out100, _ = run(capsys, "estimate", request_file, "--workers", "100", "--task-seconds", "60", "--json")
    code, out400, err = run(
        capsys, "estimate", request_file, "--workers", "400", "--task-seconds", "60", "--json"
    )
    e100, e400 = json.loads(out100), json.loads(out400)
    # THEN the 300 extra workers cannot shorten the job: 10 waves of 100 either way
    assert code == 0 and e100["min_wall_seconds"] == e400["min_wall_seconds"] == 600
    assert (
        e400["parallel_tasks"] == 100 and e400["sqs"]["worker_idle_polls"] > e100["sqs"]["worker_idle_polls"]
    )
    assert e400["warnings"] and not e100["warnings"]
    # AND the table's reader is told on stderr (stdout stays the table)
    code, out, err = run(capsys, "estimate", request_file, "--workers", "400")
    assert code == 0 and "warning: 400 workers but max_parallel 100" in err and "warning" not in out


def test_compare_prints_the_three_options_and_their_limits(
    capsys: pytest.CaptureFixture[str], request_file: str
) -> None:
    argv = ("estimate", request_file, "--workers", "100", "--task-seconds", "600", "--compare")
    code, out, _ = run(capsys, *argv)
    assert code == 0
    for text in (
        "shardq",
        "Step Functions Distributed Map",
        "AWS Batch array jobs",
        "PER 1,000 TASKS",
        "prices.json",
    ):
        assert text in out
    assert "1 array job(s): at most 10,000 children each" in out
    code, out, _ = run(capsys, *argv, "--json")
    c: dict[str, Any] = json.loads(out)
    assert [o["option"] for o in c["options"]] == [
        "shardq",
        "Step Functions Distributed Map",
        "AWS Batch array jobs",
    ]
    assert c["prices"]["region"] == "us-east-1"
    # 1,000 shards: Step Functions charges 2 transitions each (child start + its Task state) + 2
    assert c["options"][1]["lines"][0]["count"] == 2 * 1000 + 2


def test_what_if_past_the_request_cap(capsys: pytest.CaptureFixture[str], request_file: str) -> None:
    # GIVEN a million shards (a map request's cap): estimated, never submitted
    code, out, _ = run(
        capsys,
        "estimate",
        request_file,
        "--shards",
        "1000000",
        "--max-parallel",
        "1000",
        "--workers",
        "1000",
        "--json",
    )
    e = json.loads(out)
    assert code == 0 and e["request"]["tasks_per_round"] == 1_000_000 and e["request"]["max_parallel"] == 1000
    # the splitter hands a 333 s fan-out on to continuations (120 s invocations, 20 s margin)
    assert e["lambda"]["splitter_invocations"] == 4
    code, _, err = run(capsys, "estimate", request_file, "--shards", "0")
    assert code == 2 and "--shards must be at least 1" in err
