"""Processes and cleanup: the registry, command runner and small helpers."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Protocol, TypeVar

from wgpy.core.errors import WgpyError
from wgpy.core.keys import redact

DEFAULT_IMPL: tuple[str, ...] = ("wireguard-go",)
SOCKET_DIR = "/run/wireguard"
NS_PREFIX = "wgpy"
T = TypeVar("T")
Describe = str | Callable[[], str] | None


class TestbedError(WgpyError):
    """A testbed step failed (command error, start-up timeout, missing tool)."""


class _Closeable(Protocol):
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Registry: everything created here is closed at exit, newest first.

_registry: list[_Closeable] = []


def _register(obj: _Closeable) -> None:
    _registry.append(obj)


def _unregister(obj: _Closeable) -> None:
    with contextlib.suppress(ValueError):
        _registry.remove(obj)


def cleanup_all() -> None:
    """Close every live namespace/instance created by this process (newest first)."""
    while _registry:
        obj = _registry.pop()
        with contextlib.suppress(Exception):
            obj.close()


atexit.register(cleanup_all)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP raise ``SystemExit`` so ``with`` blocks and ``atexit`` clean up.

    Call from the main thread of a program (the benchmarks, ``wgpy demo``); a library import
    never changes signal dispositions by itself.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command on the host side (no network effect intended), capturing text output."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except FileNotFoundError as e:
        raise TestbedError(f"command not found: {argv[0]}") from e
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"timed out after {timeout}s: {redact(' '.join(argv))}") from e
    if check and res.returncode != 0:
        raise TestbedError(
            f"{redact(' '.join(argv))} failed ({res.returncode}): "
            f"{redact(res.stderr.strip() or res.stdout.strip())}"
        )
    return res


def _stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`; the held Popen guarantees the PID is ours."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5.0)


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise TestbedError(f"no VmRSS for pid {pid}")


POLL_LIMIT = 30.0  # default limit of a wait: generous, a loaded machine must not hit it


class WaitTimeout(AssertionError):
    """A condition polled with :func:`wait_for` or :func:`wait_until` never held."""


def _failure(cond: Callable[[], object], timeout: float, what: Describe) -> WaitTimeout:
    if callable(what):
        text = what()
    elif what:
        text = what
    else:  # the condition's own source line says what was awaited
        try:
            text = inspect.getsource(cond).strip()
        except (OSError, TypeError):
            text = repr(cond)
    return WaitTimeout(f"timed out after {timeout:g} s waiting for {text}")


def wait_for(
    cond: Callable[[], T],
    timeout: float = POLL_LIMIT,
    what: Describe = None,
    interval: float = 0.02,
) -> T:
    """Poll ``cond`` on the real clock until it returns something true, and return that.

    The one poll helper of the testbed and the tests (:func:`wait_until` is its asyncio
    form). Raises :class:`WaitTimeout` naming ``what`` was awaited (a string, a function
    called only on failure, e.g. one returning the logs, or by default the condition's
    source) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(cond, timeout, what)
        time.sleep(interval)


async def wait_until(
    cond: Callable[[], object],
    timeout: float = POLL_LIMIT,
    what: Describe = None,
    interval: float = 0.01,
) -> float:
    """:func:`wait_for` for asyncio code: polls on the running loop's clock and returns the
    loop time at which ``cond`` held. On a virtual-time loop (``tests/vtime.py``) the limit
    is virtual, so a generous one costs nothing."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() >= deadline:
            raise _failure(cond, timeout, what)
        await asyncio.sleep(interval)
    return loop.time()
