"""Helpers for tests: real processes in network namespaces, and asyncio test bodies."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable

import pytest

TOOLS = ("ip", "nsenter", "setpriv", "wg", "ping", "wireguard-go", "tcpdump")
_missing = [t for t in TOOLS if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing),
    reason=f"needs root and {', '.join(TOOLS)} (missing: {', '.join(_missing) or 'none'})",
)
interop = [pytest.mark.interop, needs_root]

WGPY = [sys.executable, "-m", "wgpy.userspace"]
WIREGUARD_GO = ["wireguard-go"]
IMPLS = {"wgpy": WGPY, "wireguard-go": WIREGUARD_GO}


def run_async(coro: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Run a test's coroutine function in a fresh event loop; fail after ``timeout`` s."""

    async def bounded() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(bounded())


async def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll ``cond`` every 10 ms; AssertionError if it is still false after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)
