"""A peer: its handshake, keypair slots, endpoint, staged packets and the five timers.

The timer hooks are named after protocol events as in wireguard-go ``timers.go``; each says
when to call it. They only move deadlines (monotonic seconds, ``None`` = not armed); the
device runs the matching ``expired_*`` handler once ``now`` passes a deadline.
"""

from __future__ import annotations

from collections import deque
from operator import attrgetter

from noise.cookie import CookieGenerator
from noise.handshake import Handshake
from wgpy.core.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_STAGED_PACKETS,
    REKEY_TIMEOUT,
    ZERO_KEY_MATERIAL_AFTER,
)
from wgpy.core.keypair import Keypair
from wgpy.core.keys import short

Endpoint = tuple[str, int]

# Every deadline of a peer's timers, as one C call: ``Device.get_timer`` asks after each wake-up.
timer_deadlines = attrgetter(
    "retransmit_handshake_at",
    "send_keepalive_at",
    "new_handshake_at",
    "zero_key_material_at",
    "persistent_keepalive_at",
    "silence_handshake_at",
)


class Peer:
    """One configured peer of a device."""

    __slots__ = (
        "cookie_generator",
        "current",
        "endpoint",
        "handshake",
        "last_handshake_ns",
        "last_sent_handshake",
        "need_another_keepalive",
        "new_handshake_at",
        "next",
        "persistent_keepalive_at",
        "persistent_keepalive_interval",
        "previous",
        "public_key",
        "retransmit_handshake_at",
        "rx_bytes",
        "send_keepalive_at",
        "sent_lastminute_handshake",
        "silence_handshake_at",
        "silence_interval",
        "staged",
        "timer_handshake_attempts",
        "tx_bytes",
        "zero_key_material_at",
    )

    def __init__(self, public_key: bytes, *, now: float) -> None:
        self.public_key = public_key
        self.handshake = Handshake(public_key)
        self.cookie_generator = CookieGenerator(public_key)
        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self.endpoint: Endpoint | None = None
        self.persistent_keepalive_interval = 0
        self.staged: deque[bytes] = deque()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake_ns = 0  # wall time of the last completed handshake, 0 = never
        # backdated so that the first initiation goes out at once (wireguard-go peer.go)
        self.last_sent_handshake = now - REKEY_TIMEOUT - 1.0
        self.timer_handshake_attempts = 0
        self.sent_lastminute_handshake = False
        self.need_another_keepalive = False
        self.retransmit_handshake_at: float | None = None
        self.send_keepalive_at: float | None = None
        self.new_handshake_at: float | None = None
        self.zero_key_material_at: float | None = None
        self.persistent_keepalive_at: float | None = None
        # wgpy extension (off by default): start a handshake when the peer was silent this long
        self.silence_interval = 0.0
        self.silence_handshake_at: float | None = None

    def __repr__(self) -> str:
        return short(self.public_key)

    @property
    def preshared_key(self) -> bytes:
        return self.handshake.preshared_key

    # --- staged packets ---------------------------------------------------------------------

    def stage(self, packet: bytes) -> bool:
        """Queue an outbound packet; returns False when the oldest had to be dropped."""
        dropped = False
        if len(self.staged) >= MAX_STAGED_PACKETS:
            self.staged.popleft()
            dropped = True
        self.staged.append(packet)
        return not dropped

    # --- timer hooks ------------------------------------------------------------------------

    def timers_data_sent(self, *, now: float, jitter: float) -> None:
        """Call after sending a data packet (not a keepalive)."""
        if self.new_handshake_at is None:
            self.new_handshake_at = now + KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + jitter

    def timers_data_received(self, *, now: float) -> None:
        """Call after receiving a data packet (not a keepalive)."""
        if self.send_keepalive_at is None:
            self.send_keepalive_at = now + KEEPALIVE_TIMEOUT
        else:
            self.need_another_keepalive = True

    def timers_any_authenticated_packet_sent(self) -> None:
        """Call after sending any authenticated packet: handshake, data or keepalive."""
        self.send_keepalive_at = None

    def timers_any_authenticated_packet_received(self, *, now: float) -> None:
        """Call after receiving any authenticated packet: handshake, data or keepalive."""
        self.new_handshake_at = None
        if self.silence_interval > 0:
            self.silence_handshake_at = now + self.silence_interval

    def timers_handshake_initiated(self, *, now: float, jitter: float) -> None:
        """Call after sending a handshake initiation."""
        self.retransmit_handshake_at = now + REKEY_TIMEOUT + jitter
        if self.silence_interval > 0:
            self.silence_handshake_at = now + self.silence_interval

    def timers_handshake_complete(self, *, wall_ns: int) -> None:
        """Call after a response is consumed or the first packet on ``next`` arrives."""
        self.retransmit_handshake_at = None
        self.timer_handshake_attempts = 0
        self.sent_lastminute_handshake = False
        self.last_handshake_ns = wall_ns

    def timers_session_derived(self, *, now: float) -> None:
        """Call after new transport keys are derived (response sent or consumed)."""
        self.zero_key_material_at = now + ZERO_KEY_MATERIAL_AFTER

    def timers_any_authenticated_packet_traversal(self, *, now: float) -> None:
        """Call before sending and after receiving any authenticated packet."""
        if self.persistent_keepalive_interval > 0:
            self.persistent_keepalive_at = now + self.persistent_keepalive_interval

    def stop_timers(self) -> None:
        self.retransmit_handshake_at = None
        self.send_keepalive_at = None
        self.new_handshake_at = None
        self.zero_key_material_at = None
        self.persistent_keepalive_at = None
        self.silence_handshake_at = None
