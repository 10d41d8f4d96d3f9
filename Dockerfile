# syntax=docker/dockerfile:1
# The SafeRollout operator image: `python -m saferollout run`, non-root, with the PostgreSQL client tools the
# snapshot provider runs (pg_dump, pg_restore, psql). The Helm chart runs it with a read-only root filesystem,
# an emptyDir at /tmp and the snapshot volume at /var/lib/saferollout/snapshots.
#
# The Debian release decides the client's major version: bookworm ships 15 (the version the tests run),
# trixie ships 17. pg_dump refuses servers newer than itself, so build for your newest server:
#   docker build -t saferollout/operator:0.1.0 .
#   docker build --build-arg DEBIAN_RELEASE=trixie -t saferollout/operator:0.1.0-pg17 .
# With no Docker engine and no registry: `make image` (scripts/image.sh) builds the base image itself and then
# runs buildah on this file.
ARG DEBIAN_RELEASE=bookworm
FROM python:3.11-slim-${DEBIAN_RELEASE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client \
 && rm -rf /var/lib/apt/lists/* \
 && pg_dump --version && pg_restore --version && psql --version

# The build machine's pip index settings, when it has any (scripts/image.sh passes them as build args, so they
# stay out of the image's files; unset, pip uses its defaults).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG PIP_DEFAULT_TIMEOUT
# Only what the package needs (see .dockerignore): a change to tests or docs does not rebuild this layer.
WORKDIR /src
COPY pyproject.toml ./
COPY operator ./operator
# The kubernetes client ships an asyncio copy of itself (kubernetes/aio, ~70 MB of the image's ~390) that nothing
# imports: the operator uses the synchronous client, kopf talks to the API itself (or via kubernetes_asyncio).
RUN pip install --no-cache-dir . \
 && rm -rf /src \
 && rm -rf "$(python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("kubernetes").origin))')/aio" \
 && python -c "import saferollout, kopf, psycopg, kubernetes.client, kubernetes.config"

# Numeric UID/GID so Kubernetes' runAsNonRoot can verify them; HOME in /tmp, the only writable place
# besides the snapshot volume once the root filesystem is read-only.
RUN groupadd --system --gid 10001 saferollout \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin saferollout \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/saferollout /var/lib/saferollout/snapshots
ENV HOME=/tmp
WORKDIR /tmp
USER 10001:10001

# /metrics and /healthz (SAFEROLLOUT_METRICS_PORT). No HEALTHCHECK: the Kubernetes probes do that.
EXPOSE 8080
ENTRYPOINT ["python", "-m", "saferollout", "run"]
