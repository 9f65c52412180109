"""The optional PyTorch example: FedAvg of state_dicts through the real queues (skipped without torch)."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.worker.reduce import average_state_dicts
from tests.e2e.test_examples import run_job

torch = pytest.importorskip("torch", reason="optional: `make torch` installs PyTorch")


def test_state_dict_average_is_weighted_by_num_samples(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.zeros(3), "steps": torch.tensor(7)}, a)
    torch.save({"w": torch.ones(3) * 4, "steps": torch.tensor(9)}, b)
    out = average_state_dicts([a, b], [300, 100], tmp_path / "avg.pt")
    merged = torch.load(out, weights_only=True)
    assert torch.allclose(merged["w"], torch.ones(3))  # (0*300 + 4*100) / 400
    assert int(merged["steps"]) == 7  # integer buffers are taken from the first model, not averaged


def test_torch_mlp_trains_data_parallel_and_loss_falls(
    engine: Engine, settings: Settings, clients: dict[str, Any]
) -> None:
    request = {
        "job_id": "torch-mlp",
        "kind": "data_parallel",
        "dataset": {"uri": "synthetic://linear?dim=4&noise=0.05&seed=5", "num_samples": 4_000},
        "sharding": {"shard_count": 4},
        "rounds": 3,
        "hyperparameters": {"lr": 0.05, "epochs": 2},
        "entrypoint": "examples.torch_mlp:train",
    }
    manifest = run_job(engine, settings, clients, request)
    assert manifest["status"] == "SUCCEEDED"
    assert manifest["final_model_uri"].endswith("round-0002/reduce/model.pt")
    val = [r["metrics"]["val_loss"]["mean"] for r in manifest["rounds"]]
    assert val[-1] < val[0]
    assert all(b <= a * 1.05 for a, b in itertools.pairwise(val))
    assert np.isfinite(val).all()


def test_torch_mlp_fails_naming_the_fix_when_its_slots_gpu_is_not_visible(tmp_path: Path) -> None:
    # GIVEN a slot handed cuda:0 on a PyTorch build that sees no GPU (this CPU machine)
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: cuda:0 would train")
    from examples import torch_mlp

    task = SimpleNamespace(
        data={"uri": "synthetic://linear?dim=4", "start": 0, "end": 100}, hyperparameters={}
    )
    ctx = SimpleNamespace(device="cuda:0", output_dir=tmp_path, init_model_path=None, fetch=None)
    # WHEN it trains, THEN it refuses rather than fall back to the CPU, naming both fixes
    with pytest.raises(
        RuntimeError, match=r"ctx\.device is cuda:0 but PyTorch .* sees no CUDA device"
    ) as info:
        torch_mlp.train(task, ctx)
    assert "install the CUDA build of PyTorch" in str(info.value)
    assert "CUDA_VISIBLE_DEVICES=" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # refused before it trained or saved anything
