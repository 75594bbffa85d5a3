# wgpy supervisor image. Build: docker build -t registry.example.org/wgpy:0.1.0 .
# (or podman build; docs/operator-guide.md, "Building the image", lists the build arguments).
#
# No `# syntax=` line on purpose: it makes BuildKit pull a frontend image from a registry
# before it reads this file, so an offline or mirrored build fails. Nothing here needs more
# than the frontend built into Docker, podman and buildah.
#
# BASE: any Debian-based image with python3 (>= 3.11) and its venv module; both stages use it,
# so a wheel compiled in the build stage matches the runtime's ABI and /opt/venv's interpreter
# link resolves in the runtime stage. The default is the upstream slim image pinned by digest
# (the tag alone moves with every Debian point release).
ARG BASE=docker.io/library/python:3.11.13-slim-bookworm@sha256:86adf8dbadc3d6e82ee5dd2c74bec2e1c2467cdad47886280501df722372d2e1

FROM ${BASE} AS build
# Debian packages for compiling dependencies that have no wheel for the target architecture
# (every dependency has one for x86_64 and aarch64; e.g. "gcc libc6-dev libffi-dev"). They stay
# in this stage: the runtime stage copies only /opt/venv.
ARG BUILD_PACKAGES=""
RUN if [ -n "$BUILD_PACKAGES" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $BUILD_PACKAGES \
        && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY requirements/runtime.lock requirements/
# One virtual environment, /opt/venv, the only thing the runtime stage takes. The lock's every
# file is checked against its hash (pip refuses anything unpinned or unhashed). The lock also
# pins the build backend (setuptools, wheel), so wgpy below is built with a tested setuptools,
# offline; the backend and pip are uninstalled afterwards, and test extras are never installed.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
        --require-hashes -r requirements/runtime.lock
# Only what the package build reads (.dockerignore keeps tests, .git and caches out anyway).
COPY pyproject.toml README.md ./
COPY noise/ noise/
COPY tun/ tun/
COPY wgpy/ wgpy/
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-compile \
        --no-deps --no-build-isolation --no-index . \
    && /opt/venv/bin/pip uninstall --yes --disable-pip-version-check setuptools wheel pip
# What the supervisor does not use (docs/operator-guide.md, "Building the image", has the
# sizes). The kubernetes package ships two generated clients, kubernetes.client (synchronous)
# and kubernetes.aio.client; wgpy uses only the second (tests/test_dockerfile.py checks its
# imports). `import kubernetes` still imports the first, whose package __init__ files load API
# and model modules lazily, on first attribute access: so the synchronous client's API and
# model modules (33 MB of source) are removed and their __init__ files kept.
# Then the venv is byte-compiled, except the asyncio client's generated API and model modules
# (24 MB of .pyc for modules loaded one per API group or model used), but for the three API
# groups the supervisor calls: compiling core_v1_api.py (6 MB of source) at start-up alone
# would more than double its peak memory. tests/test_dockerfile.py checks this list against
# the APIs wgpy uses. unchecked-hash: a .pyc is used without comparing source timestamps,
# which COPY need not keep.
RUN k8s=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/kubernetes \
    && find "$k8s/client/api" "$k8s/client/models" -name '*.py' ! -name __init__.py -delete \
    && find "$k8s" -name '*_test.py' -delete \
    && /opt/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        -x '/kubernetes/(aio/)?client/(api|models)/(?!__init__)[^/]+\.py$' /opt/venv/lib \
    && /opt/venv/bin/python -m compileall -q --invalidation-mode unchecked-hash \
        "$k8s/aio/client/api/coordination_v1_api.py" "$k8s/aio/client/api/core_v1_api.py" \
        "$k8s/aio/client/api/discovery_v1_api.py"

FROM ${BASE}
LABEL org.opencontainers.image.title="wgpy" \
      org.opencontainers.image.description="Userspace WireGuard and a kube-vip-style supervisor" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /opt/venv /opt/venv
# The root filesystem is read-only in the DaemonSet: never try to write .pyc files.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Root on purpose. The supervisor opens /dev/net/tun (TUNSETIFF) and sets the VIP, link state
# and routes over netlink in the pod's network namespace: all need CAP_NET_ADMIN.
# Kubernetes cannot give a non-root process an ambient capability, so a non-root user would
# hold NET_ADMIN only in its bounding set, not in its effective set. deploy/daemonset.yaml
# therefore runs as UID 0 with every capability dropped except NET_ADMIN, no privilege
# escalation, a read-only root filesystem and its own network namespace
# (tests/test_image.py runs this image under exactly those settings).
USER root
# /healthz, /readyz and /metrics (the DaemonSet passes --http-port=2112).
EXPOSE 2112
ENTRYPOINT ["wgpy", "supervisor"]
