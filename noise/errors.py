"""Errors raised inside the handshake. The device catches them and counts a drop by reason."""

from __future__ import annotations


class NoiseError(Exception):
    """Base class: a handshake message was rejected. Never carries key material."""

    reason = "handshake_error"


class DecryptionError(NoiseError):
    reason = "decryption_failed"


class LowOrderPoint(NoiseError):
    reason = "low_order_point"


class UnknownPeer(NoiseError):
    reason = "unknown_peer"


class ReplayedTimestamp(NoiseError):
    reason = "replayed_timestamp"


class HandshakeFlood(NoiseError):
    reason = "handshake_flood"


class InvalidState(NoiseError):
    reason = "invalid_handshake_state"


class InvalidCookie(NoiseError):
    reason = "invalid_cookie"
