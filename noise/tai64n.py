"""TAI64N timestamps as WireGuard sends them (wireguard-go ``tai64n/``, kernel ``noise.c``).

Seconds are ``0x400000000000000A + unix_seconds`` (TAI64 label plus the fixed +10 s);
nanoseconds are whitened: rounded down to a multiple of 2**24 ns (~16.8 ms) so that the
timestamp does not leak precise timing. Two initiations under ~17 ms apart therefore carry
equal timestamps, and a responder rejects the second as a replay.
"""

from __future__ import annotations

import struct

TAI64N_SIZE = 12
TAI64_BASE = 0x400000000000000A
WHITENER_MASK = 0x1000000 - 1  # 2**24 - 1

_STRUCT = struct.Struct(">QI")
ZERO = bytes(TAI64N_SIZE)


def stamp(wall_time_ns: int) -> bytes:
    """Encode a Unix wall time in nanoseconds as a whitened TAI64N label."""
    seconds, nanos = divmod(wall_time_ns, 1_000_000_000)
    return _STRUCT.pack(TAI64_BASE + seconds, nanos & ~WHITENER_MASK)


def after(a: bytes, b: bytes) -> bool:
    """True when timestamp ``a`` is strictly later than ``b`` (big-endian byte order)."""
    return a > b


def to_unix_ns(label: bytes) -> int:
    seconds: int
    nanos: int
    seconds, nanos = _STRUCT.unpack(label)
    return (seconds - TAI64_BASE) * 1_000_000_000 + nanos


def increment(label: bytes) -> bytes:
    """The smallest whitened timestamp strictly after ``label``."""
    return stamp(to_unix_ns(label) + WHITENER_MASK + 1)
