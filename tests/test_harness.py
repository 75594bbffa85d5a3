"""The scripting API: against wgpy's sans-IO device in memory, then against real wireguard-go."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator

import pytest

from noise import crypto, tai64n
from tests.support import needs_root
from wgpy.core.device import Device
from wgpy.harness import HarnessTimeout, ScriptedPeer, UdpTransport, packets
from wgpy.harness.keylog import KeyLogWriter, parse_keylog
from wgpy.harness.target import NamespaceTarget, Target
from wgpy.harness.transport import Address

DEV_ADDR: Address = ("192.0.2.1", 51820)
PEER_ADDR: Address = ("192.0.2.2", 40000)


class MemoryLink:
    """A Transport that hands datagrams straight to a sans-IO Device (no sockets)."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.now = 100.0
        self.inbox: list[tuple[bytes, Address]] = []
        self.tun: list[bytes] = []

    def pump(self) -> None:
        for data, _to in self.device.datagrams_to_send():
            self.inbox.append((data, DEV_ADDR))
        self.tun += self.device.tun_packets_to_write()

    def send(self, data: bytes, addr: Address) -> None:
        assert addr == DEV_ADDR
        self.now += 0.05  # past the 20 ms initiation flood limit between sends
        self.device.receive_datagram(data, PEER_ADDR, now=self.now)
        self.pump()

    def recv(self, timeout: float) -> tuple[bytes, Address] | None:
        return self.inbox.pop(0) if self.inbox else None


def _device_pair(psk: bytes | None = None) -> tuple[Device, MemoryLink, ScriptedPeer]:
    dev = Device(wall_time_ns=time.time_ns)
    dev_key = crypto.generate_private_key()
    dev.set_private_key(dev_key, now=0.0)
    link = MemoryLink(dev)
    peer = ScriptedPeer(
        crypto.public_key(dev_key), target=DEV_ADDR, transport=link, preshared_key=psk
    )
    p = dev.add_peer(peer.public_key, now=0.0)
    dev.set_allowed_ips(p, ["10.77.0.2/32"])
    if psk:
        dev.set_preshared_key(p, psk)
    return dev, link, peer


def _echo(seq: int, size: int = 16) -> bytes:
    return packets.icmp_echo("10.77.0.2", "10.77.0.1", ident=7, seq=seq, payload=bytes(size))


# --- packets ------------------------------------------------------------------------------------


def _naive_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


@pytest.mark.parametrize("data", [b"", b"\x00\x01", b"\xff\xff", bytes(range(255)), b"\x45" * 33])
def test_checksum_matches_the_rfc1071_loop(data: bytes) -> None:
    assert packets.checksum(data) == _naive_checksum(data)


def test_ipv4_header_and_icmp_checksums_verify_to_zero() -> None:
    pkt = packets.icmp_echo("10.77.0.2", "10.77.0.1", ident=0x1234, seq=9, payload=b"abc")
    assert packets.checksum(pkt[:20]) == 0  # header checksum correct
    assert packets.checksum(pkt[20:]) == 0  # ICMP checksum correct
    s = packets.summarize(pkt)
    assert s is not None and (s.src, s.dst, s.length, s.echo_id, s.echo_seq) == (
        "10.77.0.2",
        "10.77.0.1",
        31,
        0x1234,
        9,
    )
    assert (
        s.is_echo_request
        and str(s) == "10.77.0.2 → 10.77.0.1 icmp len 31 (echo request id 4660 seq 9)"
    )


def test_ipv6_echo_and_udp_checksums_include_the_pseudo_header() -> None:
    pkt = packets.icmp_echo("fd00::2", "fd00::1", ident=1, seq=2, payload=b"x", reply=True)
    pseudo = bytes(pkt[8:40]) + struct.pack("!IxxxB", len(pkt) - 40, 58)
    assert packets.checksum(pseudo + pkt[40:]) == 0
    s = packets.summarize(pkt)
    assert s is not None and s.is_echo_reply and s.version == 6
    u = packets.udp("10.0.0.1", "10.0.0.2", 1000, 2000, b"hello")
    pseudo4 = u[12:20] + struct.pack("!BBH", 0, 17, len(u) - 20)
    assert packets.checksum(pseudo4 + u[20:]) == 0
    assert packets.summarize(u[:30]) is None  # truncated below its own length


# --- scripted peer against the sans-IO device ---------------------------------------------------


@pytest.mark.parametrize("psk", [None, b"\x42" * 32])
def test_handshake_and_echo_through_device(psk: bytes | None) -> None:
    dev, link, peer = _device_pair(psk)
    session = peer.handshake()
    assert session.is_initiator and dev.handshakes_completed == 0  # responder waits...
    peer.send_data(_echo(1, size=15))
    assert dev.handshakes_completed == 1  # ...for our first transport packet
    assert link.tun == [_echo(1, size=15)]  # the device decrypted exactly our packet
    # device → peer: what it sends is decrypted and trimmed by the inner length
    dev.receive_tun_packet(
        packets.icmp_echo("10.77.0.1", "10.77.0.2", ident=7, seq=1, reply=True), now=link.now
    )
    link.pump()
    r = peer.expect_data()
    assert r.ip is not None and r.ip.is_echo_reply and r.ip.echo_seq == 1
    assert r.counter == 0 and r.receiver_index == session.local_index
    assert r.plaintext is not None and len(r.plaintext) % 16 == 0 and r.packet == r.plaintext[:28]


def test_wrong_psk_gets_no_usable_response() -> None:
    _dev, _link, peer = _device_pair(b"\x01" * 32)
    peer.preshared_key = b"\x02" * 32
    peer.send_initiation()
    r = peer.recv(0)
    assert r is not None and r.kind == "response"
    with pytest.raises(Exception, match="does not open"):
        peer.consume_response(r)


def test_overrides_reach_the_wire() -> None:
    _dev, _link, peer = _device_pair()
    ts = tai64n.stamp(1_700_000_000 * 10**9)
    eph = crypto.generate_private_key()
    msg = peer.build_initiation(sender_index=0xDEADBEEF, ephemeral_private=eph, timestamp=ts)
    assert msg[:8] == b"\x01\0\0\0" + (0xDEADBEEF).to_bytes(4, "little")
    assert msg[8:40] == crypto.public_key(eph)
    assert msg[116:132] == peer.mac1(msg) and msg[132:] == bytes(16)
    bad = peer.build_initiation(reserved=b"\x00\x07\x00", mac2=b"\x09" * 16, trailing=b"zz")
    assert bad[1:4] == b"\x00\x07\x00" and bad[132:148] == b"\x09" * 16 and len(bad) == 150
    assert bad[116:132] == peer.mac1(bad[:148])  # mac1 computed over the modified header
    assert len(peer.build_initiation(truncate=100)) == 100


def test_device_ignores_what_the_harness_breaks() -> None:
    dev, link, peer = _device_pair()
    peer.send_initiation(mac1=bytes(16))
    peer.send_initiation(reserved=b"\x01\x00\x00")
    assert link.inbox == [] and dev.drops["invalid_mac1"] == 1 and dev.drops["unknown_type"] == 1
    ts = peer.next_timestamp()
    peer.handshake(timestamp=ts)
    peer.send_initiation(timestamp=ts)  # not newer: replay
    assert link.inbox == [] and dev.drops["replayed_timestamp"] == 1
    sent = peer.send_data(_echo(1))
    peer.send_raw(sent)  # verbatim replay
    peer.send_data(_echo(2), counter=0)  # duplicate counter
    assert link.tun == [_echo(1)] and dev.drops["replayed"] == 2
    peer.send_data(_echo(3), counter=5)
    peer.send_data(_echo(4), counter=3)  # reordered, inside the window
    assert link.tun[1:] == [_echo(3), _echo(4)]


def test_responder_role_against_device() -> None:
    dev, link, peer = _device_pair()
    dev_peer = dev.peers[peer.public_key]
    dev.set_endpoint(dev_peer, PEER_ADDR)
    dev.receive_tun_packet(packets.icmp_echo("10.77.0.1", "10.77.0.2", ident=1, seq=1), now=1.0)
    link.pump()
    init = peer.expect_initiation(0)
    assert init.initiator_static == dev.public_key
    assert (
        init.timestamp is not None and abs(tai64n.to_unix_ns(init.timestamp) - time.time_ns()) < 5e9
    )
    session = peer.send_response(init)
    r = peer.expect_data(0)  # the staged ping, on the new session, counter 0
    assert r.receiver_index == session.local_index and r.counter == 0
    assert r.ip is not None and r.ip.is_echo_request and not session.is_initiator


def test_cookie_reply_decrypts_and_keys_mac2() -> None:
    dev = Device(wall_time_ns=time.time_ns, under_load_rate=5)
    key = crypto.generate_private_key()
    dev.set_private_key(key, now=0.0)
    link = MemoryLink(dev)
    peer = ScriptedPeer(crypto.public_key(key), target=DEV_ADDR, transport=link)
    dev.set_allowed_ips(dev.add_peer(peer.public_key, now=0.0), ["10.77.0.2/32"])
    for _ in range(8):
        dev.receive_datagram(peer.junk_initiation(), ("192.0.2.9", 1), now=link.now)
    dev.datagrams_to_send()
    sent = peer.send_initiation()
    r = peer.recv(0)
    assert (
        r is not None
        and r.kind == "cookie_reply"
        and r.receiver_index == int.from_bytes(sent[4:8], "little")
    )
    cookie = peer.consume_cookie_reply(r)
    assert len(cookie) == 16
    again = peer.build_initiation()
    assert again[132:] == crypto.mac(cookie, again[:132])
    peer.send_raw(again)
    assert peer.recv(0) is not None and dev.drops["cookie_reply_sent"] >= 1


def test_keylog_records_transport_keys(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "keys.log")
    _dev, _link, peer = _device_pair()
    peer.keylog = KeyLogWriter(path)
    s = peer.handshake()
    with open(path) as f:
        log = parse_keylog(f.read())
    assert log.transport == {s.remote_index: s.send_key, s.local_index: s.receive_key}
    assert log.static_private == [peer.private_key] and len(log.ephemeral_private) == 1
    assert os.stat(path).st_mode & 0o077 == 0  # secrets: owner only
    assert "hidden" not in repr(peer) and "key" not in repr(s).replace("_key", "")


# --- against wireguard-go in a namespace --------------------------------------------------------


@pytest.fixture(scope="module")
def wggo() -> Iterator[Target]:
    with NamespaceTarget(["wireguard-go"], name="wireguard-go") as t:
        yield t


def _peer(t: Target, *, endpoint: bool = False, psk: bool = False) -> ScriptedPeer:
    tr = UdpTransport(t.socket())
    p = ScriptedPeer(
        t.public_key, target=t.address, transport=tr, preshared_key=os.urandom(32) if psk else None
    )
    t.add_peer(
        p.public_key,
        allowed_ips=["10.77.0.2/32"],
        preshared_key=p.preshared_key,
        endpoint=tr.local_address if endpoint else None,
    )
    return p


@pytest.mark.parametrize("psk", [False, True])
@pytest.mark.interop
@needs_root
def test_wireguard_go_as_responder(wggo: Target, psk: bool) -> None:
    p = _peer(wggo, psk=psk)
    try:
        s = p.handshake()
        sent = p.send_data(_echo(1, size=15))
        r = p.expect_data()
        assert r.ip is not None and r.ip.is_echo_reply and r.ip.echo_seq == 1
        assert r.receiver_index == s.local_index and r.plaintext is not None
        assert len(r.plaintext) == 48  # 43 bytes padded to 16 [protocol doc §2 interop]
        p.send_raw(sent)  # a replayed transport packet is ignored
        assert p.collect(0.3, lambda x: x.kind == "data") == []
        p.send_data(_echo(2))
        assert p.expect_data().ip.echo_seq == 2  # type: ignore[union-attr]
        info = wggo.peer(p.public_key)
        assert (
            info is not None and info.rx_bytes == 148 + 2 * 80 and info.last_handshake_time_sec > 0
        )
    finally:
        wggo.remove_peer(p.public_key)


@pytest.mark.interop
@needs_root
def test_wireguard_go_as_initiator(wggo: Target) -> None:
    p = _peer(wggo, endpoint=True)
    try:
        wggo.send_into_tunnel("10.77.0.2", b"payload!")
        init = p.expect_initiation(3.0)
        assert init.initiator_static == wggo.public_key
        s = p.send_response(init)
        r = p.expect_data(2.0)
        assert r.receiver_index == s.local_index and r.counter == 0
        assert (
            r.ip is not None and r.ip.proto == packets.PROTO_UDP and r.ip.payload[8:] == b"payload!"
        )
        # responder side: our answer on the fresh session reaches the target's kernel
        p.send_data(packets.udp("10.77.0.2", "10.77.0.1", 9, 9, b"x"))
        with pytest.raises(HarnessTimeout):
            p.expect(lambda x: x.kind == "initiation", 0.3)  # no new handshake needed
    finally:
        wggo.remove_peer(p.public_key)
