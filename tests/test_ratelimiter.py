"""Tests for wgpy.core.ratelimiter with a float clock (no sleeping)."""

from __future__ import annotations

import ipaddress

import pytest

from wgpy.core.ratelimiter import PACKETS_BURSTABLE, PACKETS_PER_SECOND, RateLimiter

COST = 1.0 / PACKETS_PER_SECOND  # 50 ms


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


# The address list of wireguard-go ratelimiter/ratelimiter_test.go (all distinct /64s).
IPS = [
    ip(a)
    for a in (
        "127.0.0.1", "192.168.1.1", "172.167.2.3", "97.231.252.215", "248.97.91.167",
        "188.208.233.47", "104.2.183.179", "72.129.46.120",
        "2001:0db8:0a0b:12f0:0000:0000:0000:0001", "f5c2:818f:c052:655a:9860:b136:6894:25f0",
        "b2d7:15ab:48a7:b07c:a541:f144:a9fe:54fc", "a47b:786e:1671:a22b:d6f9:4ab0:abc7:c918",
        "ea1e:d155:7f7a:98fb:2bf5:9483:80f6:5445", "3f0e:54a2:f5b4:cd19:a21d:58e1:3746:84c4",
    )
]  # fmt: skip

# (wait before, expected): kernel selftest/ratelimiter.c expected_results, which
# wireguard-go's test mirrors with real sleeps.
UPSTREAM_SEQUENCE: list[tuple[float, bool]] = [
    *[(0.0, True)] * PACKETS_BURSTABLE,  # initial burst
    (0.0, False),  # after the burst
    (COST, True),  # refilled one packet
    (0.0, False),  # not refilled enough
    (2 * COST, True),  # refilled a two-packet burst...
    (0.0, True),
    (0.0, False),  # ...and no more
]


@pytest.mark.parametrize("start", [0.0, 0.1, 12345.678, 987654.321])
def test_upstream_sequence(start: float) -> None:
    rl = RateLimiter()
    now = start
    for step, (wait, expected) in enumerate(UPSTREAM_SEQUENCE):
        now += wait
        for addr in IPS:
            assert rl.allow(addr, now=now) is expected, (step, ipaddress.ip_address(addr))
    assert len(rl) == len(IPS)


def test_burst_of_five_then_denied() -> None:
    rl = RateLimiter()
    a = ip("10.0.0.1")
    results = [rl.allow(a, now=5.0) for _ in range(8)]
    assert results == [True] * 5 + [False] * 3


def test_refills_at_twenty_per_second() -> None:
    rl = RateLimiter()
    a = ip("10.0.0.1")
    for _ in range(5):
        assert rl.allow(a, now=0.0)
    assert not rl.allow(a, now=0.049)  # 49 ms: not yet one packet's worth
    assert rl.allow(a, now=0.050)  # tokens carried over: 50 ms since the burst
    assert not rl.allow(a, now=0.050)
    # a steady sender (one packet per ms) over the next ten seconds gets 20 per second
    allowed = sum(rl.allow(a, now=0.050 + k / 1000) for k in range(1, 10_001))
    assert allowed == 20 * 10


def test_bucket_capped_at_burst_after_idle() -> None:
    rl = RateLimiter()
    a = ip("10.0.0.1")
    assert rl.allow(a, now=0.0)
    results = [rl.allow(a, now=0.9) for _ in range(7)]  # idle 0.9 s: still tracked
    assert results == [True] * 5 + [False] * 2


def test_sources_are_independent() -> None:
    rl = RateLimiter()
    a, b = ip("10.0.0.1"), ip("10.0.0.2")
    for _ in range(5):
        assert rl.allow(a, now=1.0)
    assert not rl.allow(a, now=1.0)
    assert all(rl.allow(b, now=1.0) for _ in range(5))
    assert not rl.allow(b, now=1.0)
    assert len(rl) == 2


def test_ipv6_shares_bucket_per_64() -> None:
    rl = RateLimiter()
    same64 = [ip(f"2001:db8:1:2::{i:x}") for i in range(1, 7)]
    assert [rl.allow(a, now=0.0) for a in same64] == [True] * 5 + [False]
    assert rl.allow(ip("2001:db8:1:3::1"), now=0.0)  # the next /64 is another source
    assert len(rl) == 2


def test_ipv4_mapped_ipv6_keyed_as_ipv4() -> None:
    rl = RateLimiter()
    for _ in range(5):
        assert rl.allow(ip("192.0.2.1"), now=0.0)
    assert not rl.allow(ip("::ffff:192.0.2.1"), now=0.0)  # same host
    # other IPv4 hosts do not share a bucket through the mapped /64 (::ffff:0:0/96 is one /64)
    assert rl.allow(ip("::ffff:192.0.2.2"), now=0.0)
    assert rl.allow(ip("::ffff:198.51.100.7"), now=0.0)
    assert len(rl) == 3


def test_idle_entries_garbage_collected() -> None:
    rl = RateLimiter()
    a, b, c = ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")
    rl.allow(a, now=0.0)
    rl.allow(b, now=0.5)
    assert len(rl) == 2
    rl.allow(c, now=1.2)  # GC due (1.2 s since the first call): a idle 1.2 s, b only 0.7 s
    assert len(rl) == 2
    rl.allow(c, now=1.9)  # b now idle 1.4 s, but GC ran 0.7 s ago: lazily deferred
    assert len(rl) == 2
    rl.allow(c, now=2.2)  # next GC: b goes, c was just used
    assert len(rl) == 1
    rl.allow(a, now=10.0)  # c idle 7.8 s is collected; a comes back as a new source
    assert len(rl) == 1


def test_entry_idle_exactly_one_second_survives_gc() -> None:
    rl = RateLimiter()
    rl.allow(ip("10.0.0.1"), now=0.0)
    rl.allow(ip("10.0.0.2"), now=1.0)  # GC runs; the first is idle exactly 1 s
    assert len(rl) == 2


def test_table_bound_denies_new_sources() -> None:
    rl = RateLimiter(max_entries=3)
    known = [ip(f"10.0.0.{i}") for i in range(1, 4)]
    for a in known:
        assert rl.allow(a, now=0.0)
    assert not rl.allow(ip("10.0.0.4"), now=0.1)  # full: a new source is denied
    assert not rl.allow(ip("fd00::1"), now=0.1)
    assert len(rl) == 3
    assert rl.allow(known[0], now=0.1)  # known sources keep their buckets
    assert rl.allow(ip("10.0.0.4"), now=2.0)  # GC freed the idle entries
    assert len(rl) == 1


def test_rejects_bad_address_length() -> None:
    rl = RateLimiter()
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        rl.allow(b"\x01\x02\x03", now=0.0)
