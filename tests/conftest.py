"""Shared fixtures: the local cloud (one ministack per test session) and fresh resources per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from shardq.core.engine import Engine
from shardq.core.settings import Settings
from shardq.local.cloud import LocalCloud
from shardq.local.resources import provision
from tests import requests
from tests.helpers import Clock


@pytest.fixture(scope="session")
def cloud() -> Iterator[LocalCloud]:
    """ministack on 127.0.0.1 with a free port, stopped by its PID at the end of the session."""
    with LocalCloud() as c:
        yield c


@pytest.fixture
def make_request() -> Callable[..., dict[str, Any]]:
    """The one request builder (``tests.requests.make_request``): ``make_request("sweep", job_id=...)``."""
    return requests.make_request


@pytest.fixture
def clients(cloud: LocalCloud) -> dict[str, object]:
    """boto3 clients bound to the local cloud."""
    return {name: cloud.client(name) for name in ("sqs", "dynamodb", "s3", "events", "lambda")}


@pytest.fixture
def settings(clients: dict[str, object]) -> Settings:
    """A fresh, isolated set of queues, table and bucket for one test."""
    return provision(clients["sqs"], clients["dynamodb"], clients["s3"])


@pytest.fixture
def make_engine(
    settings: Settings, clients: dict[str, object], request: pytest.FixtureRequest
) -> Callable[..., Engine]:
    """Engines over this test's resources, with ``Engine`` options (``clock``, ``dispatch_ranges``…).
    In a test marked ``controlled_clock`` their clock is the test's ``clock`` unless one is given:
    what the engine measures (an ASHA sweep's prefetch round trip) then does not follow the load."""
    marked = request.node.get_closest_marker("controlled_clock") is not None
    clock = request.getfixturevalue("clock") if marked else None

    def make(**options: Any) -> Engine:
        if clock is not None:
            options.setdefault("clock", clock)
        return Engine(
            settings=settings,
            ddb=clients["dynamodb"],
            sqs=clients["sqs"],
            s3=clients["s3"],
            events=clients["events"],
            **options,
        )

    return make


@pytest.fixture
def engine(make_engine: Callable[..., Engine]) -> Engine:
    """The engine over this test's resources."""
    return make_engine()


@pytest.fixture
def clock() -> Clock:
    """A controlled clock at 2026-01-01 (``tests.helpers.Clock``): ``make_engine(clock=clock)``."""
    return Clock()


@pytest.fixture
def lambda_env(cloud: LocalCloud, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The environment the stack gives the Lambdas, pointed at this test's resources."""
    from lambdas import common
    from shardq.core.clients import client

    for key, value in {**cloud.env(), **settings.as_env(), "POWERTOOLS_TRACE_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "shardq")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "shardq")
    common.engine.cache_clear()
    client.cache_clear()
    yield settings
    common.engine.cache_clear()
    client.cache_clear()


# How `make test` splits the suite over its xdist workers: `--dist loadfile` (a module runs whole
# on one worker, its module-scoped fixtures built once), refined by ``suite_group``. Every module of
# tests/infra/ is one group: each worker that synthesizes pays ≈ 6 s of CPU for its first synth in
# the jsii runtime (≈ 2 s each after it), and the default stack is synthesized once per session. The
# modules that use the deployed stack (tests/e2e/conftest.py's session fixture ``stack``) share one
# deploy the same way. Each benchmark smoke run is a group of its own (a subprocess each, nothing
# shared), so the module does not run its six benchmarks one after another on one worker.
# (A custom scheduler rather than `xdist_group` marks: pytest 9.2 ignores the node id suffix
# `--dist loadgroup` relies on, pytest-dev/pytest-xdist#1386.)
DEPLOYED = ("tests/e2e/test_fast_path.py", "tests/e2e/test_local_stack.py", "tests/e2e/test_mnist_example.py")
SPREAD = ("tests/bench/test_smoke.py",)
# The longest units (``suite_group`` names), dispatched before the rest, longest first (measured:
# BENCHMARKS.md §11, round 6). xdist's own order puts the units with the most tests first, and most
# of these are one to five long tests (real worker processes, a deploy, a benchmark run, the model
# test), so they came last and the suite ended on one or two busy workers. A unit missing here
# only loses its place in the queue, nothing runs differently.
FIRST = (
    "tests/chaos/test_workers.py",
    "tests/chaos/test_model.py",
    "deployed stack",
    "tests/chaos/test_pipeline.py",
    "tests/cli/test_mlflow_track.py",
    "tests/bench/test_smoke.py::test_benchmark_runs_and_reports[import_time]",
    "tests/infra/",
    "tests/bench/test_scale_smoke.py",
    "tests/worker/test_release.py",
    "tests/bench/test_async_smoke.py",
    "tests/cli/test_terminal.py",
    "tests/bench/test_smoke.py::test_benchmark_runs_and_reports[e2e]",
    "tests/e2e/test_resume_exact.py",
    "tests/chaos/test_fedbuff.py",
    "tests/e2e/test_demo.py",
    "tests/worker/test_lease.py",
    "tests/worker/test_mnist_strategies.py",
)


def suite_group(nodeid: str) -> str:
    """The unit of work a test runs in: its module, but for the groups above."""
    module = nodeid.split("::", 1)[0]
    if module.startswith("tests/infra/"):
        return "tests/infra/"
    if module in DEPLOYED:
        return "deployed stack"
    return nodeid if module in SPREAD else module


def first_queued(queued: Iterable[str]) -> str | None:
    """The unit to dispatch next: the first of ``FIRST`` still queued, else None (the queue's order)."""
    waiting = set(queued)
    return next((unit for unit in FIRST if unit in waiting), None)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with the groups of ``suite_group``, the ``FIRST`` units dispatched first
    (xdist's own modes otherwise)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SuiteGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return suite_group(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            unit = first_queued(self.workqueue)
            if unit is not None:
                self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node: Any) -> None:
            # A worker gets its next unit when it holds its unit's last test (xdist runs a test only
            # once it knows the next), not two tests ahead as xdist does: a long unit queued behind
            # two long tests waited there while another worker went idle.
            if not node.shutting_down and self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    return SuiteGroups(config, log)


def pytest_configure(config: pytest.Config) -> None:
    # Handlers import Powertools Tracer; without X-Ray it must stay quiet and off.
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
