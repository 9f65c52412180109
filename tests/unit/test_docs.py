"""The docs keep up with the code: every context key and every CLI command is documented."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_context_key_is_in_the_readme_with_its_default() -> None:
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    readme = (ROOT / "README.md").read_text()
    keys = [k for k in context if not k.startswith(("@", "//"))]
    assert keys
    for key in keys:
        assert f"| `{key}` | `{json.dumps(context[key])}` |" in readme, key


def test_every_cli_command_is_in_the_cli_guide() -> None:
    from shardq.cli import build_parser

    guide = (ROOT / "docs" / "CLI.md").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"shardq {name}" in guide, name
