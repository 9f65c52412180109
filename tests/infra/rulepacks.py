"""Third-party rule packs over a synthesized template: cfn-lint and checkov.

Each infra module that synthesizes a variant (default, ``fleet=gpu``, ``queue_encryption=kms``)
runs both packs on its own template (:func:`assert_cfn_lint_passes`, :func:`assert_checkov_passes`),
so no variant is synthesized twice. Every finding the stack accepts is listed here once, with the
reason; a listed one that no longer fires is reported as stale, so the lists only shrink.

cfn-lint comes from the project venv (requirements-dev.txt). checkov pins boto3/botocore 1.35,
which the project's venv cannot take (ministack pins botocore 1.43.106), so it has its own venv,
``.venv/rulepacks`` (``make rulepacks``, which ``make test`` runs); without it the checkov half
skips, saying how to get it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

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


def cfn_lint_findings(template: Path) -> tuple[list[str], set[str]]:
    """cfn-lint's findings not ignored above, and the ignored rules that fired."""
    out = subprocess.run(
        [str(CFN_LINT), "--format", "json", str(template)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    # Exit codes are a bit mask of levels (2 error, 4 warning, 8 info); anything else is a crash.
    assert out.returncode in range(16), out.stderr
    matches = json.loads(out.stdout or "[]")
    fired = {m["Rule"]["Id"] for m in matches}
    open_ = [
        f"{m['Rule']['Id']} {m['Level']} {m['Location']['Path']}: {m['Message']}"
        for m in matches
        if m["Rule"]["Id"] not in CFN_LINT_IGNORED
    ]
    return open_, fired & set(CFN_LINT_IGNORED)


def checkov_findings(template: Path, variant: str) -> tuple[list[str], set[str]]:
    """checkov's failed checks not skipped for ``variant``, and the skipped checks that failed."""
    if not CHECKOV.exists():
        pytest.skip(f"checkov is not installed at {CHECKOV}: run `make rulepacks` (make test does)")
    out = subprocess.run(
        [str(CHECKOV), "--quiet", "--compact", "--framework", "cloudformation", "-o", "json",
         "-f", str(template)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    # 1 means failed checks, which the JSON lists; anything else is a crash.
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert report["summary"]["parsing_errors"] == 0, report["summary"]
    failed = report["results"]["failed_checks"]
    skipped = {c for c, s in CHECKOV_SKIPPED.items() if variant in s.variants}
    open_ = [
        f"{f['check_id']} {f['resource']}: {f['check_name']}" for f in failed if f["check_id"] not in skipped
    ]
    return open_, {f["check_id"] for f in failed} & skipped


def assert_cfn_lint_passes(outdir: Path) -> None:
    """cfn-lint finds nothing beyond ``CFN_LINT_IGNORED``, and each ignored rule still fires."""
    lint_open, lint_fired = cfn_lint_findings(template_of(outdir))
    assert lint_open == [], "cfn-lint findings: fix them in stacks/, or list the rule with its reason"
    stale = set(CFN_LINT_IGNORED) - lint_fired
    assert not stale, f"stale cfn-lint ignores: {stale}"


def assert_checkov_passes(outdir: Path, variant: str) -> None:
    """checkov fails nothing beyond ``CHECKOV_SKIPPED`` for ``variant``, and each skip listed for
    ``variant`` still fires (a stale one is deleted, not kept)."""
    checkov_open, checkov_fired = checkov_findings(template_of(outdir), variant)
    assert checkov_open == [], "checkov findings: fix them in stacks/, or list the check with its reason"
    expected = {c for c, s in CHECKOV_SKIPPED.items() if variant in s.variants}
    stale = expected - checkov_fired
    assert not stale, f"stale checkov skips for {variant}: {stale}"
