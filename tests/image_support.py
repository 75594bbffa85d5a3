"""podman for tests/test_image.py: the cached Debian base, the image build, containers run under
the DaemonSet's settings, and the removal of everything a run created.

Host settings go through files in tests/image/ (CONTAINERS_CONF, a pip.conf bind-mounted into
the build), never through the host's /etc. Images and containers carry the run's unique name
``wgpy-test-PID-xxxxxx``, so concurrent runs on one machine never touch each other's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "tests" / "image"
# Outside the clone: a new clone (CI) reuses the base made by an earlier run on this machine.
CACHE = Path(os.environ.get("WGPY_IMAGE_CACHE", "/var/cache/wgpy"))
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS = ("podman", "runc", "debootstrap", "nft")


class PodmanError(AssertionError):
    pass


def env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONF / "containers.conf")}


def podman(*args: str, timeout: float = 60, check: bool = True,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, env=env(),
                         timeout=timeout, input=input, check=False)
    if check and res.returncode != 0:
        raise PodmanError(f"podman {' '.join(args[:3])} … failed ({res.returncode}):\n"
                          f"{res.stderr[-3000:]}{res.stdout[-2000:]}")
    return res


def require_podman() -> None:
    """Fail (never skip) when podman cannot run here, saying what is missing."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the image test needs {', '.join(missing)} (Debian packages podman, runc, "
                    "debootstrap, nftables; ./install.sh installs them)", pytrace=False)
    res = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if res.returncode != 0 or res.stdout.strip() != "runc":
        pytest.fail("podman cannot run on this machine (CONTAINERS_CONF="
                    f"{CONF / 'containers.conf'}): {res.stderr.strip()[-1500:]}", pytrace=False)


def unique_name() -> str:
    return f"wgpy-test-{os.getpid()}-{secrets.token_hex(3)}"


def base_tarball() -> Path:
    """The debootstrap base as a tarball, made once per machine and recipe (~45 s).

    Keyed by the hash of tests/image/base.sh; a lock file makes concurrent first runs wait for
    one debootstrap instead of racing.
    """
    recipe = CONF / "base.sh"
    key = hashlib.sha256(recipe.read_bytes()).hexdigest()[:16]
    tar = CACHE / f"base-{key}.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "base.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tar.exists():
            res = subprocess.run(["sh", str(recipe), str(tar)], capture_output=True, text=True,
                                 timeout=900, check=False)
            if res.returncode != 0:
                raise PodmanError(f"debootstrap base failed:\n{res.stderr[-3000:]}")
    return tar


@contextlib.contextmanager
def built_image(name: str) -> Iterator[str]:
    """Import the base as ``localhost/NAME-base``, build the Dockerfile on it as
    ``localhost/NAME``; both images are removed on exit, also on failure."""
    base, image = f"localhost/{name}-base:test", f"localhost/{name}:test"
    try:
        podman("import", "--quiet", str(base_tarball()), base, timeout=300)
        mounts = [f"--volume={CONF / 'pip.conf'}:/etc/pip.conf:ro"]
        if HOST_CA.is_file():
            mounts.append(f"--volume={HOST_CA}:/etc/ssl/certs/ca-certificates.crt:ro")
        podman(
            "build", "--quiet", "--pull=never", "--layers=false", "--network=host", *mounts,
            f"--build-arg=BASE={base}", f"--tag={image}", f"--file={ROOT / 'Dockerfile'}",
            str(ROOT), timeout=600,
        )
        yield image
    finally:
        for ref in (image, base):
            podman("rmi", "--force", ref, check=False, timeout=120)


def image_config(image: str) -> dict[str, Any]:
    out = json.loads(podman("image", "inspect", image).stdout)
    assert len(out) == 1
    config: dict[str, Any] = out[0]
    return config


def images_named(name: str) -> list[str]:
    res = podman("images", "--all", "--format", "{{.Repository}}:{{.Tag}}", timeout=60)
    return [ln for ln in res.stdout.split() if name in ln]


def containers_named(name: str) -> list[str]:
    # --external: also the build's working containers (buildah), not only podman run's
    res = podman("ps", "--all", "--external", "--format", "{{.Names}}", timeout=60)
    return [ln for ln in res.stdout.split() if name in ln]


def nft_tables() -> set[str]:
    res = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=30,
                         check=True)
    return {ln.strip() for ln in res.stdout.splitlines() if ln.strip()}


# -- the DaemonSet's settings as podman flags ---------------------------------------------------

SECURITY_KEYS = {"runAsUser", "runAsNonRoot", "privileged", "allowPrivilegeEscalation",
                 "readOnlyRootFilesystem", "capabilities"}


def podman_flags(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """`podman run` flags for the pod's container as the kubelet would run it: security context,
    devices and volumes. Anything in the manifest this does not know how to reproduce raises,
    so the test can never silently run the image under weaker settings than the DaemonSet."""
    sc = container["securityContext"]
    unknown = set(sc) - SECURITY_KEYS
    if unknown:
        raise PodmanError(f"securityContext keys the image test cannot mirror: {unknown}")
    if sc.get("privileged") or sc.get("runAsNonRoot"):
        raise PodmanError("privileged or runAsNonRoot: the test mirrors neither")
    flags = [f"--user={sc['runAsUser']}"]
    if sc["allowPrivilegeEscalation"] is False:
        flags.append("--security-opt=no-new-privileges")
    if sc["readOnlyRootFilesystem"]:
        # Kubernetes adds no writable /run, /tmp or /var/tmp: only the manifest's volumes.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    flags += [f"--cap-drop={c}" for c in sc["capabilities"].get("drop", [])]
    flags += [f"--cap-add={c}" for c in sc["capabilities"].get("add", [])]
    seccomp = pod.get("securityContext", {}).get("seccompProfile", {}).get("type")
    if seccomp != "RuntimeDefault":  # podman applies its default profile unless told not to
        raise PodmanError(f"seccompProfile {seccomp!r}: the test mirrors RuntimeDefault only")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        vol = volumes[mount["name"]]
        path = mount["mountPath"]
        if "hostPath" in vol and vol["hostPath"].get("type") == "CharDevice":
            flags.append(f"--device={vol['hostPath']['path']}:{path}")
        elif "emptyDir" in vol:
            # An emptyDir is empty, writable and private to the pod: a tmpfs is all of that.
            size = tmpfs_size(vol["emptyDir"]["sizeLimit"])
            flags.append(f"--tmpfs={path}:rw,nosuid,nodev,size={size}")
        else:
            raise PodmanError(f"volume {mount['name']}: the test cannot mirror {vol}")
    return flags


def tmpfs_size(quantity: str) -> str:
    """A Kubernetes binary quantity (``16Mi``) as a tmpfs size (``16m``)."""
    for suffix, unit in (("Ki", "k"), ("Mi", "m"), ("Gi", "g")):
        if quantity.endswith(suffix) and quantity[: -len(suffix)].isdigit():
            return quantity[: -len(suffix)] + unit
    raise PodmanError(f"sizeLimit {quantity!r}: expected a whole number of Ki, Mi or Gi")
