"""FedBuff with CA2FL's cached update calibration (``strategy.calibration: "cached"``) on the local
cloud: the request field, the reduce inputs the aggregator writes (each client's latest applied
update named as its cached one), and real workers whose results arrive late, twice and replayed,
checked against the calibrated steps recomputed here from the recorded history."""

from __future__ import annotations

import io
import json
import random
from typing import Any

import numpy as np
import pytest

from shardq.core.advance import results_message
from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.store.fedbuff import FedBuffStore
from tests.chaos.versions import follows_versions
from tests.core.test_fedbuff import INIT, _get, _put_init, fb, take
from tests.finished import workers
from tests.helpers import receive_all, result_for
from tests.requests import make_request

# -- the request field -----------------------------------------------------------------------------


def test_calibration_defaults_to_none_and_round_trips() -> None:
    plain = TrainingRequest.from_dict(fb("plain"))
    assert plain.strategy is not None and plain.strategy.params["calibration"] == "none"
    cached = TrainingRequest.from_dict(fb("cached", calibration="cached"))
    assert cached.strategy is not None and cached.strategy.to_dict()["calibration"] == "cached"
    assert TrainingRequest.from_dict(cached.to_dict()) == cached


@pytest.mark.parametrize("value", ["ca2fl", "", 1, None])
def test_a_bad_calibration_names_the_field_and_the_choices(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(fb("bad", calibration=value))
    text = str(info.value)
    assert f"strategy.calibration must be one of none, cached, got {value!r}" in text
    assert "CA2FL" in text  # what "cached" means: the fix names it


def test_cache_weight_defaults_to_staleness_and_round_trips() -> None:
    cached = TrainingRequest.from_dict(fb("cw", calibration="cached"))
    assert cached.strategy is not None and cached.strategy.params["cache_weight"] == "staleness"
    full = TrainingRequest.from_dict(fb("cw-full", calibration="cached", cache_weight="full"))
    assert full.strategy is not None and full.strategy.to_dict()["cache_weight"] == "full"
    assert TrainingRequest.from_dict(full.to_dict()) == full


@pytest.mark.parametrize("value", ["aged", "", 1, None])
def test_a_bad_cache_weight_names_the_field_and_the_choices(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(fb("bad-cw", calibration="cached", cache_weight=value))
    text = str(info.value)
    assert f"strategy.cache_weight must be one of staleness, full, got {value!r}" in text
    assert "cached mean" in text  # what each choice does: the fix says it


def test_a_bad_calibration_leaves_nothing_behind(engine: Engine) -> None:
    with pytest.raises(ValidationError):
        engine.submit(fb("gone", calibration="sometimes"))
    assert take(engine) == []
    assert (
        engine.store.ddb.get_item(
            TableName=engine.settings.job_table, Key={"pk": {"S": "JOB#gone"}, "sk": {"S": "JOB"}}
        ).get("Item")
        is None
    )


# -- what the aggregator sends ---------------------------------------------------------------------


def test_each_reduce_names_every_clients_latest_applied_update(engine: Engine) -> None:
    # GIVEN 3 clients, K = 2, S = 0 (so a stale update is late), cached calibration
    engine.submit(fb("names", buffer_size=2, max_staleness=0, rounds=3, calibration="cached"))
    first = {t.shard_id: t for t in take(engine)}
    # WHEN clients 0 and 1 fill version 0 (client 0's result delivered twice)
    engine.ingest(
        [Outcome(result_for(first[0])), Outcome(result_for(first[0])), Outcome(result_for(first[1]))]
    )
    sent = {(t.task_type, t.round, t.shard_id): t for t in take(engine)}
    reduce0 = sent[("reduce", 0, 0)]
    inputs0 = json.loads(_get(engine, str(reduce0.inputs_uri)))
    # THEN version 0 has nothing cached and no running sum to read
    assert inputs0["calibration"] == {"method": "cached", "clients": 3, "state_uri": None}
    assert [r["previous"] for r in inputs0["fedbuff"]] == [None, None]
    # WHEN client 2's first update arrives while version 0 reduces: τ = 1 > S, late (never cached);
    # the reduce makes version 1; clients 0 and 1 fill it
    engine.ingest([Outcome(result_for(first[2]))])
    engine.ingest([Outcome(result_for(reduce0))])
    sent = {(t.task_type, t.round, t.shard_id): t for t in take(engine)}
    engine.ingest([Outcome(result_for(sent[("train", 1, 0)])), Outcome(result_for(sent[("train", 1, 1)]))])
    reduce1 = next(t for t in take(engine) if t.task_type == "reduce")
    inputs1 = json.loads(_get(engine, str(reduce1.inputs_uri)))
    # THEN version 1 reads version 0's running sum and calibrates each client with its update 0
    assert inputs1["calibration"]["state_uri"] == reduce0.output_prefix + "calibration.npz"
    previous = {r["client"]: r["previous"] for r in inputs1["fedbuff"]}
    assert previous == {
        c: {"seq": 0, "version": 0, "model_uri": first[c].output_prefix + "model.npz", "base_model_uri": INIT}
        for c in (0, 1)
    }
    late = FedBuffStore(engine.store).updates("names", [(2, 0)])[(2, 0)]
    assert late.state == "late"
    assert not follows_versions(engine, "names")


# -- real workers, hostile delivery, recomputed by hand ----------------------------------------------


def _array(engine: Engine, uri: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(_get(engine, uri))) as m:
        return {k: m[k].astype(np.float64) for k in m.files}


@pytest.mark.parametrize("cache_weight", ["staleness", "full"])
def test_real_workers_with_late_duplicate_and_replayed_updates_step_as_ca2fl(
    engine: Engine, cache_weight: str
) -> None:
    # GIVEN 3 real workers, K = 2, S = 2, cached calibration (the cached mean weighted as the buffer,
    # or at weight 1); client 2's results held back 3 steps (a slow client: stale, sometimes late),
    # some results delivered twice, old ones replayed
    init = _put_init(engine)
    job_id = engine.submit(
        make_request(
            job_id=f"ca2fl-{cache_weight}",
            shards=3,
            rounds=6,
            max_parallel=3,
            uri="synthetic://linear?dim=8&seed=3",
            num_samples=3 * 256,
            entrypoint="examples.linear:train",
            hyperparameters={"lr": 0.05, "epochs": 1, "batch_size": 32},
            model={"init_uri": init},
            strategy={
                "name": "fedbuff",
                "buffer_size": 2,
                "max_staleness": 1,
                "server_lr": 0.8,
                "calibration": "cached",
                "cache_weight": cache_weight,
            },
        )
    )["job_id"]
    rng, team = random.Random(5), workers(engine, 3)
    held: list[tuple[int, Outcome]] = []
    sent: list[Any] = []
    for step in range(300):
        for w in team:
            w.poll_once()
        now = []
        for m in receive_all(engine.sqs, engine.settings.results_queue_url):
            o = results_message(m["Body"])
            assert isinstance(o, Outcome)
            if o.result.task_type == "train" and o.result.shard_id == 2:
                held.append((step + 3, o))
            else:
                now.append(o)
        now += [o for due, o in held if due <= step]
        held = [(due, o) for due, o in held if due > step]
        now += [o for o in now if rng.random() < 0.3]  # delivered twice
        if sent and rng.random() < 0.4:
            now.append(rng.choice(sent))  # replayed long after
        rng.shuffle(now)
        assert not engine.ingest(now)
        sent += now
        job = engine.store.get_job(job_id)
        if job.status != "RUNNING":
            break
    assert job.status == "SUCCEEDED", job.error
    assert not follows_versions(engine, job_id)
    fb_store = FedBuffStore(engine.store)
    states = [u.state for u in fb_store.all_updates(job_id)]
    assert "late" in states, states
    # THEN every version is CA2FL's step, recomputed here from the recorded buffers alone
    lr, clients = 0.8, 3
    x = _array(engine, init)
    model_of = {0: init}
    sums = {k: np.zeros_like(v) for k, v in x.items()}
    seen: dict[int, int] = {}
    cached: dict[int, dict[str, np.ndarray]] = {}
    stale = 0
    for v in range(job.rounds):
        buffer = sorted(
            (u for u in fb_store.buffer(job_id, v) if u.state == "applied"), key=lambda u: (u.client, u.seq)
        )
        assert len(buffer) == 2
        scale = len(seen) / (clients * sum(seen.values())) if seen else 0.0
        total = sum(u.num_samples for u in buffer)
        if cache_weight == "staleness":  # h̄ counts Σ_i w_i, the buffer's mean staleness weight
            scale *= sum(u.num_samples * u.weight for u in buffer) / total
        step_ = {k: scale * sums[k] for k in x}
        for u in buffer:
            stale += u.tau > 0
            model, base = _array(engine, str(u.model_uri)), _array(engine, model_of[u.base])
            delta = {k: model[k] - base[k] for k in x}
            h = cached.get(u.client, {k: np.zeros_like(x[k]) for k in x})
            for k in x:
                step_[k] += u.num_samples * u.weight / total * (delta[k] - h[k])
                sums[k] += u.num_samples * delta[k] - seen.get(u.client, 0) * h[k]
            cached[u.client], seen[u.client] = delta, u.num_samples
        x = {k: x[k] + lr * step_[k] for k in x}
        (reduced,) = engine.store.results(job_id, v, "reduce")
        model_of[v + 1] = str(reduced.result.model)
        made = _array(engine, model_of[v + 1])
        for k in x:
            np.testing.assert_allclose(made[k], x[k], rtol=1e-9, atol=1e-12, err_msg=f"version {v + 1}")
    assert stale > 0  # some update was applied stale (τ ≥ 1), weighted and calibrated
