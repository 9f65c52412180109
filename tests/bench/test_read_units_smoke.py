"""The read-units benchmark at a tiny size, so it does not rot (its figures are checked for shape:
a refresh after the catch-up reads the outcomes recorded since, not the job's)."""

from __future__ import annotations

from benchmarks.read_units import NEW_PER_REFRESH as NEW
from tests.bench.test_scale_smoke import run


def test_read_units_benchmark_measures_each_reader_and_its_before() -> None:
    r = run("benchmarks.read_units", "--sizes", "300")
    [size] = r["sizes"]
    steady, first = size["steady"], size["first"]
    assert set(steady) == {"watch", "watch, before", "dashboard", "dashboard, before"}
    # watch: the job record and the 20 outcomes recorded since its last poll; before: every result
    assert steady["watch"]["items"] == NEW + 1
    assert steady["watch, before"]["items"] == size["recorded"] - NEW + 1  # before the dashboard's 20
    # the dashboard: the job record and the 40 outcomes recorded since its last refresh
    assert steady["dashboard"]["items"] == 2 * NEW + 1
    assert steady["dashboard, before"]["items"] > size["recorded"]
    assert first["watch"]["items"] >= size["recorded"] - 40  # the catch-up reads the job once
    assert all(m["rcu"] > 0 and m["rcu_reported"] > 0 for m in steady.values())
