#!/bin/sh
# The guest's root filesystem: Debian 12 minbase with wireguard-tools and a few network tools,
# mounted read-only over hostfs; run by wgpy/testbed/uml/build.py, which caches it.
# Usage: mkrootfs.sh DIR MIRROR
set -eu
root=$1 mirror=$2
here=$(cd "$(dirname "$0")" && pwd)
debootstrap --variant=minbase \
  --include=wireguard-tools,iproute2,iputils-ping,netcat-openbsd,procps,coreutils \
  bookworm "$root" "$mirror" >/dev/null
# busybox (static, from the host's busybox-static): nc -ll -e for the command channel and
# poweroff -f for a clean stop, which minbase has no tools for
cp /bin/busybox "$root/bin/busybox"
install -m 755 "$here/guest-init" "$root/sbin/wgpy-init"
install -m 755 "$here/guest-agent" "$root/sbin/wgpy-agent"
mkdir -p "$root/host"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
