"""Receiving: handshake messages through the backlog, transport data opened and checked
(wireguard-go ``receive.go``), and the reactions to a handshake message that passed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from noise.handshake import Handshake
from wgpy.core import handshakes, messages
from wgpy.core.backlog import is_first_contact
from wgpy.core.constants import (
    REJECT_AFTER_TIME,
    REKEY_ON_RECEIVE_AGE,
)
from wgpy.core.drops import Drop
from wgpy.core.keypair import Keypair
from wgpy.core.peer import Endpoint, Peer
from wgpy.core.send import Sender
from wgpy.core.state import Buffer

_HEADER = messages.TRANSPORT_HEADER


class _FromSender(Protocol):
    @property
    def sender_index(self) -> int: ...


_M = TypeVar("_M", bound=_FromSender)
# handshake message types and their exact sizes: the only check before the backlog
_HANDSHAKE_SIZES = {
    messages.MESSAGE_INITIATION: messages.MESSAGE_INITIATION_SIZE,
    messages.MESSAGE_RESPONSE: messages.MESSAGE_RESPONSE_SIZE,
    messages.MESSAGE_COOKIE_REPLY: messages.MESSAGE_COOKIE_REPLY_SIZE,
}


class Receiver(Sender):
    """The receive half of a device."""

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
            self._drop(Drop.UNKNOWN_TYPE)
        elif len(data) != size:
            self._drop(Drop.MALFORMED)
        else:
            self.load.arrival(now=now)
            if not self.backlog.push(data, addr, first=is_first_contact(data), now=now):
                self._drop(Drop.HANDSHAKE_BACKLOG_FULL)

    def handshake_pressure(self, now: float) -> bool:
        """Handshake messages wait in the backlog, or the device is under load: the I/O
        layer then keeps the CPU (no hand-over) to read on before its socket overflows."""
        return self.backlog.depth > 0 or self.load.active(now)

    def process_handshakes(self, *, now: float) -> None:
        """Work on queued handshake messages, as many as the budget allows (per call and per
        second). A backlog of ``UNDER_LOAD_BACKLOG`` or more puts the device under load for
        a second (wireguard-go). After calling this, drain ``datagrams_to_send`` and
        ``tun_packets_to_write``."""
        backlog = self.backlog
        if backlog.depth >= backlog.under_load_depth:
            self.load.mark(now=now)
        for data, addr in backlog.take(now=now):
            t = data[0]
            if t == messages.MESSAGE_INITIATION:
                self._receive_initiation(data, addr, now=now)
            elif t == messages.MESSAGE_RESPONSE:
                self._receive_response(data, addr, now=now)
            else:
                self._receive_cookie_reply(data, now=now)

    def _receive_transport(self, data: bytes, addr: Endpoint, *, now: float) -> None:
        if len(data) < messages.MESSAGE_KEEPALIVE_SIZE:
            self._drop(Drop.MALFORMED)
            return
        _t, receiver, counter = _HEADER.unpack_from(data)
        entry = self.index_table.get(receiver)
        kp = entry[1] if entry is not None else None
        if entry is None or kp is None:
            self._drop(Drop.UNKNOWN_INDEX)
            return
        peer = entry[0]
        if now - kp.created >= REJECT_AFTER_TIME:
            self._drop(Drop.EXPIRED_KEYPAIR)
            return
        plaintext = kp.receive.open(counter, memoryview(data)[16:])
        if plaintext is None:
            self._drop(Drop.DECRYPTION_FAILED)
            return
        if not kp.replay.validate(counter):
            self._drop(Drop.REPLAYED)
            return
        # roaming first: packets staged while the session waited for confirmation go to
        # where the confirming packet came from (wireguard-go receive.go: SetEndpointFromPacket
        # before SendStagedPackets)
        peer.endpoint = addr
        if peer.received_with_keypair(kp, free=self.index_table.free):
            self.handshakes_completed += 1
            peer.timers_handshake_complete(wall_ns=self.wall_time_ns())
            self._flush_staged(peer, now=now)
        peer.rx_bytes += len(data)
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_received(now=now)
        self._keep_key_fresh_on_receive(peer, now=now)
        if not plaintext:
            return  # keepalive
        length = self.inner_packet_length(peer, plaintext, 0, len(plaintext))
        if length < 0:
            return
        self._out_packets.append(plaintext[:length] if length != len(plaintext) else plaintext)
        peer.timers_data_received(now=now)

    def inner_packet_length(self, peer: Peer, buf: Buffer, off: int, size: int) -> int:
        """The length of the decrypted IP packet at ``buf[off:off + size]`` from ``peer``, or
        -1 after counting why it may not go to the TUN: it is no IP packet, its source is not
        one of ``peer``'s allowed IPs, or its destination is not accepted. The one rule for
        the ordinary and the fast path."""
        version = buf[off] >> 4
        if version == 4 and size >= 20:
            length = (buf[off + 2] << 8) | buf[off + 3]
            src = buf[off + 12 : off + 16]
            dst_at = off + 16
            ok = 20 <= length <= size
        elif version == 6 and size >= 40:
            length = 40 + ((buf[off + 4] << 8) | buf[off + 5])
            src = buf[off + 8 : off + 24]
            dst_at = off + 24
            ok = length <= size
        else:
            ok = False
        if not ok:
            self.drops[Drop.MALFORMED_INNER_PACKET] += 1
            return -1
        if self.allowed_ips.lookup(src) is not peer:
            self.drops[Drop.DISALLOWED_SOURCE] += 1
            return -1
        accept = self.accept_destinations
        if accept is not None:
            dst = bytes(buf[dst_at : dst_at + (4 if version == 4 else 16)])
            if dst not in accept:
                self.drops[Drop.DISALLOWED_DESTINATION] += 1
                return -1
        return length

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

    def _admitted(self, data: bytes, addr: Endpoint, sender_index: int, *, now: float) -> bool:
        drop, reply = self.admission.check(
            self.cookie_checker, data, addr, sender_index, under_load=self.load.active(now), now=now
        )
        if reply is not None:
            self._out_datagrams.append((reply, addr))
        if drop is not None:
            self._drop(drop)
            return False
        return True

    def _parse_admitted(
        self, parse: Callable[[bytes], _M | None], data: bytes, addr: Endpoint, *, now: float
    ) -> _M | None:
        """The parsed handshake message if it is well-formed and admitted, else None (the
        drop counted). Then the device has a private key."""
        msg = parse(data)
        if msg is None:
            self._drop(Drop.MALFORMED)
            return None
        if not self._admitted(data, addr, msg.sender_index, now=now):
            return None
        return msg

    def _authenticated_handshake(self, peer: Peer, data: bytes, addr: Endpoint, now: float) -> None:
        """A handshake message from ``peer`` passed every check: roam, count, timers."""
        peer.endpoint = addr
        peer.rx_bytes += len(data)
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_received(now=now)

    def _receive_initiation(self, data: bytes, addr: Endpoint, *, now: float) -> None:
        msg = self._parse_admitted(messages.parse_initiation, data, addr, now=now)
        if msg is None or self.static is None:
            return
        hs = handshakes.consume_initiation_message(self.static, msg, self._handshake_of, now=now)
        if isinstance(hs, Drop):
            self._drop(hs)
            return
        peer = self.peers[hs.remote_static]
        # consuming overwrote any initiation of ours: its index must go
        self.index_table.remove_handshake(peer, hs.local_index)
        self._authenticated_handshake(peer, data, addr, now)
        # respond; the new keypair waits in `next` until the initiator confirms it
        msg_out = handshakes.response(
            peer, index=self.index_table.new_index(peer), ephemeral=self.keygen(), now=now
        )
        self._begin_session(peer, now=now)
        peer.last_sent_handshake = now
        peer.timers_any_authenticated_packet_traversal(now=now)
        peer.timers_any_authenticated_packet_sent()
        self._send(peer, msg_out)

    def _handshake_of(self, public_key: bytes) -> Handshake | None:
        peer = self.peers.get(public_key)
        return peer.handshake if peer is not None else None

    def _begin_session(self, peer: Peer, *, now: float) -> None:
        """Derive the keypair of ``peer``'s finished handshake and install it; the key log
        hears of it before any transport message uses it."""
        assert self.static is not None
        sink = self.key_log_sink
        keypair, secrets = handshakes.derive_session(
            self.static, peer, now=now, log=sink is not None
        )
        self.index_table.bind_keypair(peer, keypair)
        peer.begin_session(keypair, free=self.index_table.free)
        peer.timers_session_derived(now=now)
        if sink is not None and secrets is not None:
            sink(secrets)

    def _receive_response(self, data: bytes, addr: Endpoint, *, now: float) -> None:
        msg = self._parse_admitted(messages.parse_response, data, addr, now=now)
        if msg is None or self.static is None:
            return
        entry = self.index_table.get(msg.receiver_index)
        if entry is None or entry[1] is not None:
            self._drop(Drop.UNKNOWN_INDEX)
            return
        peer = entry[0]
        drop = handshakes.consume_response_message(self.static, peer, msg)
        if drop is not None:
            self._drop(drop)
            return
        self._authenticated_handshake(peer, data, addr, now)
        self.handshakes_completed += 1
        self._begin_session(peer, now=now)
        peer.timers_handshake_complete(wall_ns=self.wall_time_ns())
        if peer.staged:
            self._flush_staged(peer, now=now)
        else:
            self.send_keepalive(peer, now=now)  # key confirmation

    def _receive_cookie_reply(self, data: bytes, *, now: float) -> None:
        msg = messages.parse_cookie_reply(data)
        if msg is None:
            self._drop(Drop.MALFORMED)
            return
        entry = self.index_table.get(msg.receiver_index)
        if entry is None:
            self._drop(Drop.UNKNOWN_INDEX)
            return
        drop = handshakes.consume_cookie_reply(entry[0], msg, now=now)
        if drop is not None:
            self._drop(drop)

    # --- batch hooks for the I/O fast path, receive side (see send.py) ---------------------

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
