"""Build (or find) the User-Mode Linux kernel and root filesystem of the ``kernel-uml`` peer.

Usage::

    python -m wgpy.testbed.uml            # build what is missing (root: apt, debootstrap)
    python -m wgpy.testbed.uml --check    # exit 1 if either is missing; builds nothing

Both are cached outside the clone, under ``$WGPY_UML_CACHE`` (default ``/var/cache/wgpy/uml``),
each in a directory named after a hash of its recipe (the files in ``recipe/``), so a new clone
reuses them and a changed recipe builds anew. A lock file makes concurrent first runs wait for
one build. ``WGPY_UML_KERNEL=/path/to/linux`` uses a prebuilt kernel and skips its build.

Costs on 2 cores: kernel about 4-5 minutes (Debian's ``linux-source-6.1``), root filesystem
about 30-60 s (debootstrap from the Debian mirror apt uses).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

RECIPE = Path(__file__).resolve().parent / "recipe"
KERNEL_RECIPE = ("build-kernel.sh", "kernel.config", "uml-xstate-bounce.patch")
ROOTFS_RECIPE = ("mkrootfs.sh", "guest-init", "guest-agent")
KERNEL_ENV = "WGPY_UML_KERNEL"
CACHE_ENV = "WGPY_UML_CACHE"
DEFAULT_CACHE = "/var/cache/wgpy/uml"
KERNEL_PACKAGES = (
    *("linux-source-6.1", "build-essential", "bc", "flex", "bison", "libelf-dev"),
    *("libssl-dev", "xz-utils", "patch"),
)
ROOTFS_PACKAGES = ("debootstrap", "busybox-static")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOW_TO_GET = (
    "build it with `sudo python -m wgpy.testbed.uml` (about 5 minutes once per machine; "
    f"./install.sh does it), or point {KERNEL_ENV} at a prebuilt UML kernel"
)


class BuildError(Exception):
    """A build step failed (its output is in the message)."""


@dataclass(frozen=True)
class Images:
    """A bootable guest: the UML kernel binary and the root directory it mounts over hostfs."""

    kernel: Path
    rootfs: Path


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def recipe_key(names: Sequence[str]) -> str:
    """First 16 hex digits of the SHA-256 over the named recipe files (names and contents)."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode() + b"\0" + (RECIPE / name).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def kernel_path() -> Path:
    """Where the kernel is (or would be): ``$WGPY_UML_KERNEL`` or the cache entry."""
    given = os.environ.get(KERNEL_ENV)
    if given:
        return Path(given)
    return cache_dir() / f"kernel-{recipe_key(KERNEL_RECIPE)}" / "linux"


def rootfs_path() -> Path:
    return cache_dir() / f"rootfs-{recipe_key(ROOTFS_RECIPE)}"


def _rootfs_done(root: Path) -> bool:
    return (root / "sbin" / "wgpy-init").is_file() and (root / "usr" / "bin" / "wg").is_file()


def find() -> Images | None:
    """The cached (or given) kernel and root filesystem, or ``None`` if either is missing."""
    kernel, root = kernel_path(), rootfs_path()
    if os.access(kernel, os.X_OK) and _rootfs_done(root):
        return Images(kernel, root)
    return None


def missing_reason() -> str:
    """Why :func:`find` returned ``None``, and how to fix it."""
    kernel, root = kernel_path(), rootfs_path()
    what = []
    if not os.access(kernel, os.X_OK):
        what.append(f"no UML kernel at {kernel}")
    if not _rootfs_done(root):
        what.append(f"no guest root filesystem at {root}")
    return "; ".join(what) + ": " + HOW_TO_GET


def _run(argv: Sequence[str], what: str, timeout: float) -> None:
    res = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise BuildError(f"{what} failed ({res.returncode}):\n{(res.stderr + res.stdout)[-4000:]}")


def _ensure_packages(pkgs: Sequence[str]) -> None:
    missing = [
        p
        for p in pkgs
        if subprocess.run(["dpkg", "-s", p], capture_output=True, check=False).returncode != 0
    ]
    if missing:
        env_ok = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            res = subprocess.run(argv, capture_output=True, text=True, env=env_ok, check=False)
            if res.returncode != 0:
                raise BuildError(f"{' '.join(argv)} failed:\n{res.stderr[-3000:]}")


def apt_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 or one-line sources), else the default."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        with contextlib.suppress(OSError):
            for line in src.read_text().splitlines():
                words = line.split()
                if src.suffix == ".sources" and words[:1] == ["URIs:"]:
                    uris = [u for u in words[1:] if not u.rstrip("/").endswith("-security")]
                    if uris:
                        return uris[0]
                if words[:1] == ["deb"] and "-security" not in line:
                    return next(w for w in words[1:] if not w.startswith("["))
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_kernel(log: bool = True) -> Path:
    """Build the kernel into the cache unless it is there (or given); returns its path."""
    target = kernel_path()
    if os.environ.get(KERNEL_ENV):
        if not os.access(target, os.X_OK):
            raise BuildError(f"{KERNEL_ENV}={target} is not an executable file")
        return target
    with _locked("kernel"):
        if os.access(target, os.X_OK):
            return target
        _ensure_packages(KERNEL_PACKAGES)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".kernel-build-") as scratch:
            out = Path(scratch) / "linux"
            _run(["sh", str(RECIPE / "build-kernel.sh"), scratch, str(out)], "kernel build", 3600)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(out, target)
        if log:
            print(f"UML kernel built in {time.monotonic() - start:.0f} s: {target}", flush=True)
    return target


def build_rootfs(log: bool = True) -> Path:
    """Make the guest's root filesystem into the cache unless it is there; returns its path."""
    target = rootfs_path()
    with _locked("rootfs"):
        if _rootfs_done(target):
            return target
        _ensure_packages(ROOTFS_PACKAGES)
        start = time.monotonic()
        scratch = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=".rootfs-build-"))
        try:
            _run(["sh", str(RECIPE / "mkrootfs.sh"), str(scratch), apt_mirror()], "rootfs", 1800)
            if target.exists():  # an incomplete earlier attempt
                shutil.rmtree(target)
            os.replace(scratch, target)
        finally:
            if scratch.exists():
                # never into a /proc or /dev an interrupted debootstrap left mounted
                subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=False)
        if log:
            print(f"UML root filesystem made in {time.monotonic() - start:.0f} s: {target}")
    return target


def ensure() -> Images:
    """Build whatever is missing (root needed for that) and return both paths."""
    return Images(build_kernel(), build_rootfs())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wgpy.testbed.uml", description=__doc__)
    p.add_argument("--check", action="store_true", help="only report; exit 1 if missing")
    args = p.parse_args(argv)
    if args.check:
        found = find()
        print(f"kernel {found.kernel}, rootfs {found.rootfs}" if found else missing_reason())
        return 0 if found else 1
    try:
        images = ensure()
    except (BuildError, subprocess.TimeoutExpired) as e:
        print(f"UML build failed: {e}", file=sys.stderr)
        return 1
    print(f"kernel {images.kernel}\nrootfs {images.rootfs}")
    return 0
