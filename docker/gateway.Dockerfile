# syntax=docker/dockerfile:1
# The DAP gateway: MN-CSE (HTTP 8081, CoAP 5683/udp, MQTT binding) and uplink to the head-end,
# with /metrics and /health on 9110. Built from the repository root for a Raspberry Pi and a PC:
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 \
#       -f docker/gateway.Dockerfile -t gridm2m/gateway .
#
# The fleet emulator runs from the same image, without the gateway's health check:
#   docker run --no-healthcheck gridm2m/gateway fleet --config /etc/gridm2m/fleet.toml
# Configuration: /etc/gridm2m/gateway.toml (a copy of configs/), overridden by
# GRIDM2M_GATEWAY__* environment variables; state in the volume /var/lib/gridm2m.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
# PyPI has no linux/arm/v7 wheels of uvloop: it is compiled here, and only here, so that the
# compilers stay out of the runtime image.
# Not pinned: the base image's Debian release fixes the version, and a pin breaks at its next
# point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
# e.g. --build-arg PIP_EXTRA_INDEX_URL=https://www.piwheels.org/simple: prebuilt armv7 wheels
# instead of compiling under emulation.
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
RUN python -m venv /opt/gridm2m
WORKDIR /src
# The whole context: .dockerignore leaves out tests, docs, local state and secrets, so that a
# package added to pyproject.toml needs no change here.
COPY . .
# --prefer-binary: an older release with a wheel beats a newer sdist that needs Rust to build
# (cbor2 6 has no armv7 wheel; cbor2 5 has a pure-Python one).
RUN /opt/gridm2m/bin/pip install --prefer-binary . \
    && /opt/gridm2m/bin/gridm2m --help >/dev/null

FROM ${PYTHON_IMAGE}
# A fixed UID so that a bind-mounted data directory can be given to it on the host
# (chown 10001:10001 DIR); a named volume takes the ownership of /var/lib/gridm2m by itself.
RUN groupadd --system --gid 10001 gridm2m \
    && useradd --system --uid 10001 --gid gridm2m --home-dir /var/lib/gridm2m \
        --no-create-home --shell /usr/sbin/nologin gridm2m \
    && install -d -o gridm2m -g gridm2m -m 0750 /var/lib/gridm2m
COPY --from=builder /opt/gridm2m /opt/gridm2m
COPY configs/ /etc/gridm2m/
COPY docker/healthcheck.py /opt/gridm2m/healthcheck.py
# In a container the published ports are the firewall: listen on every interface.
ENV PATH=/opt/gridm2m/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GRIDM2M_DATA_DIR=/var/lib/gridm2m \
    GRIDM2M_GATEWAY__CSE__HTTP__HOST=0.0.0.0 \
    GRIDM2M_GATEWAY__OPS__HOST=0.0.0.0
VOLUME /var/lib/gridm2m
WORKDIR /var/lib/gridm2m
# Numeric, so that a runtime can check it is not root (runAsNonRoot) without /etc/passwd.
USER 10001:10001
EXPOSE 8081/tcp 5683/udp 9110/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/opt/gridm2m/healthcheck.py", "http://127.0.0.1:9110/health"]
ENTRYPOINT ["gridm2m"]
CMD ["gateway", "--config", "/etc/gridm2m/gateway.toml"]
