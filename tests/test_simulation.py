"""Two devices over a lossy, reordering, duplicating link across several rekeys."""

from __future__ import annotations

import pytest

from tests.simlink import A_TUN, B_TUN, Link, Pair, ipv4
from wgpy.core import constants as C


@pytest.mark.parametrize("seed", [1, 2])
def test_traffic_across_rekeys_on_a_bad_link(seed: int) -> None:
    p = Pair(link=Link(loss=0.05, duplicate=0.05, reorder=0.2, seed=seed))
    sent: set[bytes] = set()
    keypairs_seen: set[int] = set()
    ident = 0
    # 10 minutes of traffic, a packet burst every 0.5 s both ways
    t = 0.0
    while t < 600.0:
        # A sends on the half second, B a quarter later: with instant delivery and equal
        # clocks, exact lockstep would turn every handshake into a simultaneous initiation
        p.advance(t)
        for _ in range(3):
            ident += 1
            pkt = ipv4(A_TUN, B_TUN, b"a%d" % ident, ident)
            sent.add(pkt)
            p.a.receive_tun_packet(pkt, now=p.clock.now)
        p.pump()
        p.advance(t + 0.25)
        for _ in range(3):
            ident += 1
            pkt = ipv4(B_TUN, A_TUN, b"b%d" % ident, ident)
            sent.add(pkt)
            p.b.receive_tun_packet(pkt, now=p.clock.now)
        p.pump()
        if p.pb.current is not None:
            keypairs_seen.add(p.pb.current.local_index)
        # old sessions are released: never more than three keypairs per peer in the table
        assert sum(1 for e in p.a.index_table.values() if e[1] is not None) <= 3
        t += 0.5
    delivered = p.delivered_a + p.delivered_b
    assert len(delivered) == len(set(delivered)), "a packet was accepted twice"
    assert set(delivered) <= sent
    # several rekeys by time happened (every ~120 s of sending)
    assert len(keypairs_seen) >= 4
    # nothing lost beyond what the link dropped or what waited for a handshake
    lost = len(sent) - len(delivered)
    staged_drops = p.a.drops["staged_overflow"] + p.b.drops["staged_overflow"]
    assert lost <= p.link.dropped + staged_drops + len(p.pa.staged) + len(p.pb.staged)
    assert len(delivered) > 0.85 * len(sent)


def test_rekey_by_message_count() -> None:
    p = Pair()
    p.send_a(b"start")
    for round_ in range(3):
        kp = p.pb.current
        assert kp is not None
        kp.send_counter = C.REKEY_AFTER_MESSAGES - 2  # jump close to the limit
        p.clock.now += C.REKEY_TIMEOUT + 1
        for i in range(4):
            pkt = p.send_a(b"c%d-%d" % (round_, i))
            assert p.delivered_b[-1] == pkt
        p.pump()
        assert p.pb.current is not kp, "no rekey after REKEY_AFTER_MESSAGES"
