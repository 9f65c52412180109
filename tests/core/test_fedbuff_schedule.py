"""FedBuff's server step size over the job (``strategy.server_lr_schedule``): the request fields, the
step sizes worked by hand, the one each reduce is sent, and real workers stepping by it (its neutral
setting is synchronous FedAvg again)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import numpy as np
import pytest

from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.fedbuff_params import server_lr_at
from shardq.core.jobstore import Outcome
from shardq.core.planning import Layout
from shardq.core.schema import training_request_schema
from tests.core.test_fedbuff import LOCKSTEP, _get, _lockstep, _put_init, against_sync, arrays, fb, take
from tests.helpers import result_for
from tests.requests import make_request

# -- the request fields ----------------------------------------------------------------------------


def test_the_schedule_defaults_to_constant_and_round_trips() -> None:
    plain = TrainingRequest.from_dict(fb("plain"))
    assert plain.strategy is not None
    params = plain.strategy.params
    assert params["server_lr_schedule"] == "constant" and "server_lr_floor" not in params
    assert TrainingRequest.from_dict(plain.to_dict()) == plain
    cosine = TrainingRequest.from_dict(fb("cos", server_lr_schedule="cosine", server_lr_floor=0.25))
    assert cosine.strategy is not None and cosine.strategy.to_dict()["server_lr_schedule"] == "cosine"
    assert TrainingRequest.from_dict(cosine.to_dict()) == cosine
    linear = TrainingRequest.from_dict(fb("lin", server_lr_schedule="linear")).strategy
    assert linear is not None and linear.params["server_lr_floor"] == 0.5


@pytest.mark.parametrize("schedule", [None, "constant"])
def test_a_floor_without_a_decaying_schedule_is_refused_naming_the_fix(schedule: str | None) -> None:
    # GIVEN a request with server_lr_floor but a constant step size (it would be ignored)
    fields: dict[str, Any] = {
        "server_lr_floor": 0.2,
        **({"server_lr_schedule": schedule} if schedule else {}),
    }
    request = fb("lone", **fields)
    # THEN the model and the JSON schema refuse it, naming the field and the fix
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(request)
    fix = (
        'strategy.server_lr_floor needs strategy.server_lr_schedule "cosine" or "linear"; '
        "set it or remove server_lr_floor"
    )
    assert fix in str(info.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request, training_request_schema())
    # AND with a decaying schedule, both take it
    fixed = fb("lone", server_lr_floor=0.2, server_lr_schedule="cosine")
    TrainingRequest.from_dict(fixed)
    jsonschema.validate(fixed, training_request_schema())


SCHEDULE = "strategy.server_lr_schedule"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("server_lr_schedule", "step", f"{SCHEDULE} must be one of constant, cosine, linear, got 'step'"),
        ("server_lr_schedule", None, f"{SCHEDULE} must be one of constant, cosine, linear, got None"),
        ("server_lr_floor", 1.5, "strategy.server_lr_floor must be in (0.0, 1.0], got 1.5"),
        ("server_lr_floor", -0.1, "strategy.server_lr_floor must be in (0.0, 1.0], got -0.1"),
        # 0: the last version's step would be 0, its buffer's paid updates discarded (as server_lr 0)
        ("server_lr_floor", 0.0, "strategy.server_lr_floor must be in (0.0, 1.0], got 0.0: 0 would make the "
         "last version's step 0 and discard its buffer's paid updates; use a small positive floor"),
        ("server_lr_floor", "low", "strategy.server_lr_floor must be a number, got 'low'"),
    ],
)  # fmt: skip
def test_a_bad_schedule_or_floor_names_the_field_and_the_fix(field: str, value: Any, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(fb("bad", **{field: value}))
    text = str(info.value)
    assert problem in text
    if field == "server_lr_schedule":
        assert "server_lr × server_lr_floor at the job's last version" in text  # what each choice does


# -- the step sizes, by hand -----------------------------------------------------------------------


def test_step_sizes_decay_from_server_lr_to_the_floor_at_the_last_version() -> None:
    # 5 versions: r = 0, ¼, ½, ¾, 1; server lr 2, floor 0.1 (the last step 0.2)
    cosine = {"server_lr": 2.0, "server_lr_schedule": "cosine", "server_lr_floor": 0.1}
    half = (1 + np.cos(np.pi / 4)) / 2  # (1 + cos(π/4)) / 2 = 0.853553…
    expected = [2.0, 2 * (0.1 + 0.9 * half), 2 * 0.55, 2 * (0.1 + 0.9 * (1 - half)), 0.2]
    assert [server_lr_at(cosine, v, 5) for v in range(5)] == pytest.approx(expected)
    linear = {**cosine, "server_lr_schedule": "linear"}  # 2 × (1 − 0.9 r)
    assert [server_lr_at(linear, v, 5) for v in range(5)] == pytest.approx([2.0, 1.55, 1.1, 0.65, 0.2])
    # constant (and a job recorded before the field existed) is server_lr at every version
    assert {server_lr_at({"server_lr": 0.5}, v, 5) for v in range(5)} == {0.5}
    assert {server_lr_at({**cosine, "server_lr_schedule": "constant"}, v, 5) for v in range(5)} == {2.0}
    # the neutral settings: floor 1 decays nowhere; a one-version job has only its first step
    assert {server_lr_at({**cosine, "server_lr_floor": 1.0}, v, 5) for v in range(5)} == {2.0}
    assert server_lr_at(cosine, 0, 1) == 2.0


# -- what the aggregator sends, and what the workers do with it --------------------------------------


def test_each_reduce_is_sent_its_versions_step_size(engine: Engine) -> None:
    # GIVEN one client, K = 1 (every update makes a version), 3 versions, linear from 2 to 2 × 0.2
    engine.submit(
        fb("sizes", clients=1, rounds=3, buffer_size=1, server_lr=2.0, server_lr_schedule="linear",
           server_lr_floor=0.2)
    )  # fmt: skip
    sizes = []
    (task,) = take(engine)
    while True:
        # WHEN each update arrives, its version's reduce is sent (and, while versions remain, a task)
        engine.ingest([Outcome(result_for(task))])
        sent = {t.task_type: t for t in take(engine)}
        reduce = sent["reduce"]
        sizes.append(json.loads(_get(engine, str(reduce.inputs_uri)))["server_lr"])
        engine.ingest([Outcome(result_for(reduce))])
        if "train" not in sent:
            break
        task = sent["train"]
    # THEN the reduces' inputs name 2 × (1 − 0.8 r), r = 0, ½, 1
    assert sizes == pytest.approx([2.0, 1.2, 0.4])


@pytest.mark.parametrize("calibration", ["none", "cached"])
def test_at_floor_one_a_schedule_is_still_synchronous_fedavg(engine: Engine, calibration: str) -> None:
    # GIVEN K = N, τ = 0, server lr 1 and a cosine schedule at its neutral floor (1: no decay)
    strategy = {"name": "fedbuff", "buffer_size": 3, "max_staleness": 0, "calibration": calibration,
                "server_lr_schedule": "cosine", "server_lr_floor": 1.0}  # fmt: skip
    # THEN the final models agree to float64 rounding (``against_sync`` asserts it)
    against_sync(engine, f"neutral-{calibration}", strategy)


@pytest.mark.parametrize("calibration", ["none", "cached"])
def test_real_workers_step_each_version_by_its_scheduled_size(engine: Engine, calibration: str) -> None:
    # GIVEN K = N = 3, τ = 0, server lr 1.5 decaying linearly to 1.5 × 0.2 over 3 versions
    init = _put_init(engine)
    strategy = {"name": "fedbuff", "buffer_size": 3, "max_staleness": 0, "calibration": calibration,
                "server_lr": 1.5, "server_lr_schedule": "linear", "server_lr_floor": 0.2}  # fmt: skip
    final = _lockstep(
        engine, make_request(job_id=f"decay-{calibration}", **LOCKSTEP, model={"init_uri": init},
                             strategy=strategy), 3,
    )  # fmt: skip
    # THEN version v + 1 = x_v + lr_v × (the clients' sample-weighted mean − x_v), lr_v = 1.5, 0.9, 0.3
    # (every client in every buffer, fresh: the CA2FL terms cancel), read back from the artifacts
    layout = Layout(engine.settings.artifact_bucket, f"decay-{calibration}")
    x = arrays(engine, init)
    for v, lr in enumerate([1.5, 0.9, 0.3]):
        inputs = json.loads(_get(engine, f"s3://{layout.bucket}/{layout.reduce_inputs_key(v)}"))
        assert inputs["server_lr"] == pytest.approx(lr)
        rows = inputs["fedbuff"]
        assert sorted(r["client"] for r in rows) == [0, 1, 2] and {r["tau"] for r in rows} == {0}
        total = sum(r["num_samples"] for r in rows)
        mean = {k: sum(r["num_samples"] * arrays(engine, r["model_uri"])[k] for r in rows) / total for k in x}
        made = arrays(engine, layout.reduce_output(v) + "model.npz")
        for k in x:
            np.testing.assert_allclose(made[k], x[k] + lr * (mean[k] - x[k]), rtol=1e-6, atol=1e-7)
        x = made
    assert final == layout.reduce_output(2) + "model.npz"
