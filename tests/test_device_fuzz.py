"""Hostile input: arbitrary and mutated datagrams never raise, never alter a session."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.simlink import Pair


def _established() -> tuple[Pair, list[bytes]]:
    p = Pair()
    p.send_a(b"hello")
    p.send_b(b"back")
    return p, list(p.sent_a + p.sent_b)


P, SAMPLES = _established()


def _snapshot(p: Pair) -> tuple[object, ...]:
    return (
        p.pa.current,
        p.pa.previous,
        p.pa.next,
        p.pa.current.replay.last if p.pa.current else None,
        p.pa.endpoint,
        p.pa.handshake.last_timestamp,
        p.pa.handshake.state,
        dict(p.b.index_table.items()),
        p.pa.rx_bytes,
    )


def _mutate(data: bytes, positions: list[int], flips: list[int]) -> bytes:
    b = bytearray(data)
    for pos, flip in zip(positions, flips, strict=False):
        if b:
            b[pos % len(b)] ^= flip or 1
    return bytes(b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from([1, 2, 3, 4, 0, 5, 255]))
def test_arbitrary_bytes_dropped_and_counted(data: bytes, type_byte: int) -> None:
    msg = bytes([type_byte]) + data
    before = _snapshot(P)
    drops = sum(P.b.drops.values())
    P.b.receive_datagram(msg, ("198.51.100.1", 1), now=P.clock.now)
    assert P.b.tun_packets_to_write() == []
    assert P.b.datagrams_to_send() == []
    assert _snapshot(P) == before
    assert sum(P.b.drops.values()) == drops + 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(range(len(SAMPLES))),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
    st.lists(st.integers(0, 255), min_size=1, max_size=4),
    st.integers(-3, 3),
)
def test_mutated_real_messages_never_alter_the_session(
    i: int, positions: list[int], flips: list[int], resize: int
) -> None:
    msg = _mutate(SAMPLES[i], positions, flips)
    if resize > 0:
        msg += bytes(resize)
    elif resize < 0:
        msg = msg[:resize]
    if msg == SAMPLES[i]:
        return
    before = _snapshot(P)
    drops = sum(P.b.drops.values())
    P.b.receive_datagram(msg, ("198.51.100.1", 1), now=P.clock.now)
    # a mutated message must never authenticate: nothing delivered, nothing changed
    assert P.b.tun_packets_to_write() == []
    assert P.b.datagrams_to_send() == []
    assert _snapshot(P) == before
    assert sum(P.b.drops.values()) == drops + 1


def test_session_still_works_after_fuzzing() -> None:
    pkt = P.send_a(b"still alive")
    assert P.delivered_b[-1] == pkt
