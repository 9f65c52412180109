"""Package the Lambda code without Docker: an allowlist of the handlers and the shardq core.

The asset root holds exactly ``lambdas/**`` and ``shardq/__init__.py`` + ``shardq/core/**`` (no
tests, venv, CLI, local cloud or worker runtime), staged into a directory the stack controls, so
what ships is what the allowlist says, and a test can list it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# (directory or file relative to the repo root, copy recursively?)
ASSET_ALLOWLIST: tuple[tuple[str, bool], ...] = (
    ("lambdas", True),
    ("shardq/__init__.py", False),
    ("shardq/core", True),
)
_SKIPPED_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo"}


def asset_files(repo_root: Path) -> list[Path]:
    """The repo-relative paths that belong in the Lambda asset, sorted."""
    chosen: list[Path] = []
    for rel, recursive in ASSET_ALLOWLIST:
        src = repo_root / rel
        if not recursive:
            if src.is_file():
                chosen.append(Path(rel))
            continue
        if not src.is_dir():
            continue
        for path in src.rglob("*"):
            relative = path.relative_to(repo_root)
            if (
                path.is_file()
                and not _SKIPPED_DIRS.intersection(relative.parts)
                and path.suffix not in _SKIPPED_SUFFIXES
            ):
                chosen.append(relative)
    return sorted(chosen)


def stage_lambda_source(repo_root: Path, destination: Path) -> Path:
    """Copy the allowlisted files into ``destination`` (emptied first) and return it.

    The asset hash CDK computes covers names and contents only, so the same sources always give
    the same asset, wherever they are staged.
    """
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    for rel in asset_files(repo_root):
        target = destination / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(repo_root / rel, target)
    return destination
