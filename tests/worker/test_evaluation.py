"""The job's evaluation dataset (request ``evaluation``) through real jobs on the local cloud: planned into
every reduce task, handed to ``evaluate_global`` (or a module's own ``reduce``) as ``ctx.eval_dataset``,
never to a train task; ``hyperparameters.test_uri`` as its deprecated fallback; and a module's own
``reduce`` refused on a job whose server strategy it would silently drop.

Every job trains two shards of 15 samples (shard k saves w = [k, k]), so each round's FedAvg average
is w = [0.5, 0.5]. The evaluation set x = [[1, 0], [0, 1], [1, 1]], y = [0, 0, 0] scores it
x·w = [0.5, 0.5, 1.0]: a mean squared error of (0.25 + 0.25 + 1) / 3 = 0.5.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import pytest

from shardq.core.contracts import TrainingRequest
from shardq.core.engine import Engine
from shardq.core.evaluation import DEPRECATION
from shardq.core.jobstore import Outcome
from shardq.core.planning import Layout, reduce_task, train_task
from shardq.core.settings import Settings
from tests.worker.test_models import submit, train_then_reduce, worker

EVAL_KEY = "eval/test.npz"
SCORED = {"eval_mse": 0.5, "eval_rows": 3.0}


def eval_uri(settings: Settings, clients: dict[str, Any]) -> str:
    """Upload the evaluation set; its ``s3://`` URI."""
    buf = io.BytesIO()
    np.savez(buf, x=np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), y=np.zeros(3))
    clients["s3"].put_object(Bucket=settings.artifact_bucket, Key=EVAL_KEY, Body=buf.getvalue())
    return f"s3://{settings.artifact_bucket}/{EVAL_KEY}"


def init_model(settings: Settings, clients: dict[str, Any]) -> dict[str, str]:
    """A starting model (w = [1, 1]) for the server strategies, as ``model``."""
    buf = io.BytesIO()
    np.savez(buf, w=np.ones(2))
    clients["s3"].put_object(Bucket=settings.artifact_bucket, Key="init/model.npz", Body=buf.getvalue())
    return {"init_uri": f"s3://{settings.artifact_bucket}/init/model.npz"}


def test_the_requests_evaluation_dataset_reaches_evaluate_global_and_no_train_task(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    # GIVEN a job whose request names its evaluation dataset
    uri = eval_uri(settings, clients)
    submit(engine, "tests.worker.eval_data:train", evaluation={"uri": uri, "num_samples": 3})
    # WHEN its round trains and reduces
    trained, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    # THEN the clients never saw it; evaluate_global scored the averaged model on exactly that data,
    # and its metrics are the round's
    assert [r.metrics["saw_eval"] for r in trained] == [0.0, 0.0]
    assert reduced.status == "succeeded", reduced.error
    assert reduced.metrics == {**SCORED, "declared_samples": 3.0}
    assert engine.ingest([Outcome(reduced)]) == []
    assert engine.store.get_job("m").status == "SUCCEEDED"


@pytest.mark.parametrize("timeout", [None, 120], ids=["in-process", "isolated"])
def test_a_module_with_its_own_reduce_finds_the_evaluation_dataset_in_its_context(
    engine: Engine, settings: Settings, clients: dict[str, Any], timeout: int | None
) -> None:
    # (with task_timeout_seconds the reduce runs in a child process: the dataset crosses to it)
    uri = eval_uri(settings, clients)
    limit = {"task_timeout_seconds": timeout} if timeout else {}
    submit(
        engine,
        "tests.worker.eval_reduce:train",
        evaluation={"uri": uri},
        strategy={"name": "fedavg"},
        **limit,
    )
    _, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    assert reduced.status == "succeeded", reduced.error
    assert reduced.metrics == {**SCORED, "declared_samples": -1.0}  # num_samples is optional


def test_hyperparameters_test_uri_still_names_the_evaluation_dataset_with_a_deprecation_warning(
    engine: Engine, settings: Settings, clients: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a request written before the evaluation field
    uri = eval_uri(settings, clients)
    submit(engine, "tests.worker.eval_data:train", hyperparameters={"test_uri": uri})
    # WHEN its round reduces
    with caplog.at_level(logging.WARNING, logger="shardq.worker"):
        _, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    # THEN the hook got it as ctx.eval_dataset, and the log says which field replaces it
    assert reduced.status == "succeeded", reduced.error
    assert reduced.metrics == {**SCORED, "declared_samples": -1.0}
    assert DEPRECATION in caplog.text and '"evaluation": {"uri": ...}' in DEPRECATION


def test_a_job_without_an_evaluation_dataset_hands_the_hook_none(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    submit(engine, "tests.worker.eval_data:train")
    _, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    assert (reduced.status, reduced.metrics) == ("succeeded", {"no_eval": 1.0})


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_a_modules_own_reduce_is_refused_when_the_strategy_steps_on_the_server(
    engine: Engine, settings: Settings, clients: dict[str, Any], name: str
) -> None:
    # GIVEN a module with its own reduce, and a request naming a server optimizer
    submit(
        engine,
        "tests.worker.eval_reduce:train",
        strategy={"name": name},
        model=init_model(settings, clients),
    )
    # WHEN the round reduces
    _, reduced = train_then_reduce(engine, worker(settings, clients), clients, settings)
    # THEN the reduce fails at once (every attempt would), naming both and the two ways out,
    # instead of running the module's reduce as if the strategy were FedAvg
    assert (reduced.task_type, reduced.status, reduced.attempt) == ("reduce", "failed", 1)
    error = reduced.error or ""
    module = "tests.worker.eval_reduce"
    assert f"module {module} defines its own reduce(), but the request's strategy.name is {name!r}" in error
    assert f"Remove reduce() from {module}" in error and "evaluate_global(" in error
    assert '"strategy": {"name": "fedavg"}' in error
    assert reduced.model_uri is None  # nothing was averaged under the wrong strategy


def test_the_evaluation_dataset_travels_in_reduce_tasks_only_and_round_trips_the_request() -> None:
    request = TrainingRequest.from_dict(
        {
            "kind": "data_parallel",
            "dataset": {"uri": "s3://d/train.npz", "num_samples": 30},
            "sharding": {"shard_count": 2},
            "evaluation": {"uri": "s3://d/test.npz", "num_samples": 3},
        }
    )
    assert TrainingRequest.from_dict(request.to_dict()) == request
    layout = Layout("bucket", "j")
    reduce_body = reduce_task(request, "j", layout, 0).to_dict()
    assert reduce_body["eval_dataset"] == {"uri": "s3://d/test.npz", "num_samples": 3}
    # a body without one leaves the key out, so a worker that predates the field reads it as before
    assert "eval_dataset" not in train_task(request, "j", layout, 0, 0, None).to_dict()
    plain = TrainingRequest.from_dict({**request.to_dict(), "evaluation": None})
    assert "eval_dataset" not in reduce_task(plain, "j", layout, 0).to_dict()
