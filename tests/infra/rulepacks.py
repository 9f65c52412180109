"""Third-party rule packs over a synthesized template: cfn-lint and checkov.

The three variants (default, ``fleet=gpu``, ``queue_encryption=kms``) are synthesized once per
session (tests/infra/conftest.py), and each pack runs once over all three templates, both packs at
the same time (:func:`run_rule_packs`): one cfn-lint and one checkov start instead of three each
(≈ 11 s of CPU less, BENCHMARKS.md §11). Each infra module that owns a variant asserts on its
template's findings (:func:`assert_cfn_lint_passes`, :func:`assert_checkov_passes`). Every finding
the stack accepts is listed here once, with the reason; a listed one that no longer fires is
reported as stale, so the lists only shrink.

cfn-lint comes from the project venv (requirements-dev.txt). checkov pins boto3/botocore 1.35,
which the project's venv cannot take (ministack pins botocore 1.43.106), so it has its own venv,
``.venv/rulepacks`` (``make rulepacks``, which ``make test`` runs); without it the checkov half
skips, saying how to get it. checkov runs with ``--skip-download``: it would otherwise fetch its
guideline mappings from the Prisma Cloud API on every run (the tests make no network calls; the
checks and their results are the same).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
CHECKOV = REPO_ROOT / ".venv" / "rulepacks" / "bin" / "checkov"
VARIANTS = ("default", "gpu", "kms")

# cfn-lint rule → why the template keeps it. Nothing else may fire (errors, warnings alike).
CFN_LINT_IGNORED = {
    "W3005": "CDK writes DependsOn on a function's role beside the Fn::GetAtt of that role: redundant, "
    "harmless, and CDK's own output (aws-cdk-lib's Function), not something the stack chooses.",
}


@dataclass(frozen=True)
class Skip:
    """A checkov check the stack does not meet on purpose, the reason, and where it fires."""

    reason: str
    variants: tuple[str, ...] = VARIANTS


CHECKOV_SKIPPED = {
    "CKV_AWS_27": Skip(
        "SQS encryption: the queues use SSE-SQS (SqsManagedSseEnabled), which checkov does not "
        "recognise; -c queue_encryption=kms gives them a customer key, and that variant passes.",
        ("default", "gpu"),
    ),
    "CKV_AWS_119": Skip(
        "DynamoDB with a customer key: the job table is encrypted at rest with the AWS-owned key; "
        "it holds job status and result URIs, no secrets, and a CMK adds a key policy and cost."
    ),
    "CKV_AWS_18": Skip(
        "Access logging on the access-log bucket itself: logging the log bucket has no end; it "
        "receives only the artifact bucket's server access logs."
    ),
    "CKV_AWS_21": Skip(
        "Versioning on the access-log bucket: its objects are written once by the S3 logging "
        "service and expired by lifecycle; versions would only keep expired logs."
    ),
    "CKV_AWS_158": Skip(
        "Log groups with a customer key: CloudWatch Logs encrypts at rest already; the logs carry "
        "job ids and metrics, no secrets, and a CMK needs a logs.<region> key policy."
    ),
    "CKV_AWS_116": Skip(
        "Lambda DLQ: the aggregator and DLQ handlers are fed by event source mappings (failures "
        "stay on, then redrive from, the source queue); the splitter's async failures go to its "
        "on-failure destination queue (SplitterFailureQueue), the newer form of a DLQ."
    ),
    "CKV_AWS_117": Skip(
        "Lambda in a VPC: the functions reach only AWS APIs over TLS with IAM; a VPC would add NAT "
        "or endpoint cost and cold-start time and protect nothing here."
    ),
    "CKV_AWS_115": Skip(
        "Reserved concurrency: the aggregator is bounded by its event source's MaximumConcurrency "
        "(reserved concurrency is opt-in: aggregator_reserved_concurrency); the others are small, "
        "and reserving concurrency for them would take it from the account."
    ),
    "CKV_AWS_173": Skip(
        "Lambda environment encryption with a customer key: the variables hold resource names and "
        "tuning knobs, no secrets; Lambda encrypts them at rest with its service key."
    ),
    "CKV_AWS_111": Skip(
        "IAM write without constraints: the GPU fleet's instance role carries the ECS agent's "
        "policy from aws-cdk-lib's capacity provider (logs:CreateLogStream/PutLogEvents, "
        "ecr:GetAuthorizationToken on '*'); cdk-nag's IAM5 acknowledgment covers the same.",
        ("gpu",),
    ),
}


def template_of(outdir: Path) -> Path:
    """The stack's template in a synthesized cloud assembly."""
    (path,) = [p for p in outdir.glob("*.template.json") if "Bootstrap" not in p.name]
    return path


@dataclass(frozen=True)
class RulePackRun:
    """Both packs' raw findings over the variants' templates, by variant."""

    cfn_lint: dict[str, list[dict[str, Any]]]
    checkov: dict[str, list[dict[str, Any]]] | None  # None: checkov is not installed


def run_rule_packs(outdirs: dict[str, Path]) -> RulePackRun:
    """Run cfn-lint once and checkov once over every variant's template, both at the same time."""
    templates = {variant: template_of(outdir) for variant, outdir in outdirs.items()}
    lint = subprocess.Popen(
        [str(CFN_LINT), "--format", "json", *map(str, templates.values())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    check = None
    if CHECKOV.exists():
        files = [arg for path in templates.values() for arg in ("-f", str(path))]
        check = subprocess.Popen(
            [str(CHECKOV), "--quiet", "--compact", "--skip-download", "--framework", "cloudformation",
             "-o", "json", *files],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        lint_out, lint_err = lint.communicate(timeout=600)
        check_out, check_err = check.communicate(timeout=600) if check else ("", "")
    finally:
        for proc in (lint, check):
            if proc is not None and proc.poll() is None:
                proc.kill()
    # Exit codes are a bit mask of levels (2 error, 4 warning, 8 info); anything else is a crash.
    assert lint.returncode in range(16), lint_err
    by_file = {str(path): variant for variant, path in templates.items()}
    matches: dict[str, list[dict[str, Any]]] = {variant: [] for variant in templates}
    for m in json.loads(lint_out or "[]"):
        matches[by_file[m["Filename"]]].append(m)
    if check is None:
        return RulePackRun(cfn_lint=matches, checkov=None)
    # 1 means failed checks, which the JSON lists; anything else is a crash.
    assert check.returncode in (0, 1), check_err
    report = json.loads(check_out)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    failed: dict[str, list[dict[str, Any]]] = {variant: [] for variant in templates}
    for f in report["results"]["failed_checks"]:
        failed[by_file[f["file_abs_path"]]].append(f)
    return RulePackRun(cfn_lint=matches, checkov=failed)


def cfn_lint_findings(run: RulePackRun, variant: str) -> tuple[list[str], set[str]]:
    """cfn-lint's findings on ``variant`` not ignored above, and the ignored rules that fired."""
    matches = run.cfn_lint[variant]
    fired = {m["Rule"]["Id"] for m in matches}
    open_ = [
        f"{m['Rule']['Id']} {m['Level']} {m['Location']['Path']}: {m['Message']}"
        for m in matches
        if m["Rule"]["Id"] not in CFN_LINT_IGNORED
    ]
    return open_, fired & set(CFN_LINT_IGNORED)


def checkov_findings(run: RulePackRun, variant: str) -> tuple[list[str], set[str]]:
    """checkov's failed checks not skipped for ``variant``, and the skipped checks that failed."""
    if run.checkov is None:
        pytest.skip(f"checkov is not installed at {CHECKOV}: run `make rulepacks` (make test does)")
    failed = run.checkov[variant]
    skipped = {c for c, s in CHECKOV_SKIPPED.items() if variant in s.variants}
    open_ = [
        f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in failed if f["check_id"] not in skipped
    ]
    return open_, {f["check_id"] for f in failed} & skipped


def assert_cfn_lint_passes(run: RulePackRun, variant: str) -> None:
    """cfn-lint finds nothing beyond ``CFN_LINT_IGNORED`` on ``variant``, and each ignored rule still
    fires there."""
    lint_open, lint_fired = cfn_lint_findings(run, variant)
    assert lint_open == [], "cfn-lint findings: fix them in stacks/, or list the rule with its reason"
    stale = set(CFN_LINT_IGNORED) - lint_fired
    assert not stale, f"stale cfn-lint ignores: {stale}"


def assert_checkov_passes(run: RulePackRun, variant: str) -> None:
    """checkov fails nothing beyond ``CHECKOV_SKIPPED`` for ``variant``, and each skip listed for
    ``variant`` still fires (a stale one is deleted, not kept)."""
    checkov_open, checkov_fired = checkov_findings(run, variant)
    assert checkov_open == [], "checkov findings: fix them in stacks/, or list the check with its reason"
    expected = {c for c, s in CHECKOV_SKIPPED.items() if variant in s.variants}
    stale = expected - checkov_fired
    assert not stale, f"stale checkov skips for {variant}: {stale}"
