"""The sans-IO WireGuard device: peers, cryptokey routing, handshakes, transport and timers.

Theory of operation
-------------------
A ``Device`` never reads a clock and never does I/O. Four kinds of input drive it:

* ``receive_datagram(data, addr, now=...)`` — a UDP datagram arrived from ``addr``;
* ``receive_tun_packet(packet, now=...)`` — the OS routed an IP packet into the interface;
* ``handle_timer(now=...)`` — the deadline returned by ``get_timer()`` has passed;
* configuration calls (``set_private_key``, ``add_peer``, ``apply`` of a UAPI request, …).

After each, drain ``datagrams_to_send()`` (``(bytes, (host, port))`` pairs for the UDP socket)
and ``tun_packets_to_write()`` (decrypted IP packets for the TUN), then re-arm one timer at
``get_timer()``. Wall-clock time is needed only for TAI64N timestamps and
``last_handshake_time``; it comes from the injected ``wall_time_ns`` callable, never from
``now``.

Key logging is opt-in and does no I/O here: a device given a ``key_log_sink`` calls it with a
:class:`~wgpy.core.keypair.SessionSecrets` each time a session's keys are derived (as initiator
once the response is consumed, as responder once the response is built), after the state is
committed and before any transport message on the new keys. The I/O layer's sink writes the
lines (``wgpy.io.keylog``); it must not raise.

Remote input never raises: anything malformed, unauthenticated, replayed, rate-limited or
unknown is dropped and counted in ``drops`` by reason. Sessions and peers change only after a
message authenticated. Local misuse (bad key length, unknown peer) raises.

The send and receive rules follow wireguard-go (``send.go``, ``receive.go``, ``timers.go``,
``noise-protocol.go``); wireguard-protocol.md §3–§7 restates them.

Where the code is
-----------------
One class, written in layers, one module each (each layer uses only those below it):

* ``state.py`` — :class:`~wgpy.core.state.DeviceState`: the tables, counters and pending
  output, the helpers every part uses, and sending an initiation;
* ``send.py`` — outbound packets: route, stage, seal, keep the key fresh;
* ``receive.py`` — datagrams: the handshake backlog, the reactions to a handshake message
  that passed (:mod:`wgpy.core.handshakes` creates and consumes them), transport data;
* ``timers.py`` — the next deadline and one handler per timer;
* this module — :class:`Device`: configuration.

The protocol objects have modules of their own: ``peer.py`` (timers' deadlines, keypair
rotation), ``keypair.py``, ``indextable.py``, ``allowedips.py``, ``replay.py``,
``backlog.py``, ``ratelimiter.py``, ``drops.py`` (every drop reason) and ``messages.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

from noise import crypto
from noise.cookie import CookieChecker
from noise.handshake import StaticKeys
from wgpy.core.constants import (
    REJECT_AFTER_MESSAGES,
    REKEY_TIMEOUT,
)
from wgpy.core.errors import CapacityError, ConfigError
from wgpy.core.peer import Endpoint, Peer
from wgpy.core.timers import Timers


class Device(Timers):
    """A WireGuard interface's protocol state. See the module docstring for the driving rules."""

    # --- configuration ----------------------------------------------------------------------

    @property
    def public_key(self) -> bytes | None:
        return self.static.public if self.static else None

    def set_private_key(self, private: bytes | None, *, now: float) -> None:
        """Set (or with ``None`` remove) the static private key; expires every session.

        After calling this, drain ``datagrams_to_send``.
        """
        if private is not None and len(private) != crypto.KEY_SIZE:
            raise ConfigError("a private key is 32 bytes")
        if (
            private is not None
            and self.static
            and crypto.equal(crypto.clamp(private), self.static.private)
        ):
            return
        self.static = StaticKeys(private) if private is not None else None
        self.cookie_checker = (
            CookieChecker(self.static.public, rng=self.rng) if self.static else None
        )
        if self.static is not None and self.static.public in self.peers:
            self.remove_peer(self.static.public)
        for peer in self.peers.values():
            peer.handshake.precompute(self.static)
            self._expire_current_keypairs(peer, now=now)

    def _expire_current_keypairs(self, peer: Peer, *, now: float) -> None:
        """wireguard-go ``ExpireCurrentKeypairs``: no more sending on old sessions."""
        self._clear_handshake(peer)
        peer.last_sent_handshake = now - REKEY_TIMEOUT - 1.0
        for kp in (peer.current, peer.next):
            if kp is not None:
                kp.send_counter = REJECT_AFTER_MESSAGES

    def add_peer(self, public_key: bytes, *, now: float) -> Peer:
        """Create a peer (or return the existing one)."""
        if len(public_key) != crypto.KEY_SIZE:
            raise ConfigError("a public key is 32 bytes")
        peer = self.peers.get(public_key)
        if peer is not None:
            return peer
        if self.static is not None and crypto.equal(public_key, self.static.public):
            raise ConfigError("a peer cannot have the interface's own public key")
        if len(self.peers) >= self.max_peers:
            raise CapacityError(f"too many peers (limit {self.max_peers})")
        peer = Peer(public_key, now=now)
        peer.handshake.precompute(self.static)
        self.peers[public_key] = peer
        return peer

    def remove_peer(self, public_key: bytes) -> None:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return
        self.allowed_ips.remove_by_owner(peer)
        self._zero_key_material(peer)
        peer.stop_timers()

    def set_preshared_key(self, peer: Peer, psk: bytes | None) -> None:
        if psk is not None and len(psk) != crypto.KEY_SIZE:
            raise ConfigError("a preshared key is 32 bytes")
        peer.handshake.preshared_key = psk or crypto.ZERO_KEY

    def set_endpoint(self, peer: Peer, endpoint: Endpoint) -> None:
        peer.endpoint = endpoint

    def set_persistent_keepalive(self, peer: Peer, interval: int, *, now: float) -> None:
        """Set the interval (0 = off). Turning it on sends a keepalive at once."""
        if not 0 <= interval <= 65535:
            raise ConfigError("persistent keepalive interval must be 0..65535")
        was = peer.persistent_keepalive_interval
        peer.persistent_keepalive_interval = interval
        if interval == 0:
            peer.persistent_keepalive_at = None
        elif was == 0 and peer.endpoint is not None:
            self.send_keepalive(peer, now=now)

    def set_silence_handshake(self, peer: Peer, interval: float, *, now: float) -> None:
        """wgpy extension: start a handshake once ``peer`` was silent ``interval`` seconds.

        WireGuard itself never initiates for an idle tunnel whose peer lost its state (a
        restarted server): keepalives are not data, so nothing notices until REKEY_AFTER_TIME.
        A peer that can only be reached through us (no endpoint of ours on its side) then stays
        cut off for up to two minutes. With this, an idle-but-alive peer costs one handshake
        per ``interval``; 0 turns it off (the default).
        """
        peer.silence_interval = max(0.0, interval)
        peer.silence_handshake_at = now + interval if interval > 0 else None

    def set_allowed_ips(self, peer: Peer, networks: Iterable[str]) -> None:
        self.allowed_ips.remove_by_owner(peer)
        for n in networks:
            self.allowed_ips.insert(n, peer)

    def down(self) -> None:
        """Interface down: wipe sessions and staged packets, stop timers (keys are kept)."""
        for peer in self.peers.values():
            self._zero_key_material(peer)
            peer.stop_timers()
        self.backlog.clear()
        self._out_datagrams.clear()
        self._out_packets.clear()
