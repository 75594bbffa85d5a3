"""Why a device dropped something: one name per rule, counted in ``Device.drops``.

Remote input never raises; it is dropped and counted under one of these reasons (``wg``'s
``stats=1`` and the supervisor's metrics show the counts by value). The handshake's own
rejections (``noise.errors``) keep their ``reason`` strings; :func:`from_noise` maps them
here, so every counted reason is a member.
"""

from __future__ import annotations

from enum import StrEnum

from noise.errors import NoiseError


class Drop(StrEnum):
    """A drop reason; its value is the counter's name."""

    # any message
    UNKNOWN_TYPE = "unknown_type"
    MALFORMED = "malformed"
    # handshake messages: admission (mac1, load) and the backlog
    NO_PRIVATE_KEY = "no_private_key"
    INVALID_MAC1 = "invalid_mac1"
    BAD_SOURCE = "bad_source"
    COOKIE_REPLY_SENT = "cookie_reply_sent"
    COOKIE_REPLY_RATE_LIMITED = "cookie_reply_rate_limited"
    RATE_LIMITED = "rate_limited"
    HANDSHAKE_BACKLOG_FULL = "handshake_backlog_full"
    # handshake messages: the Noise rules (noise.errors)
    HANDSHAKE_ERROR = "handshake_error"
    LOW_ORDER_POINT = "low_order_point"
    UNKNOWN_PEER = "unknown_peer"
    REPLAYED_TIMESTAMP = "replayed_timestamp"
    HANDSHAKE_FLOOD = "handshake_flood"
    INVALID_HANDSHAKE_STATE = "invalid_handshake_state"
    INVALID_COOKIE = "invalid_cookie"
    # transport messages
    UNKNOWN_INDEX = "unknown_index"
    EXPIRED_KEYPAIR = "expired_keypair"
    DECRYPTION_FAILED = "decryption_failed"
    REPLAYED = "replayed"
    MALFORMED_INNER_PACKET = "malformed_inner_packet"
    DISALLOWED_SOURCE = "disallowed_source"
    DISALLOWED_DESTINATION = "disallowed_destination"
    # outbound packets from the TUN
    MALFORMED_OUTBOUND = "malformed_outbound"
    NO_ROUTE = "no_route"
    STAGED_OVERFLOW = "staged_overflow"


def from_noise(error: NoiseError) -> Drop:
    """The drop reason of a rejected handshake message."""
    return Drop(error.reason)
