"""How the examples checkpoint, so a preempted task resumes the same run on another worker.

The worker's checkpoint contract (docs/RELIABILITY.md, "Checkpoints"): a training function saves
files into ``ctx.checkpoint_dir`` and calls ``ctx.save_checkpoint(step)``; a resumed attempt finds
the task's latest checkpoint unpacked at ``ctx.resume_path`` (None on a fresh start); the loop
checks ``ctx.should_stop`` between batches (SIGTERM, a Spot interruption notice, a lost lease) and,
told to stop, saves and raises ``shardq.worker.Stopped``, so the worker releases the task instead of
posting a result.

What the examples keep in a checkpoint, beside their weights, is what makes the resumed run the
*same* run, bit for bit:

* the **position**: the epoch, the batch index within it, and the global step (batches done in
  this task, the ``step`` the checkpoint is saved with);
* the state of **every random generator the loop draws from**, taken at the *start* of the epoch:
  the resumed attempt restores it, draws the same batch order again and skips the batches already
  done (cheaper to store than the order itself, and exact);
* any running sum the returned metrics depend on (the epoch's loss so far).

``position.json`` holds the position and the generator states (JSON: a numpy ``PCG64`` state is a
dict of Python ints; a torch generator state is a byte tensor, stored as a list of ints); the
weights go in a file of the example's own format next to it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POSITION = "position.json"


@dataclass(frozen=True)
class Every:
    """When to checkpoint: every ``steps`` batches (0: never on a count) and/or at each epoch's end.

    Built from the task's ``hyperparameters.checkpoint_every`` (batches; 0 turns counted
    checkpoints off), with the example's own default.
    """

    steps: int = 0
    epoch_end: bool = True

    @classmethod
    def of(cls, hyperparameters: dict[str, Any], *, default_steps: int = 0, epoch_end: bool = True) -> Every:
        """The policy for one task; raises ValueError naming the field when it is negative."""
        raw = hyperparameters.get("checkpoint_every", default_steps)
        steps = int(raw)
        if steps < 0:
            raise ValueError(
                f"hyperparameters.checkpoint_every must be a number of batches >= 0 (0: only at epoch "
                f"ends and when stopped), got {raw!r}"
            )
        return cls(steps=steps, epoch_end=epoch_end)

    def due(self, step: int, *, epoch_done: bool) -> bool:
        """Whether to checkpoint after global step ``step`` (``epoch_done``: it ended an epoch)."""
        return (epoch_done and self.epoch_end) or (self.steps > 0 and step % self.steps == 0)


def resume_position(ctx: Any) -> dict[str, Any] | None:
    """The position saved with the task's latest checkpoint; None on a fresh start.

    Raises
    ------
    ValueError
        The checkpoint has no ``position.json`` or its step is not ``ctx.resume_step``: it was not
        written by this example (the worker only hands over checkpoints of this task).
    """
    if ctx.resume_path is None:
        return None
    path = Path(ctx.resume_path) / POSITION
    if not path.is_file():
        raise ValueError(f"checkpoint at {ctx.resume_path} has no {POSITION}: not written by this example")
    position = dict(json.loads(path.read_text()))
    if ctx.resume_step is not None and int(position["step"]) != int(ctx.resume_step):
        raise ValueError(
            f"checkpoint at {ctx.resume_path} holds step {position['step']} but was saved as step "
            f"{ctx.resume_step}"
        )
    return position


def save(ctx: Any, step: int, position: dict[str, Any], write: Callable[[Path], None]) -> bool:
    """Write the weights (``write(ctx.checkpoint_dir)``) and ``position`` (plus ``step``), then upload.

    The same file names are overwritten at every save: the worker packs the directory as it is
    when ``save_checkpoint`` is called. Returns ``ctx.save_checkpoint``'s answer (False when the
    upload failed: the task goes on, only its resume point stays older).
    """
    directory = Path(ctx.checkpoint_dir)
    write(directory)
    (directory / POSITION).write_text(json.dumps({**position, "step": step}))
    return bool(ctx.save_checkpoint(step))
