"""FedBuff's server step against the formula worked by hand (no cloud: model files on disk)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shardq.worker.fedbuff import average_step, server_step
from shardq.worker.reduce import ModelError


def _save(path: Path, w: list[float], step: int = 0) -> str:
    np.savez(path, w=np.array(w, dtype=np.float32), step=np.array(step))
    return str(path)


def _fetch(uri: str, name: str) -> Path:
    return Path(uri)  # the "URIs" here are local files


def test_the_step_is_the_staleness_weighted_mean_delta(tmp_path: Path) -> None:
    # GIVEN x_v = [1, 1]; update a (n=1, s=1) trained from x_v to [3, 1]; update b (n=3, s=0.5)
    # trained from an older base [0, 0] to [0, 4]
    x_v = _save(tmp_path / "v.npz", [1.0, 1.0], step=7)
    old = _save(tmp_path / "old.npz", [0.0, 0.0])
    a = _save(tmp_path / "a.npz", [3.0, 1.0])
    b = _save(tmp_path / "b.npz", [0.0, 4.0])
    rows = [
        {"model_uri": a, "base_model_uri": x_v, "num_samples": 1, "staleness_weight": 1.0},
        {"model_uri": b, "base_model_uri": old, "num_samples": 3, "staleness_weight": 0.5},
    ]
    out = server_step(Path(x_v), rows, _fetch, tmp_path / "out" / "model.npz", server_lr=2.0)
    # Δ = (1·1·[2, 0] + 3·0.5·[0, 4]) / 4 = [0.5, 1.5]; x = [1, 1] + 2·Δ = [2, 4]
    with np.load(out) as m:
        np.testing.assert_allclose(m["w"], [2.0, 4.0])
        assert m["w"].dtype == np.float32 and int(m["step"]) == 7  # dtype kept, integers from x_v


def test_fresh_updates_with_rate_one_are_fedavg(tmp_path: Path) -> None:
    x_v = _save(tmp_path / "v.npz", [0.5, -1.0])
    models = [([1.0, 2.0], 10), ([3.0, 0.0], 30)]
    rows = [
        {
            "model_uri": _save(tmp_path / f"m{i}.npz", w),
            "base_model_uri": x_v,
            "num_samples": n,
            "staleness_weight": 1,
        }
        for i, (w, n) in enumerate(models)
    ]
    out = server_step(Path(x_v), rows, _fetch, tmp_path / "o" / "model.npz", server_lr=1.0)
    with np.load(out) as m:
        np.testing.assert_allclose(m["w"], [(1 * 10 + 3 * 30) / 40, (2 * 10 + 0) / 40], rtol=1e-6)


def test_a_non_finite_delta_fails_naming_the_update(tmp_path: Path) -> None:
    x_v = _save(tmp_path / "v.npz", [0.0])
    bad = _save(tmp_path / "bad.npz", [float("nan")])
    rows = [
        {
            "model_uri": bad,
            "base_model_uri": x_v,
            "num_samples": 1,
            "staleness_weight": 1,
            "client": 2,
            "seq": 5,
        }
    ]
    with pytest.raises(ModelError, match=r"client 2 update 5: entry 'w' of its delta is not finite"):
        server_step(Path(x_v), rows, _fetch, tmp_path / "o" / "model.npz", server_lr=1.0)


def test_mismatched_entries_fail_saying_which(tmp_path: Path) -> None:
    x_v = _save(tmp_path / "v.npz", [0.0, 0.0])
    other = _save(tmp_path / "o.npz", [1.0])
    rows = [{"model_uri": other, "base_model_uri": x_v, "num_samples": 1, "staleness_weight": 1}]
    with pytest.raises(ModelError, match="every client must save the model's entries"):
        server_step(Path(x_v), rows, _fetch, tmp_path / "out" / "model.npz", server_lr=1.0)


def test_the_average_moves_toward_each_new_version_by_one_minus_the_decay(tmp_path: Path) -> None:
    # GIVEN version v + 1 = [2, 4] (float32, a counter 7) and the average so far [0, 8], decay 0.75
    (tmp_path / "v").mkdir()
    model = Path(_save(tmp_path / "v" / "model.npz", [2.0, 4.0], step=7))
    before = _save(tmp_path / "before.npz", [0.0, 8.0])
    out = average_step(model, {"decay": 0.75, "previous_uri": before}, _fetch)
    # THEN x̄ = 0.75·[0, 8] + 0.25·[2, 4] = [0.5, 7], beside the model under average/, same name
    assert out == tmp_path / "v" / "average" / "model.npz"
    with np.load(out) as m:
        np.testing.assert_allclose(m["w"], [0.5, 7.0])
        assert m["w"].dtype == np.float32 and int(m["step"]) == 7  # dtype kept, integers the model's
    # ... and the version itself is untouched (it stays the clients' base)
    with np.load(model) as m:
        np.testing.assert_allclose(m["w"], [2.0, 4.0])


def test_the_first_average_is_the_first_version_and_a_mismatch_fails(tmp_path: Path) -> None:
    model = Path(_save(tmp_path / "model.npz", [3.0, -1.0]))
    first = average_step(model, {"decay": 0.9, "previous_uri": None}, _fetch)  # x̄_1 = x_1
    with np.load(first) as m:
        np.testing.assert_allclose(m["w"], [3.0, -1.0])
    other = _save(tmp_path / "other.npz", [1.0])
    with pytest.raises(ModelError, match=r"the previous average .*other\.npz.*every client must save"):
        average_step(model, {"decay": 0.5, "previous_uri": other}, _fetch)
