"""pyproject.toml's dependency ranges admit the pinned, tested set in requirements*.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins(name: str) -> dict[str, str | None]:
    """``package → version`` of a requirements file's entries (None unless pinned; follows ``-r``)."""
    out: dict[str, str | None] = {}
    for raw in (ROOT / name).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out.update(pins(line[3:].strip()))
        elif m := re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?(==([^\s;]+))?", line):
            out[m.group(1).lower()] = m.group(4)
    return out


def requirements(extra: str | None = None) -> list[Requirement]:
    raw = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in raw if not r.startswith("shardq")]


@pytest.mark.parametrize(
    ("extra", "requirements_file"),
    [(None, "requirements-worker.txt"), ("cdk", "requirements.txt"), ("lambda", "requirements.txt"),
     ("local", "requirements-dev.txt"), ("dev", "requirements-dev.txt"), ("torch", "requirements-torch.txt")],
)  # fmt: skip
def test_declared_ranges_admit_the_pinned_versions(extra: str | None, requirements_file: str) -> None:
    pinned = pins(requirements_file)
    for req in requirements(extra):
        name = req.name.lower()
        assert name in pinned, f"{req} is declared but {requirements_file} does not list {name}"
        version = pinned[name]
        assert version is None or req.specifier.contains(version), (
            f"{req} excludes the tested {name}=={version}"
        )


def test_a_worker_install_gets_what_the_worker_imports() -> None:
    # `pip install .` on a worker host: the worker image's requirements are all declared.
    declared = {r.name.lower() for r in requirements()}
    assert set(pins("requirements-worker.txt")) <= declared
