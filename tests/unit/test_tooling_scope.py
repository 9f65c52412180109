"""ruff and mypy check the project's own folders, never a user's package kept in the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUFF = Path(sys.executable).parent / "ruff"
# Lint errors ruff reports under the project's rules: an unused import and an unsorted block.
BAD = "import sys\nimport os\n"


def config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]


def ruff_check(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RUFF), "check", "--no-cache", "."], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_a_users_package_in_the_repository_is_not_linted(tmp_path: Path) -> None:
    # GIVEN the project's ruff configuration and a user's package with lint errors beside shardq/
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "shardq").mkdir()
    (tmp_path / "shardq" / "ok.py").write_text('"""Fine."""\n')
    (tmp_path / "my_training").mkdir()
    (tmp_path / "my_training" / "train.py").write_text(BAD)
    # WHEN ruff checks the tree THEN it passes: the user's folder is not in scope
    clean = ruff_check(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    # and the same code in one of the project's folders does fail (the check above can fail)
    (tmp_path / "shardq" / "bad.py").write_text(BAD)
    dirty = ruff_check(tmp_path)
    assert dirty.returncode == 1 and "shardq/bad.py" in dirty.stdout


def test_every_project_folder_with_python_is_in_ruffs_scope() -> None:
    files = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    tops = {f.split("/", 1)[0] for f in files}
    include = config()["ruff"]["include"]
    for top in tops:
        pattern = top if top.endswith(".py") else f"{top}/**/*.py"
        assert pattern in include, f"{top}: add {pattern!r} to [tool.ruff] include in pyproject.toml"


def test_mypy_checks_the_project_packages_only() -> None:
    assert config()["mypy"]["files"] == ["shardq", "lambdas", "stacks", "app.py"]
