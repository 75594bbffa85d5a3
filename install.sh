#!/usr/bin/env bash
# Installs wgpy and everything its tests need on a Debian machine, into ./.venv, from the
# lock file (requirements/test.lock). Run as root (apt-get). Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
export DEBIAN_FRONTEND=noninteractive
# gcc, python3-dev and libssl-dev build python-pytun and the fast path's C part (wgpy.io._batch)
pkgs=(python3 python3-venv python3-dev gcc libssl-dev iproute2 iputils-ping util-linux wireguard-go wireguard-tools iperf3 tcpdump tshark procps kmod nftables)
# The image test (tests/test_image.py): podman with runc (Debian 12's crun 1.8 refuses these
# VMs' cgroup layout), and debootstrap for the local Debian base it builds the image on.
pkgs+=(podman runc debootstrap)
# The kernel-uml interop peer's root filesystem (debootstrap, and busybox for its command
# channel); its kernel's build dependencies are installed by the build itself, when it builds.
pkgs+=(busybox-static)
# kubectl (Debian: kubernetes-client) for the deploy/ dry-run tests; an existing kubectl from
# another package (e.g. the Cloud SDK's) is kept, as installing over it would conflict
command -v kubectl >/dev/null 2>&1 || pkgs+=(kubernetes-client)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
# Exactly the versions CI tested, each file checked against its hash (requirements/refresh
# moves them); then wgpy itself, editable, built by the locked setuptools.
.venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes \
  -r requirements/test.lock
# (setuptools warns about every editable build: shown only if the build fails)
if ! log=$(.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps \
  --no-build-isolation -e . 2>&1); then
  echo "$log" >&2
  exit 1
fi
echo "wgpy installed in $(pwd)/.venv"
# The fast path's compiled part (wgpy/io/_batch.c: gcc, python3-dev, libssl-dev) is optional
# for the build; without it the fast path works in Python, at about twice the CPU per GB.
.venv/bin/python -c 'from wgpy.io import accel; accel.batch or print("warning: wgpy.io._batch", accel.reason)' >&2
# The kernel's WireGuard as a User-Mode Linux guest, for the kernel interop tests: built once per
# machine and recipe (about 5 minutes), found in /var/cache/wgpy/uml afterwards (about 0.1 s).
# WGPY_UML_KERNEL=/path/to/linux uses a prebuilt kernel instead.
# A failed build does not fail the install (wgpy itself works without it): the kernel tests then
# say how to build it, and fail under CI.
if ! .venv/bin/python -m wgpy.testbed.uml; then
  echo "warning: the kernel-uml guest could not be built; kernel interop tests will skip" \
       "(retry: .venv/bin/python -m wgpy.testbed.uml)" >&2
fi
