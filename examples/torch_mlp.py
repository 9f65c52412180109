"""A PyTorch example: a small MLP regressor trained data-parallel with FedAvg.

Optional (``make torch`` installs PyTorch); runs on the slot's device (``ctx.device``: its own GPU on
a GPU worker, else the CPU). A slot given a GPU that this PyTorch build cannot see fails the task
naming the fix, as ``examples.mnist`` does, rather than train a GPU fleet at CPU speed. Uses the
same datasets as ``examples.linear`` and saves a ``state_dict`` as ``model.pt``, which the worker's
default reduce averages weighted by ``num_samples``.

Checkpoints (``examples.checkpointing``) at the end of every epoch and whenever the worker says stop
(``ctx.should_stop``, checked between batches): the model's and the optimizer's state, the epoch,
the batch and the batch-order generator's state at the epoch's start. With one intra-op thread a
resumed attempt on the CPU ends with exactly the bits of an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from examples import checkpointing
from examples.linear import _validation, load_range
from shardq.worker import Stopped

CHECKPOINT = "state.pt"


def _model(dim: int) -> Any:
    import torch

    torch.manual_seed(0)  # every shard starts round 0 from the same weights
    return torch.nn.Sequential(torch.nn.Linear(dim, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Train the MLP from the round's global ``state_dict`` on this shard; save ``model.pt``."""
    import torch

    from examples.mnist.models import device_for

    # The slot's own device (one GPU per slot, pinned by the worker; "cuda" alone would put every slot
    # on GPU 0). A GPU PyTorch cannot see raises, naming the fix.
    device = device_for(ctx.device)
    # One intra-op thread: a multi-threaded CPU kernel's reduction order depends on the thread count,
    # so a task resumed on a machine with other cores would not continue the same bits.
    torch.set_num_threads(1)
    uri = task.data.get("uri")
    x_np, y_np = load_range(uri, int(task.data["start"]), int(task.data["end"]), getattr(ctx, "fetch", None))
    model = _model(x_np.shape[1])
    if ctx.init_model_path is not None:
        model.load_state_dict(torch.load(ctx.init_model_path, map_location="cpu", weights_only=True))
    model.to(device)
    hp = task.hyperparameters
    opt = torch.optim.SGD(model.parameters(), lr=float(hp.get("lr", 0.05)))
    x = torch.tensor(x_np, dtype=torch.float32, device=device)
    y = torch.tensor(y_np, dtype=torch.float32, device=device).unsqueeze(1)
    g = torch.Generator().manual_seed(task.round * 100_003 + task.shard_id)
    epochs, batch = int(hp.get("epochs", 1)), int(hp.get("batch_size", 64))
    every = checkpointing.Every.of(hp)  # each epoch's end (and every checkpoint_every batches if set)
    first_epoch, first_batch, step = 0, 0, 0
    position = checkpointing.resume_position(ctx)
    if position is not None:  # a resumed attempt: weights, optimizer, generator, place in the data
        saved = torch.load(Path(ctx.resume_path) / CHECKPOINT, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        g.set_state(torch.tensor(position["generator"], dtype=torch.uint8))
        first_epoch, first_batch, step = int(position["epoch"]), int(position["batch"]), int(position["step"])

    def checkpoint(epoch: int, done: int, at_epoch_start: torch.Tensor) -> bool:
        state = {"epoch": epoch, "batch": done, "generator": at_epoch_start.tolist()}
        return checkpointing.save(
            ctx,
            step,
            state,
            lambda d: torch.save(
                {"model": {k: v.cpu() for k, v in model.state_dict().items()}, "optimizer": opt.state_dict()},
                d / CHECKPOINT,
            ),
        )

    for epoch in range(first_epoch, epochs):
        # The generator before this epoch's order is drawn: a resumed attempt redraws the same order.
        at_epoch_start = g.get_state()
        batches = torch.randperm(len(y), generator=g).split(batch)
        for k in range(first_batch if epoch == first_epoch else 0, len(batches)):
            if ctx.should_stop:
                checkpoint(epoch, k, at_epoch_start)
                raise Stopped(f"checkpointed at step {step}")
            idx = batches[k]
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            step += 1
            if every.due(step, epoch_done=k + 1 == len(batches)):
                checkpoint(epoch, k + 1, at_epoch_start)
        ctx.progress((epoch + 1) / epochs)
    model.eval()
    with torch.no_grad():
        vx, vy = _validation(uri, x_np.shape[1])
        val = torch.nn.functional.mse_loss(
            model(torch.tensor(vx, dtype=torch.float32, device=device)),
            torch.tensor(np.asarray(vy), dtype=torch.float32, device=device).unsqueeze(1),
        )
        train_loss = torch.nn.functional.mse_loss(model(x), y)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, ctx.output_dir / "model.pt")
    return {"metrics": {"loss": float(train_loss), "val_loss": float(val)}, "num_samples": len(y_np)}
