"""FedBuff (buffered asynchronous FedAvg) on the local cloud: every update recorded once with its base
version and the version it went into; each client's next task from the latest version; a full
buffer closes its version; late, duplicate, replayed, failed and foreign updates never applied."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from shardq.core.contracts import ShardResult, ShardTask, TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.fedbuff_params import staleness_weight
from shardq.core.jobstore import Outcome
from shardq.core.planning import split_s3
from shardq.core.store.fedbuff import FedBuffStore, Receiver
from tests.finished import aggregate, workers
from tests.helpers import receive_all, result_for, tasks_of
from tests.requests import make_request

INIT = "s3://models/init.npz"


def fb(job_id: str, *, clients: int = 3, rounds: int = 2, **strategy: Any) -> dict[str, Any]:
    """A FedBuff request: ``clients`` shards, a lane each, ``rounds`` versions to make."""
    return make_request(
        job_id=job_id,
        shards=clients,
        rounds=rounds,
        max_parallel=clients,
        model={"init_uri": INIT},
        strategy={"name": "fedbuff", **strategy},
    )


def take(engine: Engine) -> list[ShardTask]:
    """Every queued task (received and deleted)."""
    return tasks_of(receive_all(engine.sqs, engine.settings.task_queue_url))


def updates(engine: Engine, job_id: str) -> dict[tuple[int, int], Any]:
    return {(u.client, u.seq): u for u in FedBuffStore(engine.store).all_updates(job_id)}


# -- the contract --------------------------------------------------------------------------------


def test_the_strategy_fills_flsim_defaults_and_round_trips() -> None:
    request = TrainingRequest.from_dict(fb("d"))
    assert request.strategy is not None
    assert request.strategy.to_dict() == {
        "name": "fedbuff",
        "staleness": "polynomial",
        "calibration": "none",
        "cache_weight": "staleness",
        "server_lr_schedule": "constant",
        "model_average": "none",
        "buffer_size": 10,
        "staleness_exponent": 0.5,
        "max_staleness": 100,
        "server_lr": 1.0,
        "hinge_a": 10.0,
        "hinge_b": 4,
    }  # (no server_lr_floor nor ema_decay: only a decaying schedule, an "ema" average use them)
    assert TrainingRequest.from_dict(request.to_dict()) == request


def test_bad_fedbuff_requests_name_every_field_and_the_fix() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(fb("b", buffer_size=0, staleness="cubic", max_staleness=1.5, lr=1))
    text = str(info.value)
    for fragment in (
        "strategy.buffer_size must be in [1, 100000], got 0",
        "strategy.staleness must be one of polynomial, constant, hinge, got 'cubic'",
        "strategy.max_staleness must be a whole number, got 1.5",
        "strategy.lr is not a fedbuff parameter",
    ):
        assert fragment in text
    with pytest.raises(ValidationError, match=r"give model\.init_uri"):
        TrainingRequest.from_dict({**fb("m"), "model": {}})
    with pytest.raises(ValidationError, match="remove quorum"):
        TrainingRequest.from_dict({**fb("q"), "quorum": {"fraction": 0.5}})


def test_staleness_weights_are_flsims_and_fedasyncs() -> None:
    poly = {"staleness": "polynomial", "staleness_exponent": 0.5}
    assert [staleness_weight(poly, t) for t in (0, 3)] == [1.0, 0.5]
    assert staleness_weight({"staleness": "constant"}, 9) == 1.0
    hinge = {"staleness": "hinge", "hinge_a": 10.0, "hinge_b": 4}
    assert [staleness_weight(hinge, t) for t in (4, 5)] == [1.0, 1.0 / 11.0]


# -- accounting ----------------------------------------------------------------------------------


def test_updates_fill_buffers_and_clients_train_from_the_latest_version(engine: Engine) -> None:
    # GIVEN 3 clients, K = 2, 2 versions
    engine.submit(fb("acc", buffer_size=2, max_staleness=1))
    first = {t.shard_id: t for t in take(engine)}
    assert sorted(first) == [0, 1, 2] and {t.round for t in first.values()} == {0}
    # WHEN client 0's update arrives: buffer 0 is not full, client 0 trains again from version 0
    engine.ingest([Outcome(result_for(first[0]))])
    (again,) = take(engine)
    assert (again.round, again.shard_id, again.init_model_uri) == (1, 0, INIT)
    # a replayed update is a duplicate: nothing applied twice, no second next task
    engine.ingest([Outcome(result_for(first[0]))])
    assert take(engine) == []
    # WHEN client 1's update fills the buffer: version 0's reduce goes out, and client 1 trains on
    # at once from version 0, the latest that exists (the reduce running does not hold it back)
    engine.ingest([Outcome(result_for(first[1]))])
    sent = {(t.task_type, t.round, t.shard_id): t for t in take(engine)}
    assert sorted(sent) == [("reduce", 0, 0), ("train", 1, 1)]
    reduce, next1 = sent[("reduce", 0, 0)], sent[("train", 1, 1)]
    assert next1.init_model_uri == INIT
    inputs = json.loads(_get(engine, str(reduce.inputs_uri)))
    assert [(u["client"], u["seq"], u["tau"], u["base_model_uri"]) for u in inputs["fedbuff"]] == [
        (0, 0, 0, INIT),
        (1, 0, 0, INIT),
    ]
    # WHEN client 2's first update (base 0) arrives while that reduce runs: it goes into the next
    # buffer (version 1, τ = 1 ≤ max_staleness), never into the one being reduced
    engine.ingest([Outcome(result_for(first[2]))])
    (next2,) = take(engine)
    assert (next2.round, next2.shard_id, next2.init_model_uri) == (1, 2, INIT)
    assert json.loads(_get(engine, str(reduce.inputs_uri))) == inputs
    # WHEN the reduce makes version 1: nobody waited, so nothing is sent
    engine.ingest([Outcome(result_for(reduce))])
    job = engine.store.get_job("acc")
    assert (job.round, job.phase) == (1, "train") and job.model_uri == reduce.output_prefix + "model.npz"
    assert take(engine) == []
    assert FedBuffStore(engine.store).counts("acc").waiting == frozenset()
    seen = updates(engine, "acc")
    assert [
        (seen[k].state, seen[k].base, seen[k].version, seen[k].tau) for k in [(0, 0), (1, 0), (2, 0)]
    ] == [
        ("applied", 0, 0, 0),
        ("applied", 0, 0, 0),
        ("applied", 0, 1, 1),
    ]
    assert seen[(2, 0)].weight == pytest.approx(1 / 2**0.5)
    # client 0's second update (base 0, τ = 1) fills buffer 1: the last version's reduce, and no
    # next task (every version's buffer is full)
    engine.ingest([Outcome(result_for(again))])
    assert [t.task_type for t in take(engine)] == ["reduce"]
    (summary0, summary1) = engine.store.round_summaries("acc")
    assert summary1["fedbuff"]["staleness_histogram"] == {"1": 2}
    assert summary1["fedbuff"]["mean_staleness"] == 1.0 and summary0["fedbuff"]["applied"] == 2


def test_a_healthy_fedbuff_run_shows_no_enqueuing_line_but_a_broken_first_fan_out_does(
    engine: Engine,
) -> None:
    # GIVEN a FedBuff job whose clients have sent updates and a version was made
    engine.submit(fb("fq", buffer_size=2, max_staleness=1))
    first = take(engine)
    engine.ingest([Outcome(result_for(t)) for t in first[:2]])
    (reduce,) = [t for t in take(engine) if t.task_type == "reduce"]
    engine.ingest([Outcome(result_for(reduce))])
    job = engine.store.get_job("fq")
    assert (job.status, job.round, job.phase) == ("RUNNING", 1, "train")
    # THEN neither the record nor the view (status/watch read it) says the job is still enqueuing
    assert job.enqueuing() is None and job.view().enqueuing is None
    # ... but round 0's first fan-out cut short (1 of 3 clients sent) is still reported to repair
    cut = replace(job, counters={**job.counters, ("enq", 0, "train"): 1})
    assert cut.enqueuing() == "ENQUEUING 1/3 sent"


def test_a_client_waits_only_when_its_next_update_would_certainly_be_late(engine: Engine) -> None:
    # GIVEN K = 2 of 3 clients and max_staleness 0: a task from version 0 sent once buffer 0 is
    # full would train an update of τ ≥ 1 > 0, certain to be late
    engine.submit(fb("certain", buffer_size=2, max_staleness=0))
    first = {t.shard_id: t for t in take(engine)}
    engine.ingest([Outcome(result_for(first[0])), Outcome(result_for(first[1]))])
    # THEN only the reduce goes out; clients 0 and 1 wait for version 1
    (reduce,) = take(engine)
    assert (reduce.task_type, reduce.round) == ("reduce", 0)
    assert FedBuffStore(engine.store).counts("certain").waiting == {"0:0", "1:0"}
    # WHEN the reduce makes version 1: both train from it
    engine.ingest([Outcome(result_for(reduce))])
    job = engine.store.get_job("certain")
    sent = {(t.round, t.shard_id): t.init_model_uri for t in take(engine)}
    assert sent == {(1, 0): job.model_uri, (1, 1): job.model_uri}
    assert FedBuffStore(engine.store).counts("certain").waiting == frozenset()


def test_a_stale_update_steps_from_the_model_it_trained_from(engine: Engine) -> None:
    # GIVEN K = 1: every update makes a version
    engine.submit(fb("base", clients=2, rounds=3, buffer_size=1, max_staleness=5))
    first = {t.shard_id: t for t in take(engine)}
    engine.ingest([Outcome(result_for(first[0]))])
    sent = {t.task_type: t for t in take(engine)}
    reduce0, again0 = sent["reduce"], sent["train"]
    assert (again0.round, again0.shard_id, again0.init_model_uri) == (1, 0, INIT)  # v1 is not made yet
    engine.ingest([Outcome(result_for(reduce0))])
    assert take(engine) == []
    v1 = reduce0.output_prefix + "model.npz"
    engine.ingest([Outcome(result_for(first[1]))])  # client 1, base 0, into version 1
    sent = {t.task_type: t for t in take(engine)}
    reduce1, from_v1 = sent["reduce"], sent["train"]
    assert (from_v1.round, from_v1.shard_id, from_v1.init_model_uri) == (1, 1, v1)
    engine.ingest([Outcome(result_for(reduce1))])
    # WHEN client 1's update from version 1 goes into version 2 (τ = 1)
    engine.ingest([Outcome(result_for(from_v1))])
    (reduce2,) = take(engine)  # and no next task: every version's buffer is full
    # THEN its reduce steps from its own base: version 1's model, not version 2's
    (row,) = json.loads(_get(engine, str(reduce2.inputs_uri)))["fedbuff"]
    assert (row["client"], row["seq"], row["base"], row["tau"], row["base_model_uri"]) == (1, 1, 1, 1, v1)
    assert row["staleness_weight"] == pytest.approx(2**-0.5)
    engine.ingest([Outcome(result_for(reduce2))])
    job = engine.store.get_job("base")
    assert job.status == "SUCCEEDED" and job.model_uri == reduce2.output_prefix + "model.npz"
    # client 0's update from version 0, trained while the reduces ran, comes after the end
    engine.ingest([Outcome(result_for(again0))])
    assert updates(engine, "base")[(0, 1)].state == "after_end"


def test_an_update_staler_than_max_staleness_is_late_and_never_applied(engine: Engine) -> None:
    engine.submit(fb("late", buffer_size=2, max_staleness=0))
    first = {t.shard_id: t for t in take(engine)}
    engine.ingest([Outcome(result_for(first[0])), Outcome(result_for(first[1]))])
    (reduce,) = take(engine)
    engine.ingest([Outcome(result_for(reduce))])
    # WHEN client 2's update from version 0 arrives into version 1's buffer (τ = 1 > 0)
    engine.ingest([Outcome(result_for(first[2]))])
    u = updates(engine, "late")[(2, 0)]
    assert (u.state, u.base, u.version, u.tau, u.weight) == ("late", 0, 1, 1, 0.0)
    # THEN it is not counted toward the buffer, and its client trains again from version 1
    counts = FedBuffStore(engine.store).counts("late")
    assert (counts.open, counts.fill, counts.late) == (1, 0, 1)
    next_tasks = {(t.round, t.shard_id): t for t in take(engine)}
    assert next_tasks[(1, 2)].init_model_uri == engine.store.get_job("late").model_uri


def test_an_update_never_sent_is_rejected_and_not_counted(engine: Engine) -> None:
    engine.submit(fb("forged", buffer_size=2))
    (task, *_) = take(engine)
    forged = replace(result_for(task), round=5)
    failed = engine.ingest([Outcome(forged)])
    assert len(failed) == 1 and "never sent update 5" in str(failed[0][1])
    assert FedBuffStore(engine.store).counts("forged").seq == 0


def test_a_nan_metric_fails_the_update_which_never_enters_a_buffer(engine: Engine) -> None:
    engine.submit({**fb("nan", buffer_size=2), "max_failed_shards": 1})
    first = {t.shard_id: t for t in take(engine)}
    engine.ingest([Outcome(replace(result_for(first[0]), metrics={"loss": float("nan")}))])
    u = updates(engine, "nan")[(0, 0)]
    assert u.state == "failed" and "loss" in (u.error or "")
    assert FedBuffStore(engine.store).counts("nan").fill == 0
    assert engine.store.get_job("nan").failed_total == 1
    # the client gets its next task (a failure is its budget's, not the end of the client)
    assert [(t.round, t.shard_id) for t in take(engine)] == [(1, 0)]
    # a second failure goes over max_failed_shards=1: the job fails
    engine.ingest([Outcome(result_for(first[1], status="failed"))])
    assert engine.store.get_job("nan").status == "FAILED"


def test_a_failed_reduce_fails_the_job_naming_the_version(engine: Engine) -> None:
    engine.submit(fb("rf", clients=2, buffer_size=2))
    engine.ingest([Outcome(result_for(t)) for t in take(engine)])
    (reduce,) = [t for t in take(engine) if t.task_type == "reduce"]  # the clients train on meanwhile
    engine.ingest([Outcome(result_for(reduce, status="failed"))])
    job = engine.store.get_job("rf")
    assert job.status == "FAILED" and "reduce of version 0 failed: reduce blew up" in (job.error or "")


def test_cancel_ends_the_job_and_stops_next_tasks(engine: Engine) -> None:
    engine.submit(fb("cx", buffer_size=3))
    first = take(engine)
    assert engine.store.request_cancel("cx")
    engine.ingest([Outcome(result_for(first[0]))])
    assert engine.store.get_job("cx").status == "CANCELLED"
    assert take(engine) == []
    # an update that arrives after the end is kept apart, uncounted
    engine.ingest([Outcome(result_for(first[1]))])
    assert updates(engine, "cx")[(1, 0)].state == "after_end"


def test_a_redelivered_update_after_a_crash_sends_the_same_next_task(engine: Engine) -> None:
    # GIVEN an update recorded and its next base fixed, but the aggregator died before the send
    engine.submit(fb("crash", buffer_size=3))
    first = {t.shard_id: t for t in take(engine)}
    store = FedBuffStore(engine.store)
    engine.ingest([Outcome(result_for(first[0]))])
    (sent,) = take(engine)
    store.ddb.update_item(  # undo the "sent" mark, as if the crash came before it
        TableName=store.table,
        Key={"pk": {"S": "JOB#crash"}, "sk": {"S": "UPD#c000000#n000000"}},
        UpdateExpression="REMOVE next_sent",
    )
    # WHEN the result is redelivered: THEN its next task is sent again from the base fixed the first
    # time (the same body and deduplication id: SQS drops the copy within its 5-minute window, and
    # a copy past it trains an update whose result is a duplicate), and nothing is counted twice
    engine.ingest([Outcome(result_for(first[0]))])
    again = updates(engine, "crash")[(0, 0)]
    assert again.next_sent and again.next_base == 0
    assert store.hand("crash", again, Receiver(0, 1), 7) == ("0:1", False)  # handed once: never again ...
    assert updates(engine, "crash")[(0, 0)].next_base == 0  # ... nor its base rewritten by a later version
    assert store.counts("crash").applied == 1
    assert sent.init_model_uri == INIT


# -- equivalence with synchronous FedAvg ----------------------------------------------------------


def _put_init(engine: Engine, dim: int = 8) -> str:
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(dim), b=np.array(0.0))
    key = "init/model.npz"
    engine.s3.put_object(Bucket=engine.settings.artifact_bucket, Key=key, Body=buf.getvalue())
    return f"s3://{engine.settings.artifact_bucket}/{key}"


def _get(engine: Engine, uri: str) -> bytes:
    bucket, key = split_s3(uri)
    return bytes(engine.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def arrays(engine: Engine, uri: str) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` model at ``uri``, in float64."""
    with np.load(io.BytesIO(_get(engine, uri))) as m:
        return {k: m[k].astype(np.float64) for k in m.files}


# Three equally fast clients, 3 versions of a small linear model: the K = N, τ = 0 jobs that must
# equal synchronous FedAvg (``_lockstep`` runs them).
LOCKSTEP: dict[str, Any] = {
    "shards": 3,
    "rounds": 3,
    "max_parallel": 3,
    "uri": "synthetic://linear?dim=8&seed=3",
    "num_samples": 3 * 256,
    "entrypoint": "examples.linear:train",
    "hyperparameters": {"lr": 0.05, "epochs": 1, "batch_size": 32},
}


def _lockstep(engine: Engine, request: dict[str, Any], crew: int, team: list[Any] | None = None) -> str:
    """Run a job with ``crew`` real workers (or ``team``) that each take one task per step (equal
    speeds), the aggregator recording each step's results together; the final model's URI."""
    job_id = engine.submit(request)["job_id"]
    team = team or workers(engine, crew)
    for _ in range(200):
        for w in team:
            w.poll_once()
        aggregate(engine)
        job = engine.store.get_job(job_id)
        if job.status != "RUNNING":
            assert job.status == "SUCCEEDED", job.error
            return str(job.model_uri)
    raise AssertionError(f"{job_id} did not finish")


def against_sync(engine: Engine, job_id: str, strategy: dict[str, Any]) -> tuple[str, str]:
    """The ``LOCKSTEP`` request from one fresh starting model run twice, as synchronous FedAvg
    (job "sync") and as ``job_id`` with ``strategy``; asserts their final models agree to float64
    rounding (and are not the zero model); returns both URIs (sync, strategy's)."""
    init = _put_init(engine)
    sync = _lockstep(engine, make_request(job_id="sync", **LOCKSTEP, model={"init_uri": init}), 3)
    request = make_request(job_id=job_id, **LOCKSTEP, model={"init_uri": init}, strategy=strategy)
    other = _lockstep(engine, request, 3)
    a, b = arrays(engine, sync), arrays(engine, other)
    assert not np.allclose(a["w"], 0.0)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12)
    return sync, other


@pytest.mark.parametrize("calibration", ["none", "cached", "cached-full"])
def test_fedbuff_with_k_clients_and_no_staleness_is_synchronous_fedavg(
    engine: Engine, calibration: str
) -> None:
    # GIVEN the same data, seeds and starting model; 3 equally fast clients; K = 3; with CA2FL's
    # cached calibration too (every client in every buffer: h̄ and the cached updates cancel), its
    # cached mean weighted as the buffer (τ = 0: by 1) or at weight 1 ("cached-full")
    init = _put_init(engine)
    common = {**LOCKSTEP, "model": {"init_uri": init}}
    sync = _lockstep(engine, make_request(job_id="sync", **common), 3)
    buff = _lockstep(
        engine,
        make_request(
            job_id=f"buff-{calibration}",
            **common,
            strategy={
                "name": "fedbuff",
                "buffer_size": 3,
                "max_staleness": 0,
                "calibration": calibration.removesuffix("-full"),
                "cache_weight": "full" if calibration.endswith("-full") else "staleness",
            },
        ),
        3,
    )
    # THEN every update was applied fresh (τ = 0), one per client per version ...
    seen = updates(engine, f"buff-{calibration}")
    applied = [u for u in seen.values() if u.state == "applied"]
    assert len(applied) == 9 and {u.tau for u in applied} == {0}
    assert {(u.version, u.client) for u in applied} == {(v, c) for v in range(3) for c in range(3)}
    # ... and the final models agree to float64 rounding
    a, b = np.load(io.BytesIO(_get(engine, sync))), np.load(io.BytesIO(_get(engine, buff)))
    assert not np.allclose(a["w"], 0.0)
    np.testing.assert_allclose(b["w"], a["w"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b["b"], a["b"], rtol=1e-9, atol=1e-12)


def test_a_result_names_its_update(engine: Engine) -> None:
    # the identity the aggregator counts once: (job, update number, client, "train")
    engine.submit(fb("id", buffer_size=2))
    (task, *_) = take(engine)
    assert ShardResult.for_task(task, "succeeded").key == f"id:0:{task.shard_id}:train"
