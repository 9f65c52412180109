"""CA2FL's calibrated FedBuff step against a two-client example worked by hand (model files on disk)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shardq.worker.fedbuff_cached import CALIBRATION_NAME, cached_step, read_state
from shardq.worker.reduce import ModelError


def _save(path: Path, w: list[float]) -> str:
    np.savez(path, w=np.array(w, dtype=np.float64), step=np.array(3))
    return str(path)


def _fetcher(where: Path) -> Any:
    """A download: a copy of the file (the step deletes what it fetched once read)."""

    def fetch(uri: str, name: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(uri, where / name))

    return fetch


def _row(
    client: int, seq: int, model: str, base: str, n: int, s: float, prev: tuple[str, str] | None
) -> dict:
    previous = None if prev is None else {"seq": seq - 1, "model_uri": prev[0], "base_model_uri": prev[1]}
    return {"client": client, "seq": seq, "model_uri": model, "base_model_uri": base, "num_samples": n,
            "staleness_weight": s, "previous": previous}  # fmt: skip


def _step(
    tmp: Path, name: str, x: str, rows: list[dict], state: str | None, lr: float, weigh: bool = False
) -> tuple[np.ndarray, str]:
    out = cached_step(
        Path(x), rows, _fetcher(tmp / f"dl-{name}"), tmp / name / "model.npz",
        server_lr=lr, calibration={"clients": 2, "state_uri": state}, weigh_cache=weigh,
    )  # fmt: skip
    with np.load(out) as m:
        return m["w"].copy(), str(out.parent / CALIBRATION_NAME)


def test_three_versions_of_two_clients_worked_by_hand(tmp_path: Path) -> None:
    # GIVEN 2 clients, x0 = [0, 0]
    x0 = _save(tmp_path / "x0.npz", [0.0, 0.0])
    a = _save(tmp_path / "a.npz", [2.0, 0.0])  # client 0 (n 1) from x0: Δ = [2, 0]
    b = _save(tmp_path / "b.npz", [0.0, 4.0])  # client 1 (n 3) from x0: Δ = [0, 4]
    # WHEN version 0's buffer holds a alone: nothing cached yet, h̄ = 0, v = Δ_a
    w1, s1 = _step(tmp_path, "v0", x0, [_row(0, 0, a, x0, 1, 1.0, None)], None, 1.0)
    np.testing.assert_allclose(w1, [2.0, 0.0])
    x1 = _save(tmp_path / "x1.npz", list(w1))
    # version 1's buffer holds b (τ 1, s = 0.5): h̄ = S/(N · mean n seen) = [2, 0]/2 = [1, 0];
    # v = h̄ + (3 · 0.5 / 3)(Δ_b − 0) = [1, 2]; x2 = x1 + 2 v = [4, 4]
    w2, s2 = _step(tmp_path, "v1", str(x1), [_row(1, 0, b, x0, 3, 0.5, None)], s1, 2.0)
    np.testing.assert_allclose(w2, [4.0, 4.0])
    x2 = _save(tmp_path / "x2.npz", list(w2))
    # version 2's buffer: client 0 from x1 to [3, 1] (Δ [1, 1], cached a: [2, 0]), client 1 from x2
    # to [4, 6] (Δ [0, 2], cached b: [0, 4]). S = 1·[2, 0] + 3·[0, 4] = [2, 12], h̄ = S / 4 = [0.5, 3];
    # v = h̄ + ¼([1, 1] − [2, 0]) + ¾([0, 2] − [0, 4]) = [0.25, 1.75]
    c0 = _save(tmp_path / "c0.npz", [3.0, 1.0])
    c1 = _save(tmp_path / "c1.npz", [4.0, 6.0])
    rows = [_row(0, 1, c0, str(x1), 1, 1.0, (a, x0)), _row(1, 1, c1, str(x2), 3, 1.0, (b, x0))]
    w3, s3 = _step(tmp_path, "v2", str(x2), rows, s2, 1.0)
    np.testing.assert_allclose(w3, [4.25, 5.75])
    # THEN the running sum is Σ n_j h_j over the latest updates: 1·[1, 1] + 3·[0, 2] = [1, 7]
    sums, seen = read_state(Path(s3), {"w": np.zeros(2)})
    np.testing.assert_allclose(sums["w"], [1.0, 7.0])
    assert seen == {0: 1, 1: 3}
    # a retried reduce writes the same bytes (the next reduce reads whichever copy is there)
    _, again = _step(tmp_path, "v2-retry", str(x2), rows, s2, 1.0)
    assert Path(again).read_bytes() == Path(s3).read_bytes()
    with np.load(tmp_path / "v2" / "model.npz") as m:
        assert int(m["step"]) == 3  # entries that are not floats come from x_v


def test_a_client_twice_in_one_buffer_replaces_its_first_update(tmp_path: Path) -> None:
    # client 0's updates 0 and 1 both land in version 0's buffer (K 2): the second subtracts the first
    x0 = _save(tmp_path / "x0.npz", [0.0])
    u0, u1 = _save(tmp_path / "u0.npz", [2.0]), _save(tmp_path / "u1.npz", [6.0])
    rows = [_row(0, 0, u0, x0, 1, 1.0, None), _row(0, 1, u1, x0, 1, 1.0, (u0, x0))]
    w, state = _step(tmp_path, "v0", x0, rows, None, 1.0)
    # v = 0 + ½(2 − 0) + ½(6 − 2) = 3; S = 1·6 (only the latest update is cached)
    np.testing.assert_allclose(w, [3.0])
    sums, seen = read_state(Path(state), {"w": np.zeros(1)})
    np.testing.assert_allclose(sums["w"], [6.0])
    assert seen == {0: 1}


def test_the_cached_mean_weighted_as_the_buffer_worked_by_hand(tmp_path: Path) -> None:
    # GIVEN the example above, with cache_weight "staleness": each update's whole calibrated estimate
    # h̄ + Δ_i − h_c(i) weighted by w_i, so h̄ counts Σ_i w_i
    x0 = _save(tmp_path / "x0.npz", [0.0, 0.0])
    a = _save(tmp_path / "a.npz", [2.0, 0.0])  # client 0 (n 1) from x0: Δ = [2, 0]
    b = _save(tmp_path / "b.npz", [0.0, 4.0])  # client 1 (n 3) from x0: Δ = [0, 4]
    # WHEN version 0's buffer holds a alone (τ 0): nothing cached, v = Δ_a
    w1, s1 = _step(tmp_path, "v0", x0, [_row(0, 0, a, x0, 1, 1.0, None)], None, 1.0, weigh=True)
    np.testing.assert_allclose(w1, [2.0, 0.0])
    x1 = _save(tmp_path / "x1.npz", list(w1))
    # version 1's buffer holds b (τ 1, s = ½): Σ w = 3 · ½ / 3 = ½, h̄ = [2, 0]/2 = [1, 0];
    # v = ½ h̄ + ½(Δ_b − 0) = [0.5, 2]; x2 = x1 + 2 v = [3, 4] (unweighted h̄: [4, 4])
    w2, s2 = _step(tmp_path, "v1", str(x1), [_row(1, 0, b, x0, 3, 0.5, None)], s1, 2.0, weigh=True)
    np.testing.assert_allclose(w2, [3.0, 4.0])
    x2 = _save(tmp_path / "x2.npz", list(w2))
    # version 2's buffer: client 0 from x1 to [3, 1] (Δ [1, 1], τ 1, s ½; cached a: [2, 0]), client 1
    # from x2 to [4, 6] (Δ [1, 2], τ 0; cached b: [0, 4]). w_0 = 1 · ½ / 4 = ⅛, w_1 = 3 · 1 / 4 = ¾,
    # Σ w = ⅞; h̄ = (1·[2, 0] + 3·[0, 4]) / 4 = [0.5, 3];
    # v = ⅞ [0.5, 3] + ⅛([1, 1] − [2, 0]) + ¾([1, 2] − [0, 4]) = [17/16, 5/4]
    c0 = _save(tmp_path / "c0.npz", [3.0, 1.0])
    c1 = _save(tmp_path / "c1.npz", [4.0, 6.0])
    rows = [_row(0, 1, c0, str(x1), 1, 0.5, (a, x0)), _row(1, 1, c1, str(x2), 3, 1.0, (b, x0))]
    w3, s3 = _step(tmp_path, "v2", str(x2), rows, s2, 1.0, weigh=True)
    np.testing.assert_allclose(w3, [3.0 + 17 / 16, 4.0 + 5 / 4], rtol=1e-12)
    # with h̄ at weight 1 the same buffer steps by [9/8, 13/8]
    w3_full, s3_full = _step(tmp_path, "v2-full", str(x2), rows, s2, 1.0)
    np.testing.assert_allclose(w3_full, [3.0 + 9 / 8, 4.0 + 13 / 8], rtol=1e-12)
    # THEN the running sum is the same either way, Σ n_j h_j = 1·[1, 1] + 3·[1, 2] = [4, 7], byte for
    # byte, and a retried reduce rewrites those bytes
    sums, seen = read_state(Path(s3), {"w": np.zeros(2)})
    np.testing.assert_allclose(sums["w"], [4.0, 7.0])
    assert seen == {0: 1, 1: 3}
    assert Path(s3_full).read_bytes() == Path(s3).read_bytes()
    _, again = _step(tmp_path, "v2-retry", str(x2), rows, s2, 1.0, weigh=True)
    assert Path(again).read_bytes() == Path(s3).read_bytes()


@pytest.mark.parametrize("weigh", [False, True], ids=["h-full", "h-weighted"])
def test_with_every_client_fresh_in_every_buffer_it_is_fedavg(tmp_path: Path, weigh: bool) -> None:
    # K = N = 2, τ = 0, server_lr 1, unequal shards: each version is the sample-weighted mean, with h̄
    # at weight 1 or weighted as the buffer (τ = 0: Σ w = 1, the same step)
    x0 = _save(tmp_path / "x0.npz", [0.0, 0.0])
    m = {(c, v): _save(tmp_path / f"m{c}{v}.npz", w) for (c, v), w in {
        (0, 0): [1.0, 2.0], (1, 0): [3.0, -1.0], (0, 1): [5.0, 0.0], (1, 1): [0.0, 7.0]}.items()}  # fmt: skip
    first = [_row(0, 0, m[0, 0], x0, 10, 1, None), _row(1, 0, m[1, 0], x0, 30, 1, None)]
    _, s1 = _step(tmp_path, "v0", x0, first, None, 1.0, weigh)
    x1 = str(tmp_path / "v0" / "model.npz")
    rows = [_row(0, 1, m[0, 1], x1, 10, 1, (m[0, 0], x0)), _row(1, 1, m[1, 1], x1, 30, 1, (m[1, 0], x0))]
    w2, _ = _step(tmp_path, "v1", x1, rows, s1, 1.0, weigh)
    np.testing.assert_allclose(w2, [(5 * 10 + 0 * 30) / 40, (0 * 10 + 7 * 30) / 40], rtol=1e-12)


def test_a_state_that_disagrees_with_the_inputs_fails_naming_both(tmp_path: Path) -> None:
    x0 = _save(tmp_path / "x0.npz", [0.0])
    u0 = _save(tmp_path / "u0.npz", [1.0])
    # a row says client 0 has a cached update, but version 0 has no state
    with pytest.raises(ModelError, match="the calibration state lacks client 0's cached update"):
        _step(tmp_path, "bad", x0, [_row(0, 1, u0, x0, 1, 1.0, (u0, x0))], None, 1.0)
    _, state = _step(tmp_path, "v0", x0, [_row(0, 0, u0, x0, 1, 1.0, None)], None, 1.0)
    u1 = _save(tmp_path / "u1.npz", [2.0])
    with pytest.raises(ModelError, match="already has client 0's cached update"):
        _step(tmp_path, "bad2", x0, [_row(0, 1, u1, x0, 1, 1.0, None)], state, 1.0)
    # a state of another model's entries
    other = _save(tmp_path / "o.npz", [0.0, 0.0])
    with pytest.raises(ModelError, match="calibration state"):
        _step(tmp_path, "bad3", other, [_row(0, 1, _save(tmp_path / "p.npz", [1.0, 1.0]), other, 1, 1.0,
                                              (u0, x0))], state, 1.0)  # fmt: skip


def test_a_non_finite_update_fails_the_step_naming_it_and_writes_nothing(tmp_path: Path) -> None:
    # a diverged client (NaN in its model): the reduce fails naming the client and update, and
    # leaves neither a model nor a calibration state for the next version to read
    x0 = _save(tmp_path / "x0.npz", [0.0, 0.0])
    bad = _save(tmp_path / "bad.npz", [1.0, float("nan")])
    with pytest.raises(ModelError, match=r"client 1 update 0: entry 'w' of its delta is not finite"):
        _step(tmp_path, "v0", x0, [_row(1, 0, bad, x0, 5, 1.0, None)], None, 1.0)
    assert not (tmp_path / "v0" / "model.npz").exists()
    assert not (tmp_path / "v0" / CALIBRATION_NAME).exists()
