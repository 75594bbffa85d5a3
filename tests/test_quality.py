"""Project-wide checks: ruff and mypy clean, and the sans-IO boundary of the protocol core."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the protocol core: no clocks, no sockets, no fds, no threads (any new module is covered)
SANS_IO = [
    *sorted((ROOT / "noise").glob("*.py")),
    *sorted((ROOT / "wgpy" / "core").glob("*.py")),
    ROOT / "wgpy" / "supervisor" / "lease.py",
]
FORBIDDEN = {"time", "socket", "selectors", "asyncio", "fcntl", "threading", "random", "os"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", [p for p in SANS_IO if p.exists()], ids=lambda p: p.name)
def test_protocol_core_is_sans_io(path: Path) -> None:
    bad = _imports(path) & FORBIDDEN
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_sans_io_covers_the_core() -> None:
    names = {p.name for p in SANS_IO if p.parent.name == "core"}
    assert {"device.py", "handshakes.py", "peer.py", "uapi.py"} <= names


@pytest.mark.parametrize("package", ["noise", "tun"])
def test_lower_layers_do_not_import_wgpy(package: str) -> None:
    for path in (ROOT / package).glob("*.py"):
        assert "wgpy" not in _imports(path), path.name


def test_the_core_imports_only_the_core_and_noise() -> None:
    for path in (ROOT / "wgpy" / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mod = node.module
                if mod.startswith("wgpy"):
                    assert mod == "wgpy.core" or mod.startswith("wgpy.core."), (path.name, mod)


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).parent / name
    if exe.exists():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not installed")
    return [found]


def test_ruff_clean() -> None:
    r = subprocess.run(
        [*_tool("ruff"), "check", "--quiet", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_mypy_clean() -> None:
    r = subprocess.run(
        [*_tool("mypy")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
