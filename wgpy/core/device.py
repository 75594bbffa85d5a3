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
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterable

from noise import crypto, tai64n
from noise.cookie import CookieChecker
from noise.handshake import (
    StaticKeys,
)
from wgpy.core import handshakes, messages
from wgpy.core.allowedips import AllowedIPs
from wgpy.core.backlog import HandshakeBacklog, is_first_contact
from wgpy.core.constants import (
    DEFAULT_MTU,
    HANDSHAKES_PER_SECOND,
    HANDSHAKES_PER_WAKEUP,
    MAX_ALLOWED_IPS,
    MAX_PEERS,
    MAX_QUEUED_HANDSHAKES,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
    REKEY_TIMEOUT,
    UNDER_LOAD_BACKLOG,
    UNDER_LOAD_RATE,
    UNDER_LOAD_STICKY,
    ZERO_KEY_MATERIAL_AFTER,
)
from wgpy.core.errors import CapacityError, ConfigError
from wgpy.core.keypair import Keypair, SessionSecrets
from wgpy.core.peer import Endpoint, Peer, timer_deadlines
from wgpy.core.ratelimiter import RateLimiter

Rng = Callable[[int], bytes]
_HEADER = messages.TRANSPORT_HEADER
# handshake message types and their exact sizes: the only check before the backlog
_HANDSHAKE_SIZES = {
    messages.MESSAGE_INITIATION: messages.MESSAGE_INITIATION_SIZE,
    messages.MESSAGE_RESPONSE: messages.MESSAGE_RESPONSE_SIZE,
    messages.MESSAGE_COOKIE_REPLY: messages.MESSAGE_COOKIE_REPLY_SIZE,
}


class Device:
    """A WireGuard interface's protocol state. See the module docstring for the driving rules."""

    def __init__(
        self,
        *,
        wall_time_ns: Callable[[], int],
        rng: Rng = secrets.token_bytes,
        keygen: Callable[[], bytes] = crypto.generate_private_key,
        mtu: int = DEFAULT_MTU,
        max_peers: int = MAX_PEERS,
        max_allowed_ips: int = MAX_ALLOWED_IPS,
        under_load_rate: int = UNDER_LOAD_RATE,
        key_log_sink: Callable[[SessionSecrets], None] | None = None,
        handshakes_per_wakeup: int = HANDSHAKES_PER_WAKEUP,
        handshakes_per_second: float = HANDSHAKES_PER_SECOND,
        max_queued_handshakes: int = MAX_QUEUED_HANDSHAKES,
    ) -> None:
        self.wall_time_ns = wall_time_ns
        self.rng = rng
        self.keygen = keygen
        self.mtu = mtu
        self.max_peers = max_peers
        self.max_allowed_ips = max_allowed_ips
        self.under_load_rate = under_load_rate
        self.key_log_sink = key_log_sink
        self.static: StaticKeys | None = None
        self.cookie_checker: CookieChecker | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs(max_allowed_ips)
        # u32 index -> (peer, keypair); keypair None = the peer's pending handshake
        self.index_table: dict[int, tuple[Peer, Keypair | None]] = {}
        self.rate_limiter = RateLimiter()
        self.cookie_limiter = RateLimiter()  # cookie replies per source, under load
        self.backlog = HandshakeBacklog(
            capacity=max_queued_handshakes,
            limit=handshakes_per_wakeup,
            per_second=handshakes_per_second,
            under_load_depth=max(
                1, max_queued_handshakes * UNDER_LOAD_BACKLOG // MAX_QUEUED_HANDSHAKES
            ),
        )
        self.drops: Counter[str] = Counter()
        # Destinations a decrypted packet may have (packed addresses); None: any. Others are
        # dropped as "disallowed_destination" (the supervisor: only its VIP, so the VPN node
        # cannot send into the cluster through the pod's forwarding).
        self.accept_destinations: frozenset[bytes] | None = None
        self.handshakes_completed = 0
        self.timestamp_floor = tai64n.ZERO  # never send a TAI64N at or below this
        self.last_timestamp_sent = tai64n.ZERO
        self._out_datagrams: list[tuple[bytes, Endpoint]] = []
        self._out_packets: list[bytes] = []
        self._load_window_start = 0.0
        self._load_count = 0
        self._under_load_until = float("-inf")
        self._jitter_pool = b""
        self._jitter_pos = 0

    # --- outputs ----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        """Take the datagrams produced so far: ``(payload, (host, port))`` in send order."""
        out, self._out_datagrams = self._out_datagrams, []
        return out

    def tun_packets_to_write(self) -> list[bytes]:
        """Take the decrypted IP packets produced so far, in order."""
        out, self._out_packets = self._out_packets, []
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline of any peer timer or of the handshake backlog (when its
        budget lets the next message through), or ``None`` when nothing is armed."""
        best = self.backlog.ready_at()
        for peer in self.peers.values():
            for t in timer_deadlines(peer):
                if t is not None and (best is None or t < best):
                    best = t
        return best

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

    # --- helpers ----------------------------------------------------------------------------

    def _jitter(self) -> float:
        """0–333 ms for retransmit and new-handshake timers (wireguard-go rand(334) ms).

        Drawn from a pool refilled 512 bytes at a time: the fast path asks once per batch, and
        one getrandom() per batch showed up in the profiles.
        """
        pos = self._jitter_pos
        if pos + 2 > len(self._jitter_pool):
            self._jitter_pool = self.rng(512)
            pos = 0
        self._jitter_pos = pos + 2
        pool = self._jitter_pool
        return (pool[pos] | pool[pos + 1] << 8) % 334 / 1000.0

    def _new_index(self, peer: Peer, keypair: Keypair | None) -> int:
        while True:
            idx = int.from_bytes(self.rng(4), "little")
            if idx not in self.index_table:
                self.index_table[idx] = (peer, keypair)
                return idx

    def _clear_handshake(self, peer: Peer) -> None:
        idx = peer.handshake.local_index
        entry = self.index_table.get(idx)
        if entry is not None and entry[0] is peer and entry[1] is None:
            del self.index_table[idx]
        peer.handshake.clear()

    def _free_keypair(self, kp: Keypair | None) -> None:
        if kp is not None:
            self.index_table.pop(kp.local_index, None)

    def _zero_key_material(self, peer: Peer) -> None:
        for kp in (peer.previous, peer.current, peer.next):
            self._free_keypair(kp)
        peer.previous = peer.current = peer.next = None
        self._clear_handshake(peer)
        peer.staged.clear()

    def _send(self, peer: Peer, data: bytes) -> None:
        assert peer.endpoint is not None
        self._out_datagrams.append((data, peer.endpoint))
        peer.tx_bytes += len(data)

    def _timestamp(self) -> bytes:
        ts = tai64n.stamp(self.wall_time_ns())
        floor = max(self.timestamp_floor, self.last_timestamp_sent)
        if not tai64n.after(ts, floor) and floor != tai64n.ZERO:
            ts = tai64n.increment(floor)
        self.last_timestamp_sent = ts
        return ts

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1

    # --- handshake initiation (send) --------------------------------------------------------

    def initiate(self, peer: Peer, *, now: float, is_retry: bool = False) -> bool:
        """Send a handshake initiation to ``peer`` unless one went out < REKEY_TIMEOUT ago.

        Returns True if one was sent. After calling this, drain ``datagrams_to_send``.
        """
        return handshakes.initiate(self, peer, now=now, is_retry=is_retry)

    # --- receive ----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Endpoint, *, now: float) -> None:
        """Process one UDP datagram from ``addr``. Never raises on remote input.

        A handshake message goes through the backlog (:meth:`queue_handshake`), which is then
        worked on within its budget (:meth:`process_handshakes`). After calling this, drain
        ``datagrams_to_send`` and ``tun_packets_to_write``.
        """
        if messages.message_type(data) == messages.MESSAGE_TRANSPORT:
            self._receive_transport(data, addr, now=now)
            return
        self.queue_handshake(data, addr, now=now)
        self.process_handshakes(now=now)

    def queue_handshake(self, data: bytes | memoryview, addr: Endpoint, *, now: float) -> None:
        """Put a handshake message in the backlog after the cheapest checks there are, type
        and exact size; drop and count it if they fail or its queue, or its source's share
        of it, is full (the backlog serves sources in turn: wgpy/core/backlog.py). Nothing else
        happens until :meth:`process_handshakes` (which ``handle_timer`` calls when
        ``get_timer`` says so). ``data`` may be a view of the caller's buffer: it is copied
        when queued. Never raises on remote input."""
        size = _HANDSHAKE_SIZES.get(messages.message_type(data))
        if size is None:
            self._drop("unknown_type")
        elif len(data) != size:
            self._drop("malformed")
        else:
            handshakes.note_arrival(self, now=now)
            if not self.backlog.push(data, addr, first=is_first_contact(data), now=now):
                self._drop("handshake_backlog_full")

    def handshake_pressure(self, now: float) -> bool:
        """Handshake messages wait in the backlog, or the device is under load: the I/O
        layer then keeps the CPU (no hand-over) to read on before its socket overflows."""
        return self.backlog.depth > 0 or now < self._under_load_until

    def process_handshakes(self, *, now: float) -> None:
        """Work on queued handshake messages, as many as the budget allows (per call and per
        second). A backlog of ``UNDER_LOAD_BACKLOG`` or more puts the device under load for
        a second (wireguard-go). After calling this, drain ``datagrams_to_send`` and
        ``tun_packets_to_write``."""
        backlog = self.backlog
        if backlog.depth >= backlog.under_load_depth:
            self._under_load_until = now + UNDER_LOAD_STICKY
        for data, addr in backlog.take(now=now):
            t = data[0]
            if t == messages.MESSAGE_INITIATION:
                handshakes.receive_initiation(self, data, addr, now=now)
            elif t == messages.MESSAGE_RESPONSE:
                handshakes.receive_response(self, data, addr, now=now)
            else:
                handshakes.receive_cookie_reply(self, data, now=now)

    def _receive_transport(self, data: bytes, addr: Endpoint, *, now: float) -> None:
        if len(data) < messages.MESSAGE_KEEPALIVE_SIZE:
            self._drop("malformed")
            return
        _t, receiver, counter = _HEADER.unpack_from(data)
        entry = self.index_table.get(receiver)
        kp = entry[1] if entry is not None else None
        if entry is None or kp is None:
            self._drop("unknown_index")
            return
        peer = entry[0]
        if now - kp.created >= REJECT_AFTER_TIME:
            self._drop("expired_keypair")
            return
        plaintext = kp.receive.open(counter, memoryview(data)[16:])
        if plaintext is None:
            self._drop("decryption_failed")
            return
        if not kp.replay.validate(counter):
            self._drop("replayed")
            return
        # roaming first: packets staged while the session waited for confirmation go to
        # where the confirming packet came from (wireguard-go receive.go: SetEndpointFromPacket
        # before SendStagedPackets)
        peer.endpoint = addr
        if kp is peer.next:
            self._free_keypair(peer.previous)
            peer.previous = peer.current
            peer.current = kp
            peer.next = None
            self.handshakes_completed += 1
            peer.timers_handshake_complete(wall_ns=self.wall_time_ns())
            self._flush_staged(peer, now=now)
        peer.rx_bytes += len(data)
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_received(now=now)
        self._keep_key_fresh_on_receive(peer, now=now)
        if not plaintext:
            return  # keepalive
        length = messages.ip_packet_length(plaintext)
        if length is None:
            self._drop("malformed_inner_packet")
            return
        v4 = plaintext[0] >> 4 == 4
        src = plaintext[12:16] if v4 else plaintext[8:24]
        if self.allowed_ips.lookup(src) is not peer:
            self._drop("disallowed_source")
            return
        accept = self.accept_destinations
        if accept is not None and bytes(plaintext[16:20] if v4 else plaintext[24:40]) not in accept:
            self._drop("disallowed_destination")
            return
        self._out_packets.append(plaintext[:length] if length != len(plaintext) else plaintext)
        peer.timers_data_received(now=now)

    def _keep_key_fresh_on_receive(self, peer: Peer, *, now: float) -> None:
        kp = peer.current
        if (
            kp is not None
            and kp.is_initiator
            and now - kp.created > REKEY_ON_RECEIVE_AGE
            and not peer.sent_lastminute_handshake
        ):
            peer.sent_lastminute_handshake = True
            self.initiate(peer, now=now)

    # --- send -------------------------------------------------------------------------------

    def receive_tun_packet(self, packet: bytes, *, now: float) -> None:
        """Route one outbound IP packet to its peer, encrypt and send it (or stage it).

        After calling this, drain ``datagrams_to_send``.
        """
        n = len(packet)
        if n >= 20 and packet[0] >> 4 == 4:
            peer = self.allowed_ips.lookup(packet[16:20])
        elif n >= 40 and packet[0] >> 4 == 6:
            peer = self.allowed_ips.lookup(packet[24:40])
        else:
            self._drop("malformed_outbound")
            return
        if peer is None:
            self._drop("no_route")
            return
        if not peer.stage(packet):
            self._drop("staged_overflow")
        self._flush_staged(peer, now=now)

    def flush(self, peer: Peer, *, now: float) -> None:
        """Send what is staged for ``peer`` (or start a handshake for it).

        After calling this, drain ``datagrams_to_send``.
        """
        self._flush_staged(peer, now=now)

    def send_keepalive(self, peer: Peer, *, now: float) -> None:
        """Send an empty transport message (only if nothing else is waiting to go)."""
        if not peer.staged:
            peer.staged.append(b"")
        self._flush_staged(peer, now=now)

    def _usable_for_send(self, kp: Keypair | None, *, now: float) -> bool:
        return (
            kp is not None
            and kp.send_counter < REJECT_AFTER_MESSAGES
            and now - kp.created < REJECT_AFTER_TIME
        )

    def _flush_staged(self, peer: Peer, *, now: float) -> None:
        if not peer.staged:
            return
        kp = peer.current
        if kp is None or not self._usable_for_send(kp, now=now) or peer.endpoint is None:
            self.initiate(peer, now=now)
            return
        mtu = self.mtu
        sent_data = False
        out = self._out_datagrams
        endpoint = peer.endpoint
        header = _HEADER
        seal = kp.send.seal
        while peer.staged:
            if kp.send_counter >= REJECT_AFTER_MESSAGES:
                break
            packet = peer.staged.popleft()
            counter = kp.send_counter
            kp.send_counter = counter + 1
            pad = messages.padding_size(len(packet), mtu)
            body = packet + bytes(pad) if pad else packet
            datagram = header.pack(messages.MESSAGE_TRANSPORT, kp.remote_index, counter) + seal(
                counter, body
            )
            out.append((datagram, endpoint))
            peer.tx_bytes += len(datagram)
            if packet:
                sent_data = True
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_sent()
        if sent_data:
            peer.timers_data_sent(now=now, jitter=self._jitter())
        # keep key fresh on send (wireguard-go keepKeyFreshSending)
        if kp.send_counter > REKEY_AFTER_MESSAGES or (
            kp.is_initiator and now - kp.created > REKEY_AFTER_TIME
        ):
            self.initiate(peer, now=now)

    # --- batch hooks for the I/O fast path (wgpy.io.fastpath) -------------------------------
    #
    # The fast path seals and opens transport data itself, straight in its buffers, and calls
    # these once per batch instead of per packet (wireguard-go 7c20311: "up to 10 %"). Anything
    # else (handshakes, a session to confirm or renew, staged packets) goes through
    # receive_tun_packet / receive_datagram, so the protocol rules stay here.

    def sendable_keypair(self, peer: Peer, *, now: float, count: int) -> Keypair | None:
        """The keypair the fast path may seal up to ``count`` packets for ``peer`` with, or None.

        None whenever ``receive_tun_packet`` could do more than encrypt: packets are staged,
        no endpoint is known, no session is usable, or sending would trip keep-key-fresh
        (a handshake to start). The caller then takes the ordinary path.
        """
        kp = peer.current
        if kp is None or peer.staged or peer.endpoint is None:
            return None
        age = now - kp.created
        if kp.send_counter + count > REKEY_AFTER_MESSAGES or age >= REJECT_AFTER_TIME:
            return None
        if kp.is_initiator and age > REKEY_AFTER_TIME:
            return None
        return kp

    def receivable_keypair(self, receiver: int, *, now: float) -> tuple[Peer, Keypair] | None:
        """``(peer, keypair)`` for transport data to local index ``receiver`` that the fast path
        may open itself, or None (unknown index, a ``next`` session to confirm first, expired
        keys: ``receive_datagram`` decides)."""
        entry = self.index_table.get(receiver)
        if entry is None:
            return None
        peer, kp = entry
        if kp is None or kp is peer.next or now - kp.created >= REJECT_AFTER_TIME:
            return None
        return peer, kp

    def sent_batch(self, peer: Peer, nbytes: int, *, now: float, data: bool) -> None:
        """Bookkeeping once the fast path sent datagrams totalling ``nbytes`` to ``peer``."""
        peer.tx_bytes += nbytes
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_sent()
        if data and peer.new_handshake_at is None:
            peer.timers_data_sent(now=now, jitter=self._jitter())

    def received_batch(
        self, peer: Peer, addr: Endpoint, nbytes: int, *, now: float, data_packets: int
    ) -> None:
        """Bookkeeping once the fast path authenticated datagrams totalling ``nbytes`` from
        ``peer`` (the last from ``addr``), ``data_packets`` of them non-keepalive and
        written to the TUN. Same order as ``_receive_transport``."""
        peer.endpoint = addr
        peer.rx_bytes += nbytes
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_received(now=now)
        self._keep_key_fresh_on_receive(peer, now=now)
        # per packet, the 1st data packet arms the keepalive and any later one asks for another
        for _ in range(min(data_packets, 2)):
            peer.timers_data_received(now=now)

    def has_output(self) -> bool:
        """True if datagrams or TUN packets wait to be taken."""
        return bool(self._out_datagrams or self._out_packets)

    # --- timers -----------------------------------------------------------------------------

    def handle_timer(self, *, now: float) -> None:
        """Work on the handshake backlog within its budget and run every expired peer timer.
        After calling this, drain ``datagrams_to_send`` and ``tun_packets_to_write``."""
        if self.backlog.depth:
            self.process_handshakes(now=now)
        for peer in list(self.peers.values()):
            t = peer.retransmit_handshake_at
            if t is not None and now >= t:
                peer.retransmit_handshake_at = None
                self._expired_retransmit_handshake(peer, now=now)
            t = peer.send_keepalive_at
            if t is not None and now >= t:
                peer.send_keepalive_at = None
                self._expired_send_keepalive(peer, now=now)
            t = peer.new_handshake_at
            if t is not None and now >= t:
                peer.new_handshake_at = None
                self.initiate(peer, now=now)
            t = peer.zero_key_material_at
            if t is not None and now >= t:
                peer.zero_key_material_at = None
                self._zero_key_material(peer)
            t = peer.persistent_keepalive_at
            if t is not None and now >= t:
                peer.persistent_keepalive_at = None
                if peer.persistent_keepalive_interval > 0:
                    self.send_keepalive(peer, now=now)
            t = peer.silence_handshake_at
            if t is not None and now >= t:
                peer.silence_handshake_at = None
                if not self.initiate(peer, now=now):  # rate-limited or no endpoint yet
                    peer.silence_handshake_at = now + peer.silence_interval

    def _expired_retransmit_handshake(self, peer: Peer, *, now: float) -> None:
        if peer.timer_handshake_attempts > MAX_TIMER_HANDSHAKES:
            # gave up after REKEY_ATTEMPT_TIME: drop what waited, wipe keys later
            peer.send_keepalive_at = None
            peer.staged.clear()
            if peer.zero_key_material_at is None:
                peer.zero_key_material_at = now + ZERO_KEY_MATERIAL_AFTER
            return
        peer.timer_handshake_attempts += 1
        self.initiate(peer, now=now, is_retry=True)

    def _expired_send_keepalive(self, peer: Peer, *, now: float) -> None:
        self.send_keepalive(peer, now=now)
        if peer.need_another_keepalive:
            peer.need_another_keepalive = False
            peer.send_keepalive_at = now + 10.0
