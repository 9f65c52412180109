"""Dependency rules: imports point one way (shared/DESIGN.md, 'Dependency rules')."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    """``shardq/core/store/keys.py`` → ``shardq.core.store.keys``."""
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("path", modules("shardq/core"), ids=lambda p: p.name)
def test_core_imports_no_cdk_handler_cli_worker_or_local_cloud(path: Path) -> None:
    forbidden = ("aws_cdk", "constructs", "cdk_nag", "lambdas", "shardq.cli", "shardq.worker", "shardq.local")
    bad = {m for m in imports_of(path) if m.startswith(forbidden) or m.startswith("aws_lambda_powertools")}
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", modules("lambdas"), ids=lambda p: p.name)
def test_handlers_import_only_the_core(path: Path) -> None:
    bad = {m for m in imports_of(path) if m.startswith("shardq") and not m.startswith("shardq.core")}
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: a Lambda asset must not drag them in"


def test_stacks_import_no_runtime_module() -> None:
    for path in modules("stacks"):
        bad = {m for m in imports_of(path) if m.startswith(("shardq", "lambdas"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: package code by path instead"


# DynamoDB calls that read or write the job table's items; only the job store makes them.
TABLE_CALLS = {
    "get_item",
    "put_item",
    "update_item",
    "delete_item",
    "query",
    "scan",
    "batch_get_item",
    "batch_write_item",
    "transact_write_items",
    "transact_get_items",
}
# The store family: the job store (``shardq.core.jobstore``, its public face) and the parts it is
# built from. Named one by one, so a module joins the family by a decision made here.
STORE_FAMILY = frozenset(
    ROOT / "shardq/core" / name
    for name in (
        "jobstore.py",
        "progress_reads.py",  # progress reads over the by_recorded index, for watch and the dashboard
        "store/__init__.py",
        "store/base.py",
        "store/copies.py",  # an asynchronous sweep's backup copies: each run's cost, a success over a failure
        "store/counting.py",
        "store/fedbuff.py",  # FedBuff: each client update once, with its base version and version
        "store/keys.py",
        "store/pipelines.py",  # pipelines: follower links, a WAITING job's start or end (once)
        "store/records.py",
        "store/results.py",
        "store/retried.py",  # retry marks: which shards a retry sent again, under which generation
        "store/running.py",  # the running jobs (by_status), for admission: quotas, windows, shares
        "store/spending.py",  # the spend guard: the budget stop's mark, tasks dropped unrun after it
        "store/sweeps.py",  # an asynchronous sweep's decisions (ASHA): each promotion once
        "store/update.py",
    )
)


def store_module(name: str) -> bool:
    return name in ("shardq.core.jobstore", "shardq.core.store") or name.startswith("shardq.core.store.")


def table_knowledge(path: Path) -> set[str]:
    """Key literals (``JOB#``, ``RES#``, ``ROUND#``), DynamoDB item calls and the store's private names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(p for p in ("JOB#", "RES#", "ROUND#") if node.value.startswith(p))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in TABLE_CALLS:
                found.add(f".{node.func.attr}()")
        elif isinstance(node, ast.ImportFrom) and node.module and store_module(node.module):
            found.update(a.name for a in node.names if a.name.startswith("_"))
    return found


@pytest.mark.parametrize(
    "path",
    [p for p in modules("shardq") + modules("lambdas") if p not in STORE_FAMILY],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_job_store_knows_the_table_schema(path: Path) -> None:
    # The job table's keys, attribute names and item calls live in one module: everything else
    # reads JobRecord/ResultRecord and writes through JobStore's named methods.
    bad = table_knowledge(path)
    assert not bad, f"{path.relative_to(ROOT)} uses {sorted(bad)}: go through shardq.core.jobstore.JobStore"


def test_the_job_store_is_where_the_schema_lives() -> None:
    # The check above must be able to fail: the store family shows every kind of knowledge.
    known = set().union(*(table_knowledge(p) for p in STORE_FAMILY))
    assert {"JOB#", "RES#", "ROUND#", ".transact_write_items()", ".update_item()", "_pk"} <= known


def test_the_store_family_is_named_in_full() -> None:
    # Every module of the store package is named in STORE_FAMILY, and every name there exists:
    # the allowed set is a list someone decided, never a folder that grows by itself.
    package = set(modules("shardq/core/store"))
    assert package and package <= STORE_FAMILY, f"not named in STORE_FAMILY: {sorted(package - STORE_FAMILY)}"
    assert all(p.is_file() for p in STORE_FAMILY), [str(p) for p in STORE_FAMILY if not p.is_file()]


def test_core_modules_import_each_other_without_a_cycle() -> None:
    # Function-level imports count too: a lazy import that closes a circle is still a circle.
    core = {module_name(p): p for p in modules("shardq/core") if p.stem != "__init__"}
    graph = {name: {m for m in imports_of(path) if m in core and m != name} for name, path in core.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting[visiting.index(name) :], name])
        if name in done:
            return
        visiting.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
