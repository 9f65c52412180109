"""How `make test` groups the suite over its workers (tests/conftest.py, ``suite_group``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.bench.test_smoke import SMOKE
from tests.conftest import DEPLOYED, FIRST, SPREAD, first_queued, suite_group

ROOT = Path(__file__).resolve().parents[2]


def parameters(path: Path) -> list[set[str]]:
    """The parameter names of each function (tests and fixtures) defined in ``path``."""
    tree = ast.parse(path.read_text())
    return [{a.arg for a in node.args.args} for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]


def deploying_modules() -> set[str]:
    """tests/e2e modules whose tests or fixtures take the deployed stack (``stack``, or a fixture of
    tests/e2e/conftest.py built on it), read from the source: a targeted run collects only itself."""
    conftest = ROOT / "tests" / "e2e" / "conftest.py"
    fixtures = {
        node.name: {a.arg for a in node.args.args}
        for node in ast.walk(ast.parse(conftest.read_text()))
        if isinstance(node, ast.FunctionDef)
    }
    needs = {"stack"}
    while grown := {name for name, args in fixtures.items() if args & needs} - needs:
        needs |= grown
    return {
        f"tests/e2e/{path.name}"
        for path in sorted(conftest.parent.glob("test_*.py"))
        if any(args & needs for args in parameters(path))
    }


def test_modules_share_a_worker_only_where_they_share_a_cost(request: pytest.FixtureRequest) -> None:
    # GIVEN the tests this session collected (every worker collects them all)
    assert request.session.items
    # THEN every module that uses the deployed stack is in the one group that deploys it
    deploying = {
        item.nodeid.split("::", 1)[0]
        for item in request.session.items
        if item.nodeid.startswith("tests/e2e/") and "stack" in getattr(item, "fixturenames", ())
    }
    assert deploying <= set(DEPLOYED), "add the module to tests/conftest.py's DEPLOYED"
    assert deploying_modules() <= set(DEPLOYED), "add the module to tests/conftest.py's DEPLOYED"
    assert {"tests/e2e/test_local_stack.py", "tests/e2e/test_fast_path.py"} <= deploying_modules()
    assert all((ROOT / m).is_file() for m in (*DEPLOYED, *SPREAD))
    # AND the infra modules are one group, a benchmark smoke run is its own, any other module whole
    assert suite_group("tests/infra/test_nag.py::test_x") == suite_group("tests/infra/test_stack.py::t")
    smoke = "tests/bench/test_smoke.py::test_benchmark_runs_and_reports"
    assert suite_group(f"{smoke}[e2e]") != suite_group(f"{smoke}[idle]")
    assert suite_group("tests/unit/test_cost.py::a") == suite_group("tests/unit/test_cost.py::b")
    assert suite_group("tests/unit/test_cost.py::a") != suite_group("tests/unit/test_docs.py::a")


def test_the_longest_units_go_first_and_each_names_a_unit_that_exists() -> None:
    # GIVEN the units dispatched first (tests/conftest.py's FIRST), each named as suite_group names it
    smoke = "tests/bench/test_smoke.py::test_benchmark_runs_and_reports"
    for unit in FIRST:
        if unit.startswith(f"{smoke}["):
            assert unit.removeprefix(f"{smoke}[").removesuffix("]") in SMOKE, unit
        elif unit not in ("deployed stack", "tests/infra/"):
            assert (ROOT / unit).is_file() and suite_group(f"{unit}::t") == unit, unit
    assert len(set(FIRST)) == len(FIRST)
    assert suite_group(f"{DEPLOYED[0]}::t") in FIRST and suite_group("tests/infra/test_nag.py::t") in FIRST
    # THEN of what is queued, the first listed goes next; with none listed, the queue's own order
    queued = ["tests/unit/test_cost.py", FIRST[3], FIRST[1]]
    assert first_queued(queued) == FIRST[1]
    assert first_queued(["tests/unit/test_cost.py", "tests/unit/test_docs.py"]) is None
