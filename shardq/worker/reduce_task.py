"""Running a reduce task: the module's own ``reduce`` on every shard model, else the streamed FedAvg
(``shardq.worker.reduce``) and then the job's server strategy (``shardq.worker.strategies``).

``ReduceTasks`` is a part of ``shardq.worker.runtime.Worker`` (a mixin over ``TaskFiles``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from shardq.core.artifacts import read_bytes
from shardq.core.contracts import ShardTask
from shardq.core.fedbuff_params import weighs_cache
from shardq.core.planning import split_s3
from shardq.worker.artifacts import TaskFiles, uri_name
from shardq.worker.aws import error_code
from shardq.worker.context import TaskContext
from shardq.worker.entrypoints import resolve
from shardq.worker.fedbuff import average_step
from shardq.worker.fedbuff import server_step as fedbuff_step
from shardq.worker.fedbuff_cached import cached_step
from shardq.worker.reduce import InputModel, ModelError, average_stream, evaluate_model
from shardq.worker.strategies import SERVER_STATE_NAME, apply_strategy, needs_server_step

if TYPE_CHECKING:
    from shardq.worker.trust import AllowList

log = logging.getLogger("shardq.worker")


class ReduceTasks(TaskFiles):
    """The reduce half of a worker; the loop (``Worker``) supplies ``entrypoint``, ``trusted`` and
    ``_call`` (the user's function, in this thread or isolated)."""

    entrypoint: str | None

    if TYPE_CHECKING:

        @property
        def trusted(self) -> AllowList: ...

        def _call(
            self,
            entrypoint: str,
            fn: Callable[..., Any],
            task: ShardTask,
            ctx: TaskContext,
            abandoned: threading.Event | None,
        ) -> dict[str, Any]: ...

    def _reduce(
        self,
        task: ShardTask,
        ctx: TaskContext,
        fn: Callable[..., Any] | None,
        tmp: Path,
        abandoned: threading.Event | None = None,
    ) -> dict[str, Any]:
        """The module's own ``reduce`` on every downloaded model, else the streamed FedAvg (then the
        job's server strategy, if it has one)."""
        if task.inputs_uri is None:
            raise ValueError(f"reduce task {task.key} has no inputs_uri")
        stepping = needs_server_step(task.strategy) and fn is None
        if stepping and ctx.init_model_path is None:
            raise ModelError(
                f"strategy {task.strategy.get('name')} steps from the round's global model, but reduce task "
                f"{task.key} has no init_model_uri: give the job a starting model (model.init_uri)"
            )
        bucket, key = split_s3(task.inputs_uri)
        raw = self._s3(f"read {task.inputs_uri}", read_bytes, self.s3, bucket, key)
        inputs = json.loads(raw)
        # model_uri since the model became explicit; artifact_uri in inputs written before.
        models = [
            (str(m.get("model_uri") or m["artifact_uri"]), int(m["num_samples"])) for m in inputs["models"]
        ]
        if fn is not None:
            for i, (uri, weight) in enumerate(models):
                path = self._download(uri, tmp / "inputs" / str(i) / uri_name(uri))
                ctx.input_models.append(InputModel(path, weight))
            return self._call(self.entrypoint or task.entrypoint, fn, task, ctx, abandoned)
        scored: Path | None = None  # a model other than ctx.model_path the job returns (its average)
        if task.strategy.get("name") == "fedbuff" and ctx.init_model_path is not None:
            # FedBuff: the global model moves by the buffer's staleness-weighted deltas (calibrated
            # by the clients' cached updates when the aggregator sent a ``calibration`` section).
            step = (
                partial(
                    cached_step, calibration=inputs["calibration"], weigh_cache=weighs_cache(task.strategy)
                )
                if "calibration" in inputs
                else fedbuff_step
            )
            ctx.model_path = step(
                ctx.init_model_path,
                inputs["fedbuff"],
                lambda uri, name: self._download(uri, tmp / "fedbuff" / name),
                ctx.output_dir / uri_name(str(task.init_model_uri)),
                # the aggregator's step size for this version (server_lr_schedule); inputs written
                # before it named one: the strategy's constant server_lr
                server_lr=float(inputs.get("server_lr", task.strategy.get("server_lr", 1.0))),
            )
            if "average" in inputs:  # a model_average: the job's model is the versions' average
                scored = average_step(
                    ctx.model_path,
                    inputs["average"],
                    lambda uri, name: self._download(uri, tmp / "fedbuff" / name),
                )
        else:
            ctx.model_path = average_stream(
                self._one_at_a_time(models, tmp / "inputs"),
                [w for _, w in models],
                ctx.output_dir,
                name=uri_name(models[0][0]) if models else None,
            )
        if stepping and ctx.init_model_path is not None and "fedbuff" not in inputs:
            state = self._server_state(task, tmp)
            apply_strategy(task.strategy, ctx.model_path, ctx.init_model_path, state, round_no=task.round)
        outcome: dict[str, Any] = {"num_samples": inputs["total_samples"]}
        evaluate = resolve(self.entrypoint or task.entrypoint, "evaluate_global", self.trusted)
        if evaluate is not None:  # the module's hook scores the new global model (what the job returns)
            outcome["metrics"] = evaluate_model(evaluate, task, scored or ctx.model_path, ctx)
        return outcome

    def _server_state(self, task: ShardTask, tmp: Path) -> Path | None:
        """The previous round's server state, downloaded; None in the first round (state at zero).

        A missing object where one is named (the previous reduce's output deleted, e.g. by a
        lifecycle rule) also starts at zero, with a warning: failing would end a job whose
        rounds can still go on.
        """
        uri = task.data.get("server_state_uri")
        if not uri:
            return None
        try:
            return self._download(str(uri), tmp / "state" / SERVER_STATE_NAME)
        except ClientError as exc:
            if error_code(exc) not in ("404", "NoSuchKey"):
                raise
            log.warning(
                "server state %s is missing; the strategy's state starts at zero this round",
                uri,
                extra={"job_id": task.job_id, "round": task.round},
            )
            return None

    def _one_at_a_time(self, models: list[tuple[str, int]], where: Path) -> Iterator[Path]:
        """Each shard model downloaded when asked for, deleted once the next is asked for."""
        for i, (uri, _) in enumerate(models):
            if uri.endswith("/") or not Path(urlparse(uri).path).suffix:
                raise ModelError(
                    f"shard model {i} is {uri}, a prefix, not a model file: its worker saved several files "
                    "and none named model.<ext>; set ctx.model_path in the training function"
                )
            path = self._download(uri, where / f"{i:06d}-{uri_name(uri)}")
            yield path
            path.unlink(missing_ok=True)
