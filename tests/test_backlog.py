"""The handshake budget: a flood of handshake messages must not starve transport data.

Unit tests drive the sans-IO Device on an injected clock; the last test sends a burst of junk
initiations (valid mac1, so they cost real work) interleaved with data through real UDP
sockets to the fast path, and checks that every data packet arrives while the junk is dropped
and counted.
"""

from __future__ import annotations

import os
import socket

import pytest

from noise import crypto
from noise.cookie import mac1_key
from tests.simlink import A_TUN, B_TUN, ipv4
from tests.test_fastpath import LOCAL, Clock, Side, handshake, raw_receiver, recv_all, sides
from wgpy.core import messages
from wgpy.core.backlog import HandshakeBacklog
from wgpy.core.constants import UNDER_LOAD_BACKLOG
from wgpy.core.device import Device

__all__ = ["sides"]  # the fixture, shared with test_fastpath

SRC = ("192.0.2.7", 40000)


def src(i: int) -> tuple[str, int]:
    """Source ``i`` of a flood from many addresses."""
    return (f"10.1.{i // 250}.{i % 250 + 1}", 40000)


def junk_initiation(responder_public: bytes, *, mac2: bool = False) -> bytes:
    """An initiation with random contents and a valid mac1: passes the mac1 check, fails
    the handshake itself (anyone who knows the public key can make these)."""
    msg = bytearray(struct_type(messages.MESSAGE_INITIATION) + os.urandom(144))
    msg[116:132] = crypto.mac(mac1_key(responder_public), bytes(msg[:116]))
    msg[132:148] = os.urandom(16) if mac2 else bytes(16)
    return bytes(msg)


def struct_type(t: int) -> bytes:
    return t.to_bytes(4, "little")


def responder() -> Device:
    dev = Device(wall_time_ns=lambda: 1_700_000_000 * 10**9, handshakes_per_second=1000)
    dev.set_private_key(crypto.generate_private_key(), now=0.0)
    return dev


def test_backlog_takes_per_call_and_per_second_retries_first() -> None:
    b = HandshakeBacklog(capacity=10, limit=4, per_second=10, burst=6)
    for i in range(11):
        assert b.push(bytes([i]), src(i), first=i != 10, now=0.0)
    assert not b.push(b"x", src(20), first=True, now=0.0)  # first contacts full
    assert b.push(b"y", src(21), first=False, now=0.0)  # the other queue has room
    got = b.take(now=0.0)
    assert [d for d, _ in got] == [bytes([10]), b"y", b"\x00", b"\x01"]  # retries first
    assert len(b.take(now=0.0)) == 2  # the burst of 6 is spent
    assert b.take(now=0.0) == []
    ready = b.ready_at()
    assert ready is not None and ready == pytest.approx(0.1)  # one token per 100 ms
    assert len(b.take(now=0.25)) == 2
    assert b.depth == 4


def test_sources_take_turns() -> None:
    """A source that floods fills only its own share; another source is served next round."""
    b = HandshakeBacklog(capacity=100, limit=100, per_second=1000, per_source=8)
    flood, legit = ("192.0.2.66", 1), ("198.51.100.1", 51820)
    pushed = [b.push(bytes([i]), flood, first=True, now=0.0) for i in range(20)]
    assert pushed == [True] * 8 + [False] * 12
    assert b.push(b"legit", legit, first=True, now=0.0)
    assert [a for _, a in b.take(now=0.0)][:3] == [flood, legit, flood]


def test_the_device_works_on_at_most_a_budget_per_call() -> None:
    dev = responder()
    pub = dev.public_key
    assert pub is not None
    for i in range(300):
        dev.queue_handshake(junk_initiation(pub), src(i), now=0.0)
    assert dev.backlog.depth == 300
    assert dev.drops["invalid_mac1"] == 0 and sum(dev.drops.values()) == 0  # no crypto yet
    dev.process_handshakes(now=0.0)
    assert dev.backlog.depth == 300 - dev.backlog.limit
    # every message worked on was answered with a cookie reply: the backlog was deep
    assert dev.drops["cookie_reply_sent"] == dev.backlog.limit
    assert UNDER_LOAD_BACKLOG <= 300
    replies = dev.datagrams_to_send()
    assert len(replies) == dev.backlog.limit
    assert all(len(d) == messages.MESSAGE_COOKIE_REPLY_SIZE for d, _ in replies)
    # the per-second budget (1000/s, burst 100 here) holds however often it is called
    for _ in range(10):
        dev.process_handshakes(now=0.0)
    assert dev.drops["cookie_reply_sent"] == 100
    t = dev.get_timer()
    assert t is not None and 0.0 < t <= 0.002  # the next token
    dev.handle_timer(now=0.05)  # 50 ms: 50 more
    assert dev.drops["cookie_reply_sent"] == 150


def test_a_full_backlog_drops_before_mac1_and_counts() -> None:
    dev = Device(wall_time_ns=lambda: 0, max_queued_handshakes=16, handshakes_per_wakeup=4)
    dev.set_private_key(crypto.generate_private_key(), now=0.0)
    pub = dev.public_key
    assert pub is not None
    dev.queue_handshake(b"\x01\x00\x00\x00" + bytes(100), SRC, now=0.0)  # wrong size
    dev.queue_handshake(b"\x07\x00\x00\x00" + bytes(144), SRC, now=0.0)  # unknown type
    for _ in range(10):  # one source: 8 (its share) queued
        dev.queue_handshake(memoryview(junk_initiation(pub)), SRC, now=0.0)
    for i in range(10):  # others: 8 more, then the queue is full
        dev.queue_handshake(memoryview(junk_initiation(pub)), src(i), now=0.0)
    assert dev.backlog.depth == 16
    assert dev.drops == {"handshake_backlog_full": 4, "malformed": 1, "unknown_type": 1}
    assert dev.drops["invalid_mac1"] == 0  # no crypto for any of them
    data, _ = dev.backlog.take(now=0.0)[0]
    assert type(data) is bytes  # the caller's buffer was copied


def test_a_deep_backlog_puts_the_device_under_load() -> None:
    """Under load follows the backlog (wireguard-go): cookies before any Diffie-Hellman."""
    dev = responder()
    dev.under_load_rate = 10**9  # the rate trigger off: only the backlog counts
    pub = dev.public_key
    assert pub is not None
    dev.queue_handshake(junk_initiation(pub), SRC, now=0.0)
    dev.process_handshakes(now=0.0)
    assert dev.drops["cookie_reply_sent"] == 0  # short backlog: the handshake was tried
    assert sum(dev.drops.values()) == 1
    for i in range(UNDER_LOAD_BACKLOG):
        dev.queue_handshake(junk_initiation(pub), src(i), now=1.0)
    dev.process_handshakes(now=1.0)
    assert dev.drops["cookie_reply_sent"] == dev.backlog.limit
    dev.backlog.clear()
    dev.queue_handshake(junk_initiation(pub), SRC, now=1.5)
    dev.process_handshakes(now=1.5)  # sticky for a second
    assert dev.drops["cookie_reply_sent"] == dev.backlog.limit + 1


def test_junk_interleaved_with_data_every_packet_delivered(
    sides: tuple[Side, Side, Clock],
) -> None:
    """A burst of junk initiations with valid mac1 interleaved with transport data: every
    data packet reaches B's TUN, in order; every junk message is counted as dropped: when the
    backlog is full (before mac1), answered with a cookie reply (under load) or, before the
    backlog was deep enough, failing the handshake itself."""
    a, b, _clock = sides
    handshake(a, b)
    pub_b = b.dev.public_key
    assert pub_b is not None
    # A's data, sealed by A's fast path, caught before B sees it
    tap = raw_receiver()
    a.dev.set_endpoint(a.peer, (LOCAL, tap.getsockname()[1]))
    sent = [ipv4(A_TUN, B_TUN, bytes([i % 256]) * 200, ident=i) for i in range(300)]
    for i in range(0, len(sent), 50):
        a.tun.inject_many(sent[i : i + 50])
        assert a.fast.on_tun() is None
    data = recv_all(tap)
    assert len(data) == len(sent)
    flooders = []
    for k in range(40):  # from 40 addresses: the backlog gets deep (under load)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.3.{k + 1}", 0))
        flooders.append(s)
    junk_count = 0
    try:
        assert b.bind.v4 is not None
        for i, d in enumerate(data):
            for k in range(10):
                flooders[(i + k) % 40].sendto(junk_initiation(pub_b), (LOCAL, b.bind.port))
                junk_count += 1
            tap.sendto(d, (LOCAL, b.bind.port))
            if i % 25 == 24:
                b.drain()  # reads interleave with the sending
        b.drain()
        while b.dev.backlog.depth:  # the loop keeps working on the backlog
            _clock.now += 0.1
            b.loop_step()
        assert b.tun.take() == sent
        replies = [r for s in flooders for r in recv_all(s)]
    finally:
        for s in flooders:
            s.close()
        tap.close()
    drops = b.dev.drops
    assert sum(drops.values()) == junk_count, drops
    assert drops["cookie_reply_sent"] > 0  # under load: cookies, not handshakes
    assert drops["handshake_backlog_full"] > 0
    assert 0 < len(replies) <= drops["cookie_reply_sent"]  # the rest overflowed our socket
    assert all(r[0] == messages.MESSAGE_COOKIE_REPLY for r in replies)


def test_cookie_replies_are_rate_limited_per_source() -> None:
    """Under load, one source gets at most 5 cookie replies at once (then 20/s); others
    are not affected, and a message without mac2 is not checked for one."""
    dev = responder()
    dev.under_load_rate = 0  # under load from the first message
    pub = dev.public_key
    assert pub is not None
    for _ in range(8):
        dev.queue_handshake(junk_initiation(pub), SRC, now=0.0)
    dev.queue_handshake(junk_initiation(pub), src(1), now=0.0)
    dev.process_handshakes(now=0.0)
    assert dev.drops["cookie_reply_sent"] == 5 + 1
    assert dev.drops["cookie_reply_rate_limited"] == 3
    assert sorted(a for _, a in dev.datagrams_to_send()) == sorted([SRC] * 5 + [src(1)])
    dev.queue_handshake(junk_initiation(pub), SRC, now=0.05)  # 50 ms: one more token
    dev.process_handshakes(now=0.05)
    assert dev.drops["cookie_reply_sent"] == 7


def test_no_hand_over_under_a_handshake_flood(sides: tuple[Side, Side, Clock]) -> None:
    """The fast path yields the CPU after its first send, except while handshake messages
    wait: a yield then hands the CPU to the flood's other consumers while the socket fills."""
    a, b, _clock = sides
    handshake(a, b)
    yields: list[int] = []
    a.fast.hand_over = lambda: yields.append(1)
    pub = a.dev.public_key
    assert pub is not None
    a.dev.queue_handshake(junk_initiation(pub), SRC, now=_clock.now)
    a.tun.inject(ipv4(A_TUN, B_TUN, b"under pressure"))
    assert a.fast.on_tun() is None
    assert yields == []
    a.loop_step()  # the backlog is worked off (the under-load state never started)
    assert a.dev.backlog.depth == 0 and not a.dev.handshake_pressure(_clock.now)
    a.tun.inject(ipv4(A_TUN, B_TUN, b"quiet again"))
    assert a.fast.on_tun() is None
    assert yields == [1]
    b.drain()
    assert b.tun.take() == [
        ipv4(A_TUN, B_TUN, b"under pressure"),
        ipv4(A_TUN, B_TUN, b"quiet again"),
    ]


def test_a_flood_with_random_mac2_does_not_starve_first_contacts() -> None:
    """Messages carrying a mac2 are served first, but for at most half of a batch while
    first contacts wait (a flood that fills mac2 with random bytes would starve them)."""
    b = HandshakeBacklog(capacity=1024, limit=8, per_second=1e6, per_source=8)
    for i in range(400):
        assert b.push(b"with mac2", src(i), first=False, now=0.0)
    assert b.push(b"legit", ("198.51.100.1", 51820), first=True, now=0.0)
    got = [d for d, _ in b.take(now=0.0)]
    assert got == [b"with mac2"] * 4 + [b"legit"] + [b"with mac2"] * 3
