"""WireGuard keys as ``wg`` writes them: 32 bytes, base64 in configs, hex over UAPI.

Keys are plain ``bytes`` inside the protocol core. This module parses and formats them and
never puts private material into an exception message or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat

from noise.crypto import clamp, generate_private_key, public_key
from wgpy.errors import ConfigError

__all__ = [
    "HIDDEN",
    "KEY_SIZE",
    "clamp",
    "generate_preshared_key",
    "generate_private_key",
    "parse_base64_key",
    "parse_hex_key",
    "insecure_file_warning",
    "public_key",
    "short",
    "to_base64",
]

KEY_SIZE = 32
HIDDEN = "(hidden)"


def generate_preshared_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


def parse_base64_key(text: str, what: str = "key") -> bytes:
    """Decode a base64 key; the message never echoes the value (it may be secret)."""
    t = text.strip()
    if len(t) != 44 or not t.endswith("="):
        raise ConfigError(f"{what}: not a valid base64 WireGuard key (44 characters expected)")
    try:
        raw = base64.b64decode(t, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what}: not a valid base64 WireGuard key") from None
    if len(raw) != KEY_SIZE:
        raise ConfigError(f"{what}: decodes to {len(raw)} bytes, 32 expected")
    return raw


def parse_hex_key(text: str, what: str = "key") -> bytes:
    if len(text) != 2 * KEY_SIZE:
        raise ConfigError(f"{what}: 64 hex digits expected")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{what}: not hexadecimal") from None


def to_base64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def short(public: bytes) -> str:
    """``peer(AbCd…WxYz)`` as wireguard-go logs a peer."""
    b = to_base64(public)
    return f"peer({b[:4]}…{b[39:43]})"


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
