"""The timers: the next deadline, and one handler per timer (wireguard-go ``timers.go``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from wgpy.core.constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    ZERO_KEY_MATERIAL_AFTER,
)
from wgpy.core.peer import TIMERS, Peer, timer_deadlines
from wgpy.core.receive import Receiver


class Timers(Receiver):
    """The timer half of a device."""

    def get_timer(self) -> float | None:
        """The earliest deadline of any peer timer or of the handshake backlog (when its
        budget lets the next message through), or ``None`` when nothing is armed."""
        best = self.backlog.ready_at()
        for peer in self.peers.values():
            for t in timer_deadlines(peer):
                if t is not None and (best is None or t < best):
                    best = t
        return best

    # --- timers -----------------------------------------------------------------------------

    def handle_timer(self, *, now: float) -> None:
        """Work on the handshake backlog within its budget and run every expired peer timer.
        After calling this, drain ``datagrams_to_send`` and ``tun_packets_to_write``."""
        if self.backlog.depth:
            self.process_handshakes(now=now)
        for peer in list(self.peers.values()):
            for name, expired in self._EXPIRED:
                t = getattr(peer, name)
                if t is not None and now >= t:
                    setattr(peer, name, None)
                    expired(self, peer, now)

    # One handler per timer of peer.TIMERS, named after the event (wireguard-go timers.go).

    def _expired_retransmit_handshake(self, peer: Peer, now: float) -> None:
        if peer.timer_handshake_attempts > MAX_TIMER_HANDSHAKES:
            # gave up after REKEY_ATTEMPT_TIME: drop what waited, wipe keys later
            peer.send_keepalive_at = None
            peer.staged.clear()
            if peer.zero_key_material_at is None:
                peer.zero_key_material_at = now + ZERO_KEY_MATERIAL_AFTER
            return
        peer.timer_handshake_attempts += 1
        self.initiate(peer, now=now, is_retry=True)

    def _expired_send_keepalive(self, peer: Peer, now: float) -> None:
        self.send_keepalive(peer, now=now)
        if peer.need_another_keepalive:
            peer.need_another_keepalive = False
            peer.send_keepalive_at = now + KEEPALIVE_TIMEOUT

    def _expired_new_handshake(self, peer: Peer, now: float) -> None:
        self.initiate(peer, now=now)

    def _expired_zero_key_material(self, peer: Peer, now: float) -> None:
        self._zero_key_material(peer)

    def _expired_persistent_keepalive(self, peer: Peer, now: float) -> None:
        if peer.persistent_keepalive_interval > 0:
            self.send_keepalive(peer, now=now)

    def _expired_silence_handshake(self, peer: Peer, now: float) -> None:
        if not self.initiate(peer, now=now):  # rate-limited or no endpoint yet
            peer.silence_handshake_at = now + peer.silence_interval

    # The handler of each timer, in the order of peer.TIMERS (checked below).
    _EXPIRED: ClassVar[tuple[tuple[str, Callable[[Timers, Peer, float], None]], ...]] = (
        ("retransmit_handshake_at", _expired_retransmit_handshake),
        ("send_keepalive_at", _expired_send_keepalive),
        ("new_handshake_at", _expired_new_handshake),
        ("zero_key_material_at", _expired_zero_key_material),
        ("persistent_keepalive_at", _expired_persistent_keepalive),
        ("silence_handshake_at", _expired_silence_handshake),
    )


if tuple(name for name, _ in Timers._EXPIRED) != TIMERS:  # noqa: SLF001
    raise AssertionError("Timers._EXPIRED does not follow peer.TIMERS")
