"""Which accelerator each worker slot uses: one GPU per slot, never every slot on GPU 0.

The devices are the ones this process may use: ``CUDA_VISIBLE_DEVICES`` when it is set (ids or
UUIDs, as the NVIDIA container runtime, Batch and ECS set it), else one per line of
``nvidia-smi -L``, else none (a CPU machine). Slots are threads of one process, so they cannot
each get their own ``CUDA_VISIBLE_DEVICES``; instead slot ``i`` gets ``cuda:<i mod n>`` — CUDA
numbers the visible devices 0..n-1 in the order ``CUDA_VISIBLE_DEVICES`` lists them — and the
training function reads it from ``ctx.device``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

CPU = "cpu"


@dataclass(frozen=True)
class SlotDevice:
    """The device one slot trains on.

    Attributes
    ----------
    device:
        What to hand a framework: ``cuda:K`` (K indexes the process's visible devices) or ``cpu``.
    physical:
        The device's id as the machine names it (an index or a ``GPU-…`` UUID), for logs; None on CPU.
    """

    device: str
    physical: str | None = None


def visible_devices(environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs this process may use, by id: ``CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``, else none.

    ``CUDA_VISIBLE_DEVICES=""`` or ``-1`` means no GPU, as CUDA reads it; the list stops at the
    first ``-1`` for the same reason.
    """
    env = os.environ if environ is None else environ
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        ids: list[str] = []
        for part in (p.strip() for p in raw.split(",")):
            if not part or part == "-1":
                break
            ids.append(part)
        return ids
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, _ in enumerate(line for line in out.splitlines() if line.startswith("GPU "))]


def assign(slots: int, devices: list[str]) -> list[SlotDevice]:
    """One device per slot, round robin (more slots than GPUs share them evenly); CPU without GPUs."""
    if not devices:
        return [SlotDevice(CPU) for _ in range(slots)]
    return [SlotDevice(f"cuda:{i % len(devices)}", devices[i % len(devices)]) for i in range(slots)]
