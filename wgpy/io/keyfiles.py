"""Files that hold keys: warn when others may read them (as ``wg`` and wg-quick do)."""

from __future__ import annotations

import os
import stat


def insecure_file_warning(path: str) -> str | None:
    """A warning when a file holding keys is readable or writable by group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"Warning: {path} holds keys and is accessible by others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it"
        )
    return None
