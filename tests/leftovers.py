"""A pytest plugin: the run fails if its tests left namespaces, links or processes behind.

At the start of the session it notes the network namespaces and the links of the root
namespace that exist, and puts ``WGPY_TEST_RUN=<id>`` into the environment, which every process
the tests start inherits (daemons that detach included). At the end it looks for

* processes carrying this run's id, other than pytest itself: they were started by the tests
  and nobody stopped them;
* network namespaces and root-namespace links (``wgpy*``/``wgt*``/``veth*``) that were not
  there at the start. In CI (``CI=true``) the machine is the run's alone, so every new one is
  the tests'. On a developer's machine another suite may be running beside this one, so only
  namespaces whose name carries the PID of pytest or of one of this run's processes (the
  ``{prefix}-{pid}-{hex}`` names of :class:`wgpy.testbed.Namespace`) are counted and removed,
  and links are not checked: another run's namespaces and links are never touched.

It looks after each test module too (its module-scoped fixtures are gone by then), so that a
leak is named with the module that made it. Whatever it finds it removes (processes by PID,
SIGTERM then SIGKILL; namespaces and links with ``ip``), prints at the end of the run, and the
run's exit status becomes 1 even if every test passed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

ENV = "WGPY_TEST_RUN"
LINK_PATTERN = re.compile(r"^(wgpy|wgt|veth)")
_CREATOR = re.compile(r"-(\d+)-[0-9a-f]+$")
_state: dict[str, object] = {}


def _ip(*args: str) -> list[str]:
    try:
        out = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.splitlines()


def namespaces() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list") if line.strip()}


def links() -> set[str]:
    names = set()
    for line in _ip("-o", "link", "show"):
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.add(parts[1].split("@", 1)[0])
    return {n for n in names if LINK_PATTERN.match(n)}


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _execing(pid: int) -> bool:
    """Whether a process without an environment may be one mid-execve: not a zombie, not a
    kernel thread (kthreadd, PID 2, and its children)."""
    try:
        state, ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[:2]
    except (OSError, ValueError):
        return False
    return state != "Z" and pid != 2 and ppid not in ("0", "2")


def processes_of_run(run_id: str) -> list[int]:
    """PIDs of live processes whose environment carries ``WGPY_TEST_RUN=run_id``.

    A process still inside execve shows an empty environment: the parent of a vfork (as
    ``subprocess`` starts children) resumes before the kernel has set up the new program's
    stack. So processes seen without one (kernel threads aside) are read again, for up to
    a second, before they count as not ours."""
    marker = f"{ENV}={run_id}".encode()
    me = os.getpid()
    found = []
    unsure = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        env = _environ(pid)
        if not env and _execing(pid):
            unsure.append(pid)
        elif marker in env.split(b"\0"):
            found.append(pid)
    deadline = time.monotonic() + 1.0
    while unsure and time.monotonic() < deadline:
        time.sleep(0.02)
        still = []
        for pid in unsure:
            env = _environ(pid)
            if marker in env.split(b"\0"):
                found.append(pid)
            elif not env and _execing(pid):
                still.append(pid)
        unsure = still
    live = []
    for pid in found:
        with contextlib.suppress(OSError):  # a zombie is already gone for our purpose
            if Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                live.append(pid)
    return sorted(live)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"


def _exclusive() -> bool:
    """Whether this machine runs nothing but this test run (CI)."""
    return os.environ.get("CI") == "true"


def _ours(ns: str, pids: set[int]) -> bool:
    """A namespace this run made: any new one in CI, else one named with one of ``pids``."""
    if _exclusive():
        return True
    m = _CREATOR.search(ns)
    return m is not None and int(m.group(1)) in pids


def _stop(pids: Iterable[int]) -> None:
    pids = list(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def find_leftovers(run_id: str, ns_before: set[str], links_before: set[str]) -> list[str]:
    """Describe, then remove, what the run left behind."""
    report = []
    pids = processes_of_run(run_id)
    for pid in pids:
        report.append(f"process {pid}: {_cmdline(pid)}")
    _stop(pids)
    seen: set[int] = _state.setdefault("pids", {os.getpid()})  # type: ignore[assignment]
    seen.update(pids)
    for ns in sorted(namespaces() - ns_before):
        if _ours(ns, seen):
            report.append(f"network namespace {ns}")
            _ip("netns", "del", ns)
    if _exclusive():
        for link in sorted(links() - links_before):
            report.append(f"link {link}")
            _ip("link", "del", link)
    return report


def pytest_sessionstart(session: pytest.Session) -> None:
    del session
    run_id = secrets.token_hex(6)
    os.environ[ENV] = run_id
    _state.update(run_id=run_id, ns=namespaces(), links=links(), found=[])


def _check(where: str) -> None:
    found: list[str] = _state["found"]  # type: ignore[assignment]
    report = find_leftovers(
        str(_state["run_id"]),
        _state["ns"],  # type: ignore[arg-type]
        _state["links"],  # type: ignore[arg-type]
    )
    found.extend(f"{r} (after {where})" for r in report)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):  # type: ignore[no-untyped-def]
    yield
    if "run_id" in _state and (nextitem is None or nextitem.path != item.path):
        _check(item.nodeid.split("::", 1)[0])  # its module's fixtures are torn down now


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "run_id" not in _state:
        return
    _check("the session")
    report: list[str] = _state["found"]  # type: ignore[assignment]
    if not report:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = ["", "LEFTOVERS: the tests left these behind (now removed); the run fails:"]
    lines += [f"  {r}" for r in report]
    if tr is not None:
        for line in lines:
            tr.write_line(line, red=True, bold=line.startswith("LEFTOVERS"))
    else:
        print("\n".join(lines))
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
