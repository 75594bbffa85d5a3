"""Shared pytest configuration.

In CI (``CI=true``) the interop tools must be present: a missing binary fails the run instead
of silently skipping the interop tests.
"""

from __future__ import annotations

import os
import shutil

import pytest

INTEROP_TOOLS = ("ip", "nsenter", "setpriv", "wg", "ping", "wireguard-go", "tcpdump", "iperf3")


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI") == "true":
        missing = [t for t in INTEROP_TOOLS if shutil.which(t) is None]
        if missing or os.geteuid() != 0:
            pytest.exit(f"CI needs root and {', '.join(missing) or 'the tools'}", returncode=3)
