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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, anywhere in it (functions and
    ``TYPE_CHECKING`` blocks too: a type-only import is still a dependency)."""
    modules = {
        _module_name(p): p for pkg in ("noise", "tun", "wgpy") for p in (ROOT / pkg).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    mod = ".".join([*base, node.module] if node.module else base)
                else:
                    mod = node.module or ""
                for alias in node.names:
                    sub = f"{mod}.{alias.name}"
                    if sub in modules:
                        deps.add(sub)
                    elif mod in modules:
                        deps.add(mod)
        deps.discard(name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root, root_deps in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(root_deps)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
