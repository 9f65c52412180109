"""FedBuff under chaos: clients of unequal speed, results duplicated, replayed long after, delivered
out of order, a worker killed mid-update (its task redelivered and trained again), aggregator
batches of any size. The checker follows versions (``tests.chaos.versions``)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from shardq.core.contracts import ShardResult, ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.outstanding import tasks_out
from shardq.core.planning import Layout
from shardq.core.store.fedbuff import FedBuffStore
from tests.chaos.versions import follows_versions, trained_during_reduces
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request


def _run(engine: Engine, seed: int, lanes: int = 4, **strategy: Any) -> tuple[str, int]:
    """Drive a 4-client FedBuff job over ``lanes`` client slots to its end with a seeded, hostile
    schedule; (status, replays). After every step at most ``lanes`` client tasks are out."""
    rng = random.Random(seed)
    job_id = f"chaos-fb-{seed}"
    engine.submit(
        make_request(
            job_id=job_id,
            shards=4,
            rounds=4,
            max_parallel=lanes,
            model={"init_uri": "s3://models/init.npz"},
            strategy={"name": "fedbuff", **strategy},
        )
    )
    # Client 3 is 10× slower: it finishes a task with probability 0.05 a step, the others 0.5.
    speed = {0: 0.5, 1: 0.5, 2: 0.5, 3: 0.05}
    running: list[ShardTask] = []
    sent: list[ShardResult] = []
    replays = 0
    for _ in range(400):
        running += tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))
        done, still = [], []
        for t in running:
            p = 0.9 if t.task_type == "reduce" else speed[t.shard_id]
            (done if rng.random() < p else still).append(t)
        running = still
        batch: list[ShardResult] = []
        for t in done:
            if t.task_type == "train" and rng.random() < 0.1:
                running.append(t)  # its worker was killed mid-update: the task comes back, trains again
                continue
            r = result_for(t)
            batch.append(r)
            if rng.random() < 0.2:
                batch.append(r)  # delivered twice
        if sent and rng.random() < 0.3:
            batch.append(rng.choice(sent))  # an old result replayed long after
            replays += 1
        sent += batch
        rng.shuffle(batch)
        if batch:
            cut = rng.randint(0, len(batch))
            for part in (batch[:cut], batch[cut:]):  # two aggregator batches in any order
                if part:
                    assert not engine.ingest([Outcome(r) for r in part])
        job = engine.store.get_job(job_id)
        assert tasks_out(job) - (job.enqueued(job.round, "reduce") - job.done(job.round, "reduce")) <= lanes
        if job.status != "RUNNING":
            # Every result delivered once more after the end: duplicates, never counted again.
            assert not engine.ingest([Outcome(r) for r in sent])
            return job.status, replays + len(sent)
    raise AssertionError(f"{job_id} did not finish")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_update_is_applied_twice_nor_staler_than_allowed(engine: Engine, seed: int) -> None:
    status, replays = _run(engine, seed, buffer_size=2, max_staleness=2)
    assert status == "SUCCEEDED" and replays > 0
    problems = follows_versions(engine, f"chaos-fb-{seed}")
    assert not problems, "\n".join(problems)
    # and clients trained on while reduces ran (no barrier): those updates went in stale, once
    assert trained_during_reduces(engine, f"chaos-fb-{seed}") > 0


@pytest.mark.parametrize("seed", [11, 12])
def test_with_fewer_slots_than_clients_slots_rotate_and_nothing_is_applied_twice(
    engine: Engine, seed: int
) -> None:
    # 2 slots for 4 clients: each freed slot goes to the client that waited longest, once, whatever
    # the duplicates, replays and kills; never more than 2 client tasks out (checked every step)
    status, replays = _run(engine, seed, lanes=2, buffer_size=2, max_staleness=2)
    assert status == "SUCCEEDED" and replays > 0
    problems = follows_versions(engine, f"chaos-fb-{seed}")
    assert not problems, "\n".join(problems)
    trained = {u.client for u in FedBuffStore(engine.store).all_updates(f"chaos-fb-{seed}")}
    assert trained == {0, 1, 2, 3}


def test_with_max_staleness_0_no_client_trains_from_a_full_buffers_version(engine: Engine) -> None:
    # Such a task's update would certainly be late (τ ≥ 1 > 0): the client waits for the next
    # version instead; and the count above can tell the two apart.
    status, _ = _run(engine, 7, buffer_size=2, max_staleness=0)
    assert status == "SUCCEEDED"
    problems = follows_versions(engine, "chaos-fb-7")
    assert not problems, "\n".join(problems)
    assert trained_during_reduces(engine, "chaos-fb-7") == 0


def test_constant_and_hinge_weights_follow_versions_too(engine: Engine) -> None:
    for seed, staleness in ((4, "constant"), (5, "hinge")):
        status, _ = _run(engine, seed, buffer_size=3, staleness=staleness, max_staleness=3, hinge_b=1)
        assert status == "SUCCEEDED"
        problems = follows_versions(engine, f"chaos-fb-{seed}")
        assert not problems, "\n".join(problems)


def test_the_checker_sees_an_update_applied_to_two_versions(engine: Engine) -> None:
    # The check must be able to fail: plant a second listing of an applied update under another
    # version (what applying it twice would leave behind).
    status, _ = _run(engine, 6, buffer_size=2, max_staleness=2)
    assert status == "SUCCEEDED"
    table, ddb = engine.settings.job_table, engine.ddb
    items = ddb.query(
        TableName=table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
        ExpressionAttributeValues={":pk": {"S": "JOB#chaos-fb-6"}, ":p": {"S": "BUF#v000000#"}},
    )["Items"]
    copy = dict(items[0])
    copy["sk"] = {"S": copy["sk"]["S"].replace("BUF#v000000#", "BUF#v000001#")}
    ddb.put_item(TableName=table, Item=copy)
    problems = follows_versions(engine, "chaos-fb-6")
    assert any("listed under 2 versions" in p for p in problems), problems
    assert any("version 1 closed with 3 applied updates" in p for p in problems), problems


@pytest.mark.parametrize("seed", [8, 9])
def test_with_cached_calibration_no_update_is_cached_twice(engine: Engine, seed: int) -> None:
    # CA2FL (strategy.calibration "cached"): duplicates, replays, kills and late updates; every
    # reduce names each client's latest applied update as its cached one, each at most once.
    status, replays = _run(engine, seed, buffer_size=2, max_staleness=1, calibration="cached")
    assert status == "SUCCEEDED" and replays > 0
    problems = follows_versions(engine, f"chaos-fb-{seed}")
    assert not problems, "\n".join(problems)
    late = [u for u in FedBuffStore(engine.store).all_updates(f"chaos-fb-{seed}") if u.state == "late"]
    assert late, "the schedule should make some update late (τ > 1)"


@pytest.mark.parametrize(
    ("seed", "average"), [(11, {"model_average": "ema"}), (12, {"model_average": "polynomial"})]
)
def test_with_a_model_average_each_version_averages_in_once(engine: Engine, seed: int, average: Any) -> None:
    # the versions' average (strategy.model_average) under duplicates, replays, kills and late
    # updates: each reduce is sent its version's decay and the average beside the version before
    status, replays = _run(engine, seed, buffer_size=2, max_staleness=1, calibration="cached", **average)
    assert status == "SUCCEEDED" and replays > 0
    problems = follows_versions(engine, f"chaos-fb-{seed}")
    assert not problems, "\n".join(problems)
    # the check can fail: a version whose reduce names a skipped average
    layout, bucket = (
        Layout(engine.settings.artifact_bucket, f"chaos-fb-{seed}"),
        engine.settings.artifact_bucket,
    )
    inputs = json.loads(engine.s3.get_object(Bucket=bucket, Key=layout.reduce_inputs_key(2))["Body"].read())
    inputs["average"]["previous_uri"] = None
    engine.s3.put_object(Bucket=bucket, Key=layout.reduce_inputs_key(2), Body=json.dumps(inputs).encode())
    assert any(
        "version 2's reduce was sent average" in p for p in follows_versions(engine, f"chaos-fb-{seed}")
    )


def test_the_checker_sees_an_update_cached_twice(engine: Engine) -> None:
    # The check must be able to fail: rewrite a reduce's inputs so a row calibrates with an older
    # update of its client than its latest applied one (that older one is then cached twice).
    status, _ = _run(engine, 10, buffer_size=2, max_staleness=1, calibration="cached")
    assert status == "SUCCEEDED"
    layout = Layout(engine.settings.artifact_bucket, "chaos-fb-10")
    bucket = engine.settings.artifact_bucket
    for v in range(1, 4):
        key = layout.reduce_inputs_key(v)
        inputs = json.loads(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        row = next((r for r in inputs["fedbuff"] if r["previous"] and r["previous"]["seq"] > 0), None)
        if row is not None:
            row["previous"]["seq"] -= 1
            engine.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(inputs).encode())
            break
    else:
        raise AssertionError("no row to tamper with")
    problems = follows_versions(engine, "chaos-fb-10")
    assert any("calibrates with update" in p for p in problems), problems
