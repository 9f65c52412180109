"""Rounds as peers run them: sampled participation, quorum, deadlines, late results (local endpoint)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from typing import Any

import pytest

from shardq.core import planning, rounds
from shardq.core.advance import results_message
from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request


def dp(job_id: str, shards: int = 4, **extra: Any) -> dict[str, Any]:
    """A 2-round data_parallel request with a lane per shard."""
    return make_request(job_id=job_id, shards=shards, **{"rounds": 2, "max_parallel": shards, **extra})


def take(engine: Engine, clients: dict[str, Any]) -> dict[int, Any]:
    """The task queue's tasks by shard id (received and deleted)."""
    return {t.shard_id: t for t in tasks_of(receive_all(clients["sqs"], engine.settings.task_queue_url))}


# -- the contract --------------------------------------------------------------------------------


def test_round_policy_fields_round_trip_and_leave_plain_requests_unchanged() -> None:
    plain = TrainingRequest.from_dict(dp("p"))
    assert not {"participation", "quorum", "strategy", "task_timeout_seconds"} & set(plain.to_dict())
    full = TrainingRequest.from_dict(
        dp(
            "f",
            participation={"fraction": 0.5, "min_shards": 2, "seed": 7},
            quorum={"fraction": 0.75, "deadline_seconds": 60},
            strategy={"name": "fedadam", "server_lr": 0.05},
            model={"init_uri": "s3://models/init.npz"},
            task_timeout_seconds=600,
        )
    )
    assert TrainingRequest.from_dict(full.to_dict()) == full
    assert full.strategy is not None and full.strategy.to_dict() == {
        "name": "fedadam",
        "server_lr": 0.05,
        "beta1": 0.9,
        "beta2": 0.99,
        "tau": 1e-3,
    }


def test_bad_round_policy_names_every_problem_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(
            dp(
                "b",
                participation={"fraction": 0, "min_shards": 9, "sed": 1},
                quorum={"fraction": 1.5, "deadline_seconds": 0},
                strategy={"name": "fedmagic"},
                task_timeout_seconds=50_000,
            )
        )
    text = str(info.value)
    for fragment in (
        "participation.fraction must be in (0, 1]",
        "participation.min_shards must be between 1 and 4",
        "unknown field 'participation.sed': did you mean 'participation.seed'?",
        "quorum.fraction must be in (0, 1]",
        "quorum.deadline_seconds must be between 1",
        "strategy.name must be one of fedavg, fedavgm, fedadam, fedyogi, fedprox",
        "task_timeout_seconds must be between 1 and 43200",
    ):
        assert fragment in text


def test_a_server_step_strategy_needs_a_global_model_for_round_0() -> None:
    # Flower's FedAdam/FedYogi/FedAvgM take initial_parameters for the same reason
    with pytest.raises(ValidationError, match=r"strategy.name 'fedadam' steps .* give model.init_uri"):
        TrainingRequest.from_dict(dp("s", strategy={"name": "fedadam"}))
    ok = TrainingRequest.from_dict(
        dp("s", strategy={"name": "fedadam"}, model={"init_uri": "s3://b/init.npz"})
    )
    assert ok.strategy is not None and ok.strategy.name == "fedadam"
    assert TrainingRequest.from_dict(dp("p", strategy={"name": "fedprox", "mu": 0.1})).strategy is not None


def test_round_policy_is_refused_for_other_kinds() -> None:
    with pytest.raises(ValidationError, match="quorum applies to kind 'data_parallel' only"):
        TrainingRequest.from_dict(
            {"kind": "map", "dataset": {"num_samples": 10}, "sharding": {"shard_count": 2}, "quorum": {}}
        )


def test_strategy_parameters_are_range_checked() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(dp("s", strategy={"name": "fedavgm", "momentum": 1.0, "lr": 1}))
    assert "strategy.momentum must be in [0, 1), got 1.0" in str(info.value)
    assert "unknown field 'strategy.lr'" in str(info.value)


# -- participation ---------------------------------------------------------------------------


def test_participants_are_a_seeded_deterministic_sample_per_round() -> None:
    request = TrainingRequest.from_dict(dp("s", shards=100, participation={"fraction": 0.1, "seed": 3}))
    first = list(planning.participants(request, 0))
    assert len(first) == 10 == planning.participant_count(request, 0)
    assert first == sorted(set(first)) and all(0 <= s < 100 for s in first)
    # the same round always picks the same shards; another round (or seed) picks others
    assert list(planning.participants(request, 0)) == first
    assert list(planning.participants(request, 1)) != first
    other = TrainingRequest.from_dict(dp("s", shards=100, participation={"fraction": 0.1, "seed": 4}))
    assert list(planning.participants(other, 0)) != first
    # a platform-independent choice: the 10 shards whose SHA-256 of "seed:round:shard" ranks lowest
    ranked = sorted(range(100), key=lambda s: hashlib.sha256(f"3:0:{s}".encode()).digest())
    assert first == sorted(ranked[:10])


def test_min_shards_raises_the_sample() -> None:
    request = TrainingRequest.from_dict(dp("m", shards=10, participation={"fraction": 0.1, "min_shards": 4}))
    assert len(planning.participants(request, 5)) == 4


def test_a_round_runs_only_its_participants_and_refuses_others(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a 10-shard job sampling 30 % of its shards per round
    payload = dp("part", shards=10, participation={"fraction": 0.3, "seed": 1})
    engine.submit(payload)
    request = engine.store.get_job("part").request
    # THEN round 0's queue holds exactly its participants
    tasks = take(engine, clients)
    assert sorted(tasks) == list(planning.participants(request, 0))
    # WHEN a result arrives for a shard outside the sample, THEN it is refused, not counted
    outsider = next(s for s in range(10) if s not in tasks)
    forged = Outcome(
        result_for(planning.train_task(request, "part", planning.Layout("b", "part"), 0, outsider, None))
    )
    (failure,) = engine.ingest([forged])
    assert "does not take part in round 0" in str(failure[1])
    # WHEN the participants report, THEN the round closes and reduces exactly their models
    assert engine.ingest([Outcome(result_for(t)) for t in tasks.values()]) == []
    job = engine.store.get_job("part")
    assert (job.round, job.phase, job.ok(0, "train")) == (0, "reduce", 3)
    key = planning.Layout(settings.artifact_bucket, "part").reduce_inputs_key(0)
    inputs = json.loads(clients["s3"].get_object(Bucket=settings.artifact_bucket, Key=key)["Body"].read())
    assert len(inputs["models"]) == 3
    # and the next round samples again
    (reduce,) = take(engine, clients).values()
    engine.ingest([Outcome(result_for(reduce))])
    assert sorted(take(engine, clients)) == list(planning.participants(request, 1))


def test_a_resumed_round_sends_the_same_participants_once(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    engine.submit(dp("resume", shards=20, participation={"fraction": 0.25, "seed": 9}))
    job = engine.store.get_job("resume")
    engine.enqueue_current(job)  # a continuation after a crash: dedup ids absorb the resend
    tasks = tasks_of(receive_all(clients["sqs"], settings.task_queue_url))
    assert sorted(t.shard_id for t in tasks) == list(planning.participants(job.request, 0))


# -- quorum and late results -----------------------------------------------------------------


def test_quorum_closes_the_round_and_a_straggler_is_recorded_late(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN 4 shards with a 50 % quorum
    engine.submit(dp("q", quorum={"fraction": 0.5}))
    tasks = take(engine, clients)
    # WHEN 2 succeed, THEN the round closes without waiting for the others
    engine.ingest([Outcome(result_for(tasks[0])), Outcome(result_for(tasks[1]))])
    job = engine.store.get_job("q")
    assert (job.phase, job.closed_round, job.ok(0, "train")) == ("reduce", 0, 2)
    # WHEN a straggler reports after the close, THEN it is kept as late: not counted, not reduced
    assert engine.ingest([Outcome(result_for(tasks[3]))]) == []
    job = engine.store.get_job("q")
    assert job.ok(0, "train") == 2
    assert [r.result.shard_id for r in engine.store.late_results("q")] == [3]
    assert [r.result.shard_id for r in engine.store.results("q", 0)] == [0, 1]
    key = planning.Layout(settings.artifact_bucket, "q").reduce_inputs_key(0)
    inputs = json.loads(clients["s3"].get_object(Bucket=settings.artifact_bucket, Key=key)["Body"].read())
    assert len(inputs["models"]) == 2
    # and its redelivery is late again, once
    engine.ingest([Outcome(result_for(tasks[3]))])
    assert len(engine.store.late_results("q")) == 1


def test_the_deadline_tick_closes_a_round_no_result_would_close(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN 4 shards, a 2-second deadline and min_shards 2; two shards report, two stall
    engine.submit(dp("dl", participation={"min_shards": 2}, quorum={"deadline_seconds": 2}))
    tasks = take(engine, clients)
    engine.ingest([Outcome(result_for(tasks[0])), Outcome(result_for(tasks[1]))])
    assert engine.store.get_job("dl").phase == "train"
    # WHEN the deadline's tick arrives on the results queue (delayed by SQS itself)
    tick = wait_for_tick(clients["sqs"], settings.results_queue_url, timeout=15)
    assert (tick.job_id, tick.round) == ("dl", 0)
    assert engine.ingest([tick]) == []
    # THEN the round closed with what it had, and the reduce is on its way
    job = engine.store.get_job("dl")
    assert (job.phase, job.closed_round, job.ok(0, "train")) == ("reduce", 0, 2)


def test_a_deadline_with_too_few_successes_fails_the_job_saying_why(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    engine.submit(dp("few", participation={"min_shards": 3}, quorum={"deadline_seconds": 1}))
    tasks = take(engine, clients)
    engine.ingest([Outcome(result_for(tasks[0]))])
    tick = wait_for_tick(clients["sqs"], settings.results_queue_url, timeout=15)
    engine.ingest([tick])
    job = engine.store.get_job("few")
    assert job.status == "FAILED"
    assert "with 1 of 4 shards succeeded, below participation.min_shards=3" in (job.error or "")
    bucket, key = split_s3(job.result_uri or "")
    manifest = json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["status"] == "FAILED"


def test_an_early_tick_re_arms_itself(engine: Engine, settings: Settings, clients: dict[str, Any]) -> None:
    def delayed() -> int:
        attrs = clients["sqs"].get_queue_attributes(
            QueueUrl=settings.results_queue_url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessagesDelayed"])

    # GIVEN a round whose deadline is an hour away: submitting armed its tick (delayed 15 min)
    engine.submit(dp("far", quorum={"deadline_seconds": 3600}))
    assert delayed() == 1
    # WHEN a tick arrives early (as each 15-minute hop of a longer deadline does)
    assert engine.ingest([rounds.Tick("far", 0, time.time() + 3600)]) == []
    # THEN the round waits and the tick goes back on the queue for the time left
    assert engine.store.get_job("far").phase == "train"
    assert delayed() == 2


def test_results_queue_messages_parse_into_outcomes_and_ticks() -> None:
    tick = rounds.Tick("j", 2, 123.5)
    assert results_message(tick.body()) == tick
    with pytest.raises(ValidationError, match="shardq_tick needs job_id, round and due"):
        results_message('{"shardq_tick": {"job_id": "j"}}')


def wait_for_tick(sqs: Any, url: str, timeout: float) -> rounds.Tick:
    """The first tick the results queue delivers (SQS holds it until its delay has passed)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for m in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, MaxNumberOfMessages=10).get(
            "Messages", []
        ):
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            item = results_message(m["Body"])
            if isinstance(item, rounds.Tick):
                return item
    raise AssertionError(f"no tick within {timeout} s")


def test_a_straggler_holds_no_lane_of_a_later_round_nor_the_reduce(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a quorum round whose shard 0 is still running (in flight) when the round closes
    engine.submit(dp("lanes", quorum={"fraction": 0.5}))
    sqs, url = clients["sqs"], settings.task_queue_url
    held = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"])["Messages"]
    straggler = next(m for m in held if tasks_of([m])[0].shard_id == 0)
    others = [m for m in held if m is not straggler]
    for m in others:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    engine.ingest([Outcome(result_for(t)) for t in tasks_of(others)[:2]])
    # WHEN the round closes, THEN its reduce is receivable at once, though the straggler (lane 0,
    # where the reduce's shard 0 would fall) still holds its message: the reduce has its own group
    (reduce,) = tasks_of(receive_all(sqs, url))
    assert reduce.task_type == "reduce"
    engine.ingest([Outcome(result_for(reduce))])
    # ... and round 1's lane-0 task is not stuck behind it either
    assert sorted(t.shard_id for t in tasks_of(receive_all(sqs, url))) == [0, 1, 2, 3]
    assert straggler["Attributes"]["MessageGroupId"] == "lanes:r0:0"


def test_the_reduce_metrics_join_the_round_summary(engine: Engine, clients: dict[str, Any]) -> None:
    # GIVEN a round trained; WHEN its reduce reports the global model's held-out accuracy
    engine.submit(dp("rm", rounds=1))
    tasks = take(engine, clients)
    engine.ingest([Outcome(result_for(t)) for t in tasks.values()])
    (reduce,) = take(engine, clients).values()
    engine.ingest([Outcome(replace(result_for(reduce), metrics={"test_accuracy": 0.91}))])
    # THEN the round's summary (and so the manifest's "rounds") carries it
    (summary,) = engine.store.round_summaries("rm")
    assert summary["reduce"]["metrics"] == {"test_accuracy": 0.91}
    assert summary["shards_succeeded"] == 4
    bucket, key = split_s3(engine.store.get_job("rm").result_uri or "")
    manifest = json.loads(clients["s3"].get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["rounds"][0]["reduce"]["metrics"] == {"test_accuracy": 0.91}
