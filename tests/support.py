"""Helpers for tests that run real processes in network namespaces."""

from __future__ import annotations

import os
import shutil
import sys

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
