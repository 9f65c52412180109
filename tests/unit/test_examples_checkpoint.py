"""The examples checkpoint and resume exactly: a task stopped mid-epoch, or killed after its k-th
checkpoint, then resumed from what it saved, ends with the bits of the task never interrupted.

In-process, with the stand-in context of tests/checkpoint_ctx.py; tests/e2e/test_resume_exact.py
runs the same through real workers and the bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from examples import checkpointing, linear
from shardq.worker import Stopped
from tests.checkpoint_ctx import FakeContext, Killed

Train = Callable[[Any, Any], Any]


def _task(**fields: Any) -> SimpleNamespace:
    base = {"job_id": "ckpt", "round": 0, "shard_id": 1, "shard_count": 2, "model": {}}
    return SimpleNamespace(**{**base, **fields})


def linear_case(tmp: Path) -> tuple[Train, SimpleNamespace]:
    task = _task(
        data={"uri": "synthetic://linear?dim=4&seed=3", "start": 600, "end": 1200},
        hyperparameters={"lr": 0.05, "epochs": 3, "batch_size": 64, "checkpoint_every": 4},
    )
    return linear.train, task  # 10 batches an epoch, 30 in all


def torch_case(tmp: Path) -> tuple[Train, SimpleNamespace]:
    pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")
    from examples import torch_mlp

    task = _task(
        data={"uri": "synthetic://linear?dim=4&seed=3", "start": 600, "end": 1200},
        hyperparameters={"lr": 0.05, "epochs": 3, "batch_size": 64, "checkpoint_every": 4},
    )
    return torch_mlp.train, task


def mnist_case(arch: str) -> Callable[[Path], tuple[Train, SimpleNamespace]]:
    def case(tmp: Path) -> tuple[Train, SimpleNamespace]:
        pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")
        from examples.mnist import fedavg

        rng = np.random.default_rng(5)
        path = tmp / "digits.npz"
        x = rng.integers(0, 256, size=(200, 784), dtype=np.uint8)
        np.savez(path, x_train=x, y_train=rng.integers(0, 10, size=200), x_test=x[:20], y_test=np.zeros(20))
        task = _task(
            data={"uri": str(path), "start": 100, "end": 200},
            model={"arch": arch},
            hyperparameters={"epochs": 2, "batch_size": 10, "lr": 0.05, "checkpoint_every": 4},
        )
        return fedavg.train, task  # 10 batches an epoch, 20 in all

    return case


CASES = {
    "linear": linear_case,
    "torch_mlp": torch_case,
    "mnist-2nn": mnist_case("2nn"),
    "mnist-cnn": mnist_case("cnn"),
}


def model_arrays(output_dir: Path) -> dict[str, bytes]:
    """The saved model's arrays as raw bytes, by name (``model.npz`` or ``model.pt``)."""
    files = sorted(output_dir.iterdir())
    assert [p.stem for p in files] == ["model"], files
    if files[0].suffix == ".npz":
        with np.load(files[0]) as m:
            return {k: m[k].tobytes() for k in m.files}
    import torch

    state = torch.load(files[0], map_location="cpu", weights_only=True)
    return {k: v.numpy().tobytes() for k, v in state.items()}


def metrics(outcome: dict[str, Any]) -> dict[str, float]:
    """The outcome's metrics but wall-clock ones."""
    return {k: v for k, v in outcome["metrics"].items() if not k.endswith("_s")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_task_stopped_mid_epoch_then_resumed_ends_with_the_uninterrupted_bits(
    name: str, tmp_path: Path
) -> None:
    # GIVEN a task trained once without interruption
    train, task = CASES[name](tmp_path)
    whole = FakeContext(tmp_path / "whole")
    want = train(task, whole)
    # WHEN a second run is told to stop mid-epoch (SIGTERM) at the 14th batch boundary, stops a
    # second time on its next attempt, and a third attempt finishes it
    first = FakeContext(tmp_path / "cut", stop_at=14)
    with pytest.raises(Stopped):
        train(task, first)
    assert list(first.output_dir.iterdir()) == []  # a stopped attempt leaves no model to post
    assert first.saved[-1] == 13  # the stop saved where it was: 13 batches done
    second = first.resumed(stop_at=3)
    with pytest.raises(Stopped):
        train(task, second)
    assert second.saved[-1] == 15
    third = second.resumed()
    got = train(task, third)
    # THEN the model and the metrics are bit for bit the uninterrupted run's
    assert model_arrays(third.output_dir) == model_arrays(whole.output_dir)
    assert metrics(got) == metrics(want)
    assert got["num_samples"] == want["num_samples"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_task_killed_after_its_kth_checkpoint_resumes_from_it_to_the_same_bits(
    name: str, tmp_path: Path
) -> None:
    # GIVEN a task that checkpoints every 4 batches, trained once without interruption
    train, task = CASES[name](tmp_path)
    whole = FakeContext(tmp_path / "whole")
    want = train(task, whole)
    # WHEN its worker dies right after the 4th checkpoint (step 16 or 12: an epoch's end counts too)
    first = FakeContext(tmp_path / "kill", kill_after=4)
    with pytest.raises(Killed):
        train(task, first)
    second = first.resumed()
    assert second.resume_step == first.saved[-1] in (12, 16)
    got = train(task, second)
    # THEN the next attempt resumes from that checkpoint and ends where the uninterrupted run did
    assert model_arrays(second.output_dir) == model_arrays(whole.output_dir)
    assert metrics(got) == metrics(want)


def test_checkpoint_every_must_be_a_count_of_batches() -> None:
    with pytest.raises(
        ValueError, match=r"hyperparameters\.checkpoint_every must be a number of batches >= 0"
    ):
        checkpointing.Every.of({"checkpoint_every": -1})
    assert checkpointing.Every.of({}, default_steps=7, epoch_end=False) == checkpointing.Every(7, False)


def test_a_checkpoint_without_the_examples_position_is_refused_naming_it(tmp_path: Path) -> None:
    # GIVEN a resume directory some other code wrote
    (tmp_path / "foreign").mkdir()
    ctx = SimpleNamespace(resume_path=tmp_path / "foreign", resume_step=3)
    # WHEN / THEN the example refuses it, naming the checkpoint and the missing file
    with pytest.raises(ValueError, match=r"foreign has no position\.json"):
        checkpointing.resume_position(ctx)
