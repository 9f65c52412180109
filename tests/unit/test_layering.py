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
STORE = ROOT / "shardq/core/jobstore.py"


def table_knowledge(path: Path) -> set[str]:
    """Key literals (``JOB#``, ``RES#``, ``ROUND#``), DynamoDB item calls and the store's private names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.update(p for p in ("JOB#", "RES#", "ROUND#") if node.value.startswith(p))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in TABLE_CALLS:
                found.add(f".{node.func.attr}()")
        elif isinstance(node, ast.ImportFrom) and node.module == "shardq.core.jobstore":
            found.update(a.name for a in node.names if a.name.startswith("_"))
    return found


@pytest.mark.parametrize(
    "path", [p for p in modules("shardq") + modules("lambdas") if p != STORE], ids=lambda p: p.name
)
def test_only_the_job_store_knows_the_table_schema(path: Path) -> None:
    # The job table's keys, attribute names and item calls live in one module: everything else
    # reads JobRecord/ResultRecord and writes through JobStore's named methods.
    bad = table_knowledge(path)
    assert not bad, f"{path.relative_to(ROOT)} uses {sorted(bad)}: go through shardq.core.jobstore.JobStore"


def test_the_job_store_is_where_the_schema_lives() -> None:
    # The check above must be able to fail: the store itself shows every kind of knowledge.
    assert {"JOB#", "RES#", "ROUND#", ".transact_write_items()", ".update_item()"} <= table_knowledge(STORE)


def test_core_modules_import_each_other_without_a_cycle() -> None:
    # Function-level imports count too: a lazy import that closes a circle is still a circle.
    core = {f"shardq.core.{p.stem}": p for p in modules("shardq/core") if p.stem != "__init__"}
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
