"""The digit example's client partitions and splits (pure numpy: no torch, no mlxtend needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.mnist.data import client_indices, client_ranges, partition_order, split_train_test
from shardq.core.planning import shard_range


def labels(n: int, seed: int = 3) -> np.ndarray:
    """Balanced digit labels in random order, as the MNIST subset has them."""
    return np.random.default_rng(seed).permutation(np.arange(n) % 10)


@given(n=st.integers(1, 5_000), clients=st.integers(1, 100))
@settings(max_examples=200, deadline=None)
def test_client_ranges_are_shardqs_shard_ranges(n: int, clients: int) -> None:
    # a task's [start, end) from the splitter is exactly its client's range here
    clients = min(clients, n)
    assert client_ranges(n, clients) == [shard_range(n, clients, k) for k in range(clients)]


@pytest.mark.parametrize("partition", ["iid", "noniid"])
@pytest.mark.parametrize(("n", "clients"), [(4000, 10), (601, 7), (50, 50), (10, 1)])
def test_every_sample_goes_to_exactly_one_client(partition: str, n: int, clients: int) -> None:
    order = partition_order(labels(n), partition, clients, seed=0)
    assert sorted(order.tolist()) == list(range(n))
    dealt = np.concatenate([client_indices(labels(n), partition, clients, k, seed=0) for k in range(clients)])
    assert sorted(dealt.tolist()) == list(range(n))


def test_noniid_clients_hold_two_digits_and_iid_clients_all_ten() -> None:
    # the paper's setting scaled down: 4,000 samples, 10 clients, 20 label-sorted runs of 200
    y = labels(4000)
    noniid = [len(np.unique(y[client_indices(y, "noniid", 10, k, seed=0)])) for k in range(10)]
    iid = [len(np.unique(y[client_indices(y, "iid", 10, k, seed=0)])) for k in range(10)]
    assert max(noniid) <= 2 + 1 and np.mean(noniid) <= 2.5, noniid  # a run may straddle two digits
    assert iid == [10] * 10


def test_partitions_are_deterministic_and_seeded() -> None:
    y = labels(1000)
    same = partition_order(y, "noniid", 10, seed=4), partition_order(y, "noniid", 10, seed=4)
    assert np.array_equal(*same)
    assert not np.array_equal(partition_order(y, "iid", 10, seed=4), partition_order(y, "iid", 10, seed=5))


def test_unknown_partition_is_refused_with_the_choices() -> None:
    with pytest.raises(
        ValueError, match=r"hyperparameters.partition must be one of iid, noniid, got 'dirichlet'"
    ):
        partition_order(labels(100), "dirichlet", 10, seed=0)
    with pytest.raises(ValueError, match="between 1 and 100 shards"):
        partition_order(labels(100), "iid", 101, seed=0)


def test_test_split_is_stratified_and_disjoint_from_training() -> None:
    y = labels(5000)
    x = np.arange(5000).reshape(-1, 1)  # each sample's "pixels" are its index
    x_train, y_train, x_test, y_test = split_train_test(x, y, test_per_class=100, seed=0)
    assert np.bincount(y_test).tolist() == [100] * 10
    assert len(y_train) == 4000
    assert not set(x_train[:, 0]) & set(x_test[:, 0])
    assert np.array_equal(y[x_train[:, 0]], y_train)


def test_the_example_request_is_valid_and_picks_a_known_partition() -> None:
    from examples.mnist.data import PARTITIONS
    from shardq.core.contracts import TrainingRequest

    raw = (Path(__file__).resolve().parents[2] / "examples" / "mnist" / "request.json").read_text()
    request = TrainingRequest.from_json(raw)
    assert request.kind == "data_parallel" and request.entrypoint == "examples.mnist.fedavg:train"
    assert request.hyperparameters["partition"] in PARTITIONS
    assert request.dataset.num_samples == 4000  # the file's training digits, as each task checks
