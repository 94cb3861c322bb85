# syntax=docker/dockerfile:1
# The head-end stub: IN-CSE (HTTP 8080, optional MQTT binding), MDMS store and dashboard (8090).
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#       -f docker/headend.Dockerfile -t gridm2m/headend .
#
# Configuration: /etc/gridm2m/headend.toml (a copy of configs/), overridden by
# GRIDM2M_HEADEND__* environment variables; state in the volume /var/lib/gridm2m.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# For any dependency without a wheel for the target (none on amd64/arm64 today).
# Not pinned: the base image's Debian release fixes the version, and a pin breaks at its next
# point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
RUN python -m venv /opt/gridm2m
WORKDIR /src
# The whole context: .dockerignore leaves out tests, docs, local state and secrets, so that a
# package added to pyproject.toml needs no change here.
COPY . .
RUN /opt/gridm2m/bin/pip install --prefer-binary . \
    && /opt/gridm2m/bin/gridm2m --help >/dev/null

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 gridm2m \
    && useradd --system --uid 10001 --gid gridm2m --home-dir /var/lib/gridm2m \
        --no-create-home --shell /usr/sbin/nologin gridm2m \
    && install -d -o gridm2m -g gridm2m -m 0750 /var/lib/gridm2m
COPY --from=builder /opt/gridm2m /opt/gridm2m
COPY configs/ /etc/gridm2m/
COPY docker/healthcheck.py /opt/gridm2m/healthcheck.py
ENV PATH=/opt/gridm2m/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRIDM2M_DATA_DIR=/var/lib/gridm2m \
    GRIDM2M_HEADEND__CSE__HTTP__HOST=0.0.0.0 \
    GRIDM2M_HEADEND__DASHBOARD__HOST=0.0.0.0
VOLUME /var/lib/gridm2m
WORKDIR /var/lib/gridm2m
# Numeric, so that a runtime can check it is not root (runAsNonRoot) without /etc/passwd.
USER 10001:10001
EXPOSE 8080/tcp 8090/tcp
# The web server's /health: the IN-CSE answers a RETRIEVE of its CSEBase in process (2000 only
# when core and storage work). It needs no login and tells nothing else.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/gridm2m/healthcheck.py", "http://127.0.0.1:8090/health"]
ENTRYPOINT ["gridm2m"]
CMD ["headend", "--config", "/etc/gridm2m/headend.toml"]
