"""Processes and cleanup: the registry, command runner and small helpers."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, Protocol

from wgpy.core.errors import WgpyError
from wgpy.core.keys import redact

DEFAULT_IMPL: tuple[str, ...] = ("wireguard-go",)
SOCKET_DIR = "/run/wireguard"
NS_PREFIX = "wgpy"


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


def wait_for(cond: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `cond` until it is true or `timeout` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
