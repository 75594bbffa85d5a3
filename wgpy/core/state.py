"""The state of a device and the helpers every part of it uses; the initiation it sends."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable

from noise import crypto, tai64n
from noise.cookie import CookieChecker
from noise.handshake import StaticKeys
from wgpy.core import handshakes
from wgpy.core.allowedips import AllowedIPs
from wgpy.core.backlog import HandshakeBacklog, LoadMeter
from wgpy.core.constants import (
    DEFAULT_MTU,
    HANDSHAKES_PER_SECOND,
    HANDSHAKES_PER_WAKEUP,
    MAX_ALLOWED_IPS,
    MAX_PEERS,
    MAX_QUEUED_HANDSHAKES,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    UNDER_LOAD_BACKLOG,
    UNDER_LOAD_RATE,
)
from wgpy.core.drops import Drop
from wgpy.core.indextable import IndexTable
from wgpy.core.keypair import SessionSecrets
from wgpy.core.peer import Endpoint, Peer

Rng = Callable[[int], bytes]
_JITTER_MS = round(REKEY_TIMEOUT_JITTER_MAX * 1000)  # 334: 0..333 ms
Buffer = bytes | bytearray | memoryview


class DeviceState:
    """A device's peers, sessions, tables, counters and pending output (see ``device.py``)."""

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
        self.key_log_sink = key_log_sink
        self.static: StaticKeys | None = None
        self.cookie_checker: CookieChecker | None = None
        self.listen_port = 0
        self.fwmark = 0
        self.peers: dict[bytes, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs(max_allowed_ips)
        self.index_table = IndexTable(rng)
        self.admission = handshakes.Admission()
        self.load = LoadMeter(under_load_rate)
        self.backlog = HandshakeBacklog(
            capacity=max_queued_handshakes,
            limit=handshakes_per_wakeup,
            per_second=handshakes_per_second,
            under_load_depth=max(
                1, max_queued_handshakes * UNDER_LOAD_BACKLOG // MAX_QUEUED_HANDSHAKES
            ),
        )
        self.drops: Counter[Drop] = Counter()
        # Destinations a decrypted packet may have (packed addresses); None: any. Others are
        # dropped as "disallowed_destination" (the supervisor: only its VIP, so the VPN node
        # cannot send into the cluster through the pod's forwarding).
        self.accept_destinations: frozenset[bytes] | None = None
        self.handshakes_completed = 0
        self.timestamp_floor = tai64n.ZERO  # never send a TAI64N at or below this
        self.last_timestamp_sent = tai64n.ZERO
        self._out_datagrams: list[tuple[bytes, Endpoint]] = []
        self._out_packets: list[bytes] = []
        self._jitter_pool = b""
        self._jitter_pos = 0

    @property
    def under_load_rate(self) -> int:
        """Handshake messages per second above which the device is under load."""
        return self.load.rate

    @under_load_rate.setter
    def under_load_rate(self, rate: int) -> None:
        self.load.rate = rate

    # --- outputs ----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        """Take the datagrams produced so far: ``(payload, (host, port))`` in send order."""
        out, self._out_datagrams = self._out_datagrams, []
        return out

    def tun_packets_to_write(self) -> list[bytes]:
        """Take the decrypted IP packets produced so far, in order."""
        out, self._out_packets = self._out_packets, []
        return out

    def has_output(self) -> bool:
        """True if datagrams or TUN packets wait to be taken."""
        return bool(self._out_datagrams or self._out_packets)

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
        return (pool[pos] | pool[pos + 1] << 8) % _JITTER_MS / 1000.0

    def _clear_handshake(self, peer: Peer) -> None:
        self.index_table.remove_handshake(peer, peer.handshake.local_index)
        peer.handshake.clear()

    def _zero_key_material(self, peer: Peer) -> None:
        peer.zero_key_material(free=self.index_table.free)
        self._clear_handshake(peer)

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

    def _drop(self, reason: Drop) -> None:
        self.drops[reason] += 1

    # --- handshakes -------------------------------------------------------------------------

    def initiate(self, peer: Peer, *, now: float, is_retry: bool = False) -> bool:
        """Send a handshake initiation to ``peer`` unless one went out < REKEY_TIMEOUT ago.

        Returns True if one was sent. After calling this, drain ``datagrams_to_send``.
        """
        if not is_retry:
            peer.timer_handshake_attempts = 0
        if now - peer.last_sent_handshake < REKEY_TIMEOUT:
            return False
        if peer.endpoint is None or self.static is None:
            return False
        if peer.handshake.precomputed_static_static is None:
            return False
        peer.last_sent_handshake = now
        self._clear_handshake(peer)
        msg = handshakes.initiation(
            self.static,
            peer,
            index=self.index_table.new_index(peer),
            ephemeral=self.keygen(),
            timestamp=self._timestamp(),
            now=now,
        )
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_sent()
        self._send(peer, msg)
        peer.timers_handshake_initiated(now=now, jitter=self._jitter())
        return True
