"""docs/CLI.md's local-cloud steps run as written, in a fresh shell with no AWS configuration.

The fenced ``sh`` blocks of the section "On the local cloud" are executed by bash, one after
another, against a real ``shardq local up --detach``: the first starts the local cloud, sets the
environment and reaches it with ``shardq`` and the AWS CLI; the last stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from shardq.local.run import process_is
from tests.e2e.conftest import ROOT

VENV_BIN = Path(sys.executable).parent


def local_section_blocks() -> list[str]:
    """The ``sh`` blocks between '### On the local cloud' and the next heading of that level."""
    guide = (ROOT / "docs" / "CLI.md").read_text()
    section = guide.split("### On the local cloud", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def clean_env(tmp_path: Path) -> dict[str, str]:
    """A new user's shell: no AWS or shardq variables, no AWS config files, the venv on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHARDQ_"))}
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONPATH=str(ROOT),
    )
    if "AWS_CA_BUNDLE" in os.environ:
        env["AWS_CA_BUNDLE"] = os.environ["AWS_CA_BUNDLE"]
    return env


def bash(script: str, cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with ``set -euo pipefail`` in its own process group, which is ended afterwards."""
    proc = subprocess.Popen(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        # What the script left in the background (the worker) is in this group; `local up --detach`
        # made its own session and is stopped by `shardq local down`.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_the_local_cloud_steps_in_the_cli_guide_run_as_written(tmp_path: Path) -> None:
    # GIVEN the guide's local-cloud steps and a shell with no AWS configuration at all
    blocks = local_section_blocks()
    assert len(blocks) == 2, blocks
    start, stop = blocks
    assert "shardq local up" in start and "shardq local down" in stop
    env = clean_env(tmp_path)
    run_file = tmp_path / ".shardq" / "local.json"
    try:
        # WHEN the first block runs
        first = bash(start, tmp_path, env, timeout=900)
        # THEN every step succeeded: outputs came from the local CloudFormation
        assert first.returncode == 0, f"stdout:\n{first.stdout}\nstderr:\n{first.stderr}"
        assert "TaskQueueUrl" in first.stdout and "running" in first.stdout
        info = json.loads(run_file.read_text())
        assert process_is(info["pid"], "ministack")
        env_file = (tmp_path / ".shardq" / "local.env").read_text()
        for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "SHARDQ_STACK"):
            assert f"export {name}=" in env_file
        # WHEN the last block runs
        last = bash(stop, tmp_path, env, timeout=120)
        # THEN the local cloud is gone, and so is the run file
        assert last.returncode == 0, last.stderr
        assert not process_is(info["pid"], "ministack")
        assert not process_is(info["up_pid"], "shardq")
        assert not run_file.exists()
    finally:
        subprocess.run(
            [sys.executable, "-m", "shardq.cli", "local", "down", "--run-file", str(run_file)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
