"""``wgpy demo`` end to end: exit status, what it shows, and that it leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import needs_root, require_uml
from wgpy import testbed

REPO = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "wgpy", "demo"]


def _leftovers(pid: int) -> tuple[list[str], list[str]]:
    """Namespaces, supervisor and UML guest processes the demo with ``pid`` may have left."""
    ns = [n for n in testbed.list_netns() if n.startswith(f"{testbed.NS_PREFIX}-{pid}-")]
    procs = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            status = (p / "status").read_text()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = re.search(r"^PPid:\s+(\d+)", status, re.M)
        if ppid and int(ppid.group(1)) == pid and ("supervisor" in cmd or "wgpy_run=" in cmd):
            procs.append(cmd)
    return ns, procs


@pytest.mark.interop
@needs_root
@pytest.mark.parametrize("vpn_node", ["wgpy", "wireguard-go", "kernel"])
def test_demo_runs_and_shows_failover(vpn_node: str) -> None:
    if vpn_node == "kernel":  # the kernel's WireGuard in a UML guest
        require_uml()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*DEMO, "--vpn-node", vpn_node],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    print(out)
    assert proc.returncode == 0, out
    assert took < 60
    assert "✗" not in out
    lines = out.splitlines()
    # first node-a serves both protocols, then node-b after the kill, then node-a again
    served = [
        (m.group(1), m.group(2))
        for ln in lines
        if (m := re.search(r"(TCP|UDP) \S+ from the client\s+answered by (node-\w)", ln))
    ]
    assert served == [
        ("TCP", "node-a"),
        ("UDP", "node-a"),
        ("TCP", "node-b"),
        ("UDP", "node-b"),
        ("TCP", "node-a"),
        ("UDP", "node-a"),
    ]
    failover = re.search(r"failover (\d+) ms", out)
    assert failover is not None and int(failover.group(1)) < 5000
    assert re.search(r"handover (\d+) ms", out)
    assert "kill -9 node-a" in out
    assert lines[-1].startswith("✓ all checks passed")
    assert _leftovers(proc.pid) == ([], [])


@pytest.mark.interop
@needs_root
def test_demo_sigterm_midway_removes_everything() -> None:
    proc = subprocess.Popen(
        DEMO, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    # wait until the supervisors are up (the demo is then in the middle of its work)
    for line in proc.stdout:
        if "supervisors started" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait(30) == 128 + signal.SIGTERM
    assert "terminated; everything removed" in out
    assert _leftovers(proc.pid) == ([], [])


def test_demo_refuses_without_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wgpy.testbed import demo

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert demo.main([]) == 1
    assert "needs root" in capsys.readouterr().err


@needs_root
def test_demo_kernel_without_a_uml_kernel_says_how_to_get_one(tmp_path: Path) -> None:
    env = {**os.environ, "WGPY_UML_KERNEL": str(tmp_path / "no-such-kernel")}
    res = subprocess.run(
        [*DEMO, "--vpn-node", "kernel"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert res.returncode == 1
    assert "no UML kernel at" in res.stderr and "python -m wgpy.testbed.uml" in res.stderr
    assert res.stdout == ""
