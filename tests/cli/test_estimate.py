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


def test_halving_counts_every_rung_at_its_budget_and_participation_its_sample(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the project's halving sweep: 27 random trials, eta 3, epochs 1 → 3 → 9
    argv = ("--workers", "8", "--task-seconds", "60", "--json")
    code, out, _ = run(capsys, "estimate", "examples/requests/sweep_halving.json", *argv)
    e = json.loads(out)
    # THEN its rungs run 27 + 9 + 3 tasks, each rung's task training its budget increment
    assert code == 0 and e["request"]["tasks"] == 39 and e["request"]["rounds"] == 3
    assert [(r["trials"], r["budget"], r["task_seconds"]) for r in e["request"]["rungs"]] == [
        (27, 1, 60), (9, 3, 120), (3, 9, 360),
    ]  # fmt: skip
    # AND the wall time is 4 waves of 60 s, 2 of 120 s and 1 of 360 s on 8 lanes
    assert e["min_wall_seconds"] == 4 * 60 + 2 * 120 + 360
    assert e["request"]["budget_spent"] == 27 * 1 + 9 * 2 + 3 * 6 == 63
    assert e["total_usd"] == pytest.approx(sum(line["usd"] for line in e["lines"]))
    # AND a data_parallel round with participation trains its sample: 8 of 16 shards, + a reduce
    code, out, _ = run(capsys, "estimate", "examples/requests/data_parallel_quorum.json", *argv)
    e = json.loads(out)
    assert e["request"]["tasks_per_round"] == 8 and e["request"]["tasks"] == 5 * (8 + 1)


def test_checkpoints_are_refused_where_they_would_be_left_out(
    capsys: pytest.CaptureFixture[str], request_file: str
) -> None:
    # GIVEN --checkpoint-every with --compare, and with a halving sweep's rungs of different lengths
    compare = run(capsys, "estimate", request_file, "--checkpoint-every", "60", "--compare")
    halving = run(capsys, "estimate", "examples/requests/sweep_halving.json", "--checkpoint-every", "60")
    # THEN each is a usage error naming the option and the fix, and prints no figures
    assert compare[0] == 2 and "--checkpoint-every" in compare[2] and "without --compare" in compare[2]
    assert halving[0] == 2 and "--checkpoint-every" in halving[2] and "--rounds 1" in halving[2]
    assert compare[1] == halving[1] == ""
    # AND one halving rung priced with --rounds 1 takes them; the halving estimate keeps its heartbeat line
    code, out, _ = run(
        capsys,
        "estimate",
        "examples/requests/sweep_halving.json",
        "--rounds",
        "1",
        "--checkpoint-every",
        "20",
    )
    assert code == 0 and "checkpoints: 3 per task" in out
    code, out, _ = run(capsys, "estimate", "examples/requests/sweep_halving.json")
    assert code == 0 and "heartbeats: a 30 s lease renewed every third of it" in out


def test_an_asha_sweep_is_called_asha_and_counts_what_it_can_run(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the project's ASHA sweep: 27 random trials, eta 3, epochs 1 → 3 → 9
    argv = ("--workers", "8", "--task-seconds", "60")
    code, out, _ = run(capsys, "estimate", "examples/requests/sweep_asha.json", *argv, "--json")
    e = json.loads(out)
    # THEN its rungs are priced at the bound status shows (n - eta + 1 of a rung's n go on), not
    # halving's 27 + 9 + 3: a trial promoted early may drop out of the top later
    assert code == 0 and [r["trials"] for r in e["request"]["rungs"]] == [27, 25, 23]
    assert e["request"]["tasks"] == 75 and e["request"]["early_stopping"] == "asha"
    assert e["request"]["tasks_typical"] == 39
    assert e["request"]["budget_spent"] == 27 * 1 + 25 * 2 + 23 * 6
    assert e["total_usd"] == pytest.approx(sum(line["usd"] for line in e["lines"]))
    # AND the table says ASHA and "up to"
    code, out, _ = run(capsys, "estimate", "examples/requests/sweep_asha.json", *argv)
    head = out.splitlines()[0]
    assert code == 0 and "ASHA (asynchronous successive halving), up to 27 + 25 + 23 trials" in head
    assert "= up to 75 tasks (usually about 39, as halving's)" in head
    assert "successive halving, 27" not in head


def test_a_fedbuff_job_counts_k_updates_a_version_and_its_reduces(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the project's FedBuff job: 8 clients, buffer 4, 20 versions
    argv = ("--workers", "8", "--task-seconds", "60")
    code, out, _ = run(capsys, "estimate", "examples/requests/data_parallel_fedbuff.json", *argv, "--json")
    e = json.loads(out)
    # THEN it runs 20 x 4 updates + 20 reduces, not 20 rounds of every client
    assert code == 0 and e["request"]["tasks_per_round"] == 4 and e["request"]["tasks"] == 20 * 4 + 20
    assert e["request"]["fedbuff"] == {
        "buffer_size": 4,
        "clients": 8,
        "max_staleness": 8,
        "surplus_at_most": 7,
    }
    code, out, _ = run(capsys, "estimate", "examples/requests/data_parallel_fedbuff.json", *argv)
    assert code == 0 and out.startswith(
        "data_parallel: FedBuff, 20 versions x 4 updates + 20 reduces = 100 tasks"
    )
    # AND an Optuna sweep (asynchronous, no early stopping) runs num_trials tasks, one each
    code, out, _ = run(capsys, "estimate", "examples/requests/sweep_optuna.json", *argv, "--json")
    e = json.loads(out)
    assert code == 0 and e["request"]["tasks"] == 30 and e["request"]["rounds"] == 1
