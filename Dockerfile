# shardq worker image: the worker runtime, the CLI and the example training functions.
#
# The fleet (stacks/components/fleet.py) references this file as a CDK asset: `cdk synth` only copies
# the build context into cdk.out, and `cdk deploy` builds and pushes it where Docker runs.
#
#   docker build -t shardq-worker .                                  # CUDA + PyTorch base (GPU fleet)
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -t shardq-worker:cpu .   # CPU (Fargate)
#
# BASE_IMAGE must provide Python >= 3.11 as `python`; bring your own training code by building FROM
# this image (or set the fleet's context keys fleet_image_uri to an image of your own and fleet_allow
# to its packages: the stack's fleet sets SHARDQ_ALLOW from fleet_allow, default examples.*).
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/shardq
COPY requirements-worker.txt ./
RUN python -m pip install -r requirements-worker.txt

COPY pyproject.toml ./
COPY shardq/ shardq/
COPY examples/ examples/
RUN python -m pip install --no-deps . \
    && python -c "import shardq.worker.runtime, shardq.worker.protection, examples.linear"

# Unprivileged at run time; entrypoints such as examples.linear:train resolve from /opt/shardq.
# The worker runs only the code this image ships (docs/SECURITY.md); an image FROM this one that
# adds a package sets SHARDQ_ALLOW to it.
ENV SHARDQ_ALLOW=examples.*
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin shardq
USER 10001

# ECS stops tasks with SIGTERM: the worker finishes or releases its shard (--grace-seconds), see
# shardq/worker/supervisor.py. Queue URLs come from SHARDQ_* environment variables.
ENTRYPOINT ["shardq", "worker"]
CMD ["--log-format", "json"]
