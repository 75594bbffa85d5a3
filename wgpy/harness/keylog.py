"""Key log files: what lets ``wgpy decode`` decrypt a capture it could not decrypt otherwise.

A capture never holds ephemeral private keys, so transport keys cannot be derived from static
keys alone. The scripted peer therefore appends to a key log when asked (``keylog=PATH`` or the
``WGPY_KEYLOG`` environment variable). Two kinds of line, one per line, ``#`` starts a comment:

* Wireshark's WireGuard key log lines (the format of wireguard-tools'
  ``contrib/extract-handshakes``), ``NAME = BASE64``, with ``NAME`` one of
  ``LOCAL_STATIC_PRIVATE_KEY``, ``REMOTE_STATIC_PUBLIC_KEY``, ``LOCAL_EPHEMERAL_PRIVATE_KEY``,
  ``PRESHARED_KEY``. With them the decoder re-runs the handshake it sees in the capture.
* ``TRANSPORT_KEY 0xINDEX BASE64``: the ChaCha20-Poly1305 key of transport messages whose
  receiver_index field (read as a little-endian u32, printed in hex) is ``INDEX``. Enough to
  decrypt transport data even when the handshake is not in the capture.

The file holds secrets: it is created with mode 0600, and nothing here prints its contents.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass, field

KEYLOG_ENV = "WGPY_KEYLOG"
WIRESHARK_NAMES = (
    "LOCAL_STATIC_PRIVATE_KEY",
    "REMOTE_STATIC_PUBLIC_KEY",
    "LOCAL_EPHEMERAL_PRIVATE_KEY",
    "PRESHARED_KEY",
)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


class KeyLogWriter:
    """Appends key log lines to a file (mode 0600), flushing after each record."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _append(self, lines: list[str]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="ascii") as f:
            f.write("".join(line + "\n" for line in lines))

    def handshake(
        self,
        *,
        local_static_private: bytes,
        remote_static_public: bytes,
        local_ephemeral_private: bytes,
        preshared_key: bytes | None,
    ) -> None:
        """One handshake's keys in Wireshark's format."""
        lines = [
            f"LOCAL_STATIC_PRIVATE_KEY = {_b64(local_static_private)}",
            f"REMOTE_STATIC_PUBLIC_KEY = {_b64(remote_static_public)}",
            f"LOCAL_EPHEMERAL_PRIVATE_KEY = {_b64(local_ephemeral_private)}",
        ]
        if preshared_key is not None:
            lines.append(f"PRESHARED_KEY = {_b64(preshared_key)}")
        self._append(lines)

    def transport(self, receiver_index: int, key: bytes) -> None:
        """The key that decrypts transport messages addressed to ``receiver_index``."""
        self._append([f"TRANSPORT_KEY 0x{receiver_index:08x} {_b64(key)}"])


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


class KeyLogError(ValueError):
    """A malformed key log line (the message names the line number, never the key)."""


def _decode_key(text: str, lineno: int) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyLogError(f"line {lineno}: not base64") from None
    if len(key) != 32:
        raise KeyLogError(f"line {lineno}: a key is 32 bytes")
    return key


def _add(items: list[bytes], key: bytes) -> None:
    if key not in items:
        items.append(key)


def parse_keylog(text: str) -> KeyLog:
    """Parse key log text (both line kinds). Raises :class:`KeyLogError`."""
    out = KeyLog()
    targets = {
        "LOCAL_STATIC_PRIVATE_KEY": out.static_private,
        "REMOTE_STATIC_PUBLIC_KEY": out.remote_public,
        "LOCAL_EPHEMERAL_PRIVATE_KEY": out.ephemeral_private,
        "PRESHARED_KEY": out.preshared,
    }
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("TRANSPORT_KEY"):
            parts = line.split()
            if len(parts) != 3:
                raise KeyLogError(f"line {lineno}: expected TRANSPORT_KEY 0xINDEX KEY")
            try:
                index = int(parts[1], 16)
            except ValueError:
                raise KeyLogError(f"line {lineno}: bad index") from None
            if not 0 <= index < 2**32:
                raise KeyLogError(f"line {lineno}: index out of range")
            out.transport[index] = _decode_key(parts[2], lineno)
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or name not in targets:
            raise KeyLogError(f"line {lineno}: unknown entry")
        _add(targets[name], _decode_key(value, lineno))
    return out
