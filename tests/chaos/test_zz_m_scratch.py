"""SCRATCH (helper M): which example of the bounded run reaches which path. Deleted when done."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import pytest

from tests.chaos import test_model as tm
from tests.chaos.test_model import ShardqModel, handlers  # noqa: F401

pytestmark = pytest.mark.local_cloud


def test_trace(clients: dict[str, Any], handlers: None, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    ShardqModel.seen.clear()
    real = ShardqModel.teardown
    per: list[dict[str, int]] = []
    last: Counter[str] = Counter()

    def teardown(self: Any) -> None:
        try:
            real(self)
        finally:
            now = Counter(ShardqModel.seen)
            per.append({k: now[k] - last[k] for k in tm.SOAK_MUST_SEE if now[k] - last[k]})
            last.clear()
            last.update(now)
            print("EXAMPLE", len(per), json.dumps(per[-1]), flush=True)

    monkeypatch.setattr(ShardqModel, "teardown", teardown)
    tm._run(clients, examples=int(os.environ["N"]), steps=int(os.environ["S"]))
    for i in range(1, len(per) + 1):
        got = set().union(*per[:i])
        print("FIRST", i, "missing", [p for p in tm.MUST_SEE if p not in got])
