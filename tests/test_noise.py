"""noise/: primitives and the handshake reproduced against published and project vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from noise import cookie, crypto, tai64n
from noise.errors import (
    DecryptionError,
    HandshakeFlood,
    InvalidCookie,
    InvalidState,
    LowOrderPoint,
    ReplayedTimestamp,
    UnknownPeer,
)
from noise.handshake import (
    C0,
    H0,
    Handshake,
    InitiationFields,
    ResponseFields,
    State,
    StaticKeys,
    consume_initiation,
    consume_response,
    create_response,
    derive_keys,
)
from wgpy.core import messages

V = json.loads((Path(__file__).parent / "vectors" / "wg_test_vectors.json").read_text())
IN = {k: (bytes.fromhex(v) if isinstance(v, str) else v) for k, v in V["inputs"].items()}


def h(x: str) -> bytes:
    return bytes.fromhex(x)


# --- primitives -------------------------------------------------------------------------------

KDF_VECTORS = [  # wireguard-go device/kdf_test.go; the deadbeef row from wireguard-rs
    (
        b"test-key",
        b"test-input",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        b"wireguard",
        b"wireguard",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        b"",
        b"",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
    (
        bytes.fromhex("deadbeef"),
        b"",
        "55329dc80e690fd86bd9661f0851c9b3686df2b1fda0347bc3d27958254b32c6",
        "8dfc6d33a8118ffe408b31ddac25f72aee9115a45b69ba176ad012b243834fee",
        "d69e852a2896569ea54a67969aa1800287921dac53ce6db4b4e12192f263c4c4",
    ),
]


@pytest.mark.parametrize(("key", "data", "t1", "t2", "t3"), KDF_VECTORS)
def test_kdf_vectors(key: bytes, data: bytes, t1: str, t2: str, t3: str) -> None:
    assert crypto.kdf1(key, data) == h(t1)
    assert crypto.kdf2(key, data) == (h(t1), h(t2))
    assert crypto.kdf3(key, data) == (h(t1), h(t2), h(t3))


def test_initial_chaining_key_and_hash() -> None:
    assert C0 == h("60e26daef327efc02ec335e2a025d2d016eb4206f87277f52d38d1988b78cd36")
    assert H0 == h("2211b361081ac566691243db458ad5322d9c6c662293e8b70ee19c65ba079ef3")


def test_x25519_vector_from_wireguard_tools() -> None:
    priv = base64.b64decode("WAmgVYXkbT2bCtdcDwolI88/iVi/aV3/PHcUBTQSYmo=")
    pub = base64.b64decode("K5sF9yESrSBsOXPd6TcpKNgqoy1Ik3ZFKl4FolzrRyI=")
    assert crypto.public_key(priv) == pub


def test_low_order_point_rejected() -> None:
    with pytest.raises(LowOrderPoint):
        crypto.dh(crypto.generate_private_key(), bytes(32))


def test_mac_is_keyed_blake2s_128_not_hmac() -> None:
    key = bytes(range(32))
    assert len(crypto.mac(key, b"x")) == 16
    assert crypto.mac(key, b"x") != crypto.hmac(key, b"x")[:16]


def test_generated_keys_are_clamped() -> None:
    k = crypto.generate_private_key()
    assert k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40


def test_tai64n_vectors() -> None:
    assert tai64n.stamp(123456789) == h("400000000000000a07000000")
    assert tai64n.stamp(1_700_000_000 * 10**9) == h("400000006553f10a00000000")
    assert tai64n.stamp(1_700_000_000 * 10**9) == IN["timestamp"]
    base_ns = 123456789
    base = tai64n.stamp(base_ns)
    # wireguard-go tai64n_test.go: within the whitening granule a later time is not "after"
    for delta in (10, 10_000, 1_000_000, 10_000_000):
        assert not tai64n.after(tai64n.stamp(base_ns + delta), base)
    assert tai64n.after(tai64n.stamp(base_ns + 20_000_000), base)


def test_tai64n_increment_is_smallest_later_stamp() -> None:
    t = tai64n.stamp(1_700_000_000 * 10**9 + 5 * 2**24)
    nxt = tai64n.increment(t)
    assert tai64n.after(nxt, t)
    assert tai64n.to_unix_ns(nxt) - tai64n.to_unix_ns(t) == 2**24


# --- the handshake against the project vectors ----------------------------------------------

I_STATIC = StaticKeys(IN["i_static_priv"])
R_STATIC = StaticKeys(IN["r_static_priv"])


def test_static_public_keys_match_vectors() -> None:
    assert I_STATIC.public == IN["i_static_pub"]
    assert R_STATIC.public == IN["r_static_pub"]
    assert "hidden" in repr(I_STATIC)
    assert IN["i_static_priv"].hex() not in repr(I_STATIC)


def _initiator(psk: bytes | None) -> tuple[Handshake, cookie.CookieGenerator, bytearray]:
    hs = Handshake(R_STATIC.public, psk)
    hs.precompute(I_STATIC)
    f = hs.create_initiation(
        I_STATIC,
        ephemeral_private=IN["i_ephemeral_priv"],
        timestamp=IN["timestamp"],
        sender_index=IN["i_sender_index"],
    )
    msg = messages.build_initiation(
        IN["i_sender_index"], f.ephemeral, f.encrypted_static, f.encrypted_timestamp
    )
    gen = cookie.CookieGenerator(R_STATIC.public)
    gen.add_macs(msg, now=0.0)
    return hs, gen, msg


@pytest.mark.parametrize("case", ["psk", "nopsk"])
def test_full_handshake_reproduces_vectors(case: str) -> None:
    vec = {k: h(v) for k, v in V[case].items()}
    psk = IN["psk"] if case == "psk" else None

    ihs, _gen, msg1 = _initiator(psk)
    assert bytes(msg1) == vec["initiation"]
    assert ihs.state is State.INITIATION_CREATED

    # responder
    checker = cookie.CookieChecker(R_STATIC.public)
    assert checker.check_mac1(vec["initiation"])
    rhs = Handshake(I_STATIC.public, psk)
    rhs.precompute(R_STATIC)
    m1 = messages.parse_initiation(vec["initiation"])
    assert m1 is not None
    fields = InitiationFields(m1.ephemeral, m1.encrypted_static, m1.encrypted_timestamp)
    got = consume_initiation(
        R_STATIC, fields, m1.sender_index, lambda k: rhs if k == I_STATIC.public else None, now=1.0
    )
    assert got is rhs and rhs.state is State.INITIATION_CONSUMED
    assert rhs.last_timestamp == IN["timestamp"]
    rf = create_response(
        rhs, ephemeral_private=IN["r_ephemeral_priv"], sender_index=IN["r_sender_index"]
    )
    msg2 = messages.build_response(
        IN["r_sender_index"], m1.sender_index, rf.ephemeral, rf.encrypted_nothing
    )
    cookie.CookieGenerator(I_STATIC.public).add_macs(msg2, now=0.0)
    assert bytes(msg2) == vec["response"]
    rkeys = derive_keys(rhs)
    assert rhs.state is State.ZEROED and rhs.chaining_key == b""

    # initiator consumes the response
    assert cookie.CookieChecker(I_STATIC.public).check_mac1(vec["response"])
    m2 = messages.parse_response(vec["response"])
    assert m2 is not None and m2.receiver_index == IN["i_sender_index"]
    consume_response(
        ihs, I_STATIC, ResponseFields(m2.ephemeral, m2.encrypted_nothing), m2.sender_index
    )
    ikeys = derive_keys(ihs)

    assert ikeys.transcript_hash == vec["handshake_hash"] == rkeys.transcript_hash
    assert ikeys.send == vec["T_send_initiator"] == rkeys.receive
    assert ikeys.receive == vec["T_recv_initiator"] == rkeys.send
    assert ikeys.is_initiator and not rkeys.is_initiator
    assert ikeys.remote_index == IN["r_sender_index"] and rkeys.remote_index == IN["i_sender_index"]

    # first transport packets decrypt with the vector keys (nonce = 0^4 || LE64 counter)
    hdr = vec["data_counter0"][:16]
    assert messages.parse_transport_header(vec["data_counter0"]) == (IN["r_sender_index"], 0)
    pt = crypto.aead_open(rkeys.receive, 0, vec["data_counter0"][16:], b"")
    assert pt == h("4500001c0000000040017f0a0a0000020a00000108004de70001001a") + bytes(4)
    assert crypto.aead_seal(ikeys.send, 0, pt, b"") == vec["data_counter0"][16:]
    assert hdr == messages.TRANSPORT_HEADER.pack(4, IN["r_sender_index"], 0)
    assert crypto.aead_open(rkeys.receive, 1, vec["keepalive_counter1"][16:], b"") == b""


def test_psk_changes_response_but_not_initiation() -> None:
    assert V["psk"]["initiation"] == V["nopsk"]["initiation"]
    assert V["psk"]["response"] != V["nopsk"]["response"]


def _consume(rhs: Handshake, msg: bytes, now: float) -> Handshake:
    m = messages.parse_initiation(msg)
    assert m is not None
    f = InitiationFields(m.ephemeral, m.encrypted_static, m.encrypted_timestamp)
    return consume_initiation(R_STATIC, f, m.sender_index, lambda _k: rhs, now=now)


def _responder(psk: bytes | None = None) -> Handshake:
    rhs = Handshake(I_STATIC.public, psk)
    rhs.precompute(R_STATIC)
    return rhs


def test_replayed_initiation_rejected_without_state_change() -> None:
    rhs = _responder()
    _consume(rhs, h(V["psk"]["initiation"]), now=1.0)
    before = (rhs.chaining_key, rhs.hash, rhs.last_timestamp, rhs.last_initiation_consumed)
    with pytest.raises(ReplayedTimestamp):
        _consume(rhs, h(V["psk"]["initiation"]), now=5.0)
    assert (rhs.chaining_key, rhs.hash, rhs.last_timestamp, rhs.last_initiation_consumed) == before


def _initiation_at(wall_ns: int, index: int = 7) -> bytes:
    hs = Handshake(R_STATIC.public)
    hs.precompute(I_STATIC)
    f = hs.create_initiation(
        I_STATIC,
        ephemeral_private=crypto.generate_private_key(),
        timestamp=tai64n.stamp(wall_ns),
        sender_index=index,
    )
    msg = messages.build_initiation(index, f.ephemeral, f.encrypted_static, f.encrypted_timestamp)
    cookie.CookieGenerator(R_STATIC.public).add_macs(msg, now=0.0)
    return bytes(msg)


def test_flood_rule_20ms_between_consumed_initiations() -> None:
    rhs = _responder()
    t0 = 1_700_000_000 * 10**9
    _consume(rhs, _initiation_at(t0), now=10.0)
    with pytest.raises(HandshakeFlood):
        _consume(rhs, _initiation_at(t0 + 10**9), now=10.010)
    assert rhs.last_timestamp == tai64n.stamp(t0)
    _consume(rhs, _initiation_at(t0 + 2 * 10**9), now=10.021)
    assert rhs.last_timestamp == tai64n.stamp(t0 + 2 * 10**9)


def test_older_timestamp_rejected() -> None:
    rhs = _responder()
    t0 = 1_700_000_000 * 10**9
    _consume(rhs, _initiation_at(t0), now=1.0)
    with pytest.raises(ReplayedTimestamp):
        _consume(rhs, _initiation_at(t0 - 10**9), now=2.0)
    with pytest.raises(ReplayedTimestamp):  # within the 2^24 ns whitening granule
        _consume(rhs, _initiation_at(t0 + 5_000_000), now=3.0)


def test_unknown_static_key_rejected() -> None:
    m = messages.parse_initiation(h(V["psk"]["initiation"]))
    assert m is not None
    f = InitiationFields(m.ephemeral, m.encrypted_static, m.encrypted_timestamp)
    with pytest.raises(UnknownPeer):
        consume_initiation(R_STATIC, f, m.sender_index, lambda _k: None, now=0.0)


def test_initiation_for_another_responder_fails_decryption() -> None:
    other = StaticKeys(crypto.generate_private_key())
    m = messages.parse_initiation(h(V["psk"]["initiation"]))
    assert m is not None
    f = InitiationFields(m.ephemeral, m.encrypted_static, m.encrypted_timestamp)
    with pytest.raises(DecryptionError):
        consume_initiation(other, f, m.sender_index, lambda _k: None, now=0.0)


def test_tampered_response_rejected_state_kept() -> None:
    ihs, _gen, _msg = _initiator(IN["psk"])
    resp = bytearray(h(V["psk"]["response"]))
    resp[50] ^= 1
    m2 = messages.parse_response(bytes(resp))
    assert m2 is not None
    ck = ihs.chaining_key
    with pytest.raises(DecryptionError):
        consume_response(
            ihs, I_STATIC, ResponseFields(m2.ephemeral, m2.encrypted_nothing), m2.sender_index
        )
    assert ihs.state is State.INITIATION_CREATED and ihs.chaining_key == ck


def test_wrong_psk_fails_response() -> None:
    ihs, _gen, _msg = _initiator(bytes(32))  # initiator without psk, response made with psk
    m2 = messages.parse_response(h(V["psk"]["response"]))
    assert m2 is not None
    with pytest.raises(DecryptionError):
        consume_response(
            ihs, I_STATIC, ResponseFields(m2.ephemeral, m2.encrypted_nothing), m2.sender_index
        )


def test_state_machine_misuse_raises() -> None:
    rhs = _responder()
    with pytest.raises(InvalidState):
        create_response(rhs, ephemeral_private=crypto.generate_private_key(), sender_index=1)
    with pytest.raises(InvalidState):
        derive_keys(rhs)
    with pytest.raises(InvalidState):
        consume_response(rhs, I_STATIC, ResponseFields(bytes(32), bytes(16)), 1)


def test_low_order_peer_key_refuses_handshake() -> None:
    hs = Handshake(bytes(32))
    hs.precompute(I_STATIC)
    assert hs.precomputed_static_static is None
    with pytest.raises(LowOrderPoint):
        hs.create_initiation(
            I_STATIC,
            ephemeral_private=crypto.generate_private_key(),
            timestamp=tai64n.ZERO,
            sender_index=1,
        )


# --- MAC1, MAC2, cookies ---------------------------------------------------------------------


def test_cookie_vectors() -> None:
    c = {k: h(v) for k, v in V["cookie"].items()}
    init = h(V["psk"]["initiation"])
    assert cookie.mac1_key(R_STATIC.public) == IN["mac1_key_for_responder"]
    assert cookie.cookie_key(R_STATIC.public) == IN["cookie_key_for_responder"]
    assert crypto.mac(c["cookie_secret"], c["src"]) == c["cookie"]
    assert cookie.source_bytes(bytes([192, 0, 2, 1]), 51820) == c["src"]

    nonces = iter([c["nonce"]])
    checker = cookie.CookieChecker(R_STATIC.public, rng=lambda n: next(nonces)[:n])
    checker.set_secret(c["cookie_secret"], now=0.0)
    nonce, enc = checker.create_reply(init, c["src"], now=1.0)
    m1 = messages.parse_initiation(init)
    assert m1 is not None
    assert messages.build_cookie_reply(m1.sender_index, nonce, enc) == c["cookie_reply"]

    # the initiator consumes it and re-MACs with mac2
    _ihs, gen, msg = _initiator(IN["psk"])
    reply = messages.parse_cookie_reply(c["cookie_reply"])
    assert reply is not None
    gen.consume_reply(reply.nonce, reply.encrypted_cookie, now=2.0)
    msg2 = bytearray(msg)
    gen.add_macs(msg2, now=3.0)
    assert bytes(msg2) == c["initiation_with_mac2"]
    assert checker.check_mac2(bytes(msg2), c["src"], now=4.0)
    assert not checker.check_mac2(bytes(msg2), c["src"][:-1] + b"\x00", now=4.0)
    tampered = bytearray(msg2)
    tampered[140] ^= 0x80
    assert not checker.check_mac2(bytes(tampered), c["src"], now=4.0)
    # the secret expires after 120 s, and with it every cookie
    assert not checker.check_mac2(bytes(msg2), c["src"], now=121.0)
    # the received cookie is used for 120 s only
    msg3 = bytearray(msg)
    gen.add_macs(msg3, now=2.0 + 120.0)
    assert bytes(msg3[-16:]) == bytes(16)


def test_mac1_rejects_any_flipped_byte() -> None:
    init = h(V["psk"]["initiation"])
    checker = cookie.CookieChecker(R_STATIC.public)
    assert checker.check_mac1(init)
    for i in range(0, 132, 7):
        t = bytearray(init)
        t[i] ^= 0x01
        assert not checker.check_mac1(bytes(t))


def test_cookie_reply_rules() -> None:
    gen = cookie.CookieGenerator(R_STATIC.public)
    with pytest.raises(InvalidCookie):  # nothing sent yet
        gen.consume_reply(bytes(24), bytes(32), now=0.0)
    msg = bytearray(148)
    gen.add_macs(msg, now=0.0)
    checker = cookie.CookieChecker(R_STATIC.public)
    nonce, enc = checker.create_reply(bytes(msg), b"\x7f\x00\x00\x01\x00\x01", now=0.0)
    bad = bytearray(enc)
    bad[0] ^= 1
    with pytest.raises(InvalidCookie):
        gen.consume_reply(nonce, bytes(bad), now=0.0)
    gen.consume_reply(nonce, enc, now=0.0)
    assert gen.has_cookie
    with pytest.raises(InvalidCookie):  # one cookie per mac1 sent
        gen.consume_reply(nonce, enc, now=0.0)
