"""The ``submit`` command: validate a TrainingRequest and start the job through the splitter.

A submit invokes the splitter Lambda (the same path as ``aws lambda invoke``), so the CLI never
needs more than the permissions an operator has anyway; ``--direct`` runs the splitter's logic here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shardq.cli.common import (
    EXIT_OK,
    AwsError,
    CliError,
    aws_errors,
    engine_for,
    print_json,
    require_output,
    session_client,
    stack_outputs,
)

if TYPE_CHECKING:
    pass


from shardq.cli.watch import watch


def load_request(path: str) -> dict[str, Any]:
    """The request JSON from a file, or stdin for ``-``; CliError (exit 2) when unreadable."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(
            f"cannot read {path}: {exc.strerror or exc}; give the path of a request JSON file"
        ) from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON ({exc}); fix the file (a TrainingRequest object)") from exc
    if not isinstance(data, dict):
        raise CliError(f"{path} must hold a JSON object (a TrainingRequest), got {type(data).__name__}")
    return data


def validate(payload: dict[str, Any]) -> None:
    """Validate locally with the splitter's own model; CliError (exit 2) with the same problems text."""
    from shardq.core.contracts import TrainingRequest, ValidationError

    try:
        TrainingRequest.from_dict(payload)
    except ValidationError as exc:
        raise CliError(f"{exc}\nnothing was submitted; fix the request and submit again") from None


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate a request locally, choose and print its job id, invoke the splitter; ``--wait``
    watches it.

    The id is chosen here (unless the request or ``--job-id`` gives one) and printed before
    anything is created, so a submit that fails midway (the job created, its fan-out cut short)
    is finished by submitting the same request under that id: the splitter sends from the job's
    cursor and nothing twice.
    """
    from shardq.core.engine import new_job_id
    from shardq.core.fanout import FanOutError

    payload = load_request(args.request)
    if args.job_id:
        payload["job_id"] = args.job_id
    validate(payload)
    outputs = stack_outputs(args)
    if not args.direct:
        require_output(outputs, "SplitterFunctionName", args)
    job_id = str(payload.get("job_id") or new_job_id())
    payload["job_id"] = job_id
    # stdout carries the id alone (for $(...)); with --json, stdout is the answer's JSON.
    print(
        f"job id: {job_id}" if args.json else job_id, file=sys.stderr if args.json else sys.stdout, flush=True
    )
    try:
        with aws_errors(args):
            answer = (
                _submit_direct(args, outputs, payload)
                if args.direct
                else _invoke_splitter(args, outputs, payload)
            )
    except AwsError as exc:
        # The splitter may have created the job before it failed: say how to finish it.
        raise AwsError(f"{exc}\n{resubmit_hint(args, job_id)}") from None
    except FanOutError as exc:  # --direct: the fan-out failed in this process
        raise AwsError(f"the fan-out of job {job_id} failed: {exc}\n{resubmit_hint(args, job_id)}") from exc
    if not answer.get("ok"):
        problems = answer.get("problems") or [answer.get("message", "rejected")]
        lines = "\n".join(f"  - {p}" for p in problems)
        # The id went to stdout before the answer (for $(...)): say that it names nothing new.
        raise CliError(
            f"the splitter rejected the request ({answer.get('error')}):\n{lines}\n"
            f"nothing was created by this submit (the id {job_id} printed above names no new job); "
            "fix the request and submit again"
        )
    if args.json:
        print_json(answer)
    else:
        from shardq.core.contracts import TrainingRequest
        from shardq.core.tally import request_plan_text

        note = "submitted" if answer.get("created", True) else "already submitted (same request, same id)"
        # The plan as status and watch word it: rungs of a halving sweep, a round's sample.
        plan = request_plan_text(TrainingRequest.from_dict(payload))
        if answer.get("status") == "WAITING":  # a pipeline job (shardq.core.pipeline)
            plan += f"; WAITING until job {payload['after']['job_id']} succeeds"
        print(f"{note}: {plan}; follow it with: shardq watch {job_id}", file=sys.stderr)
    if args.wait:
        return watch(args, job_id, out=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


def resubmit_hint(args: argparse.Namespace, job_id: str) -> str:
    """What to do after a submit that failed once the job may exist: the same request, same id."""
    direct = " --direct" if args.direct else ""
    return (
        f"job {job_id} may exist with only part of its tasks sent (`shardq status {job_id}` says "
        f"ENQUEUING n/N sent); submit the same request again to finish it, nothing is sent twice: "
        f"shardq submit {args.request} --job-id {job_id}{direct}"
    )


def _invoke_splitter(
    args: argparse.Namespace, outputs: dict[str, str], payload: dict[str, Any]
) -> dict[str, Any]:
    function = require_output(outputs, "SplitterFunctionName", args)
    resp = session_client("lambda", args).invoke(
        FunctionName=function, InvocationType="RequestResponse", Payload=json.dumps(payload).encode()
    )
    body = resp["Payload"].read()
    if resp.get("FunctionError"):
        detail = body.decode(errors="replace")[:500]
        raise AwsError(f"the splitter ({function}) failed: {detail}; see its CloudWatch logs")
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise AwsError(
            f"the splitter ({function}) answered with something that is not JSON: {body[:200]!r}"
        ) from exc
    if not isinstance(answer, dict):
        raise AwsError(f"the splitter ({function}) answered {answer!r:.200}; expected a JSON object")
    return answer


def _submit_direct(
    args: argparse.Namespace, outputs: dict[str, str], payload: dict[str, Any]
) -> dict[str, Any]:
    """The splitter's logic in this process, for endpoints without the splitter deployed."""
    return dict(engine_for(args, outputs).answer(payload))
