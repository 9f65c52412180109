"""The dashboard stays optional: out of the Lambda asset, the worker install and the core's imports."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

from stacks.components.lambda_asset import asset_files

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "shardq" / "dashboard"
OPTIONAL = ("starlette", "uvicorn", "matplotlib", "selenium")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_dashboard_imports_the_core_only() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        shardq = {m for m in imported_modules(path) if m.startswith(("shardq", "lambdas"))}
        assert all(m.startswith(("shardq.core", "shardq.dashboard")) for m in shardq), (path.name, shardq)


def test_nothing_of_the_dashboard_is_in_the_lambda_asset() -> None:
    files = [p.as_posix() for p in asset_files(ROOT)]
    assert files and not [f for f in files if "dashboard" in f]


def test_its_packages_are_in_their_own_requirements_file_only() -> None:
    pinned = (ROOT / "requirements-dashboard.txt").read_text()
    for name in OPTIONAL:
        assert re.search(rf"^{name}==", pinned, re.M), name
    for other in ("requirements.txt", "requirements-dev.txt", "requirements-worker.txt"):
        text = (ROOT / other).read_text().lower()
        assert not [n for n in OPTIONAL if re.search(rf"^{n}\b", text, re.M)], other


def test_every_static_file_ships_in_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["shardq.dashboard"]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern) if p.is_file()}
    static = {p for p in (PACKAGE / "static").rglob("*") if p.is_file()}
    assert static and static == shipped
