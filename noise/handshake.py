"""WireGuard's Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s handshake, message by message.

Theory of operation
-------------------
Every peer owns one ``Handshake``. Its ``state`` moves through::

    ZEROED --create_initiation--> INITIATION_CREATED --consume_response--> RESPONSE_CONSUMED
    ZEROED --consume_initiation--> INITIATION_CONSUMED --create_response--> RESPONSE_CREATED

and back to ZEROED once ``derive_keys`` has produced the transport keys. Consuming a new
initiation from the peer is allowed in any state: it overwrites a pending handshake of our own,
which is how simultaneous initiation resolves (both sides end as responders).

Consumption works on local variables and commits chaining key, hash, remote ephemeral and the
replay/flood bookkeeping only after every check has passed (wireguard-go
``noise-protocol.go``), so a rejected message never alters the peer's state.

This module builds and opens the Noise payload fields only; the byte layouts, MAC1/MAC2 and
indices are the caller's (``wgpy.core.messages``, ``noise.cookie``). Ephemeral keys and timestamps
are passed in, so that fixed vectors and simulations are deterministic. No clock is read: the
flood check takes ``now``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from noise import crypto, tai64n
from noise.errors import (
    HandshakeFlood,
    InvalidState,
    LowOrderPoint,
    ReplayedTimestamp,
    UnknownPeer,
)

CONSTRUCTION = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
C0 = crypto.hash_(CONSTRUCTION)
H0 = crypto.hash_(C0, IDENTIFIER)

HANDSHAKE_INITIATION_RATE = 1.0 / 50  # a responder consumes at most one initiation per 20 ms


class State(enum.Enum):
    ZEROED = 0
    INITIATION_CREATED = 1
    INITIATION_CONSUMED = 2
    RESPONSE_CREATED = 3
    RESPONSE_CONSUMED = 4


class StaticKeys:
    """The local static key pair. ``repr`` never shows the private half."""

    __slots__ = ("key", "private", "public")

    def __init__(self, private: bytes) -> None:
        if len(private) != crypto.KEY_SIZE:
            raise ValueError("a private key is 32 bytes")
        self.private = crypto.clamp(private)
        self.key = crypto.private_key(self.private)  # made once: each costs a DH's time
        self.public = crypto.public_key(self.key)

    def __repr__(self) -> str:
        return "StaticKeys(private=(hidden))"


@dataclass(slots=True, frozen=True)
class InitiationFields:
    ephemeral: bytes  # 32
    encrypted_static: bytes  # 48
    encrypted_timestamp: bytes  # 28


@dataclass(slots=True, frozen=True)
class ResponseFields:
    ephemeral: bytes  # 32
    encrypted_nothing: bytes  # 16


@dataclass(slots=True, frozen=True)
class SessionKeys:
    send: bytes
    receive: bytes
    is_initiator: bool
    local_index: int
    remote_index: int
    transcript_hash: bytes  # the final H, equal on both sides


class Handshake:
    """Per-peer handshake state (wireguard-go ``Handshake``)."""

    __slots__ = (
        "chaining_key",
        "hash",
        "last_initiation_consumed",
        "last_timestamp",
        "local_ephemeral",
        "local_ephemeral_key",
        "local_index",
        "precomputed_static_static",
        "preshared_key",
        "remote_ephemeral",
        "remote_index",
        "remote_static",
        "state",
    )

    def __init__(self, remote_static: bytes, preshared_key: bytes | None = None) -> None:
        if len(remote_static) != crypto.KEY_SIZE:
            raise ValueError("a public key is 32 bytes")
        self.remote_static = remote_static
        self.preshared_key = preshared_key or crypto.ZERO_KEY
        self.precomputed_static_static: bytes | None = None
        self.state = State.ZEROED
        self.chaining_key = self.hash = self.local_ephemeral = self.remote_ephemeral = b""
        self.local_ephemeral_key: X25519PrivateKey | None = None  # of local_ephemeral
        self.local_index = self.remote_index = 0
        self.last_timestamp = tai64n.ZERO
        self.last_initiation_consumed: float | None = None

    def __repr__(self) -> str:
        return f"Handshake(state={self.state.name})"

    def precompute(self, local: StaticKeys | None) -> None:
        """Recompute DH(S_local, S_remote); call when either static key changes.

        A low-order remote key leaves it ``None``, which refuses handshakes with this peer.
        """
        self.precomputed_static_static = None
        if local is None:
            return
        try:
            self.precomputed_static_static = crypto.dh(local.key, self.remote_static)
        except LowOrderPoint:
            self.precomputed_static_static = None

    def clear(self) -> None:
        """Forget any handshake in progress (keys dropped; Python cannot wipe memory)."""
        self.state = State.ZEROED
        self.chaining_key = b""
        self.hash = b""
        self.local_ephemeral = b""
        self.local_ephemeral_key = None
        self.remote_ephemeral = b""
        self.local_index = 0
        self.remote_index = 0

    def static_static(self) -> bytes:
        """DH(our static, the peer's static), precomputed; raises for a low-order point."""
        if self.precomputed_static_static is None:
            raise LowOrderPoint("no usable static-static secret for this peer")
        return self.precomputed_static_static

    # --- message 1 --------------------------------------------------------------------------

    def create_initiation(
        self,
        local: StaticKeys,
        *,
        ephemeral_private: bytes,
        timestamp: bytes,
        sender_index: int,
    ) -> InitiationFields:
        """Build message 1's Noise fields and move to INITIATION_CREATED.

        ``timestamp`` is the TAI64N label (see ``noise.tai64n.stamp``).
        """
        ss = self.static_static()
        c = C0
        h = crypto.hash_(H0, self.remote_static)
        ek = crypto.private_key(ephemeral_private)
        e_pub = crypto.public_key(ek)
        c = crypto.kdf1(c, e_pub)
        h = crypto.hash_(h, e_pub)
        c, k = crypto.kdf2(c, crypto.dh(ek, self.remote_static))
        enc_static = crypto.aead_seal(k, 0, local.public, h)
        h = crypto.hash_(h, enc_static)
        c, k = crypto.kdf2(c, ss)
        enc_ts = crypto.aead_seal(k, 0, timestamp, h)
        h = crypto.hash_(h, enc_ts)

        self.chaining_key = c
        self.hash = h
        self.local_ephemeral = ephemeral_private
        self.local_ephemeral_key = ek
        self.remote_ephemeral = b""
        self.local_index = sender_index
        self.remote_index = 0
        self.state = State.INITIATION_CREATED
        return InitiationFields(e_pub, enc_static, enc_ts)


def consume_initiation(
    local: StaticKeys,
    fields: InitiationFields,
    sender_index: int,
    lookup: Callable[[bytes], Handshake | None],
    *,
    now: float,
) -> Handshake:
    """Open message 1, find the peer by its static key, check replay and flood, then commit.

    ``lookup`` maps a decrypted static public key to that peer's ``Handshake`` (or ``None``).
    Raises a ``NoiseError`` subclass on any failure, leaving every peer unchanged.
    """
    c = C0
    h = crypto.hash_(H0, local.public)
    e = fields.ephemeral
    c = crypto.kdf1(c, e)
    h = crypto.hash_(h, e)
    c, k = crypto.kdf2(c, crypto.dh(local.key, e))
    remote_static = crypto.aead_open(k, 0, fields.encrypted_static, h)
    h = crypto.hash_(h, fields.encrypted_static)

    hs = lookup(remote_static)
    if hs is None:
        raise UnknownPeer("initiation from an unknown static key")
    c, k = crypto.kdf2(c, hs.static_static())
    timestamp = crypto.aead_open(k, 0, fields.encrypted_timestamp, h)
    h = crypto.hash_(h, fields.encrypted_timestamp)

    if not tai64n.after(timestamp, hs.last_timestamp):
        raise ReplayedTimestamp("timestamp not newer than the last accepted one")
    if (
        hs.last_initiation_consumed is not None
        and now - hs.last_initiation_consumed < HANDSHAKE_INITIATION_RATE
    ):
        raise HandshakeFlood("initiations from this peer arrive too fast")

    # Every check passed: commit.
    hs.chaining_key = c
    hs.hash = h
    hs.remote_ephemeral = e
    hs.remote_index = sender_index
    hs.local_ephemeral = b""
    hs.local_ephemeral_key = None
    hs.last_timestamp = timestamp
    hs.last_initiation_consumed = now
    hs.state = State.INITIATION_CONSUMED
    return hs


# --- message 2 ------------------------------------------------------------------------------


def create_response(
    hs: Handshake, *, ephemeral_private: bytes, sender_index: int
) -> ResponseFields:
    """Build message 2's Noise fields for a consumed initiation; state → RESPONSE_CREATED."""
    if hs.state is not State.INITIATION_CONSUMED:
        raise InvalidState("no consumed initiation to respond to")
    c, h = hs.chaining_key, hs.hash
    ek = crypto.private_key(ephemeral_private)
    e_pub = crypto.public_key(ek)
    c = crypto.kdf1(c, e_pub)
    h = crypto.hash_(h, e_pub)
    c = crypto.kdf1(c, crypto.dh(ek, hs.remote_ephemeral))
    c = crypto.kdf1(c, crypto.dh(ek, hs.remote_static))
    c, tau, k = crypto.kdf3(c, hs.preshared_key)
    h = crypto.hash_(h, tau)
    enc_nothing = crypto.aead_seal(k, 0, b"", h)
    h = crypto.hash_(h, enc_nothing)

    hs.chaining_key = c
    hs.hash = h
    hs.local_ephemeral = ephemeral_private
    hs.local_index = sender_index
    hs.state = State.RESPONSE_CREATED
    return ResponseFields(e_pub, enc_nothing)


def consume_response(
    hs: Handshake, local: StaticKeys, fields: ResponseFields, sender_index: int
) -> None:
    """Open message 2 for our pending initiation; state → RESPONSE_CONSUMED on success."""
    if hs.state is not State.INITIATION_CREATED:
        raise InvalidState("response without a pending initiation")
    c, h = hs.chaining_key, hs.hash
    e = fields.ephemeral
    c = crypto.kdf1(c, e)
    h = crypto.hash_(h, e)
    c = crypto.kdf1(c, crypto.dh(hs.local_ephemeral_key or hs.local_ephemeral, e))
    c = crypto.kdf1(c, crypto.dh(local.key, e))
    c, tau, k = crypto.kdf3(c, hs.preshared_key)
    h = crypto.hash_(h, tau)
    crypto.aead_open(k, 0, fields.encrypted_nothing, h)
    h = crypto.hash_(h, fields.encrypted_nothing)

    hs.chaining_key = c
    hs.hash = h
    hs.remote_ephemeral = e
    hs.remote_index = sender_index
    hs.state = State.RESPONSE_CONSUMED


def derive_keys(hs: Handshake) -> SessionKeys:
    """Derive the transport keys of a finished handshake and zero the handshake state."""
    if hs.state is State.RESPONSE_CONSUMED:
        is_initiator = True
    elif hs.state is State.RESPONSE_CREATED:
        is_initiator = False
    else:
        raise InvalidState("handshake not finished")
    t1, t2 = crypto.kdf2(hs.chaining_key, b"")
    send, receive = (t1, t2) if is_initiator else (t2, t1)
    keys = SessionKeys(send, receive, is_initiator, hs.local_index, hs.remote_index, hs.hash)
    hs.clear()
    return keys
