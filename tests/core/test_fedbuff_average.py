"""FedBuff's model average (``strategy.model_average``: "ema" or "polynomial") on the local cloud: the
request fields, the section each reduce is sent, and real workers keeping the average of the versions
beside them, scoring it and returning it as the job's model, checked by hand from the artifacts (at
decay 0 it is synchronous FedAvg again; a retried reduce keeps the same average)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from shardq.core.contracts import ShardTask, TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.fedbuff_params import average_decay_at, average_uri
from shardq.core.planning import Layout
from shardq.core.schema import training_request_schema
from tests.core.test_fedbuff import LOCKSTEP, _get, _lockstep, _put_init, against_sync, arrays, fb
from tests.finished import workers
from tests.requests import make_request

# -- the request fields ----------------------------------------------------------------------------


def test_the_average_defaults_to_none_and_round_trips() -> None:
    plain = TrainingRequest.from_dict(fb("plain"))
    assert plain.strategy is not None
    assert plain.strategy.params["model_average"] == "none" and "ema_decay" not in plain.strategy.params
    assert TrainingRequest.from_dict(plain.to_dict()) == plain
    ema = TrainingRequest.from_dict(fb("ema", model_average="ema", ema_decay=0.5))
    assert ema.strategy is not None and ema.strategy.to_dict()["model_average"] == "ema"
    assert TrainingRequest.from_dict(ema.to_dict()) == ema
    default = TrainingRequest.from_dict(fb("ema8", model_average="ema")).strategy
    assert default is not None and default.params["ema_decay"] == 0.8
    assert "average_eta" not in default.params
    poly = TrainingRequest.from_dict(fb("poly", model_average="polynomial")).strategy
    assert poly is not None and poly.params["average_eta"] == 2.0 and "ema_decay" not in poly.params
    assert TrainingRequest.from_dict(fb("poly", model_average="polynomial")).strategy == poly


@pytest.mark.parametrize(
    ("field", "value", "choice", "average"),
    [
        ("ema_decay", 0.5, "ema", None),
        ("ema_decay", 0.5, "ema", "none"),
        ("ema_decay", 0.5, "ema", "polynomial"),
        ("average_eta", 2.0, "polynomial", None),
        ("average_eta", 2.0, "polynomial", "ema"),
    ],
)
def test_a_parameter_of_another_average_is_refused_naming_the_fix(
    field: str, value: float, choice: str, average: str | None
) -> None:
    # GIVEN a request with a parameter its average does not use (it would be ignored)
    fields: dict[str, Any] = {field: value, **({"model_average": average} if average else {})}
    request = fb("lone", **fields)
    # THEN the model and the JSON schema refuse it, naming the field and the fix
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(request)
    fix = f'strategy.{field} needs strategy.model_average "{choice}"; set it or remove {field}'
    assert fix in str(info.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request, training_request_schema())
    # AND with its average set, both take it
    fixed = fb("lone", **{field: value}, model_average=choice)
    TrainingRequest.from_dict(fixed)
    jsonschema.validate(fixed, training_request_schema())


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("model_average", "swa", "strategy.model_average must be one of none, ema, polynomial, got 'swa'"),
        ("model_average", True, "strategy.model_average must be one of none, ema, polynomial, got True"),
        ("ema_decay", 1.0, "strategy.ema_decay must be in [0.0, 1.0), got 1.0"),
        ("ema_decay", -0.5, "strategy.ema_decay must be in [0.0, 1.0), got -0.5"),
        ("ema_decay", "slow", "strategy.ema_decay must be a number, got 'slow'"),
        ("average_eta", -1, "strategy.average_eta must be in [0.0, 1000000.0], got -1"),
        ("average_eta", float("inf"), "strategy.average_eta must be a number, got inf"),
    ],
)
def test_a_bad_average_or_decay_names_the_field_and_the_fix(field: str, value: Any, problem: str) -> None:
    average = {"ema_decay": "ema", "average_eta": "polynomial"}.get(field)
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(
            fb("bad", **{field: value}, **({"model_average": average} if average else {}))
        )
    text = str(info.value)
    assert problem in text
    if field == "model_average":
        assert "the job returns its last version" in text  # what each choice does


def test_the_average_sits_beside_its_version() -> None:
    assert average_uri("s3://b/jobs/j/reduce/3/model.pt") == "s3://b/jobs/j/reduce/3/average/model.pt"


def _weights(params: dict[str, Any], versions: int) -> list[float]:
    """Each version's weight in the average after ``versions`` reduces (x̄ = d·x̄ + (1 − d)·x)."""
    weights: list[float] = []
    for v in range(versions):
        d = average_decay_at(params, v)
        weights = [w * d for w in weights] + [1.0 - d]
    return weights


def test_the_polynomial_average_weighs_version_i_about_i_to_the_eta() -> None:
    # η = 0: the uniform mean of every version (Polyak–Ruppert); the first version is itself
    uniform = {"model_average": "polynomial", "average_eta": 0.0}
    assert [average_decay_at(uniform, v) for v in range(3)] == [0.0, 0.5, pytest.approx(2 / 3)]
    assert _weights(uniform, 8) == pytest.approx([1 / 8] * 8)
    # η = 3: weights ∝ i(i+1)(i+2), i.e. (i/t)^3 for large t; they sum to 1, and the last quarter of
    # the versions holds most of the weight, however long the job
    for t in (12, 48, 192):
        w = _weights({"model_average": "polynomial", "average_eta": 3.0}, t)
        assert sum(w) == pytest.approx(1.0)
        cubic = [i * (i + 1) * (i + 2) for i in range(1, t + 1)]
        assert w == pytest.approx([c / sum(cubic) for c in cubic])
        assert 0.6 < sum(w[-(t // 4) :]) < 0.75
    # "ema": the same decay at every version
    assert {average_decay_at({"model_average": "ema", "ema_decay": 0.8}, v) for v in (1, 9)} == {0.8}


# -- real workers, checked from the artifacts --------------------------------------------------------


@pytest.mark.parametrize("calibration", ["none", "cached"])
def test_at_decay_zero_the_average_is_the_last_version_and_synchronous_fedavg(
    engine: Engine, calibration: str
) -> None:
    # GIVEN K = N, τ = 0, server lr 1 and the average at its neutral decay (0: each version itself)
    strategy = {"name": "fedbuff", "buffer_size": 3, "max_staleness": 0, "calibration": calibration,
                "model_average": "ema", "ema_decay": 0.0}  # fmt: skip
    # THEN the job's model equals synchronous FedAvg's (``against_sync`` asserts it) ...
    _, buff = against_sync(engine, f"ema0-{calibration}", strategy)
    # ... and it is the average (beside the last version)
    layout = Layout(engine.settings.artifact_bucket, f"ema0-{calibration}")
    assert buff == average_uri(layout.reduce_output(2) + "model.npz")


def test_real_workers_keep_the_versions_moving_average_and_return_it(engine: Engine) -> None:
    # GIVEN K = N = 3, τ = 0, the average with decay 0.5, 3 versions
    init = _put_init(engine)
    strategy = {"name": "fedbuff", "buffer_size": 3, "max_staleness": 0, "model_average": "ema",
                "ema_decay": 0.5}  # fmt: skip
    final = _lockstep(
        engine, make_request(job_id="ema", **LOCKSTEP, model={"init_uri": init}, strategy=strategy), 3
    )
    layout = Layout(engine.settings.artifact_bucket, "ema")
    versions = [arrays(engine, layout.reduce_output(v) + "model.npz") for v in range(3)]  # x_1, x_2, x_3
    # THEN each reduce was sent the decay and the average so far (none for the first version) ...
    previous = [json.loads(_get(engine, f"s3://{layout.bucket}/{layout.reduce_inputs_key(v)}"))["average"]
                for v in range(3)]  # fmt: skip
    assert previous == [
        {"method": "ema", "decay": 0.5, "previous_uri": None},
        {"method": "ema", "decay": 0.5, "previous_uri": average_uri(layout.reduce_output(0) + "model.npz")},
        {"method": "ema", "decay": 0.5, "previous_uri": average_uri(layout.reduce_output(1) + "model.npz")},
    ]
    # ... kept x̄_1 = x_1, x̄_2 = (x̄_1 + x_2) / 2, x̄_3 = (x̄_2 + x_3) / 2 beside each version ...
    expected = versions[0]
    for v in range(3):
        if v:
            expected = {k: 0.5 * expected[k] + 0.5 * versions[v][k] for k in expected}
        kept = arrays(engine, average_uri(layout.reduce_output(v) + "model.npz"))
        for k in expected:
            np.testing.assert_allclose(kept[k], expected[k], rtol=1e-6, atol=1e-7)
    assert not np.allclose(expected["w"], versions[2]["w"])  # the average is not the last version
    # ... and the job returns the last average; the versions stayed the clients' bases
    assert final == average_uri(layout.reduce_output(2) + "model.npz")
    job = engine.store.get_job("ema")
    assert job.model_uri == final
    rows = json.loads(_get(engine, f"s3://{layout.bucket}/{layout.reduce_inputs_key(2)}"))["fedbuff"]
    assert {r["base_model_uri"] for r in rows} == {layout.reduce_output(1) + "model.npz"}


def test_real_workers_keep_the_polynomial_average_and_a_retried_reduce_keeps_it(
    engine: Engine, tmp_path: Path
) -> None:
    # GIVEN K = N = 3, τ = 0, the polynomial-decay average at η = 0 (the uniform mean), 3 versions,
    # workers whose task messages are kept
    init = _put_init(engine)
    team, bodies = workers(engine, 3), []
    for w in team:

        def handle(message: dict[str, Any], inner: Any = w.handle) -> None:
            bodies.append(message["Body"])
            inner(message)

        setattr(w, "handle", handle)  # noqa: B010 (an instance's method, wrapped)
    strategy = {"name": "fedbuff", "buffer_size": 3, "max_staleness": 0, "model_average": "polynomial",
                "average_eta": 0.0}  # fmt: skip
    request = make_request(job_id="poly", **LOCKSTEP, model={"init_uri": init}, strategy=strategy)
    final = _lockstep(engine, request, 3, team)
    layout = Layout(engine.settings.artifact_bucket, "poly")
    versions = [arrays(engine, layout.reduce_output(v) + "model.npz") for v in range(3)]
    kept = [average_uri(layout.reduce_output(v) + "model.npz") for v in range(3)]
    # THEN each reduce was sent its version's decay, 1 − 1/t, and the average so far ...
    sections = [json.loads(_get(engine, f"s3://{layout.bucket}/{layout.reduce_inputs_key(v)}"))["average"]
                for v in range(3)]  # fmt: skip
    assert sections == [
        {"method": "polynomial", "decay": 0.0, "previous_uri": None},
        {"method": "polynomial", "decay": 0.5, "previous_uri": kept[0]},
        {"method": "polynomial", "decay": pytest.approx(2 / 3), "previous_uri": kept[1]},
    ]
    # ... each average is the mean of the versions so far, and the job returns the last one
    for v in range(3):
        mean = {k: sum(x[k] for x in versions[: v + 1]) / (v + 1) for k in versions[0]}
        for k, value in arrays(engine, kept[v]).items():
            np.testing.assert_allclose(value, mean[k], rtol=1e-6, atol=1e-7)
    assert final == kept[2] and engine.store.get_job("poly").model_uri == final
    # WHEN version 1's reduce runs again (a redelivered or retried reduce) on a real worker
    before = [arrays(engine, uri) for uri in kept]
    (body,) = [b for b in bodies if (t := ShardTask.from_json(b)).task_type == "reduce" and t.round == 1]
    team[0]._run(ShardTask.from_json(body), tmp_path, logging.LoggerAdapter(logging.getLogger("t"), {}))
    # THEN it rewrites the same average (the decay and the previous average are the version's own)
    for old, uri in zip(before, kept, strict=True):
        for k, value in arrays(engine, uri).items():
            np.testing.assert_array_equal(value, old[k])
