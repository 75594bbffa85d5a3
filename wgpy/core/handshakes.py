"""Handshake messages on a ``Device``: sending initiations, answering and consuming them.

The rules are wireguard-go's (``noise-protocol.go``, ``receive.go``): mac1 before any
Diffie-Hellman, the under-load policy (cookie replies, per-source rate limit), state committed
only after every check passed, the responder's keypair waiting in ``next`` until the initiator
confirms it, and the initiator confirming at once (staged data, else a keepalive). These are
functions of the device rather than methods so that ``device.py`` stays readable; they use its
private helpers and are called only from it.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import TYPE_CHECKING

from noise.cookie import source_bytes
from noise.errors import NoiseError
from noise.handshake import (
    Handshake,
    InitiationFields,
    ResponseFields,
    consume_initiation,
    consume_response,
    create_response,
    derive_keys,
)
from wgpy.core import messages
from wgpy.core.constants import REKEY_TIMEOUT, UNDER_LOAD_STICKY
from wgpy.core.keypair import Keypair, SessionSecrets
from wgpy.core.peer import Endpoint, Peer

if TYPE_CHECKING:
    from wgpy.core.device import Device

_NO_MAC2 = bytes(16)


def note_arrival(dev: Device, *, now: float) -> None:
    """Count one arriving handshake message (queued or not): above ``under_load_rate`` per
    second the device is under load, sticky for 1 s. Arrivals, not messages worked on: a
    flood the backlog drops cheaply (one source over its share) still means load."""
    if now - dev._load_window_start >= 1.0:
        dev._load_window_start = now
        dev._load_count = 0
    dev._load_count += 1
    if dev._load_count > dev.under_load_rate:
        dev._under_load_until = now + UNDER_LOAD_STICKY


def under_load(dev: Device, *, now: float) -> bool:
    """Under load: set by the arrival rate (:func:`note_arrival`) or a deep backlog."""
    return now < dev._under_load_until


def initiate(dev: Device, peer: Peer, *, now: float, is_retry: bool = False) -> bool:
    """Send a handshake initiation to ``peer`` unless one went out < REKEY_TIMEOUT ago.

    Returns True if one was sent. After calling this, drain ``datagrams_to_send``.
    """
    if not is_retry:
        peer.timer_handshake_attempts = 0
    if now - peer.last_sent_handshake < REKEY_TIMEOUT:
        return False
    if peer.endpoint is None or dev.static is None:
        return False
    if peer.handshake.precomputed_static_static is None:
        return False
    peer.last_sent_handshake = now
    dev._clear_handshake(peer)
    index = dev._new_index(peer, None)
    fields = peer.handshake.create_initiation(
        dev.static,
        ephemeral_private=dev.keygen(),
        timestamp=dev._timestamp(),
        sender_index=index,
    )
    msg = messages.build_initiation(
        index, fields.ephemeral, fields.encrypted_static, fields.encrypted_timestamp
    )
    peer.cookie_generator.add_macs(msg, now=now)
    peer.timers_any_authenticated_packet_traversal(now=now)
    peer.timers_any_authenticated_packet_sent()
    dev._send(peer, bytes(msg))
    peer.timers_handshake_initiated(now=now, jitter=dev._jitter())
    return True


@functools.lru_cache(maxsize=4096)
def _packed(host: str) -> bytes | None:
    """The raw address of a source (cached: a flood comes from a few sources, many times)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).packed
    except ValueError:
        return None


def admitted(dev: Device, data: bytes, addr: Endpoint, sender_index: int, *, now: float) -> bool:
    """mac1, then the under-load policy: cookie reply or per-source rate limit.

    Under load, a message without mac2 (16 zero bytes there: the sender holds no cookie) is
    answered with a cookie reply without checking mac2, and cookie replies to one source are
    rate-limited like handshakes (20/s, burst 5): a legitimate initiator needs one per 120 s,
    a flood from a few sources would otherwise cost a reply (≈ 15 µs) per message.
    """
    checker = dev.cookie_checker
    if checker is None:
        dev._drop("no_private_key")
        return False
    if not checker.check_mac1(data):
        dev._drop("invalid_mac1")
        return False
    if not under_load(dev, now=now):
        return True
    ip = _packed(addr[0])
    if ip is None:
        dev._drop("bad_source")
        return False
    src = source_bytes(ip, addr[1])
    if data[-16:] == _NO_MAC2 or not checker.check_mac2(data, src, now=now):
        if not dev.cookie_limiter.allow(ip, now=now):
            dev._drop("cookie_reply_rate_limited")
            return False
        nonce, enc = checker.create_reply(data, src, now=now)
        dev._out_datagrams.append((messages.build_cookie_reply(sender_index, nonce, enc), addr))
        dev._drop("cookie_reply_sent")
        return False
    if not dev.rate_limiter.allow(ip, now=now):
        dev._drop("rate_limited")
        return False
    return True


def receive_initiation(dev: Device, data: bytes, addr: Endpoint, *, now: float) -> None:
    msg = messages.parse_initiation(data)
    if msg is None:
        dev._drop("malformed")
        return
    if not admitted(dev, data, addr, msg.sender_index, now=now):
        return
    assert dev.static is not None
    fields = InitiationFields(msg.ephemeral, msg.encrypted_static, msg.encrypted_timestamp)
    try:
        hs = consume_initiation(
            dev.static, fields, msg.sender_index, lambda k: lookup_handshake(dev, k), now=now
        )
    except NoiseError as e:
        dev._drop(e.reason)
        return
    peer = dev.peers[hs.remote_static]
    # consuming overwrote any initiation of ours: its index must go
    entry = dev.index_table.get(hs.local_index)
    if entry is not None and entry[0] is peer and entry[1] is None:
        del dev.index_table[hs.local_index]
    peer.endpoint = addr
    peer.rx_bytes += len(data)
    peer.timers_any_authenticated_packet_traversal(now=now)
    peer.timers_any_authenticated_packet_received(now=now)
    send_response(dev, peer, now=now)


def lookup_handshake(dev: Device, public_key: bytes) -> Handshake | None:
    peer = dev.peers.get(public_key)
    return peer.handshake if peer is not None else None


def send_response(dev: Device, peer: Peer, *, now: float) -> None:
    index = dev._new_index(peer, None)
    fields = create_response(peer.handshake, ephemeral_private=dev.keygen(), sender_index=index)
    msg = messages.build_response(
        index, peer.handshake.remote_index, fields.ephemeral, fields.encrypted_nothing
    )
    peer.cookie_generator.add_macs(msg, now=now)
    keypair, logged = new_session(dev, peer, now=now)
    dev.index_table[index] = (peer, keypair)
    # responder: the new keypair waits in `next` until the initiator confirms it
    dev._free_keypair(peer.next)
    peer.next = keypair
    dev._free_keypair(peer.previous)
    peer.previous = None
    peer.last_sent_handshake = now
    peer.timers_session_derived(now=now)
    peer.timers_any_authenticated_packet_traversal(now=now)
    peer.timers_any_authenticated_packet_sent()
    if logged is not None and dev.key_log_sink is not None:
        dev.key_log_sink(logged)
    dev._send(peer, bytes(msg))


def new_session(dev: Device, peer: Peer, *, now: float) -> tuple[Keypair, SessionSecrets | None]:
    """The keypair of ``peer``'s finished handshake, and (only when the device has a
    ``key_log_sink``) its secrets, taken before deriving the keys zeroes the handshake."""
    hs = peer.handshake
    ephemeral = hs.local_ephemeral
    keys = derive_keys(hs)
    logged = None
    if dev.key_log_sink is not None and dev.static is not None:
        logged = SessionSecrets(
            local_static_private=dev.static.private,
            remote_static_public=hs.remote_static,
            local_ephemeral_private=ephemeral,
            preshared_key=hs.preshared_key,
            is_initiator=keys.is_initiator,
            local_index=keys.local_index,
            remote_index=keys.remote_index,
            send_key=keys.send,
            receive_key=keys.receive,
        )
    return Keypair(keys, now=now), logged


def receive_response(dev: Device, data: bytes, addr: Endpoint, *, now: float) -> None:
    msg = messages.parse_response(data)
    if msg is None:
        dev._drop("malformed")
        return
    if not admitted(dev, data, addr, msg.sender_index, now=now):
        return
    assert dev.static is not None
    entry = dev.index_table.get(msg.receiver_index)
    if entry is None or entry[1] is not None:
        dev._drop("unknown_index")
        return
    peer = entry[0]
    try:
        consume_response(
            peer.handshake,
            dev.static,
            ResponseFields(msg.ephemeral, msg.encrypted_nothing),
            msg.sender_index,
        )
    except NoiseError as e:
        dev._drop(e.reason)
        return
    keypair, logged = new_session(dev, peer, now=now)
    dev.index_table[keypair.local_index] = (peer, keypair)
    if peer.next is not None:
        old_previous = peer.previous
        peer.previous = peer.next
        peer.next = None
        dev._free_keypair(peer.current)
        dev._free_keypair(old_previous)
    else:
        dev._free_keypair(peer.previous)
        peer.previous = peer.current
    peer.current = keypair
    peer.endpoint = addr
    peer.rx_bytes += len(data)
    dev.handshakes_completed += 1
    peer.timers_any_authenticated_packet_traversal(now=now)
    peer.timers_any_authenticated_packet_received(now=now)
    peer.timers_session_derived(now=now)
    peer.timers_handshake_complete(wall_ns=dev.wall_time_ns())
    if logged is not None and dev.key_log_sink is not None:
        dev.key_log_sink(logged)  # before the first transport message that uses the keys
    if peer.staged:
        dev._flush_staged(peer, now=now)
    else:
        dev.send_keepalive(peer, now=now)  # key confirmation


def receive_cookie_reply(dev: Device, data: bytes, *, now: float) -> None:
    msg = messages.parse_cookie_reply(data)
    if msg is None:
        dev._drop("malformed")
        return
    entry = dev.index_table.get(msg.receiver_index)
    if entry is None:
        dev._drop("unknown_index")
        return
    try:
        entry[0].cookie_generator.consume_reply(msg.nonce, msg.encrypted_cookie, now=now)
    except NoiseError as e:
        dev._drop(e.reason)
