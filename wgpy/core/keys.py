"""WireGuard keys as ``wg`` writes them: 32 bytes, base64 in configs, hex over UAPI.

Keys are plain ``bytes`` inside the protocol core. This module parses and formats them and
never puts private material into an exception message or a ``repr``.
"""

from __future__ import annotations

import base64
import re
import secrets

from noise.crypto import clamp, generate_private_key, public_key
from wgpy.core.errors import ConfigError

__all__ = [
    "HIDDEN",
    "redact",
    "KEY_SIZE",
    "clamp",
    "decode_base64_key",
    "generate_preshared_key",
    "generate_private_key",
    "parse_base64_key",
    "parse_hex_key",
    "public_key",
    "short",
    "to_base64",
]

KEY_SIZE = 32
HIDDEN = "(hidden)"
# A 32-byte key in base64 (43 characters + "="), not part of a longer base64 run.
_KEY_RE = re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?![A-Za-z0-9+/=])")
# The same 32 bytes in hex (64 digits, not part of a longer hex run).
_HEX_KEY_RE = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])")


def generate_preshared_key() -> bytes:
    return secrets.token_bytes(KEY_SIZE)


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64)}
KEY_B64_LEN = 44


def decode_base64_key(text: str | bytes) -> bytes | None:
    """The one base64 key decoder, as strict as wg's ``key_from_base64`` (wireguard-tools
    ``encoding.c``): exactly 44 characters, 43 of the standard alphabet then one ``=``, and
    the 2 unused low bits of the last character zero. None for anything else.

    Python's ``base64`` ignores those bits, so one key had 4 spellings (``…Hh8=`` and
    ``…Hh9=``, …) where wg accepts one; a config that ``wg`` refuses must not work here.
    """
    raw = text.encode("latin-1", "replace") if isinstance(text, str) else bytes(text)
    if len(raw) != KEY_B64_LEN or raw[43] != 0x3D:  # "="
        return None
    value = 0
    for c in raw[:43]:
        v = _B64_VALUE.get(c)
        if v is None:
            return None
        value = (value << 6) | v
    if value & 0b11:  # 43 * 6 = 258 bits: the last 2 carry no key bits
        return None
    return (value >> 2).to_bytes(KEY_SIZE, "big")


def parse_base64_key(text: str, what: str = "key") -> bytes:
    """Decode a base64 key (surrounding whitespace ignored) with :func:`decode_base64_key`;
    the message never echoes the value (it may be secret)."""
    key = decode_base64_key(text.strip())
    if key is None:
        raise ConfigError(f"{what}: not a valid base64 WireGuard key (44 characters expected)")
    return key


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


def redact(text: str) -> str:
    """``text`` with anything shaped like a WireGuard key (base64 or hex) replaced by
    ``(hidden)``, as ``wg`` hides keys. Public keys look the same and are hidden too: the price
    of not parsing. The one redaction: logs, Events, testbed errors."""
    return _HEX_KEY_RE.sub(HIDDEN, _KEY_RE.sub(HIDDEN, text))
