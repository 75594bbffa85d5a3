"""The conformance checks: each scripts fresh harness peers against a configured target.

Every check gets a :class:`Context` whose peers are new identities added to the target for that
check only, so no check inherits a session, timestamp or endpoint from another. A check returns
a one-line description of what it observed, raises :class:`CheckFailed` with what went wrong,
or :class:`NotApplicable`.

Observables, all from outside the target: what comes back on the wire (responses, cookie
replies, transport messages the harness decrypts), ICMP echo replies from the kernel behind
the target's TUN (proof that an inbound packet was accepted and delivered), and the target's
``get`` state (endpoint, last handshake). Negative checks wait ``QUIET`` seconds for silence
and always pair with a positive control in the same check, so "nothing came back" cannot pass
because the target was dead.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from noise import tai64n
from wgpy.core import messages
from wgpy.harness import packets
from wgpy.harness.peer import (
    KIND_COOKIE_REPLY,
    KIND_DATA,
    KIND_KEEPALIVE,
    KIND_RESPONSE,
    HarnessTimeout,
    Received,
    ScriptedPeer,
    Session,
)
from wgpy.harness.target import HARNESS_TUNNEL_IPS, Target
from wgpy.harness.transport import UdpTransport

QUIET = 0.3  # seconds of silence that count as "dropped" (replies on loopback take < 20 ms)
REPLY = 10.0  # seconds to wait for something that must come (a generous limit: the wait ends
# when it comes; a User-Mode Linux target on a loaded machine once took more than 2 s to answer
# an echo after a flood)
FLOOD_INITIATIONS = 1500  # protocol doc §4.3 [interop]
KEEPALIVE_TIMEOUT = 10.0


class CheckFailed(Exception):
    """The target did something the protocol forbids (or did not do what it requires)."""


class NotApplicable(Exception):
    """The check cannot say anything about this target."""


class Context:
    """Per-check resources: fresh peers configured on the target, their sockets."""

    def __init__(self, target: Target, *, flood_count: int = FLOOD_INITIATIONS) -> None:
        self.target = target
        self.flood_count = flood_count
        self.peers: list[ScriptedPeer] = []
        self.transports: list[UdpTransport] = []

    def transport(self, host: str = "127.0.0.1") -> UdpTransport:
        t = UdpTransport(self.target.socket(host))
        self.transports.append(t)
        return t

    def peer(
        self,
        *,
        psk: bool = False,
        tunnel_ip: str = HARNESS_TUNNEL_IPS[0],
        host: str = "127.0.0.1",
        endpoint: bool = False,
    ) -> ScriptedPeer:
        """A new identity with its own socket, added to the target for ``tunnel_ip/32``."""
        tr = self.transport(host)
        p = ScriptedPeer(
            self.target.public_key,
            target=self.target.address,
            transport=tr,
            preshared_key=secrets.token_bytes(32) if psk else None,
            mtu=self.target.mtu,
        )
        self.target.add_peer(
            p.public_key,
            allowed_ips=[f"{tunnel_ip}/32"],
            preshared_key=p.preshared_key,
            endpoint=tr.local_address if endpoint else None,
        )
        self.peers.append(p)
        return p

    def close(self) -> None:
        for p in self.peers:
            with contextlib.suppress(Exception):  # best effort: the target may be gone
                self.target.remove_peer(p.public_key)
        for t in self.transports:
            t.close()

    # --- ICMP echo through the tunnel -----------------------------------------------------------

    def echo(
        self,
        peer: ScriptedPeer,
        seq: int,
        *,
        src: str = HARNESS_TUNNEL_IPS[0],
        size: int = 16,
        **overrides: object,
    ) -> bytes:
        """Send an echo request to the target's tunnel address; returns the datagram sent."""
        pkt = packets.icmp_echo(
            src, self.target.tunnel_ip, ident=0x5747, seq=seq, payload=bytes(size)
        )
        return peer.send_data(pkt, **overrides)

    def echo_reply(self, peer: ScriptedPeer, seq: int, timeout: float = REPLY) -> Received:
        """Wait for the echo reply with sequence ``seq``; CheckFailed if none comes."""
        try:
            return peer.expect_data(timeout, lambda r: _is_reply(r, seq))
        except HarnessTimeout:
            raise CheckFailed(f"no echo reply for seq {seq}") from None

    def no_echo_reply(self, peer: ScriptedPeer, seq: int, why: str) -> None:
        got = peer.collect(QUIET, lambda r: _is_reply(r, seq))
        if got:
            raise CheckFailed(f"echo seq {seq} was answered: {why}")

    def response(self, peer: ScriptedPeer, index: int, timeout: float = REPLY) -> Session:
        try:
            r = peer.expect(lambda r: _answers(r, index), timeout, what="response")
        except HarnessTimeout:
            raise CheckFailed("no handshake response to a valid initiation") from None
        if r.kind != KIND_RESPONSE:
            raise CheckFailed("a valid initiation got a cookie reply instead of a response")
        return peer.consume_response(r)

    def no_response(self, peer: ScriptedPeer, index: int, why: str) -> None:
        got = peer.collect(QUIET, lambda r: _answers(r, index))
        if got:
            raise CheckFailed(f"{why} was answered with a {got[0].kind.replace('_', ' ')}")

    def flood(self, count: int | None = None) -> None:
        """Send ``count`` junk initiations with a valid mac1 from a separate socket.

        In bursts, so that wireguard-go's handshake queue fills (≥ 128 queued = under load) and
        a rate-based detector sees > 1000/s, without overflowing a slow receiver's buffer so
        much that the load never registers. A burst is 400: bursts of 150 left little margin
        over 128 while wireguard-go's workers drain the queue, and once (a clean-clone CI
        run) wireguard-go was not under load after them; a default 208 KiB receive buffer
        holds a couple of hundred of these small datagrams, enough either way.
        """
        n = self.flood_count if count is None else count
        junk = ScriptedPeer(self.target.public_key, transport=self.transport("127.0.0.2"))
        tr = junk.transport
        assert isinstance(tr, UdpTransport)
        burst = 400
        for start in range(0, n, burst):
            for _ in range(min(burst, n - start)):
                tr.send(junk.junk_initiation(), self.target.address)
            time.sleep(0.01)


def _is_reply(r: Received, seq: int) -> bool:
    return r.ip is not None and r.ip.is_echo_reply and r.ip.echo_seq == seq


def _answers(r: Received, index: int) -> bool:
    m = r.message
    return (r.kind == KIND_RESPONSE and getattr(m, "receiver_index", None) == index) or (
        r.kind == KIND_COOKIE_REPLY and r.receiver_index == index
    )


def _index(initiation: bytes) -> int:
    return int.from_bytes(initiation[4:8], "little")


# --- handshakes ---------------------------------------------------------------------------------


def _target_responds(ctx: Context, psk: bool) -> str:
    p = ctx.peer(psk=psk)
    s = ctx.response(p, _index(p.send_initiation()))
    ctx.echo(p, 1)
    r = ctx.echo_reply(p, 1)
    if r.receiver_index != s.local_index:
        raise CheckFailed("echo reply not on the new session")
    info = ctx.target.peer(p.public_key)
    if info is None or info.last_handshake_time_sec == 0:
        raise CheckFailed("handshake done but `get` reports no last handshake")
    return "response opened, echo answered on the new session, last_handshake set"


def check_responder(ctx: Context) -> str:
    return _target_responds(ctx, psk=False)


def check_responder_psk(ctx: Context) -> str:
    return _target_responds(ctx, psk=True) + " (with preshared key)"


def _target_initiates(ctx: Context, psk: bool) -> str:
    p = ctx.peer(psk=psk, endpoint=True)
    ctx.target.send_into_tunnel(HARNESS_TUNNEL_IPS[0], b"conformance")
    try:
        init = p.expect_initiation(REPLY)
    except HarnessTimeout:
        raise CheckFailed("the target never sent an initiation for staged traffic") from None
    assert init.timestamp is not None
    skew = (tai64n.to_unix_ns(init.timestamp) - time.time_ns()) / 1e9
    s = p.send_response(init)
    try:
        first = p.expect(lambda r: r.kind in (KIND_DATA, KIND_KEEPALIVE), REPLY, what="data")
    except HarnessTimeout:
        raise CheckFailed("no transport message after our response") from None
    if first.receiver_index != s.local_index or first.counter != 0:
        raise CheckFailed("first transport message not on the new session with counter 0")
    if first.ip is None or first.ip.proto != packets.PROTO_UDP:
        raise CheckFailed(f"first transport message is not the staged datagram ({first.kind})")
    return (
        f"initiation opened (timestamp {skew:+.1f} s from our clock), "
        "staged datagram sent at counter 0"
    )


def check_initiator(ctx: Context) -> str:
    return _target_initiates(ctx, psk=False)


def check_initiator_psk(ctx: Context) -> str:
    return _target_initiates(ctx, psk=True) + " (with preshared key)"


# --- timestamps ---------------------------------------------------------------------------------


def check_replayed_initiation(ctx: Context) -> str:
    p = ctx.peer()
    first = p.send_initiation()
    ctx.response(p, _index(first))
    time.sleep(0.03)  # past the 20 ms flood limit: only the timestamp can reject it
    p.send_raw(first)
    ctx.no_response(p, _index(first), "a replayed initiation")
    ctx.response(p, _index(p.send_initiation()))
    return "verbatim replay ignored; a fresh initiation afterwards answered"


def check_older_timestamp(ctx: Context) -> str:
    p = ctx.peer()
    base = tai64n.stamp(time.time_ns())
    newer = tai64n.increment(tai64n.increment(base))
    ctx.response(p, _index(p.send_initiation(timestamp=newer)))
    for label, ts in (("an older", base), ("an equal", newer)):
        time.sleep(0.03)
        ctx.no_response(p, _index(p.send_initiation(timestamp=ts)), f"{label} timestamp")
    time.sleep(0.03)
    ctx.response(p, _index(p.send_initiation(timestamp=tai64n.increment(newer))))
    return "older and equal TAI64N ignored; a newer one answered"


# --- transport counters -------------------------------------------------------------------------


def _session(ctx: Context, **kw: object) -> ScriptedPeer:
    p = ctx.peer(**kw)  # type: ignore[arg-type]
    ctx.response(p, _index(p.send_initiation()))
    return p


def check_transport_replay(ctx: Context) -> str:
    p = _session(ctx)
    sent = ctx.echo(p, 1)
    ctx.echo_reply(p, 1)
    p.send_raw(sent)
    ctx.no_echo_reply(p, 1, "a replayed transport message")
    ctx.echo(p, 2)
    ctx.echo_reply(p, 2)
    return "verbatim replay of counter 0 not delivered; counter 1 delivered"


def check_duplicate_counter(ctx: Context) -> str:
    p = _session(ctx)
    ctx.echo(p, 1, counter=7)
    ctx.echo_reply(p, 1)
    ctx.echo(p, 2, counter=7)
    ctx.no_echo_reply(p, 2, "a different packet reusing counter 7")
    ctx.echo(p, 3, counter=8)
    ctx.echo_reply(p, 3)
    return "second packet with counter 7 dropped; counter 8 delivered"


def check_reordering(ctx: Context) -> str:
    p = _session(ctx)
    order = (5, 3, 4, 0, 100)
    for seq, counter in enumerate(order, 1):
        ctx.echo(p, seq, counter=counter)
    for seq in range(1, len(order) + 1):
        ctx.echo_reply(p, seq)
    return f"counters {', '.join(map(str, order))} all delivered"


def check_old_counter(ctx: Context) -> str:
    p = _session(ctx)
    ctx.echo(p, 1, counter=9000)
    ctx.echo_reply(p, 1)
    ctx.echo(p, 2, counter=10)  # 8990 behind: outside every implementation's window
    ctx.no_echo_reply(p, 2, "counter 10 after 9000 (outside the window)")
    ctx.echo(p, 3, counter=8500)  # 500 behind: inside every window
    ctx.echo_reply(p, 3)
    return "counter 10 after 9000 dropped; 8500 after 9000 delivered"


# --- malformed messages -------------------------------------------------------------------------


def check_reserved_bytes(ctx: Context) -> str:
    p = ctx.peer()
    bad = p.send_initiation(reserved=b"\x00\x01\x00")
    ctx.no_response(p, _index(bad), "an initiation with a non-zero reserved byte")
    time.sleep(0.03)
    ctx.response(p, _index(p.send_initiation()))
    ctx.echo(p, 1, reserved=b"\x00\x00\x01")
    ctx.no_echo_reply(p, 1, "a transport message with a non-zero reserved byte")
    ctx.echo(p, 2)
    ctx.echo_reply(p, 2)
    return "initiation and transport with non-zero reserved bytes dropped; clean ones answered"


def check_wrong_lengths(ctx: Context) -> str:
    p = ctx.peer()
    long_ = p.send_initiation(trailing=b"\x00")
    ctx.no_response(p, _index(long_), "a 149-byte initiation")
    short = p.send_initiation(truncate=147)
    ctx.no_response(p, _index(short), "a 147-byte initiation")
    time.sleep(0.03)
    ctx.response(p, _index(p.send_initiation()))
    ctx.echo(p, 1, truncate=31)
    ctx.echo(p, 2)
    ctx.echo_reply(p, 2)
    return (
        "148±1-byte initiations ignored, a 31-byte transport message ignored, valid ones answered"
    )


def check_wrong_mac1(ctx: Context) -> str:
    p = ctx.peer()
    bad = p.send_initiation(mac1=secrets.token_bytes(16))
    ctx.no_response(p, _index(bad), "an initiation with a wrong mac1")
    time.sleep(0.03)
    ctx.response(p, _index(p.send_initiation()))
    return "wrong mac1 ignored (no response, no cookie reply); correct mac1 answered"


def check_bad_tag(ctx: Context) -> str:
    p = _session(ctx)
    ctx.echo(p, 1, tamper=True)
    ctx.no_echo_reply(p, 1, "a transport message whose tag fails")
    ctx.echo(p, 2)
    ctx.echo_reply(p, 2)
    return "tampered ciphertext dropped; the next counter delivered"


# --- cookies ------------------------------------------------------------------------------------


def _under_load_reply(ctx: Context, p: ScriptedPeer, what: str) -> Received:
    """Send initiations right after a flood until one is answered (at most 3, 0.4 s apart).

    A retry is what a real initiator does, and it is needed: wireguard-go drops handshake
    messages outright while its 1024-entry queue is full, which a flood can cause.
    """
    for _ in range(3):
        index = _index(p.send_initiation())
        try:
            return p.expect(lambda r, i=index: _answers(r, i), 0.4, what="reply")  # type: ignore[misc]
        except HarnessTimeout:
            continue
    raise CheckFailed(f"nothing answered three initiations {what}")


def _cookie(ctx: Context, p: ScriptedPeer) -> bytes:
    ctx.flood()
    r = _under_load_reply(ctx, p, "sent under load")
    if r.kind != KIND_COOKIE_REPLY:
        raise CheckFailed(f"not under load after {ctx.flood_count} junk initiations ({r.kind})")
    return p.consume_cookie_reply(r)


def _cool_down() -> None:
    # "Under load" is sticky for 1 s in wireguard-go and the kernel: let it lapse so that the
    # next check starts with a target that answers initiations without a cookie.
    time.sleep(1.1)


def check_cookie_reply(ctx: Context) -> str:
    p = ctx.peer()
    _cookie(ctx, p)
    _cool_down()
    return f"after {ctx.flood_count} junk initiations: cookie reply, decrypted with our mac1"


def check_mac2(ctx: Context) -> str:
    p = ctx.peer()
    _cookie(ctx, p)
    ctx.flood()
    r = _under_load_reply(ctx, p, "carrying mac2")  # mac2 keyed by the cookie
    if r.kind != KIND_RESPONSE:
        raise CheckFailed("an initiation with a valid mac2 got another cookie reply")
    s = p.consume_response(r)
    ctx.echo(p, 1, session=s)
    ctx.echo_reply(p, 1)
    _cool_down()
    return "under load again, the initiation carrying mac2 was answered with a response"


# --- routing and endpoints ----------------------------------------------------------------------


def check_allowed_ips(ctx: Context) -> str:
    a = _session(ctx)
    b = _session(ctx, tunnel_ip=HARNESS_TUNNEL_IPS[1])
    spoofed = HARNESS_TUNNEL_IPS[1]
    ctx.echo(a, 1, src=spoofed)  # a claims b's address: must be dropped
    got = b.collect(QUIET, lambda r: _is_reply(r, 1)) + a.collect(0.0, lambda r: _is_reply(r, 1))
    if got:
        raise CheckFailed(f"echo from {spoofed} accepted from the peer that does not own it")
    ctx.echo(b, 2, src=spoofed)
    ctx.echo_reply(b, 2)
    ctx.echo(a, 3)
    ctx.echo_reply(a, 3)
    return "spoofed inner source dropped (no reply routed to its owner); each owner answered"


def check_roaming(ctx: Context) -> str:
    p = _session(ctx)
    ctx.echo(p, 1)
    ctx.echo_reply(p, 1)
    moved = ctx.transport("127.0.0.2")
    p.transport = moved
    ctx.echo(p, 2)
    ctx.echo_reply(p, 2)  # must arrive on the new socket
    info = ctx.target.peer(p.public_key)
    want = f"{moved.local_address[0]}:{moved.local_address[1]}"
    if info is None or info.endpoint != want:
        raise CheckFailed(f"endpoint is {info.endpoint if info else None}, expected {want}")
    rogue = ctx.transport("127.0.0.3")
    p.transport = rogue
    ctx.echo(p, 3, tamper=True)  # unauthenticated: must not move the endpoint
    time.sleep(QUIET)
    info = ctx.target.peer(p.public_key)
    if info is None or info.endpoint != want:
        raise CheckFailed("an unauthenticated packet moved the endpoint")
    return "reply followed the new source; endpoint updated; a bad-tag packet did not move it"


# --- timers, padding, key confirmation ----------------------------------------------------------


def check_keepalive(ctx: Context) -> str:
    p = _session(ctx)
    # An unsolicited echo *reply*: the kernel swallows it, so the target has nothing to send
    # back and must send a keepalive KEEPALIVE_TIMEOUT after this data packet.
    pkt = packets.icmp_echo(
        HARNESS_TUNNEL_IPS[0], ctx.target.tunnel_ip, ident=1, seq=1, payload=bytes(8), reply=True
    )
    start = time.monotonic()
    p.send_data(pkt)
    try:
        r = p.expect(lambda r: r.kind == KIND_KEEPALIVE, KEEPALIVE_TIMEOUT + 2.0, what="keepalive")
    except HarnessTimeout:
        raise CheckFailed(f"no keepalive within {KEEPALIVE_TIMEOUT + 2.0:.0f} s") from None
    after = r.at - start
    if after < KEEPALIVE_TIMEOUT - 0.5:
        raise CheckFailed(f"keepalive after only {after:.2f} s")
    return f"keepalive (32 bytes, empty) {after:.2f} s after the last data received"


def check_padding_sent(ctx: Context) -> str:
    p = _session(ctx)
    seen = []
    for seq, size in ((1, 15), (2, 1392)):
        ctx.echo(p, seq, size=size)
        r = ctx.echo_reply(p, seq)
        assert r.plaintext is not None and r.ip is not None
        n, total = r.ip.length, len(r.plaintext)
        want = min((n + 15) & ~15, ctx.target.mtu) if n <= ctx.target.mtu else total
        if total != want or any(r.plaintext[n:]):
            raise CheckFailed(f"{n}-byte packet sent as {total} bytes (expected {want}, zeros)")
        seen.append(f"{n}→{total}")
    return "inner packets padded with zeros to 16 (capped at the MTU): " + ", ".join(seen)


def check_padding_received(ctx: Context) -> str:
    p = _session(ctx)
    ctx.echo(p, 1, size=15, padding=0)  # 43 bytes, unpadded
    ctx.echo_reply(p, 1)
    ctx.echo(p, 2, size=15, padding=37)  # padded past the next multiple of 16
    ctx.echo_reply(p, 2)
    return "unpadded and over-padded packets both trimmed by the IP length and delivered"


def check_responder_confirmation(ctx: Context) -> str:
    p = ctx.peer()
    s1 = ctx.response(p, _index(p.send_initiation()))
    ctx.echo(p, 1, session=s1)
    ctx.echo_reply(p, 1)
    time.sleep(0.03)
    s2 = ctx.response(p, _index(p.send_initiation()))  # the target now holds s2 as "next"
    ctx.echo(p, 2, session=s1)
    r = ctx.echo_reply(p, 2)
    if r.receiver_index == s2.local_index:
        raise CheckFailed("the responder sent on the new keypair before the initiator used it")
    if r.receiver_index != s1.local_index:
        raise CheckFailed("reply on an unknown session")
    ctx.echo(p, 3, session=s2)  # first packet on s2 confirms it
    r = ctx.echo_reply(p, 3)
    if r.receiver_index != s2.local_index:
        raise CheckFailed("after confirmation the reply is still on the old keypair")
    ctx.echo(p, 4, session=s1)
    r = ctx.echo_reply(p, 4)
    if r.receiver_index != s2.local_index:
        raise CheckFailed("after confirmation the target went back to the old keypair")
    return "new keypair unused until our first packet on it, then used for every reply"


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    run: Callable[[Context], str]


def check_unknown_peer(ctx: Context) -> str:
    known = ctx.peer()
    stranger = ScriptedPeer(
        ctx.target.public_key, target=ctx.target.address, transport=ctx.transport()
    )
    ctx.no_response(stranger, _index(stranger.send_initiation()), "an unknown static key")
    ctx.response(known, _index(known.send_initiation()))
    return "initiation from an unconfigured key ignored; a configured peer answered"


def check_flood_limit(ctx: Context) -> str:
    p = ctx.peer()
    ctx.response(p, _index(p.send_initiation()))
    second = p.send_initiation()  # a newer timestamp, but < 20 ms after the first
    ctx.no_response(p, _index(second), "a second initiation within 20 ms")
    ctx.response(p, _index(p.send_initiation()))
    return "second initiation within 20 ms ignored; the next one answered"


def check_transfer_counters(ctx: Context) -> str:
    p = ctx.peer()
    init = p.send_initiation()
    ctx.response(p, _index(init))
    sent = ctx.echo(p, 1, size=15)
    reply = ctx.echo_reply(p, 1)
    info = ctx.target.peer(p.public_key)
    assert info is not None
    want_rx = len(init) + len(sent)
    resp = messages.MESSAGE_RESPONSE_SIZE
    want_tx = resp + len(reply.data)
    if (info.rx_bytes, info.tx_bytes) != (want_rx, want_tx):
        raise CheckFailed(
            f"rx/tx {info.rx_bytes}/{info.tx_bytes}, expected {want_rx}/{want_tx} "
            "(UDP payload bytes, protocol doc §7.5)"
        )
    return f"rx {want_rx} = initiation + data, tx {want_tx} = response + data"


CHECKS: tuple[Check, ...] = (
    Check("handshake-target-responder", "handshake, target as responder", check_responder),
    Check("handshake-target-responder-psk", "… with a preshared key", check_responder_psk),
    Check("handshake-target-initiator", "handshake, target as initiator", check_initiator),
    Check("handshake-target-initiator-psk", "… with a preshared key", check_initiator_psk),
    Check("unknown-peer", "an initiation from an unknown key is ignored", check_unknown_peer),
    Check("initiation-replay", "a replayed initiation is ignored", check_replayed_initiation),
    Check("initiation-old-timestamp", "older/equal timestamps are ignored", check_older_timestamp),
    Check("initiation-flood", "one initiation per peer per 20 ms", check_flood_limit),
    Check("transport-replay", "a replayed transport message is dropped", check_transport_replay),
    Check("transport-duplicate-counter", "a reused counter is dropped", check_duplicate_counter),
    Check("transport-old-counter", "a counter behind the window is dropped", check_old_counter),
    Check("transport-reordering", "reordering within the window is accepted", check_reordering),
    Check("transport-bad-tag", "a message failing its tag is dropped", check_bad_tag),
    Check("reserved-bytes", "non-zero reserved bytes: message dropped", check_reserved_bytes),
    Check("wrong-lengths", "wrong message lengths are ignored", check_wrong_lengths),
    Check("wrong-mac1", "an initiation with a wrong mac1 is ignored", check_wrong_mac1),
    Check("allowed-ips-source", "inner source addresses are checked", check_allowed_ips),
    Check("endpoint-roaming", "the endpoint follows authenticated packets", check_roaming),
    Check("transfer-counters", "rx/tx bytes count UDP payloads", check_transfer_counters),
    Check("padding-sent", "outbound packets are padded to 16 bytes", check_padding_sent),
    Check("padding-received", "inbound padding is trimmed by IP length", check_padding_received),
    Check(
        "responder-key-confirmation",
        "a responder uses a new keypair only after the initiator did",
        check_responder_confirmation,
    ),
    Check("cookie-reply-under-load", "under load: a cookie reply", check_cookie_reply),
    Check("mac2-under-load", "under load: a valid mac2 is answered", check_mac2),
    Check("keepalive-timeout", "a keepalive 10 s after received data", check_keepalive),
)
