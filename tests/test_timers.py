"""Fake-clock tests for every timer rule and constant (wireguard-protocol.md §5)."""

from __future__ import annotations

import itertools

import pytest

from tests.simlink import A_TUN, B_TUN, Pair, ipv4
from wgpy.core import constants as C
from wgpy.core import messages


def initiations(sent: list[bytes]) -> int:
    return sum(1 for d in sent if len(d) == messages.MESSAGE_INITIATION_SIZE and d[0] == 1)


def established() -> Pair:
    p = Pair()
    p.send_a(b"hello")
    assert p.pb.current is not None and p.pa.current is not None
    return p


def test_constants_match_the_protocol() -> None:
    assert C.REKEY_AFTER_MESSAGES == 2**60
    assert C.REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1
    assert (C.REKEY_AFTER_TIME, C.REJECT_AFTER_TIME, C.REKEY_ATTEMPT_TIME) == (120, 180, 90)
    assert (C.REKEY_TIMEOUT, C.KEEPALIVE_TIMEOUT, C.ZERO_KEY_MATERIAL_AFTER) == (5, 10, 540)
    assert C.MAX_TIMER_HANDSHAKES == 18 and C.REKEY_ON_RECEIVE_AGE == 165
    assert C.REPLAY_WINDOW == 8128


def test_retransmit_every_rekey_timeout_with_jitter_then_give_up() -> None:
    p = Pair()
    p.link.drop_to.add("B")  # nothing reaches B
    p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"x"), now=0.0)
    times = [0.0]
    sent = 1
    p.a.datagrams_to_send()
    while p.a.get_timer() is not None and p.clock.now < 200:
        t = p.a.get_timer()
        assert t is not None
        p.clock.now = t
        p.a.handle_timer(now=t)
        out = p.a.datagrams_to_send()
        if out:
            assert len(out) == 1 and out[0][0][0] == 1
            times.append(t)
            sent += len(out)
        if p.pb.zero_key_material_at is not None:
            break
    assert sent == C.MAX_TIMER_HANDSHAKES + 2  # 20 initiations in all
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(C.REKEY_TIMEOUT <= g < C.REKEY_TIMEOUT + C.REKEY_TIMEOUT_JITTER_MAX for g in gaps)
    assert len(set(gaps)) > 1  # jittered
    # giving up flushed the staged packet and armed key zeroing
    assert not p.pb.staged
    assert p.pb.zero_key_material_at == pytest.approx(times[-1] + C.REKEY_TIMEOUT, abs=0.34) or (
        p.pb.zero_key_material_at is not None
        and p.pb.zero_key_material_at > times[-1] + C.ZERO_KEY_MATERIAL_AFTER - 1
    )


def test_at_most_one_initiation_per_rekey_timeout() -> None:
    p = Pair()
    assert p.a.initiate(p.pb, now=0.0)
    assert not p.a.initiate(p.pb, now=4.9)
    assert p.a.initiate(p.pb, now=5.0)


def test_passive_keepalive_after_keepalive_timeout() -> None:
    p = established()
    n = len(p.sent_b)
    p.advance(p.clock.now + C.KEEPALIVE_TIMEOUT - 0.01)
    assert len(p.sent_b) == n
    p.advance(p.clock.now + 0.02)
    assert len(p.sent_b) == n + 1 and len(p.sent_b[-1]) == messages.MESSAGE_KEEPALIVE_SIZE


def test_no_passive_keepalive_when_replying() -> None:
    p = established()
    n = len(p.sent_b)
    p.advance(3.0)
    p.send_b(b"reply")
    p.advance(3.0 + C.KEEPALIVE_TIMEOUT + 1)
    assert len(p.sent_b) == n + 1  # only the reply


def test_new_handshake_when_sent_data_is_not_answered() -> None:
    p = established()
    p.advance(1.0)
    p.send_b(b"ack")  # A has heard from B: no new-handshake timer pending
    assert p.pb.new_handshake_at is None
    p.link.drop_to.add("A")  # from now on B's answers and keepalives are lost
    n = initiations(p.sent_a)
    p.send_a(b"anyone?")
    t0 = p.clock.now
    p.advance(t0 + C.KEEPALIVE_TIMEOUT + C.REKEY_TIMEOUT - 0.01)
    assert initiations(p.sent_a) == n
    p.advance(t0 + C.KEEPALIVE_TIMEOUT + C.REKEY_TIMEOUT + 0.34)
    assert initiations(p.sent_a) == n + 1


def test_initiator_rekeys_on_send_after_rekey_after_time() -> None:
    p = established()
    first = p.pb.current
    p.clock.now = C.REKEY_AFTER_TIME - 1
    p.send_a(b"before")
    assert p.pb.current is first
    p.clock.now = C.REKEY_AFTER_TIME + 1
    p.send_a(b"after")
    p.pump()
    assert p.pb.current is not first and p.pb.previous is first


def test_responder_never_rekeys_on_time() -> None:
    p = established()
    first_b = p.pa.current
    n = initiations(p.sent_b)
    for t in (C.REKEY_AFTER_TIME + 1, C.REKEY_ON_RECEIVE_AGE + 1):
        p.clock.now = t
        p.b.receive_tun_packet(ipv4(B_TUN, A_TUN, b"r"), now=t)
        p.b.datagrams_to_send()
    assert initiations(p.sent_b) == n and p.pa.current is first_b


def test_initiator_rekeys_on_receive_at_165_seconds() -> None:
    p = established()
    n = initiations(p.sent_a)
    p.clock.now = C.REKEY_ON_RECEIVE_AGE - 1
    p.send_b(b"early")
    assert initiations(p.sent_a) == n
    p.clock.now = C.REKEY_ON_RECEIVE_AGE + 1
    p.pb.last_sent_handshake = -100.0
    p.send_b(b"late")
    assert initiations(p.sent_a) == n + 1
    assert p.pb.sent_lastminute_handshake is False  # completed, flag reset


def test_reject_after_time_keypair_unusable() -> None:
    p = established()
    p.link.drop_to.add("B")
    p.clock.now = C.REJECT_AFTER_TIME + 0.5
    p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"late"), now=p.clock.now)
    out = p.a.datagrams_to_send()
    assert all(d[0] == 1 for d, _ in out)  # no data on the dead key, only an initiation
    assert len(p.pb.staged) == 1
    # and B refuses transport on its keypair older than 180 s
    p.link.drop_to.clear()
    kp = p.pa.current
    assert kp is not None
    fake = messages.TRANSPORT_HEADER.pack(4, kp.local_index, 99) + bytes(32)
    p.b.receive_datagram(fake, ("192.0.2.1", 51820), now=p.clock.now)
    assert p.b.drops["expired_keypair"] == 1


def test_rekey_after_messages_and_reject_after_messages() -> None:
    p = established()
    kp = p.pb.current
    assert kp is not None
    kp.send_counter = C.REKEY_AFTER_MESSAGES
    n = initiations(p.sent_a)
    p.pb.last_sent_handshake = -100.0
    p.send_a(b"many")
    assert initiations(p.sent_a) == n + 1
    q = established()
    kq = q.pb.current
    assert kq is not None
    kq.send_counter = C.REJECT_AFTER_MESSAGES
    q.pb.last_sent_handshake = -100.0
    q.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"too many"), now=q.clock.now)
    out = q.a.datagrams_to_send()
    assert [len(d) for d, _ in out] == [messages.MESSAGE_INITIATION_SIZE]


def test_zero_key_material_after_540_seconds() -> None:
    p = established()
    p.link.drop_to.update({"A", "B"})
    derived = p.pb.zero_key_material_at
    assert derived == pytest.approx(C.ZERO_KEY_MATERIAL_AFTER, abs=0.01)
    p.advance(C.ZERO_KEY_MATERIAL_AFTER - 1)
    p.pb.retransmit_handshake_at = None
    assert p.pb.current is not None or p.pb.previous is not None
    p.advance(C.ZERO_KEY_MATERIAL_AFTER + 1)
    assert p.pb.current is None and p.pb.previous is None and p.pb.next is None
    assert not any(e[0] is p.pb and e[1] is not None for e in p.a.index_table.values())


def test_persistent_keepalive() -> None:
    p = established()
    p.advance(15.0)  # B's passive keepalive (t=10) settles; then silence both ways
    t0 = p.clock.now
    p.a.set_persistent_keepalive(p.pb, 25, now=t0)
    start = len(p.sent_a)
    p.pump()
    assert len(p.sent_a) == start + 1  # turning it on sends one at once
    times = []
    while p.clock.now < t0 + 80:
        nxt = p.pb.persistent_keepalive_at
        assert nxt is not None
        p.advance(nxt)
        if len(p.sent_a) > start + 1 + len(times):
            times.append(p.clock.now)
    keepalives = [d for d in p.sent_a[start:] if len(d) == messages.MESSAGE_KEEPALIVE_SIZE]
    assert times[:3] == pytest.approx([t0 + 25, t0 + 50, t0 + 75])
    assert len(keepalives) >= 4
    # any authenticated traffic re-arms it: received data postpones the next one
    p.send_b(b"hello A")
    assert p.pb.persistent_keepalive_at == pytest.approx(p.clock.now + 25)
    p.a.set_persistent_keepalive(p.pb, 0, now=p.clock.now)
    assert p.pb.persistent_keepalive_at is None


def test_silence_handshake_recovers_a_peer_that_lost_its_state() -> None:
    p = established()
    p.advance(1.0)
    p.a.set_persistent_keepalive(p.pb, 5, now=p.clock.now)
    p.a.set_silence_handshake(p.pb, 25.0, now=p.clock.now)
    p.pump()
    # an alive but idle peer: one handshake per 25 s of silence (B's passive keepalive at
    # t=10 was the last thing A heard), and it completes
    p.advance(15.0)
    n = initiations(p.sent_a)
    due = p.pb.silence_handshake_at
    assert due == pytest.approx(10.0 + 25.0)
    p.advance(due - 0.1)
    assert initiations(p.sent_a) == n
    p.advance(due + 0.1)
    assert initiations(p.sent_a) == n + 1
    assert p.pb.current is not None and p.pb.current.created == pytest.approx(due)
    # B "restarts": it forgets A's session and has no endpoint for A
    assert p.b.public_key is not None
    p.b.remove_peer(p.a.public_key or b"")
    pa = p.b.add_peer(p.a.public_key or b"", now=p.clock.now)
    p.b.set_allowed_ips(pa, ["10.99.0.1/32"])
    p.pa = pa
    t_restart = p.clock.now
    reply = ipv4(B_TUN, A_TUN, b"from the restarted side")
    p.b.receive_tun_packet(reply, now=p.clock.now)  # cannot go anywhere: no endpoint, no key
    assert p.b.datagrams_to_send() == []
    p.advance(t_restart + 30.0)
    # A re-initiated within the silence interval; B now knows A again and can reach it
    assert pa.current is not None and pa.endpoint is not None
    assert p.pb.current is not None and p.pb.current.created - t_restart < 26.0
    p.send_b(b"after the restart")
    assert p.delivered_a[-1] == ipv4(B_TUN, A_TUN, b"after the restart")


def test_silence_handshake_is_off_by_default() -> None:
    p = established()
    p.advance(15.0)  # B's passive keepalive (t=10) answered A's data
    n = initiations(p.sent_a)
    p.a.set_persistent_keepalive(p.pb, 5, now=p.clock.now)
    p.advance(100.0)  # silence, keepalives only: standard WireGuard does not re-initiate
    assert initiations(p.sent_a) == n
    assert p.pb.silence_handshake_at is None
