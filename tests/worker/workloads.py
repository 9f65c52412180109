"""Training functions for the worker's contract tests: several outputs, explicit models, devices."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def _span(task: Any) -> int:
    return int(task.data.get("end", 1)) - int(task.data.get("start", 0))


def several_files(task: Any, ctx: Any) -> dict[str, Any]:
    """A model (``model.npz``, weights encode the shard) beside a metrics file and a log."""
    np.savez(ctx.output_dir / "model.npz", w=np.full(3, float(task.shard_id)), b=np.array(1.0))
    (ctx.output_dir / "metrics.json").write_text(json.dumps({"shard": task.shard_id}))
    (ctx.output_dir / "logs").mkdir()
    (ctx.output_dir / "logs" / "train.log").write_text(f"trained shard {task.shard_id}\n")
    return {"metrics": {"loss": 1.0}, "num_samples": _span(task)}


def explicit_model(task: Any, ctx: Any) -> dict[str, Any]:
    """A model under another name, pointed at by ``ctx.model_path``, beside a second archive."""
    ctx.model_path = ctx.output_dir / "weights.npz"
    np.savez(ctx.model_path, w=np.full(3, float(task.shard_id)), b=np.array(1.0))
    np.savez(ctx.output_dir / "optimizer.npz", momentum=np.zeros(3))
    return {"metrics": {"loss": 1.0}, "num_samples": _span(task)}


def ambiguous(task: Any, ctx: Any) -> dict[str, Any]:
    """Two archives and no way to tell which is the model."""
    np.savez(ctx.output_dir / "a.npz", w=np.zeros(3))
    np.savez(ctx.output_dir / "b.npz", w=np.ones(3))
    return {"num_samples": _span(task)}


def torch_model(task: Any, ctx: Any) -> dict[str, Any]:
    """A PyTorch state_dict (``model.pt``: weights encode the shard, a step counter) and a metrics file."""
    import torch

    state = {"w": torch.full((3,), float(task.shard_id)), "steps": torch.tensor(10 + task.shard_id)}
    torch.save(state, ctx.output_dir / "model.pt")
    (ctx.output_dir / "metrics.json").write_text("{}")
    return {"metrics": {"loss": 1.0}, "num_samples": _span(task)}


def device(task: Any, ctx: Any) -> dict[str, Any]:
    """Record the slot's device in the outputs (``device.txt``) beside the model."""
    np.savez(ctx.output_dir / "model.npz", w=np.zeros(3), b=np.array(0.0))
    (ctx.output_dir / "device.txt").write_text(ctx.device)
    return {"num_samples": _span(task)}


def read_files(task: Any, ctx: Any) -> dict[str, Any]:
    """Fetch the shard's files (``ctx.files()``), log and save their total size (``sizes.json``)."""
    sizes = [p.stat().st_size for p in ctx.files()]
    ctx.logger.info("read %d files, %d bytes", len(sizes), sum(sizes))
    ctx.progress(1.0)
    (ctx.output_dir / "sizes.json").write_text(json.dumps(sizes))
    return {"metrics": {"bytes": float(sum(sizes))}, "num_samples": len(sizes)}
