"""A peer: its handshake, keypair slots, endpoint, staged packets and the five timers.

The timer hooks are named after protocol events as in wireguard-go ``timers.go``; each says
when to call it. They only move deadlines (monotonic seconds, ``None`` = not armed), one
attribute per timer in :data:`TIMERS`; the device runs the handler it pairs with each one
once ``now`` passes the deadline.

The keypair slots rotate here too, in one place each (wireguard-go ``BeginSymmetricSession``
and ``ReceivedWithKeypair``). A keypair that leaves the slots is handed to ``free``: the
device's index table forgets its index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
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
Free = Callable[[Keypair | None], None]

# The deadline attribute of every timer, in the order the device runs them.
TIMERS = (
    "retransmit_handshake_at",
    "send_keepalive_at",
    "new_handshake_at",
    "zero_key_material_at",
    "persistent_keepalive_at",
    "silence_handshake_at",
)
# Every deadline of a peer's timers, as one C call: ``Device.get_timer`` asks after each wake-up.
timer_deadlines = attrgetter(*TIMERS)


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

    # --- sessions ---------------------------------------------------------------------------

    def begin_session(self, keypair: Keypair, *, free: Free) -> None:
        """Install the keypair of a finished handshake.

        The initiator uses it at once: it becomes ``current`` (a ``next`` still waiting for
        confirmation becomes ``previous``). The responder's waits in ``next`` until the
        initiator's first message on it confirms it (:meth:`received_with_keypair`).
        """
        if keypair.is_initiator:
            if self.next is not None:
                free(self.current)
                free(self.previous)
                self.previous = self.next
                self.next = None
            else:
                free(self.previous)
                self.previous = self.current
            self.current = keypair
        else:
            free(self.next)
            free(self.previous)
            self.next = keypair
            self.previous = None

    def received_with_keypair(self, keypair: Keypair, *, free: Free) -> bool:
        """A message authenticated with ``keypair`` arrived; True if that confirmed ``next``,
        which is now ``current``."""
        if keypair is not self.next:
            return False
        free(self.previous)
        self.previous = self.current
        self.current = keypair
        self.next = None
        return True

    def zero_key_material(self, *, free: Free) -> None:
        """Forget every session and staged packet (the handshake is the caller's)."""
        for kp in (self.previous, self.current, self.next):
            free(kp)
        self.previous = self.current = self.next = None
        self.staged.clear()

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
        for name in TIMERS:
            setattr(self, name, None)
