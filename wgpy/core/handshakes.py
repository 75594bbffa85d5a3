"""Handshake messages: create, admit and consume them (wireguard-go ``noise-protocol.go``).

Each function takes what it works on (the static keys, a peer, a parsed message) and returns
a message to send, a new session, or the :class:`~wgpy.core.drops.Drop` that rejected the
input. None of them knows the device: the reactions (index table, endpoint, timers, key
confirmation, sending) are the device's (``device.py``, as wireguard-go's ``receive.go`` and
``timers.go``).

The rules: mac1 before any Diffie-Hellman; under load a cookie reply or a per-source rate
limit (:class:`Admission`); peer state changes only after every check passed (``noise``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable

from noise.cookie import CookieChecker, source_bytes
from noise.errors import NoiseError
from noise.handshake import (
    Handshake,
    InitiationFields,
    ResponseFields,
    StaticKeys,
    consume_initiation,
    consume_response,
    create_response,
    derive_keys,
)
from wgpy.core import messages
from wgpy.core.drops import Drop, from_noise
from wgpy.core.keypair import Keypair, SessionSecrets
from wgpy.core.peer import Endpoint, Peer
from wgpy.core.ratelimiter import RateLimiter

_NO_MAC2 = bytes(16)


def initiation(
    static: StaticKeys, peer: Peer, *, index: int, ephemeral: bytes, timestamp: bytes, now: float
) -> bytes:
    """A handshake initiation to ``peer`` from local ``index``, with its MACs."""
    fields = peer.handshake.create_initiation(
        static, ephemeral_private=ephemeral, timestamp=timestamp, sender_index=index
    )
    msg = messages.build_initiation(
        index, fields.ephemeral, fields.encrypted_static, fields.encrypted_timestamp
    )
    peer.cookie_generator.add_macs(msg, now=now)
    return bytes(msg)


def response(peer: Peer, *, index: int, ephemeral: bytes, now: float) -> bytes:
    """The response to ``peer``'s consumed initiation, from local ``index``, with its MACs."""
    fields = create_response(peer.handshake, ephemeral_private=ephemeral, sender_index=index)
    msg = messages.build_response(
        index, peer.handshake.remote_index, fields.ephemeral, fields.encrypted_nothing
    )
    peer.cookie_generator.add_macs(msg, now=now)
    return bytes(msg)


def consume_initiation_message(
    static: StaticKeys,
    msg: messages.Initiation,
    lookup: Callable[[bytes], Handshake | None],
    *,
    now: float,
) -> Handshake | Drop:
    """The handshake of the peer that sent ``msg`` (now consumed), or why it was rejected."""
    fields = InitiationFields(msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp)
    try:
        return consume_initiation(static, fields, msg.sender_index, lookup, now=now)
    except NoiseError as e:
        return from_noise(e)


def consume_response_message(static: StaticKeys, peer: Peer, msg: messages.Response) -> Drop | None:
    """Consume a response to ``peer``'s pending initiation; None on success."""
    fields = ResponseFields(msg.ephemeral, msg.encrypted_nothing)
    try:
        consume_response(peer.handshake, static, fields, msg.sender_index)
    except NoiseError as e:
        return from_noise(e)
    return None


def consume_cookie_reply(peer: Peer, msg: messages.CookieReply, *, now: float) -> Drop | None:
    """Take the cookie of a reply to ``peer``'s last message; None on success."""
    try:
        peer.cookie_generator.consume_reply(msg.nonce, msg.encrypted_cookie, now=now)
    except NoiseError as e:
        return from_noise(e)
    return None


def derive_session(
    static: StaticKeys, peer: Peer, *, now: float, log: bool
) -> tuple[Keypair, SessionSecrets | None]:
    """The keypair of ``peer``'s finished handshake, and (when ``log``) its secrets for a key
    log, taken before deriving the keys zeroes the handshake."""
    hs = peer.handshake
    ephemeral = hs.local_ephemeral
    keys = derive_keys(hs)
    secrets = None
    if log:
        secrets = SessionSecrets(
            local_static_private=static.private,
            remote_static_public=hs.remote_static,
            local_ephemeral_private=ephemeral,
            preshared_key=hs.preshared_key,
            is_initiator=keys.is_initiator,
            local_index=keys.local_index,
            remote_index=keys.remote_index,
            send_key=keys.send,
            receive_key=keys.receive,
        )
    return Keypair(keys, now=now), secrets


@functools.lru_cache(maxsize=4096)
def _packed(host: str) -> bytes | None:
    """The raw address of a source (cached: a flood comes from a few sources, many times)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        return None


class Admission:
    """mac1, then the under-load policy: a cookie reply or a per-source rate limit.

    Under load, a message without mac2 (16 zero bytes there: the sender holds no cookie) is
    answered with a cookie reply without checking mac2, and cookie replies to one source are
    rate-limited like handshakes (20/s, burst 5): a legitimate initiator needs one per 120 s,
    a flood from a few sources would otherwise cost a reply (≈ 15 µs) per message.
    """

    __slots__ = ("cookie_limiter", "rate_limiter")

    def __init__(self) -> None:
        self.rate_limiter = RateLimiter()
        self.cookie_limiter = RateLimiter()  # cookie replies per source, under load

    def check(
        self,
        checker: CookieChecker | None,
        data: bytes,
        addr: Endpoint,
        sender_index: int,
        *,
        under_load: bool,
        now: float,
    ) -> tuple[Drop | None, bytes | None]:
        """``(None, None)``: admitted. Else the drop reason, and a cookie reply to send to
        ``addr`` when there is one."""
        if checker is None:
            return Drop.NO_PRIVATE_KEY, None
        if not checker.check_mac1(data):
            return Drop.INVALID_MAC1, None
        if not under_load:
            return None, None
        ip = _packed(addr[0])
        if ip is None:
            return Drop.BAD_SOURCE, None
        src = source_bytes(ip, addr[1])
        if data[-16:] == _NO_MAC2 or not checker.check_mac2(data, src, now=now):
            if not self.cookie_limiter.allow(ip, now=now):
                return Drop.COOKIE_REPLY_RATE_LIMITED, None
            nonce, enc = checker.create_reply(data, src, now=now)
            return Drop.COOKIE_REPLY_SENT, messages.build_cookie_reply(sender_index, nonce, enc)
        if not self.rate_limiter.allow(ip, now=now):
            return Drop.RATE_LIMITED, None
        return None, None
