"""The sans-IO device: handshake, transport, key rotation, roaming, routing, cookies."""

from __future__ import annotations

from noise import crypto
from tests.simlink import A_ADDR, A_TUN, B_ADDR, B_TUN, Link, Pair, ipv4
from wgpy.core import messages
from wgpy.core.constants import REJECT_AFTER_MESSAGES


def test_first_packet_triggers_handshake_and_arrives() -> None:
    p = Pair()
    pkt = p.send_a(b"hello through the tunnel")
    assert p.delivered_b == [pkt]
    assert p.pb.current is not None and p.pb.current.is_initiator
    # B got the data on `next` and rotated it to current
    assert p.pa.current is not None and not p.pa.current.is_initiator and p.pa.next is None
    reply = p.send_b(b"and back")
    assert p.delivered_a == [reply]
    assert [len(d) for d in p.sent_a[:1]] == [messages.MESSAGE_INITIATION_SIZE]
    assert len(p.sent_b[0]) == messages.MESSAGE_RESPONSE_SIZE


def test_psk_handshake_and_mismatched_psk_fails() -> None:
    p = Pair(psk=True)
    pkt = p.send_a(b"psk")
    assert p.delivered_b == [pkt]
    q = Pair(psk=True)
    q.b.set_preshared_key(q.pa, crypto.generate_private_key())
    q.send_a(b"x")
    assert q.delivered_b == []
    assert q.a.drops["decryption_failed"] == 1  # the response fails at A


def test_initiator_sends_keepalive_when_nothing_staged() -> None:
    p = Pair()
    assert p.a.initiate(p.pb, now=0.0)
    p.pump()
    # A: response consumed, no data -> keepalive (32 bytes) confirms the key to B
    assert len(p.sent_a) == 2 and len(p.sent_a[1]) == messages.MESSAGE_KEEPALIVE_SIZE
    assert p.pa.current is not None and p.pa.next is None


def test_responder_never_sends_on_next() -> None:
    p2 = Pair()
    p2.a.initiate(p2.pb, now=0.0)
    init = p2.a.datagrams_to_send()
    p2.b.receive_datagram(init[0][0], ("192.0.2.1", 51820), now=0.0)
    p2.b.datagrams_to_send()  # response lost
    assert p2.pa.next is not None and p2.pa.current is None
    p2.b.receive_tun_packet(ipv4(B_TUN, A_TUN, b"wait"), now=0.1)
    out = p2.b.datagrams_to_send()
    assert out == []  # staged, not sent on `next`; a new initiation waits for the 5 s limit
    assert list(p2.pa.staged) == [ipv4(B_TUN, A_TUN, b"wait")]


def test_replayed_transport_packet_not_delivered_twice() -> None:
    p = Pair()
    p.send_a(b"one")
    data = p.sent_a[-1]
    p.b.receive_datagram(data, ("192.0.2.1", 51820), now=p.clock.now)
    assert p.b.tun_packets_to_write() == []
    assert p.b.drops["replayed"] == 1


def test_disallowed_inner_source_dropped() -> None:
    p = Pair()
    p.send_a(b"ok")
    spoofed = ipv4("10.99.0.77", B_TUN, b"spoof")
    p.a.allowed_ips.insert("10.99.0.0/24", p.pb)  # route it out, B must still refuse it
    p.a.receive_tun_packet(spoofed, now=p.clock.now)
    p.pump()
    assert spoofed not in p.delivered_b
    assert p.b.drops["disallowed_source"] == 1


def test_no_route_dropped_and_counted() -> None:
    p = Pair()
    p.a.receive_tun_packet(ipv4(A_TUN, "10.55.0.1", b"x"), now=0.0)
    assert p.a.datagrams_to_send() == [] and p.a.drops["no_route"] == 1
    p.a.receive_tun_packet(b"\x45\x00", now=0.0)
    assert p.a.drops["malformed_outbound"] == 1


def test_padding_to_16_and_trim_by_ip_length() -> None:
    p = Pair()
    p.send_a(b"x")  # 21-byte packet
    data = next(d for d in p.sent_a if d[0] == 4)
    assert len(data) == 16 + 32 + 16  # padded to 32
    payload = b"ends in zeros\x00\x00\x00"
    pkt = p.send_a(payload)
    assert p.delivered_b[-1] == pkt  # trailing zero bytes of the packet itself survive


def test_roaming_follows_authenticated_packets_only() -> None:
    p = Pair()
    p.send_a(b"first")
    assert p.pa.endpoint == ("192.0.2.1", 51820)
    # garbage from another address does not move the endpoint
    p.b.receive_datagram(bytes(148), ("198.51.100.9", 4444), now=p.clock.now)
    p.b.receive_datagram(b"\x04\x00\x00\x00" + bytes(40), ("198.51.100.9", 4444), now=p.clock.now)
    assert p.pa.endpoint == ("192.0.2.1", 51820)
    # A moves: its next authenticated packet comes from the new address
    p.a_addr = ("203.0.113.5", 40000)
    p.send_a(b"from the new place")
    assert p.pa.endpoint == ("203.0.113.5", 40000)
    reply = ipv4(B_TUN, A_TUN, b"reply")
    p.b.receive_tun_packet(reply, now=p.clock.now)
    assert p.b.datagrams_to_send()[0][1] == ("203.0.113.5", 40000)


def test_simultaneous_initiation_resolves() -> None:
    p = Pair()
    p.a.initiate(p.pb, now=0.0)
    p.b.initiate(p.pa, now=0.0)
    ia = p.a.datagrams_to_send()
    ib = p.b.datagrams_to_send()
    p.b.receive_datagram(ia[0][0], ("192.0.2.1", 51820), now=0.0)
    p.a.receive_datagram(ib[0][0], B_ADDR, now=0.0)
    # both consumed the other's initiation, overwrote their own, and answered
    ra = p.a.datagrams_to_send()
    rb = p.b.datagrams_to_send()
    assert len(ra[0][0]) == len(rb[0][0]) == messages.MESSAGE_RESPONSE_SIZE
    p.b.receive_datagram(ra[0][0], ("192.0.2.1", 51820), now=0.0)
    p.a.receive_datagram(rb[0][0], B_ADDR, now=0.0)
    assert p.a.drops["unknown_index"] + p.a.drops["invalid_handshake_state"] == 1
    assert p.pa.next is not None and p.pb.next is not None  # both responders
    # traffic sorts it out after the 5 s limit
    p.pump()
    p.clock.now = 6.0
    pkt = p.send_a(b"after the race")
    p.advance(20.0)
    assert pkt in p.delivered_b


def test_cookie_reply_under_load_then_mac2_accepted() -> None:
    p = Pair()
    p.b.under_load_rate = 0  # every handshake message counts as load
    p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"x"), now=0.0)
    p.pump()
    assert p.b.drops["cookie_reply_sent"] == 1
    assert p.pb.cookie_generator.has_cookie
    assert p.pb.current is None
    p.advance(6.0)  # the retransmit carries mac2
    assert p.pb.current is not None
    assert p.delivered_b and p.delivered_b[0] == ipv4(A_TUN, B_TUN, b"x")


def test_rate_limited_source_under_load() -> None:
    p = Pair()
    p.b.under_load_rate = 0
    p.a.initiate(p.pb, now=0.0)
    p.pump()  # cookie acquired
    msgs = 0
    for i in range(12):
        p.clock.now = 6.0 + i * 0.001
        p.pb.last_sent_handshake = -100.0
        p.a.initiate(p.pb, now=p.clock.now)
        for data, _ in p.a.datagrams_to_send():
            p.b.receive_datagram(data, ("192.0.2.1", 51820), now=p.clock.now)
            msgs += 1
        p.b.datagrams_to_send()
    assert msgs == 12
    assert p.b.drops["rate_limited"] >= 6  # burst of 5, then 20/s


def test_private_key_change_expires_sessions() -> None:
    p = Pair()
    p.send_a(b"x")
    kp = p.pb.current
    assert kp is not None
    p.a.set_private_key(crypto.generate_private_key(), now=p.clock.now)
    assert kp.send_counter == REJECT_AFTER_MESSAGES
    p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"y"), now=p.clock.now)
    out = p.a.datagrams_to_send()
    assert len(out) == 1 and len(out[0][0]) == messages.MESSAGE_INITIATION_SIZE


def test_peer_with_own_public_key_removed() -> None:
    p = Pair()
    assert p.b.public_key is not None
    priv_b = p.b.static.private if p.b.static else b""
    p.a.set_private_key(priv_b, now=0.0)
    assert p.b.public_key not in p.a.peers


def test_remove_peer_frees_indices_and_routes() -> None:
    p = Pair()
    p.send_a(b"x")
    assert p.a.index_table
    p.a.remove_peer(p.pb.public_key)
    assert len(p.a.index_table) == 0
    assert p.a.allowed_ips.lookup_str(B_TUN) is None


def test_rx_tx_byte_counters_match_wireguard_go_rules() -> None:
    p = Pair()
    p.send_a(b"x" * 23)  # 43-byte packet -> 48 padded -> 80-byte datagram
    # A: initiation 148 + data 80 sent; response 92 received
    assert p.pb.tx_bytes == 148 + 80
    assert p.pb.rx_bytes == 92
    assert p.pa.rx_bytes == 148 + 80
    assert p.pa.tx_bytes == 92


def test_staged_queue_bounded_drops_oldest() -> None:
    p = Pair()
    p.link.drop_to.add("B")
    for i in range(200):
        p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"q", ident=i), now=0.0)
    assert len(p.pb.staged) == 128
    assert p.a.drops["staged_overflow"] == 72
    assert p.pb.staged[0] == ipv4(A_TUN, B_TUN, b"q", ident=72)


def test_ipv6_inner_packets() -> None:
    p = Pair()
    p.a.allowed_ips.insert("fd00::2/128", p.pb)
    p.b.allowed_ips.insert("fd00::1/128", p.pa)
    src = bytes.fromhex("fd000000000000000000000000000001")
    dst = bytes.fromhex("fd000000000000000000000000000002")
    payload = b"v6 payload"
    pkt = b"\x60\x00\x00\x00" + len(payload).to_bytes(2, "big") + b"\x11\x40" + src + dst + payload
    p.a.receive_tun_packet(pkt, now=0.0)
    p.pump()
    assert p.delivered_b == [pkt]


def test_link_with_loss_still_converges() -> None:
    p = Pair(link=Link(loss=0.3, seed=3))
    pkt = ipv4(A_TUN, B_TUN, b"lossy")
    p.a.receive_tun_packet(pkt, now=0.0)
    p.pump()
    for i in range(1, 60):
        if p.pb.current is not None:
            break
        p.advance(float(i))
    p.send_a(b"after")
    p.advance(p.clock.now + 30)
    assert ipv4(A_TUN, B_TUN, b"after") in p.delivered_b or p.link.dropped > 0
    assert len(set(p.delivered_b)) == len(p.delivered_b)


def test_endpoint_unknown_means_no_handshake() -> None:
    p = Pair()
    p.pb.endpoint = None
    p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"x"), now=0.0)
    assert p.a.datagrams_to_send() == []
    assert len(p.pb.staged) == 1


def test_staged_packets_follow_the_confirming_packets_address() -> None:
    """The responder's packets staged before the initiator confirmed the session go to the
    address the confirmation came from, not the old endpoint (wireguard-go: endpoint first,
    then the staged packets; issue 16)."""
    p = Pair()
    p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"from a"), now=0.0)
    (init, _), = p.a.datagrams_to_send()
    p.b.receive_datagram(init, A_ADDR, now=0.0)
    (resp, _), = p.b.datagrams_to_send()
    p.b.receive_tun_packet(ipv4(B_TUN, A_TUN, b"staged on b"), now=0.0)
    assert p.b.datagrams_to_send() == [] and len(p.pa.staged) == 1  # waits for confirmation
    p.a.receive_datagram(resp, B_ADDR, now=0.0)
    (confirm, _), = p.a.datagrams_to_send()
    roamed = ("198.51.100.9", 41000)
    p.b.receive_datagram(confirm, roamed, now=0.0)
    out = p.b.datagrams_to_send()
    assert out and [addr for _, addr in out] == [roamed] * len(out)
    p.a.receive_datagram(out[0][0], B_ADDR, now=0.0)
    assert p.a.tun_packets_to_write() == [ipv4(B_TUN, A_TUN, b"staged on b")]


def test_decrypted_packets_only_for_accepted_destinations() -> None:
    """Issue 15 point 5: the supervisor accepts only its VIP from the tunnel; a packet for any
    other address (the cluster behind the pod) is dropped and counted, never written."""
    p = Pair()
    p.b.accept_destinations = frozenset({bytes(int(x) for x in B_TUN.split("."))})
    p.a.allowed_ips.insert("10.96.0.0/12", p.pb)  # A routes it into the tunnel
    inject = ipv4(A_TUN, "10.96.0.1", b"into the cluster")
    ok = ipv4(A_TUN, B_TUN, b"for the VIP")
    p.a.receive_tun_packet(inject, now=p.clock.now)
    p.a.receive_tun_packet(ok, now=p.clock.now)
    p.pump()
    assert inject not in p.delivered_b
    assert ok in p.delivered_b
    assert p.b.drops["disallowed_destination"] == 1
