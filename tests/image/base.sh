#!/bin/sh
# The local stand-in for the Dockerfile's default base (python:3.11-slim-bookworm, which cannot
# be pulled where CI runs): Debian 12 with python3 and its venv module, made with debootstrap
# from Debian's mirror, written as a tarball for `podman import`.
# Usage: base.sh OUTPUT.tar. tests/image_build.py caches the tarball under a hash of this file,
# so changing anything here makes the next test run build a new one.
set -eu
out=$1
root=$(mktemp -d /var/tmp/wgpy-base.XXXXXX)
# --one-file-system: never into a /proc or /sys that an interrupted debootstrap left mounted
trap 'rm -rf --one-file-system "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$root" http://deb.debian.org/debian >/dev/null
# What Debian's own slim images leave out: package caches and lists, documentation, man
# pages and translations (none is read at run time).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/var/log/* "$root"/var/cache/debconf/*-old
tar --numeric-owner -C "$root" -cf "$out.tmp" .
mv "$out.tmp" "$out"
