"""The digit example's training pieces: FedAvg weighting, reproducible local SGD, request checks (torch)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")

from examples.mnist import models  # noqa: E402  (after the optional-extra check)
from examples.mnist.fedavg import Config, evaluate_global  # noqa: E402


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
    ok = Config.of(SimpleNamespace(model={}, hyperparameters={"partition": "noniid"}))
    assert (ok.arch, ok.partition, ok.batch_size) == ("cnn", "noniid", 10)


def test_evaluate_global_without_an_evaluation_dataset_names_the_request_field(tmp_path: Path) -> None:
    task = SimpleNamespace(model={"arch": "2nn"}, hyperparameters={})
    ctx = SimpleNamespace(eval_dataset=None, device="cpu", fetch=None)
    with pytest.raises(ValueError, match=r'the job has no evaluation dataset: give the request "evaluation"'):
        evaluate_global(task, tmp_path / "model.pt", ctx)


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


def test_fedprox_adds_mu_times_the_drift_from_the_global_model_to_each_gradient() -> None:
    # FedProx's local objective: CE + μ/2·‖w − w_global‖², whose gradient is ∇CE + μ·(w − w_global)
    x, y = digits(40, seed=5)
    mu, lr = 0.5, 0.05
    prox = models.build("2nn", seed=2)
    models.local_train(
        prox, x, y, epochs=2, batch_size=10, lr=lr, generator=models.batch_generator(2, 0, 0), proximal_mu=mu
    )
    # the same steps written out: plain SGD on the cross-entropy, the proximal pull added by hand
    by_hand = models.build("2nn", seed=2)
    anchor = [p.detach().clone() for p in by_hand.parameters()]
    inputs, targets = models.images(x), torch.from_numpy(y.astype(np.int64))
    order = models.batch_generator(2, 0, 0)
    for _ in range(2):
        for idx in torch.randperm(len(targets), generator=order).split(10):
            by_hand.zero_grad()
            torch.nn.functional.cross_entropy(by_hand(inputs[idx]), targets[idx]).backward()
            with torch.no_grad():
                for p, g in zip(by_hand.parameters(), anchor, strict=True):
                    p.sub_(lr * (p.grad + mu * (p - g)))
    plain = models.build("2nn", seed=2)
    models.local_train(plain, x, y, epochs=2, batch_size=10, lr=lr, generator=models.batch_generator(2, 0, 0))
    got, want, sgd = (models.state_arrays(m) for m in (prox, by_hand, plain))
    assert all(np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6) for k in want)
    # and the pull shows: FedProx's weights stay nearer the global model than plain SGD's
    start = models.state_arrays(models.build("2nn", seed=2))

    def drift(w: dict[str, np.ndarray]) -> float:
        return sum(float(np.sum((w[k] - start[k]) ** 2)) for k in w)

    assert drift(got) < drift(sgd)


def test_a_gpu_device_without_cuda_in_pytorch_is_refused_naming_the_fix() -> None:
    if torch.cuda.is_available():
        pytest.skip("this PyTorch sees a GPU; the refusal is for a CPU build on a GPU worker")
    assert models.device_for("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match=r"ctx.device is cuda:1 but PyTorch .* sees no CUDA device"):
        models.device_for("cuda:1")
