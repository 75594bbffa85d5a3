"""Sending: outbound IP packets routed to a peer, staged, sealed (wireguard-go ``send.go``)."""

from __future__ import annotations

from wgpy.core import messages
from wgpy.core.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
)
from wgpy.core.drops import Drop
from wgpy.core.keypair import Keypair
from wgpy.core.peer import Peer
from wgpy.core.state import Buffer, DeviceState

_HEADER = messages.TRANSPORT_HEADER


class Sender(DeviceState):
    """The send half of a device."""

    # --- send -------------------------------------------------------------------------------

    def receive_tun_packet(self, packet: bytes, *, now: float) -> None:
        """Route one outbound IP packet to its peer, encrypt and send it (or stage it).

        After calling this, drain ``datagrams_to_send``.
        """
        peer = self.route(packet, 0, len(packet))
        if peer is None:
            return
        if not peer.stage(packet):
            self._drop(Drop.STAGED_OVERFLOW)
        self._flush_staged(peer, now=now)

    def route(self, buf: Buffer, off: int, size: int) -> Peer | None:
        """The peer whose allowed IPs hold the destination of the outbound IP packet at
        ``buf[off:off + size]``, or None after counting why there is none (no IP packet, no
        route). The one rule for the ordinary and the fast path."""
        version = buf[off] >> 4 if size else 0
        if version == 4 and size >= 20:
            peer = self.allowed_ips.lookup(buf[off + 16 : off + 20])
        elif version == 6 and size >= 40:
            peer = self.allowed_ips.lookup(buf[off + 24 : off + 40])
        else:
            self.drops[Drop.MALFORMED_OUTBOUND] += 1
            return None
        if peer is None:
            self.drops[Drop.NO_ROUTE] += 1
        return peer

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

    def sent_batch(self, peer: Peer, nbytes: int, *, now: float, data: bool) -> None:
        """Bookkeeping once the fast path sent datagrams totalling ``nbytes`` to ``peer``."""
        peer.tx_bytes += nbytes
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_sent()
        if data and peer.new_handshake_at is None:
            peer.timers_data_sent(now=now, jitter=self._jitter())
