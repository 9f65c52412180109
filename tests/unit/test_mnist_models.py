"""The digit example's training pieces: FedAvg weighting, reproducible local SGD, request checks (torch)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")

from examples.mnist import models  # noqa: E402  (after the optional-extra check)
from examples.mnist.fedavg import Config  # noqa: E402


def digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 784), dtype=np.uint8), rng.integers(0, 10, size=n)


def test_fedavg_weights_models_by_their_samples() -> None:
    a = {"w": torch.zeros(3), "b": torch.full((1,), 2.0)}
    b = {"w": torch.full((3,), 4.0), "b": torch.full((1,), 6.0)}
    merged = models.fedavg([a, b], [300, 100])
    assert torch.equal(merged["w"], torch.ones(3))  # (0 * 300 + 4 * 100) / 400
    assert torch.equal(merged["b"], torch.full((1,), 3.0))
    assert merged["w"].dtype == torch.float32
    with pytest.raises(ValueError, match="at least one model"):
        models.fedavg([a], [0])


@pytest.mark.parametrize("arch", models.ARCHS)
def test_local_training_is_bit_for_bit_reproducible(arch: str) -> None:
    # the basis of the Flower comparison: the same inputs give the same weights, in any process
    x, y = digits(60)
    trained = []
    for _ in range(2):
        model = models.build(arch, seed=1)
        models.local_train(
            model, x, y, epochs=1, batch_size=10, lr=0.05, generator=models.batch_generator(1, 2, 3)
        )
        trained.append(models.state_arrays(model))
    assert all(np.array_equal(trained[0][k], trained[1][k]) for k in trained[0])
    other = models.build(arch, seed=1)
    models.local_train(
        other, x, y, epochs=1, batch_size=10, lr=0.05, generator=models.batch_generator(1, 2, 4)
    )
    assert not all(np.array_equal(trained[0][k], v) for k, v in models.state_arrays(other).items())


def test_config_names_every_bad_field_and_its_fix() -> None:
    task = SimpleNamespace(model={"arch": "resnet"}, hyperparameters={"partition": "dirichlet", "lr": 0})
    with pytest.raises(ValueError) as err:
        Config.of(task)
    message = str(err.value)
    assert "model.arch must be one of 2nn, cnn, got 'resnet'" in message
    assert "hyperparameters.partition must be one of iid, noniid, got 'dirichlet'" in message
    assert "hyperparameters.lr must be > 0" in message
    assert "hyperparameters.test_uri is required" in message
    ok = Config.of(
        SimpleNamespace(model={}, hyperparameters={"test_uri": "s3://b/k.npz", "partition": "noniid"})
    )
    assert (ok.arch, ok.partition, ok.batch_size) == ("cnn", "noniid", 10)


def test_models_built_in_concurrent_threads_start_from_the_same_weights() -> None:
    # a worker with --concurrency 2 builds two models at once; both must get the seed's weights
    import threading

    expected = models.state_arrays(models.build("cnn", seed=7))
    built: list[dict[str, np.ndarray]] = []

    def build_many() -> None:
        for _ in range(20):
            built.append(models.state_arrays(models.build("cnn", seed=7)))

    threads = [threading.Thread(target=build_many) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 80
    assert all(all(np.array_equal(b[k], expected[k]) for k in expected) for b in built)
