"""Processes that ask together for a kept artifact build it once (``shardq.local.once``): the stack's
template and the cloud assembly, each asked for by several real processes at the same moment, as the
suite's xdist workers and benchmark interpreters do at the start of a run on a fresh checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASKERS = 4

# An app that takes a while to synthesize and notes each synth: what `python app.py` does, minus jsii.
SLOW_APP = """
import json, os, time
with open(os.environ["BUILDS"], "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(1.0)
out = os.path.join(os.environ["CDK_OUTDIR"], "Shardq.template.json")
with open(out, "w") as f:
    json.dump({"Resources": {"Q": {"Type": "AWS::SQS::Queue"}}}, f)
"""


def ask_together(code: str, env: dict[str, str]) -> list[str]:
    """``code`` in ``ASKERS`` interpreters started at once; what each printed."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(ASKERS)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * ASKERS, [err for _, err in outs]
    return [out.strip() for out, _ in outs]


def test_the_stack_template_asked_for_by_four_processes_at_once_is_synthesized_once(tmp_path: Path) -> None:
    # GIVEN an app with no template kept yet, whose synth takes a second
    root = tmp_path / "app"
    (root / "stacks").mkdir(parents=True)
    (root / "app.py").write_text(SLOW_APP)
    (root / "cdk.json").write_text(json.dumps({"app": "python3 app.py", "context": {}}))
    builds = tmp_path / "builds"
    # WHEN four processes ask for it at the same moment
    got = ask_together(
        f"""
        from pathlib import Path
        from shardq.local.resources import stack_template
        print(sorted(stack_template(Path({str(root)!r}))["Resources"]))
        """,
        {"BUILDS": str(builds)},
    )
    # THEN every one has the template, and the app ran once
    assert got == ["['Q']"] * ASKERS
    assert len(builds.read_text().split()) == 1
    assert len(list((root / ".shardq" / "template-cache").glob("template-*.json"))) == 1


def test_the_assembly_asked_for_by_four_processes_at_once_is_synthesized_once(tmp_path: Path) -> None:
    # GIVEN a project with no assembly kept yet, and a CLI whose synth takes a second
    root = tmp_path / "p"
    (root / "stacks").mkdir(parents=True)
    (root / "app.py").write_text("print('app')\n")
    (root / "cdk.json").write_text('{"app": "python3 app.py"}\n')
    builds = tmp_path / "builds"
    # WHEN four processes ask for its assembly at the same moment
    got = ask_together(
        f"""
        import os, time
        from pathlib import Path
        from shardq.local import deploy

        def slow_cli(args, env, root, timeout):
            with open({str(builds)!r}, "a") as f:
                f.write(f"{{os.getpid()}}\\n")
            time.sleep(1.0)
            out = Path(args[args.index("--output") + 1])
            out.mkdir(parents=True)
            (out / "manifest.json").write_text("{{}}")
            return ""

        deploy._cdk = slow_cli
        print(deploy.synthesize({{}}, ["--context=stack_name=shardq"], Path({str(root)!r}), 60).name)
        """,
        {deploy_cache_env(): str(tmp_path / "cache")},
    )
    # THEN all four read the same assembly, and the CLI synthesized once
    assert len(set(got)) == 1 and got[0].startswith("shardq-assembly-")
    assert len(builds.read_text().split()) == 1
    assert (tmp_path / "cache" / got[0] / "manifest.json").is_file()


def deploy_cache_env() -> str:
    from shardq.local import deploy

    return deploy.CACHE_ENV
