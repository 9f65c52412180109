"""benchmarks.rounds at a tiny size (seconds): every code path runs and its figures add up.

Timings are not asserted (they go to BENCHMARKS.md); what is: who was counted and who was late
in a straggler round, the trial-epochs a halving sweep spent, and that the Optuna adapter trains
bit for bit the models shardq's workers train (so the peer comparison differs only in promotion).
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import rounds, rounds_peer
from shardq.local.cloud import LocalCloud


@pytest.fixture(scope="module")
def sweeps(cloud: LocalCloud) -> dict[str, Any]:
    """A 3-trial sweep, at full budget and with successive halving (eta 3, budgets 1/3/9)."""
    args = rounds.parse(["--trials", "3", "--sweep-workers", "2", "--timeout", "120"])
    out, problems = rounds.sweep_rows(cloud, args)
    assert problems == []
    return out


def test_a_straggler_is_counted_without_quorum_and_late_with_it(
    cloud: LocalCloud, sweeps: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    # The deadline leaves the two 0.1 s shards 2 s (a loaded CI machine took > 1 s to post one) and
    # the straggler (30 × 0.1 s) a second past it.
    args = rounds.parse(
        ["--shards", "3", "--delay", "0.1", "--slow-factor", "30", "--quorum", "0.6", "--deadline", "2"]
    )
    rows, problems = rounds.straggler_rows(cloud, args)
    assert problems == []
    by_label = {r["quorum"]: r for r in rows}
    assert list(by_label) == ["off", "fraction 0.6", "deadline 2 s", "fraction 0.6, straggler = shard 0"]
    off = by_label.pop("off")
    assert (off["status"], off["counted"], off["late"], off["straggler"]) == ("SUCCEEDED", [3], 0, 2)
    for row in by_label.values():
        # the round closed without the straggler, whose result came late and was not counted
        assert (row["status"], row["counted"], row["late"]) == ("SUCCEEDED", [2], 1), row
        reduces = [r for r in row["results"] if r["task_type"] == "reduce"]
        assert len(reduces) == 1
    assert by_label["fraction 0.6, straggler = shard 0"]["straggler"] == 0
    rounds.report(rows, sweeps, [])
    assert "| fraction 0.6 " in capsys.readouterr().out


def test_halving_spends_the_budget_its_manifest_reports(sweeps: dict[str, Any]) -> None:
    full, halving = sweeps["full"], sweeps["halving"]
    # full: 3 trials × 9 epochs; halving: 3 × 1, then the best 3 // 3 = 1 for 2 more, then 6 more
    assert (full["trial_epochs"], full["tasks"]) == (27, 3)
    assert (halving["trial_epochs"], halving["tasks"]) == (3 + 2 + 6, 5)
    assert halving["trials_at_budget"] == {1: 3, 3: 1, 9: 1}
    assert len(sweeps["points"]) == 3 and {"lr", "l2"} <= set(sweeps["points"][0])
    assert halving["best_trial"] == halving["leaderboard"][0]["trial"]
    assert len(halving["leaderboard"][0]["rungs"]) == 3


def test_optuna_trains_the_same_models_and_counts_its_epochs(sweeps: dict[str, Any]) -> None:
    pytest.importorskip(
        "optuna", reason="optuna is optional: make bench-rounds installs it", exc_type=ImportError
    )
    args = rounds.parse(["--trials", "3"])
    same, own = rounds.peer_rows(sweeps, args)
    assert same["sampler"] == "shardq's points, enqueued" and own["sampler"] == "RandomSampler(seed=7)"
    for peer in (same, own):
        assert peer["trial_epochs"] == sum(peer["reached"].values())
        assert set(peer["reached"]) == {0, 1, 2}
    # trial i of Optuna trains what shardq's trial i trained, rung by rung, to the last bit
    shardq = {row["trial"]: row["rungs"] for row in sweeps["halving"]["leaderboard"]}
    for trial, values in same["rung_values"].items():
        ran = min(len(values), len(shardq[trial]))
        assert values[:ran] == shardq[trial][:ran], trial


def test_the_peer_is_skipped_with_a_message_without_optuna(
    sweeps: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(rounds_peer, "available", lambda: False)
    assert rounds.peer_rows(sweeps, rounds.parse(["--trials", "3"])) == []
    assert "optuna is not installed: the peer comparison is skipped" in capsys.readouterr().out
