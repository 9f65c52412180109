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
