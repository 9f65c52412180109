"""The Lambda asset holds the handlers and the shardq core, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stacks.components.lambda_asset import asset_files, stage_lambda_source
from stacks.config import REPO_ROOT
from tests.infra.conftest import Synth

HANDLER_MODULES = (
    "lambdas/splitter.py",
    "lambdas/aggregator.py",
    "lambdas/dlq_handler.py",
    "lambdas/results_dlq_handler.py",
)


def _allowed(rel: str) -> bool:
    return rel.startswith(("lambdas/", "shardq/core/")) or rel == "shardq/__init__.py"


@pytest.fixture(scope="module")
def asset_dir(default_synth: Synth) -> Path:
    """The staged asset directory all three functions deploy (cdk.out/asset.<hash>)."""
    keys = {
        fn["Properties"]["Code"]["S3Key"] for fn in default_synth.of_type("AWS::Lambda::Function").values()
    }
    assert len(keys) == 1, "the three functions share one code asset"
    asset_hash = keys.pop().removesuffix(".zip")
    return default_synth.outdir / f"asset.{asset_hash}"


def test_asset_holds_only_handlers_and_core(asset_dir: Path) -> None:
    files = sorted(p.relative_to(asset_dir).as_posix() for p in asset_dir.rglob("*") if p.is_file())
    assert files, "asset is not empty"
    assert [f for f in files if not _allowed(f)] == []
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert "shardq/__init__.py" in files
    assert files == [p.as_posix() for p in asset_files(REPO_ROOT)]


def test_asset_contains_the_handlers(asset_dir: Path) -> None:
    for module in ("lambdas/__init__.py", *HANDLER_MODULES):
        assert (asset_dir / module).is_file(), module


def test_staging_keeps_only_the_allowlist(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for rel in (
        "lambdas/__init__.py",
        "lambdas/splitter.py",
        "lambdas/__pycache__/splitter.cpython-311.pyc",
        "shardq/__init__.py",
        "shardq/core/__init__.py",
        "shardq/core/contracts.py",
        "shardq/core/schemas/request.json",
        "shardq/cli.py",
        "shardq/local/cloud.py",
        "shardq/worker/runtime.py",
        "tests/unit/test_x.py",
        ".venv/lib/site.py",
        "node_modules/x/index.js",
        "cdk.out/manifest.json",
        "examples/train.py",
        "benchmarks/run_all.py",
        "app.py",
    ):
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rel))
    staged = stage_lambda_source(repo, tmp_path / "staged")
    files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert files == [
        "lambdas/__init__.py",
        "lambdas/splitter.py",
        "shardq/__init__.py",
        "shardq/core/__init__.py",
        "shardq/core/contracts.py",
        "shardq/core/schemas/request.json",
    ]
    # Re-staging replaces, never accumulates.
    (repo / "lambdas/splitter.py").unlink()
    staged = stage_lambda_source(repo, tmp_path / "staged")
    assert not (staged / "lambdas/splitter.py").exists()
