"""A PyTorch example: a small MLP regressor trained data-parallel with FedAvg.

Optional (``make torch`` installs PyTorch); runs on the slot's device (``ctx.device``: its own GPU on
a GPU worker, else the CPU). A slot given a GPU that this PyTorch build cannot see fails the task
naming the fix, as ``examples.mnist`` does, rather than train a GPU fleet at CPU speed. Uses the
same datasets as ``examples.linear`` and saves a ``state_dict`` as ``model.pt``, which the worker's
default reduce averages weighted by ``num_samples``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from examples.linear import _validation, load_range


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
    for epoch in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(batch):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
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
