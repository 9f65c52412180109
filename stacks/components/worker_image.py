"""The worker fleet's container image: a user's image (ECR or public), or the repository's Dockerfile."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from constructs import Construct

from stacks.components._props import ComponentPropsError

# Base images of the worker Dockerfile (build arg BASE_IMAGE) when fleet_base_image is null.
DEFAULT_BASE_IMAGES = {
    "gpu": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
    "fargate": "python:3.11-slim",
}
WORKER_DOCKERFILE = "Dockerfile"
_ECR_IMAGE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?P<cn>\.cn)?/"
    r"(?P<repo>[a-z0-9._/-]+?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]*))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class EcrImage:
    """An image URI of a private ECR repository, in parts."""

    account: str
    region: str
    repository: str
    reference: str  # the digest if given, else the tag, else "latest"
    partition: str

    @property
    def repository_arn(self) -> str:
        """The repository's ARN (what the pull permission is scoped to)."""
        return f"arn:{self.partition}:ecr:{self.region}:{self.account}:repository/{self.repository}"


def parse_ecr_image(uri: str) -> EcrImage | None:
    """Split an ECR image URI; ``None`` for any other registry (nothing to grant there).

    Parameters
    ----------
    uri
        ``<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository>[:tag][@sha256:...]``.
    """
    match = _ECR_IMAGE.match(uri)
    if match is None:
        return None
    return EcrImage(
        account=match["account"],
        region=match["region"],
        repository=match["repo"],
        reference=match["digest"] or match["tag"] or "latest",
        partition="aws-cn" if match["cn"] else "aws",
    )


def worker_image(
    scope: Construct,
    *,
    kind: str,
    image_uri: str | None,
    base_image: str | None,
    dockerfile_dir: Path | None,
) -> ecs.ContainerImage:
    """The user's image (``image_uri``), else the repository's Dockerfile as a CDK asset.

    An asset is only copied into cdk.out at synth; Docker builds and pushes it at deploy time. An
    ECR image gets pull permission on its repository alone (``from_ecr_repository``).

    Raises
    ------
    ComponentPropsError
        When neither an image URI nor a directory with the Dockerfile is given.
    """
    if image_uri:
        ecr_image = parse_ecr_image(image_uri)
        if ecr_image is None:  # a public registry: nothing to grant
            return ecs.ContainerImage.from_registry(image_uri)
        repository = ecr.Repository.from_repository_attributes(
            scope,
            "WorkerImageRepository",
            repository_name=ecr_image.repository,
            repository_arn=ecr_image.repository_arn,
        )
        return ecs.ContainerImage.from_ecr_repository(repository, ecr_image.reference)
    if dockerfile_dir is None:
        raise ComponentPropsError(
            "the fleet needs an image: pass worker_image_dir (the repository with the Dockerfile) or "
            "set fleet_image_uri"
        )
    return ecs.ContainerImage.from_asset(
        str(dockerfile_dir),
        file=WORKER_DOCKERFILE,
        build_args={"BASE_IMAGE": base_image or DEFAULT_BASE_IMAGES[kind]},
        platform=ecr_assets.Platform.LINUX_AMD64,
    )
