"""Training functions that use the checkpoint contract, for the worker's checkpoint and lease tests."""

from __future__ import annotations

import json
import time
from typing import Any


def counting(task: Any, ctx: Any) -> dict[str, Any]:
    """Count steps 1..``steps`` (``pause`` s each), a checkpoint after every step; resume from the
    last one; on ``ctx.should_stop`` return ``ctx.stopped()`` right after saving."""
    steps = int(task.hyperparameters.get("steps", 5))
    pause = float(task.hyperparameters.get("pause", 0.0))
    start = 0
    if ctx.resume_path is not None:
        start = json.loads((ctx.resume_path / "state.json").read_text())["step"]
        if start != ctx.resume_step:
            raise AssertionError(f"resume_step {ctx.resume_step} but the checkpoint holds {start}")
    for step in range(start + 1, steps + 1):
        time.sleep(pause)
        (ctx.checkpoint_dir / "state.json").write_text(json.dumps({"step": step}))
        ctx.save_checkpoint(step)
        if ctx.should_stop:
            return ctx.stopped()
    (ctx.output_dir / "model.json").write_text(json.dumps({"steps": steps}))
    return {"metrics": {"started_at": float(start)}, "num_samples": steps}
