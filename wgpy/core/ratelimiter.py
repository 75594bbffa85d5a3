"""Per-source token bucket for handshake messages under load.

Mirrors the kernel's ``ratelimiter.c`` (wireguard-go ``ratelimiter/ratelimiter.go`` is the
same design): 20 packets per second per source with a burst of 5. Tokens are measured in
nanoseconds of elapsed time: a packet costs 50 ms worth, a bucket holds at most 250 ms worth,
and a source seen for the first time is allowed at once and starts at ``max - cost``.
Buckets idle for more than one second are dropped; at that age they would be full anyway,
so collecting them changes no decision, only memory.

Differences from wireguard-go, on purpose:

- A packet passes when ``tokens >= cost`` (kernel). wireguard-go tests ``tokens > cost``,
  which lets only 4 packets through at one instant; its test passes only because real time
  elapses between calls. With an exact clock the kernel rule gives the documented burst of 5.
- The key is the IPv4 address or the IPv6 /64 (kernel), not the full IPv6 address
  (wireguard-go): one host owns a whole /64 and could otherwise rotate source addresses.
  IPv4-mapped IPv6 addresses (from a dual-stack socket) are keyed as the IPv4 address.
- Garbage collection is lazy, at most once per second inside :meth:`RateLimiter.allow`,
  instead of a background timer (sans-IO).
- The table is bounded: when it is full, a *new* source is denied (kernel ``max_entries``).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "GC_INTERVAL",
    "MAX_TOKENS_NS",
    "PACKETS_BURSTABLE",
    "PACKETS_PER_SECOND",
    "PACKET_COST_NS",
    "RateLimiter",
]

PACKETS_PER_SECOND = 20
PACKETS_BURSTABLE = 5
PACKET_COST_NS = 1_000_000_000 // PACKETS_PER_SECOND  # 50 ms
MAX_TOKENS_NS = PACKET_COST_NS * PACKETS_BURSTABLE  # 250 ms
GC_INTERVAL = 1.0  # seconds; also the idle age after which a bucket is dropped
_GC_INTERVAL_NS = 1_000_000_000
DEFAULT_MAX_ENTRIES = 1 << 16

_V4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"


def _key(ip: bytes) -> bytes:
    n = len(ip)
    if n == 4:
        return bytes(ip)
    if n == 16:
        if ip[:12] == _V4_MAPPED_PREFIX:
            return bytes(ip[12:])
        return bytes(ip[:8])  # the /64; 8 bytes, so never equal to an IPv4 key
    raise ValueError(f"an IP address is 4 or 16 bytes, not {n}")


class RateLimiter:
    """Token-bucket rate limiter keyed by source address (sans-IO: pass ``now``)."""

    __slots__ = ("_buckets", "_last_gc_ns", "_max_entries")

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        # key -> [tokens_ns, last_ns]; a mutable pair updated in place.
        self._buckets: dict[bytes, list[int]] = {}
        self._max_entries = max_entries
        self._last_gc_ns: int | None = None

    def __len__(self) -> int:
        """Number of sources currently tracked."""
        return len(self._buckets)

    def allow(self, ip: bytes, *, now: float) -> bool:
        """Charge one packet from ``ip`` (4 or 16 raw address bytes, no port) at ``now``.

        ``now`` is monotonic seconds. Returns whether the packet is within the source's rate.
        """
        # Integer nanoseconds, as upstream: float token arithmetic would make the exact
        # "tokens == cost" boundary depend on rounding.
        now_ns = round(now * 1e9)
        if self._last_gc_ns is None:
            self._last_gc_ns = now_ns
        elif now_ns - self._last_gc_ns >= _GC_INTERVAL_NS:
            self._collect(now_ns)
        key = _key(ip)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_entries:
                return False
            self._buckets[key] = [MAX_TOKENS_NS - PACKET_COST_NS, now_ns]
            return True
        # max(0, ...): a clock that steps backwards must not drain the bucket.
        tokens = min(MAX_TOKENS_NS, bucket[0] + max(0, now_ns - bucket[1]))
        bucket[1] = now_ns
        if tokens >= PACKET_COST_NS:
            bucket[0] = tokens - PACKET_COST_NS
            return True
        bucket[0] = tokens
        return False

    def _collect(self, now_ns: int) -> None:
        """Drop buckets idle for more than a second (kernel ``wg_ratelimiter_gc_entries``)."""
        self._last_gc_ns = now_ns
        stale = [k for k, (_, last) in self._buckets.items() if now_ns - last > _GC_INTERVAL_NS]
        for k in stale:
            del self._buckets[k]
