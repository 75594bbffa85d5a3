"""WireGuard wire formats, as data (whitepaper §5.4, wireguard-go ``noise-protocol.go``).

All integers are little-endian. Bytes 0–3 are read as one LE u32 type, so a non-zero reserved
byte makes a message of unknown type: it is dropped, as the reference implementations do.
Handshake messages and cookie replies have exact sizes; transport data is at least 32 bytes.
Parsers return ``None`` for anything malformed; they never raise on remote input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MESSAGE_INITIATION = 1
MESSAGE_RESPONSE = 2
MESSAGE_COOKIE_REPLY = 3
MESSAGE_TRANSPORT = 4

MESSAGE_INITIATION_SIZE = 148
MESSAGE_RESPONSE_SIZE = 92
MESSAGE_COOKIE_REPLY_SIZE = 64
TRANSPORT_HEADER_SIZE = 16
TAG_SIZE = 16
MESSAGE_KEEPALIVE_SIZE = TRANSPORT_HEADER_SIZE + TAG_SIZE  # 32
MAC_SIZE = 16

_TYPE = struct.Struct("<I")
_INITIATION = struct.Struct("<II32s48s28s16s16s")
_RESPONSE = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY = struct.Struct("<II24s32s")
TRANSPORT_HEADER = struct.Struct("<IIQ")

assert _INITIATION.size == MESSAGE_INITIATION_SIZE
assert _RESPONSE.size == MESSAGE_RESPONSE_SIZE
assert _COOKIE_REPLY.size == MESSAGE_COOKIE_REPLY_SIZE


@dataclass(slots=True, frozen=True)
class Initiation:
    sender_index: int
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes
    mac2: bytes


@dataclass(slots=True, frozen=True)
class Response:
    sender_index: int
    receiver_index: int
    ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes
    mac2: bytes


@dataclass(slots=True, frozen=True)
class CookieReply:
    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes


def message_type(data: bytes | bytearray | memoryview) -> int:
    """The LE u32 type word, or 0 when the datagram is shorter than 4 bytes."""
    if len(data) < 4:
        return 0
    t: int = _TYPE.unpack_from(data)[0]
    return t


def parse_initiation(data: bytes | bytearray | memoryview) -> Initiation | None:
    if len(data) != MESSAGE_INITIATION_SIZE:
        return None
    t, sender, eph, est, ets, m1, m2 = _INITIATION.unpack(data)
    if t != MESSAGE_INITIATION:
        return None
    return Initiation(sender, eph, est, ets, m1, m2)


def build_initiation(
    sender_index: int, ephemeral: bytes, encrypted_static: bytes, encrypted_timestamp: bytes
) -> bytearray:
    """Message 1 with mac1 and mac2 zeroed (``CookieGenerator.add_macs`` fills them)."""
    out = bytearray(MESSAGE_INITIATION_SIZE)
    _INITIATION.pack_into(
        out,
        0,
        MESSAGE_INITIATION,
        sender_index,
        ephemeral,
        encrypted_static,
        encrypted_timestamp,
        bytes(16),
        bytes(16),
    )
    return out


def parse_response(data: bytes | bytearray | memoryview) -> Response | None:
    if len(data) != MESSAGE_RESPONSE_SIZE:
        return None
    t, sender, receiver, eph, enc, m1, m2 = _RESPONSE.unpack(data)
    if t != MESSAGE_RESPONSE:
        return None
    return Response(sender, receiver, eph, enc, m1, m2)


def build_response(
    sender_index: int, receiver_index: int, ephemeral: bytes, encrypted_nothing: bytes
) -> bytearray:
    out = bytearray(MESSAGE_RESPONSE_SIZE)
    _RESPONSE.pack_into(
        out,
        0,
        MESSAGE_RESPONSE,
        sender_index,
        receiver_index,
        ephemeral,
        encrypted_nothing,
        bytes(16),
        bytes(16),
    )
    return out


def parse_cookie_reply(data: bytes | bytearray | memoryview) -> CookieReply | None:
    if len(data) != MESSAGE_COOKIE_REPLY_SIZE:
        return None
    t, receiver, nonce, enc = _COOKIE_REPLY.unpack(data)
    if t != MESSAGE_COOKIE_REPLY:
        return None
    return CookieReply(receiver, nonce, enc)


def build_cookie_reply(receiver_index: int, nonce: bytes, encrypted_cookie: bytes) -> bytes:
    return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, receiver_index, nonce, encrypted_cookie)


def parse_transport_header(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """``(receiver_index, counter)`` of a transport message, or ``None`` if malformed."""
    if len(data) < MESSAGE_KEEPALIVE_SIZE:
        return None
    t, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    if t != MESSAGE_TRANSPORT:
        return None
    return receiver, counter


def padding_size(length: int, mtu: int) -> int:
    """Zero bytes to append to a plaintext (wireguard-go ``send.go`` ``calculatePaddingSize``)."""
    if mtu == 0:
        return ((length + 15) & ~15) - length
    last = length % mtu if length > mtu else length
    padded = min((last + 15) & ~15, mtu)
    return padded - last if padded > last else 0


def ip_packet_length(packet: bytes | bytearray | memoryview) -> int | None:
    """Length of the IP packet at the start of ``packet`` from its own header, or ``None``.

    Decrypted transport payloads are trimmed by this, never by stripping zero bytes.
    """
    n = len(packet)
    if n == 0:
        return None
    version = packet[0] >> 4
    if version == 4:
        if n < 20:
            return None
        total = (packet[2] << 8) | packet[3]
        if total < 20 or total > n:
            return None
        return total
    if version == 6:
        if n < 40:
            return None
        total = 40 + ((packet[4] << 8) | packet[5])
        if total > n:
            return None
        return total
    return None
