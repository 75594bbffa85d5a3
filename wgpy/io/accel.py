"""The compiled part of the fast path (:mod:`wgpy.io._batch`), when it is there.

``batch`` is the extension module, or None: not built (no C compiler or no libcrypto
headers when wgpy was installed; the install goes on without it), or turned off with
``WGPY_ACCEL=0`` (to compare both ways in one benchmark run). ``reason`` says which. Without
it the fast path does the same work in Python, slower (docs/benchmarks.md, section 10).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def _load() -> tuple[ModuleType | None, str]:
    if os.environ.get("WGPY_ACCEL", "1") == "0":
        return None, "turned off (WGPY_ACCEL=0)"
    try:
        return importlib.import_module("wgpy.io._batch"), "built"
    except ImportError as e:
        return None, f"not built ({e}); reinstall with a C compiler and libssl-dev"


batch, reason = _load()
