"""`cdk synth` through the pinned CLI (npx, offline): the path `make synth` and CI take."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from stacks.config import REPO_ROOT


def test_cdk_synth_with_the_pinned_cli_succeeds(tmp_path: Path) -> None:
    # `make test` installs the pinned CLI first; a missing one is a broken install, not a skip.
    assert shutil.which("npx"), "npx not found: install Node.js 20+"
    assert (REPO_ROOT / "node_modules" / ".bin" / "cdk").exists(), "run `make install` (npm ci)"
    env = {
        **os.environ,
        "PATH": f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        "CDK_DISABLE_VERSION_CHECK": "1",
    }
    result = subprocess.run(
        [
            "npx",
            "--no-install",
            "cdk",
            "synth",
            "--quiet",
            "--no-notices",
            "--output",
            str(tmp_path / "cdk.out"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "cdk.out" / "shardq.template.json").is_file() or any(
        (tmp_path / "cdk.out").glob("*.template.json")
    )
