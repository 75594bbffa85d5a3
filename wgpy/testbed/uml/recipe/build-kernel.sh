#!/bin/sh
# Builds the User-Mode Linux kernel with WireGuard built in; run by wgpy/testbed/uml/build.py,
# which picks the scratch directory and caches the result.
# Usage: build-kernel.sh SCRATCH OUTPUT    (OUTPUT: the stripped kernel binary)
# Source: Debian's linux-source-6.1 (/usr/src), config: Debian's user-mode-linux package with
# every module dropped, then kernel.config; patch: uml-xstate-bounce.patch (see its header).
set -eu
scratch=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
cd "$scratch"
tar -xf /usr/src/linux-source-6.1.tar.xz
src=$scratch/linux-source-6.1
patch -s -d "$src" -p1 < "$here/uml-xstate-bounce.patch"
apt-get download -q user-mode-linux >/dev/null
dpkg -x user-mode-linux_*.deb umlpkg
obj=$scratch/obj
mkdir -p "$obj"
zcat umlpkg/usr/share/doc/user-mode-linux/config.gz \
  | sed 's/^\(CONFIG_[A-Za-z0-9_]*\)=m$/# \1 is not set/' > "$obj/.config"
grep -v '^#' "$here/kernel.config" | while read -r op name value; do
  [ -n "$op" ] || continue
  # shellcheck disable=SC2086 # value is empty except for set-str
  "$src/scripts/config" --file "$obj/.config" "--$op" "$name" $value
done
make -s -C "$src" O="$obj" ARCH=um olddefconfig
grep -q '^CONFIG_WIREGUARD=y' "$obj/.config" || { echo "CONFIG_WIREGUARD is not =y" >&2; exit 1; }
nice -n 10 make -s -C "$src" O="$obj" ARCH=um -j"$(nproc)" linux
strip -o "$out" "$obj/linux"
