"""Reading key logs for ``wgpy decode``, and the scripted peer's writer.

The format and the writer are in :mod:`wgpy.io.keylog` (devices write the same lines). A capture
never holds ephemeral private keys, so transport keys cannot be derived from static keys alone;
the scripted peer therefore appends to a key log when asked (``keylog=PATH`` or the
``WGPY_KEYLOG`` environment variable).

Reading is lenient, as Wireshark's is: a line of a kind we do not know (another tool's key log
lines, a future line kind) or a known line that does not parse is skipped, and the
:class:`KeyLog` says which kinds were skipped on which lines, so that the caller can warn once
per kind. A kind is named only when it looks like a keyword, never with a line's text, which
may be a key.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from wgpy.core.keys import decode_base64_key
from wgpy.io.keylog import KEYLOG_ENV, TRANSPORT_NAME, WIRESHARK_NAMES, KeyLogWriter

__all__ = ["KEYLOG_ENV", "KeyLog", "KeyLogWriter", "parse_keylog", "writer_from_env"]


def writer_from_env(path: str | None = None) -> KeyLogWriter | None:
    """A writer for ``path``, else for ``$WGPY_KEYLOG``, else ``None``."""
    target = path or os.environ.get(KEYLOG_ENV)
    return KeyLogWriter(target) if target else None


@dataclass
class KeyLog:
    """Parsed key log: sets of keys by kind, and transport keys by receiver index."""

    static_private: list[bytes] = field(default_factory=list)
    remote_public: list[bytes] = field(default_factory=list)
    ephemeral_private: list[bytes] = field(default_factory=list)
    preshared: list[bytes] = field(default_factory=list)
    transport: dict[int, bytes] = field(default_factory=dict)
    skipped: dict[str, list[int]] = field(default_factory=dict)  # kind -> line numbers

    def skip(self, kind: str, lineno: int) -> None:
        self.skipped.setdefault(kind, []).append(lineno)

    def warnings(self, name: str) -> list[str]:
        """One warning per kind of line skipped, naming the lines (never their text)."""
        out = []
        for kind, lines in self.skipped.items():
            n = len(lines)
            where = ", ".join(map(str, lines[:5])) + (", …" if n > 5 else "")
            out.append(f"{name}: skipped {n} {kind} line{'s' * (n != 1)} (line {where})")
        return out


_KEYWORD = re.compile(r"[A-Z][A-Z0-9_]{0,31}")


def _add(items: list[bytes], key: bytes) -> None:
    if key not in items:
        items.append(key)


def _kind(line: str) -> str:
    """A printable name for an unknown line's kind: its first word if that is a keyword."""
    word = re.split(r"[\s=]", line, maxsplit=1)[0]
    return f"unknown {word}" if _KEYWORD.fullmatch(word) else "unrecognised"


def parse_keylog(text: str) -> KeyLog:
    """Parse key log text (both line kinds); what cannot be used goes to ``skipped``."""
    out = KeyLog()
    targets = {
        "LOCAL_STATIC_PRIVATE_KEY": out.static_private,
        "REMOTE_STATIC_PUBLIC_KEY": out.remote_public,
        "LOCAL_EPHEMERAL_PRIVATE_KEY": out.ephemeral_private,
        "PRESHARED_KEY": out.preshared,
    }
    assert set(targets) == set(WIRESHARK_NAMES)
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if parts[0] == TRANSPORT_NAME:
            key = decode_base64_key(parts[2].strip()) if len(parts) == 3 else None
            try:
                index = int(parts[1], 16) if len(parts) == 3 else -1
            except ValueError:
                index = -1
            if key is None or not 0 <= index < 2**32:
                out.skip(f"malformed {TRANSPORT_NAME}", lineno)
                continue
            out.transport[index] = key
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if name not in targets:
            out.skip(_kind(line), lineno)
            continue
        key = decode_base64_key(value.strip()) if sep else None
        if key is None:
            out.skip(f"malformed {name}", lineno)
            continue
        _add(targets[name], key)
    return out
