"""The local deploy's synthesized assembly is reused only for the same content and context."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardq.local import deploy


def project(root: Path) -> Path:
    (root / "stacks").mkdir(parents=True)
    (root / "lambdas").mkdir()
    (root / "app.py").write_text("print('app')\n")
    (root / "cdk.json").write_text('{"app": "python3 app.py"}\n')
    (root / "stacks" / "stack.py").write_text("X = 1\n")
    (root / "lambdas" / "handler.py").write_text("def handler(e, c): ...\n")
    return root


def test_the_key_follows_every_source_and_the_context_but_not_caches(tmp_path: Path) -> None:
    root = project(tmp_path / "p")
    ctx = ["--context=stack_name=shardq"]
    key = deploy.assembly_key(ctx, root)
    # GIVEN byte-caches and files that are not sources: the key does not move
    (root / "stacks" / "__pycache__").mkdir()
    (root / "stacks" / "__pycache__" / "stack.cpython-311.pyc").write_bytes(b"\x00")
    (root / "lambdas" / "notes.txt").write_text("not a source")
    assert deploy.assembly_key(ctx, root) == key
    # WHEN a handler, a stack module or the context changes, THEN it does
    (root / "lambdas" / "handler.py").write_text("def handler(e, c): return 1\n")
    changed = deploy.assembly_key(ctx, root)
    assert changed != key
    (root / "stacks" / "new.py").write_text("Y = 2\n")
    assert deploy.assembly_key(ctx, root) != changed
    assert deploy.assembly_key([*ctx, "--context=aggregator_memory_mb=1024"], root) != deploy.assembly_key(
        ctx, root
    )


def test_a_kept_assembly_is_reused_without_running_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an assembly already synthesized for this content
    root = project(tmp_path / "p")
    monkeypatch.setenv(deploy.CACHE_ENV, str(tmp_path / "cache"))
    ctx = ["--context=stack_name=shardq"]
    kept = tmp_path / "cache" / f"shardq-assembly-{deploy.assembly_key(ctx, root)}"
    kept.mkdir(parents=True)
    (kept / "manifest.json").write_text("{}")

    def no_cli(*args: object, **kwargs: object) -> None:
        raise AssertionError("the CLI must not run for a kept assembly")

    monkeypatch.setattr(deploy, "_cdk", no_cli)
    # THEN it is the app the deploy reads
    assert deploy.synthesize({}, ctx, root, 60) == kept
    # AND a changed source needs a new synth
    (root / "app.py").write_text("print('changed')\n")
    with pytest.raises(AssertionError, match="must not run"):
        deploy.synthesize({}, ctx, root, 60)
