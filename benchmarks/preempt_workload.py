"""The preemption benchmark's training function: sleep-based steps over a deterministic state.

Each step sleeps ``hyperparameters.step_s`` (a GPU step's wall time, without the GPU) and folds the
step number into a 64-bit state, so the result proves the task ran every step exactly once in
order, however often it was interrupted. It checkpoints the state every ``checkpoint_every_s``
seconds of training (0: never) and, told to stop (``ctx.should_stop``), saves (when it
checkpoints at all) and raises ``Stopped``.

Every event is appended as one JSON line to ``$SHARDQ_PREEMPT_LOG`` (O_APPEND: the worker
processes never interleave a line): ``start`` (with the step it resumed from), ``ready`` (the
checkpoint restored), ``step``, ``checkpoint`` (with the seconds the save took), ``stop`` and
``end``. ``benchmarks.preempt`` reads the log to count the work each interruption cost.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from shardq.worker import Stopped

LOG_ENV = "SHARDQ_PREEMPT_LOG"
MASK = (1 << 64) - 1
STATE = "state.json"


def fold(state: int, step: int) -> int:
    """One step of the deterministic state (a 64-bit LCG fed the step number)."""
    return (state * 6364136223846793005 + 1442695040888963407 + step) & MASK


def expected_state(steps: int) -> int:
    """The state after ``steps`` steps run once each, in order: what every task must return."""
    state = 0
    for step in range(1, steps + 1):
        state = fold(state, step)
    return state


def note(event: str, task: Any, **fields: Any) -> None:
    """Append one event to the benchmark's log (nothing when the variable is unset)."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    line = json.dumps({"e": event, "shard": task.shard_id, "pid": os.getpid(), "t": time.time(), **fields})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def train(task: Any, ctx: Any) -> dict[str, Any]:
    """Run ``steps`` steps of ``step_s`` seconds, checkpointing every ``checkpoint_every_s``."""
    hp = task.hyperparameters
    steps, step_s, every_s = int(hp["steps"]), float(hp["step_s"]), float(hp.get("checkpoint_every_s", 0))
    step, state = 0, 0
    note("start", task, resumed_from=ctx.resume_step or 0)
    if every_s > 0 and ctx.resume_path is not None:
        saved = json.loads((Path(ctx.resume_path) / STATE).read_text())
        step, state = int(saved["step"]), int(saved["state"])
    note("ready", task, step=step)
    last_save = time.monotonic()

    def checkpoint() -> None:
        began = time.monotonic()
        (Path(ctx.checkpoint_dir) / STATE).write_text(json.dumps({"step": step, "state": state}))
        ok = ctx.save_checkpoint(step)
        note("checkpoint", task, step=step, write_s=round(time.monotonic() - began, 4), ok=bool(ok))

    while step < steps:
        if ctx.should_stop:
            if every_s > 0:
                checkpoint()
            note("stop", task, step=step)
            raise Stopped(f"stopped at step {step}")
        time.sleep(step_s)
        step += 1
        state = fold(state, step)
        note("step", task, step=step)
        if every_s > 0 and time.monotonic() - last_save >= every_s and step < steps:
            checkpoint()
            last_save = time.monotonic()
    (Path(ctx.output_dir) / "state.json").write_text(json.dumps({"state": state}))
    note("end", task, step=step)
    return {"metrics": {"state_ok": float(state == expected_state(steps))}, "num_samples": 1}
