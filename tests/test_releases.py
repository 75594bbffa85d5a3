"""The smoke test again, on other releases of our dependencies than the lock's.

* ``newest``: a venv with the newest release of every dependency that pyproject allows (what
  ``pip install wgpy`` gives a user today). When the next release breaks us, as cryptography
  51 did (issue 13), CI turns red here before a user reports it.
* ``lowest``: each runtime dependency at its lower bound in pyproject (its ``>=`` version):
  the bounds must name releases that have every API we call.

Each venv gets wgpy (editable) and runs ``tests/test_smoke.py`` and the tests that exercise each
dependency's API most directly: the fast path (cryptography), TUN and netlink (python-pytun,
pyroute2), the HTTP server (aiohttp) and the Lease election against the fake API server
(kubernetes.aio). The lowest run found pyroute2 < 0.9.1 without ``IPRoute(netns=...)`` and
kubernetes < 37 without ``kubernetes.aio`` (36.0.0) or its models' ``from_dict`` (36.0.1-36.0.3).
Needs the package index; off CI an unreachable index skips, in CI it fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import interop

pytestmark = [*interop, pytest.mark.releases]
ROOT = Path(__file__).resolve().parent.parent
CHECKS = [
    "tests/test_smoke.py",
    "tests/test_fastpath.py",
    "tests/test_offload.py",
    "tests/test_tun.py",
    "tests/test_http_metrics.py",
    "tests/test_election.py",
]
_OFFLINE = re.compile(r"(Temporary failure in name resolution|Network is unreachable|"
                      r"Max retries exceeded|ConnectionError|No matching distribution)")


def lowest() -> list[str]:
    """``name==bound`` for every runtime dependency of pyproject, plus the locked pytest."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = []
    for dep in project["dependencies"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)\s*", dep)
        assert m, f"not a plain lower bound: {dep!r}"
        pins.append(f"{m[1]}=={m[2]}")
    lock = (ROOT / "requirements" / "test.lock").read_text()
    pytest_pin = re.search(r"^pytest==(\S+)", lock, re.M)
    assert pytest_pin
    return [*pins, f"pytest=={pytest_pin[1]}"]


def _pip(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
         "--disable-pip-version-check", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )


@pytest.mark.parametrize("which", ["newest", "lowest"])
def test_the_smoke_test_passes_on_other_releases(which: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    if which == "newest":
        r = _pip(venv, "--upgrade", "-e", ".[test]")
    else:
        r = _pip(venv, *lowest())
        if r.returncode == 0:
            r = _pip(venv, "--no-deps", "-e", ".")
    if r.returncode != 0:
        if os.environ.get("CI") != "true" and _OFFLINE.search(r.stderr):
            pytest.skip(f"the package index is out of reach: {r.stderr[-300:]}")
        pytest.fail(f"pip could not install the {which} releases:\n{r.stderr[-3000:]}")
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    versions = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    shown = ", ".join(
        f"{n} {versions.get(n, '?')}"
        for n in ("cryptography", "pynacl", "python-pytun", "pyroute2", "kubernetes",
                  "pyyaml", "aiohttp", "numpy")
    )
    print(f"\n{which}: {shown}")
    t = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHECKS],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert t.returncode == 0, f"on the {which} releases ({shown}):\n{t.stdout[-4000:]}"
