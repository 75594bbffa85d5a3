# syntax=docker/dockerfile:1
#
# wgpy supervisor image: `docker build -t registry.example.org/wgpy:0.1.0 .`
#
# Two stages so that no compiler ends up in the image: the build stage turns wgpy and every
# dependency into wheels (python-pytun, PyNaCl and cryptography ship manylinux wheels for
# x86_64, but on other architectures some have to be compiled), the runtime stage installs
# those wheels offline from a bind mount, so the wheels never become an image layer either.
# Both stages use the same exact base tag, so the compiled wheels match the runtime's ABI.
# For reproducible builds pin the base by digest too: python:3.11.13-slim-bookworm@sha256:...

FROM python:3.11.13-slim-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libffi-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the package build reads (.dockerignore keeps tests, .git and caches out anyway).
COPY pyproject.toml README.md ./
COPY noise/ noise/
COPY tun/ tun/
COPY wgpy/ wgpy/
# Runtime dependencies only: no [test] extra.
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11.13-slim-bookworm
LABEL org.opencontainers.image.title="wgpy" \
      org.opencontainers.image.description="Userspace WireGuard and a kube-vip-style supervisor" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels wgpy
# Root on purpose. The supervisor opens /dev/net/tun (TUNSETIFF) and sets the VIP, link state
# and routes over netlink in the pod's network namespace: all need CAP_NET_ADMIN.
# Kubernetes cannot give a non-root process an ambient capability, so a non-root user would
# hold NET_ADMIN only in its bounding set, not in its effective set. deploy/daemonset.yaml
# therefore runs as UID 0 with every capability dropped except NET_ADMIN, no privilege
# escalation, a read-only root filesystem and its own network namespace.
USER root
# /healthz, /readyz and /metrics (the DaemonSet passes --http-port=2112).
EXPOSE 2112
ENTRYPOINT ["wgpy", "supervisor"]
