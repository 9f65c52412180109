"""FedBuff's model average (``strategy.model_average: "ema"``) on the local cloud: the request fields,
the section each reduce is sent, and real workers keeping the moving average of the versions beside
them, scoring it and returning it as the job's model, checked by hand from the artifacts (at decay 0
it is synchronous FedAvg again)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import numpy as np
import pytest

from shardq.core.contracts import TrainingRequest, ValidationError
from shardq.core.engine import Engine
from shardq.core.fedbuff_params import average_uri
from shardq.core.planning import Layout
from shardq.core.schema import training_request_schema
from tests.core.test_fedbuff import LOCKSTEP, _get, _lockstep, _put_init, arrays, fb
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


@pytest.mark.parametrize("average", [None, "none"])
def test_a_decay_without_the_ema_average_is_refused_naming_the_fix(average: str | None) -> None:
    # GIVEN a request with ema_decay but no "ema" average (it would be ignored)
    fields: dict[str, Any] = {"ema_decay": 0.5, **({"model_average": average} if average else {})}
    request = fb("lone", **fields)
    # THEN the model and the JSON schema refuse it, naming the field and the fix
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(request)
    fix = 'strategy.ema_decay needs strategy.model_average "ema"; set it or remove ema_decay'
    assert fix in str(info.value)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(request, training_request_schema())
    # AND with the average set, both take it
    fixed = fb("lone", ema_decay=0.5, model_average="ema")
    TrainingRequest.from_dict(fixed)
    jsonschema.validate(fixed, training_request_schema())


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("model_average", "swa", "strategy.model_average must be one of none, ema, got 'swa'"),
        ("model_average", True, "strategy.model_average must be one of none, ema, got True"),
        ("ema_decay", 1.0, "strategy.ema_decay must be in [0.0, 1.0), got 1.0"),
        ("ema_decay", -0.5, "strategy.ema_decay must be in [0.0, 1.0), got -0.5"),
        ("ema_decay", "slow", "strategy.ema_decay must be a number, got 'slow'"),
    ],
)
def test_a_bad_average_or_decay_names_the_field_and_the_fix(field: str, value: Any, problem: str) -> None:
    with pytest.raises(ValidationError) as info:
        TrainingRequest.from_dict(fb("bad", **{field: value}))
    text = str(info.value)
    assert problem in text
    if field == "model_average":
        assert "the job returns its last version" in text  # what each choice does


def test_the_average_sits_beside_its_version() -> None:
    assert average_uri("s3://b/jobs/j/reduce/3/model.pt") == "s3://b/jobs/j/reduce/3/average/model.pt"


# -- real workers, checked from the artifacts --------------------------------------------------------


@pytest.mark.parametrize("calibration", ["none", "cached"])
def test_at_decay_zero_the_average_is_the_last_version_and_synchronous_fedavg(
    engine: Engine, calibration: str
) -> None:
    # GIVEN K = N, τ = 0, server lr 1 and the average at its neutral decay (0: each version itself)
    init = _put_init(engine)
    sync = _lockstep(engine, make_request(job_id="sync", **LOCKSTEP, model={"init_uri": init}), 3)
    strategy = {"name": "fedbuff", "buffer_size": 3, "max_staleness": 0, "calibration": calibration,
                "model_average": "ema", "ema_decay": 0.0}  # fmt: skip
    buff = _lockstep(
        engine, make_request(job_id=f"ema0-{calibration}", **LOCKSTEP, model={"init_uri": init},
                             strategy=strategy), 3,
    )  # fmt: skip
    # THEN the job returns the average (beside the last version), equal to synchronous FedAvg's model
    layout = Layout(engine.settings.artifact_bucket, f"ema0-{calibration}")
    assert buff == average_uri(layout.reduce_output(2) + "model.npz")
    a, b = arrays(engine, sync), arrays(engine, buff)
    assert not np.allclose(a["w"], 0.0)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-9, atol=1e-12)


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
