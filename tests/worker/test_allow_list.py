"""The worker's trust boundary: it imports and runs only the modules ``--allow`` names.

A task naming any other module is reported failed on its first attempt, with the error naming the
flag, its message deleted, and the module never imported (``tests.worker.untrusted`` writes a file
when it is imported; the file must never appear).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from shardq.cli import build_parser
from shardq.cli.common import CliError
from shardq.cli.worker import _validate
from shardq.core.contracts import ShardResult, ShardTask
from shardq.core.engine import Engine
from shardq.core.jobstore import Outcome
from shardq.core.settings import Settings
from shardq.worker.isolation import IsolatedTaskError, run_isolated
from shardq.worker.runtime import EntrypointError, TaskContext, Worker, resolve
from shardq.worker.trust import AllowList, AllowListError, allow_list
from tests.helpers import receive_all
from tests.requests import make_request

ROOT = Path(__file__).resolve().parents[2]
UNTRUSTED = "tests.worker.untrusted"


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file ``tests.worker.untrusted`` writes when imported (this process and its children)."""
    path = tmp_path / "imported"
    monkeypatch.setenv("SHARDQ_TEST_IMPORT_MARK", str(path))
    assert UNTRUSTED not in sys.modules
    return path


def strict_worker(settings: Settings, clients: dict[str, Any], allow: str, **kw: Any) -> Worker:
    return Worker(
        sqs=clients["sqs"],
        s3=clients["s3"],
        ddb=clients["dynamodb"],
        job_table=settings.job_table,
        task_queue_url=settings.task_queue_url,
        results_queue_url=settings.results_queue_url,
        wait_s=1,
        allow=AllowList.parse(allow),
        **kw,
    )


def posted(clients: dict[str, Any], settings: Settings) -> list[ShardResult]:
    return [ShardResult.from_json(m["Body"]) for m in receive_all(clients["sqs"], settings.results_queue_url)]


def queue_depth(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


# -- the patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "module", "allowed"),
    [
        ("examples.*", "examples", True),
        ("examples.*", "examples.linear", True),
        ("examples.*", "examples.mnist.fedavg", True),
        ("examples.*", "examples_evil", False),
        ("examples.*", "os", False),
        ("examples.linear", "examples.linear", True),
        ("examples.linear", "examples.linear_more", False),
        ("examples.linear", "examples", False),
        ("examples.mnist.*", "examples.linear", False),
        ("a.*, examples.linear", "examples.linear", True),
        ("*", "anything.at.all", True),
        ("", "examples", False),
        ("*", "../etc", False),
    ],
)
def test_patterns_allow_a_package_and_what_is_under_it_or_one_module(
    patterns: str, module: str, allowed: bool
) -> None:
    assert AllowList.parse(patterns).permits(module) is allowed


@pytest.mark.parametrize("bad", ["examples/*", "exam*", ".examples", "examples.*.x", "a b", "os:system"])
def test_a_malformed_pattern_is_refused_naming_the_flag(bad: str) -> None:
    with pytest.raises(AllowListError, match=r"--allow .*fix the pattern"):
        AllowList.parse(f"examples.*,{bad}")


def test_the_default_is_the_entrypoints_top_level_package() -> None:
    assert allow_list(None, "mypkg.train.loop:fit").patterns == ("mypkg.*",)
    assert allow_list(["", " "], "examples.linear:train").patterns == ("examples.*",)


def test_a_worker_told_neither_what_to_allow_nor_what_to_run_refuses_to_start() -> None:
    with pytest.raises(AllowListError, match=r"--allow 'pkg\.\*'.*SHARDQ_ALLOW.*--entrypoint"):
        allow_list(None, None)
    with pytest.raises(ValueError, match="allow="):
        Worker(sqs=None, s3=None, task_queue_url="q", results_queue_url="r", max_receive_count=5)


def test_the_cli_rejects_an_entrypoint_outside_its_own_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHARDQ_ALLOW", raising=False)
    parse = build_parser().parse_args
    with pytest.raises(
        CliError, match=r"--entrypoint: entrypoint 'mypkg.m:f' is not allowed.*--allow 'mypkg\.\*'"
    ):
        _validate(parse(["worker", "--allow", "examples.*", "--entrypoint", "mypkg.m:f"]))
    with pytest.raises(CliError, match="--allow"):
        _validate(parse(["worker"]))


def test_the_flag_replaces_the_environments_list(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardq.cli.worker import _allow

    monkeypatch.setenv("SHARDQ_ALLOW", "examples.*")
    parse = build_parser().parse_args
    assert _allow(parse(["worker"])).patterns == ("examples.*",)
    assert _allow(parse(["worker", "--allow", "a.*", "--allow", "b.c"])).patterns == ("a.*", "b.c")


def test_resolve_imports_nothing_outside_the_allow_list(mark: Path) -> None:
    with pytest.raises(EntrypointError, match=r"not allowed on this worker.*nothing was imported.*--allow"):
        resolve(f"{UNTRUSTED}:train", "train", AllowList.parse("examples.*"))
    assert not mark.exists()
    assert UNTRUSTED not in sys.modules


def test_the_mark_appears_when_the_module_is_imported(mark: Path) -> None:
    # The other tests' "no mark" can fail: an import (here in a child process) writes it.
    subprocess.run([sys.executable, "-c", f"import {UNTRUSTED}"], cwd=ROOT, env=os.environ, check=True)
    assert mark.read_text() == "imported"


# -- on the queue --------------------------------------------------------------------------------


def test_a_task_naming_a_module_outside_the_allow_list_fails_once_and_imports_nothing(
    engine: Engine, settings: Settings, clients: dict[str, Any], mark: Path
) -> None:
    # GIVEN a job whose tasks name a module this worker was not told to allow
    engine.submit(make_request("map", job_id="evil", shards=2, entrypoint=f"{UNTRUSTED}:train"))
    w = strict_worker(settings, clients, "examples.*,tests.workloads")
    # WHEN the worker takes its tasks
    assert w.run(threading.Event(), max_tasks=2) == 2
    # THEN each is reported failed on its first attempt, naming the flag, and deleted
    results = posted(clients, settings)
    assert sorted((r.shard_id, r.status, r.attempt) for r in results) == [(0, "failed", 1), (1, "failed", 1)]
    for r in results:
        assert r.error is not None
        assert f"entrypoint '{UNTRUSTED}:train' is not allowed on this worker" in r.error
        assert "--allow 'tests.*'" in r.error
    assert queue_depth(clients["sqs"], settings.task_queue_url) == 0
    # AND nothing of the module ran, not even its top level
    assert not mark.exists()
    assert UNTRUSTED not in sys.modules
    # AND the job accounts for both shards: it ends FAILED, not waiting for them
    engine.ingest([Outcome(r) for r in results])
    view = engine.status("evil")
    assert (view.status, view.failed) == ("FAILED", 2)


def test_a_refused_module_in_a_package_of_its_own_imports_not_even_the_package(
    engine: Engine, settings: Settings, clients: dict[str, Any], mark: Path
) -> None:
    # GIVEN a task naming pkg.sub:train where pkg is not imported yet and not allowed (a new user's
    # trial found the worker's code fingerprint locating pkg.sub, which ran pkg/__init__.py)
    package = "tests.worker.untrusted_pkg"
    assert package not in sys.modules
    engine.submit(make_request("map", job_id="evil-pkg", shards=1, entrypoint=f"{package}.sub:train"))
    w = strict_worker(settings, clients, "examples.*")
    # WHEN the worker takes it
    assert w.poll_once() is True
    # THEN it is refused, records no code version, and the package's top level never ran
    (r,) = posted(clients, settings)
    assert (r.status, r.attempt, r.code_version) == ("failed", 1, None)
    assert "nothing was imported" in (r.error or "")
    assert not mark.exists()
    assert package not in sys.modules


def test_a_time_limited_task_is_refused_before_its_child_process_starts(
    engine: Engine, settings: Settings, clients: dict[str, Any], mark: Path
) -> None:
    engine.submit(
        make_request(
            "map", job_id="evil-t", shards=1, entrypoint=f"{UNTRUSTED}:train", task_timeout_seconds=60
        )
    )
    w = strict_worker(settings, clients, "examples.*")
    assert w.poll_once() is True
    (r,) = posted(clients, settings)
    assert (r.status, r.attempt) == ("failed", 1)
    assert "--allow" in (r.error or "")
    assert not mark.exists()


def test_the_child_process_checks_the_allow_list_too(tmp_path: Path, mark: Path) -> None:
    # run_isolated is reached only after the worker's own check; the child refuses on its own as well.
    task = ShardTask(
        job_id="j", round=0, shard_id=0, shard_count=1, task_type="train", kind="map",
        entrypoint=f"{UNTRUSTED}:train", data={"start": 0, "end": 1}, hyperparameters={},
        output_prefix="s3://b/jobs/j/",
    )  # fmt: skip
    (tmp_path / "out").mkdir()
    ctx = TaskContext(
        data={}, work_dir=tmp_path, output_dir=tmp_path / "out", init_model_path=None,
        logger=logging.LoggerAdapter(logging.getLogger("test"), {}), fetch=Path,
    )  # fmt: skip
    with pytest.raises(IsolatedTaskError, match="not allowed on this worker") as refused:
        run_isolated(f"{UNTRUSTED}:train", task, ctx, 60, allow=AllowList.parse("examples.*"))
    assert refused.value.permanent
    assert not mark.exists()


def test_a_reduce_task_of_a_module_outside_the_allow_list_fails_and_imports_nothing(
    engine: Engine, settings: Settings, clients: dict[str, Any], mark: Path
) -> None:
    # GIVEN a data_parallel round whose train tasks ran (a worker pinned to an allowed function by
    # --entrypoint) and whose reduce task names the job's own, untrusted module
    engine.submit(make_request(job_id="evil-r", shards=2, rounds=1, entrypoint=f"{UNTRUSTED}:train"))
    pinned = strict_worker(settings, clients, "tests.workloads", entrypoint="tests.workloads:ok")
    assert pinned.run(threading.Event(), max_tasks=2) == 2
    engine.ingest([Outcome(r) for r in posted(clients, settings)])
    # WHEN a worker that allows only tests.workloads takes the reduce
    strict = strict_worker(settings, clients, "tests.workloads")
    assert strict.poll_once() is True
    # THEN it is reported failed at once, naming the flag, and the module was never imported
    (reduce,) = posted(clients, settings)
    assert (reduce.task_type, reduce.status, reduce.attempt) == ("reduce", "failed", 1)
    assert "--allow" in (reduce.error or "")
    assert not mark.exists()
    assert UNTRUSTED not in sys.modules
    assert queue_depth(clients["sqs"], settings.task_queue_url) == 0
