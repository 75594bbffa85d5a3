"""The suite's own guards (tests/conftest.py, tests/leftovers.py), run on small inner suites.

Each test writes a throwaway suite into a temporary folder whose conftest loads the same
hooks, runs pytest on it in a subprocess, and checks what a developer would see.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.leftovers import namespaces

ROOT = Path(__file__).resolve().parent.parent
CONFTEST = """
pytest_plugins = ["tests.leftovers"]
from tests.conftest import (  # noqa: F401
    pytest_addoption, pytest_collection_modifyitems, pytest_runtest_makereport,
)
"""


def run_suite(
    tmp_path: Path, files: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    smoke: first\n")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("CI", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path), *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


GATED = {
    "test_a.py": "def test_runs_after_the_smoke():\n    open('ran', 'w').close()\n",
    "test_z.py": (
        "import pytest\n"
        "@pytest.mark.smoke\n"
        "def test_smoke_fails():\n    assert False, 'no data moved'\n"
        "@pytest.mark.smoke\n"
        "def test_smoke_other():\n    pass\n"
    ),
}


def test_a_failing_smoke_test_stops_the_run_right_after_the_smoke_tests(
    tmp_path: Path,
) -> None:
    r = run_suite(tmp_path, GATED)
    assert r.returncode == pytest.ExitCode.INTERRUPTED, r.stdout
    assert "the smoke test failed: a fresh wgpy tunnel does not move data" in r.stdout
    assert "1 failed, 1 passed" in r.stdout  # both smoke tests ran, nothing else
    assert not (tmp_path / "ran").exists()


def test_no_smoke_gate_runs_everything(tmp_path: Path) -> None:
    r = run_suite(tmp_path, GATED, "--no-smoke-gate")
    assert r.returncode == 1 and "1 failed, 2 passed" in r.stdout, r.stdout
    assert (tmp_path / "ran").exists()


def test_a_leaked_process_fails_a_passing_run_and_is_stopped(tmp_path: Path) -> None:
    leak = (
        "import subprocess\n"
        "def test_leaks_a_daemon():\n"
        "    p = subprocess.Popen(['sleep', '300'])\n"
        "    open('pid', 'w').write(str(p.pid))\n"
    )
    r = run_suite(tmp_path, {"test_leak.py": leak})
    pid = int((tmp_path / "pid").read_text())
    assert "1 passed" in r.stdout
    assert r.returncode == 1, r.stdout
    assert "LEFTOVERS" in r.stdout
    assert f"process {pid}: sleep 300 (after test_leak.py)" in r.stdout
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or ") Z" in stat.read_text()  # stopped (maybe not yet reaped)


def test_a_clean_run_passes(tmp_path: Path) -> None:
    clean = (
        "import subprocess\n"
        "def test_waits_for_its_child():\n"
        "    subprocess.run(['true'], check=True)\n"
    )
    r = run_suite(tmp_path, {"test_clean.py": clean})
    assert r.returncode == 0 and "LEFTOVERS" not in r.stdout, r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns add)")
def test_a_leaked_namespace_fails_the_run_and_is_removed(tmp_path: Path) -> None:
    leak = (
        "import os, subprocess\n"
        "def test_leaks_a_namespace():\n"
        f"    name = f'wgpyleak-{{os.getpid()}}-{secrets.token_hex(3)}'\n"
        "    subprocess.run(['ip', 'netns', 'add', name], check=True)\n"
        "    open('ns', 'w').write(name)\n"
    )
    r = run_suite(tmp_path, {"test_leak.py": leak})
    name = (tmp_path / "ns").read_text()
    assert r.returncode == 1 and f"network namespace {name}" in r.stdout, r.stdout
    assert name not in namespaces()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (ip netns add)")
def test_another_runs_namespace_is_left_alone_off_ci(tmp_path: Path) -> None:
    """Off CI another suite may run beside this one: a new namespace named for a process
    that is not of this run is neither counted nor removed."""
    name = f"wgpyother-1-{secrets.token_hex(3)}"  # PID 1: never a process of the run
    leak = (
        "import subprocess\n"
        "def test_makes_a_namespace_like_another_run():\n"
        f"    subprocess.run(['ip', 'netns', 'add', '{name}'], check=True)\n"
    )
    try:
        r = run_suite(tmp_path, {"test_other.py": leak})
        assert r.returncode == 0 and "LEFTOVERS" not in r.stdout, r.stdout
        assert name in namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
