"""Two sans-IO devices talking in memory, every datagram recorded: a capture without sockets.

Used by the key-log tests and by ``tests/fixtures/pcapng/make.py``, which turns one such
conversation into the pcapng fixtures with tshark and editcap. Virtual time: ``now`` starts at 0
and each datagram takes 1 ms; capture timestamps are ``base + now``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from noise import crypto
from wgpy.core.device import Device
from wgpy.core.keypair import SessionSecrets
from wgpy.harness import packets

ADDR_A, ADDR_B = ("192.0.2.1", 51820), ("192.0.2.2", 51821)
TUN_A, TUN_B = "10.77.0.1", "10.77.0.2"
PAYLOAD = b"wgpy known payload: keys from the device's own key log"

Sink = Callable[[SessionSecrets], None]


@dataclass
class Conversation:
    """What was sent: ``records`` are ``(timestamp, outer IP/UDP packet)``; ``delivered`` the
    inner packets each device wrote to its TUN."""

    a: Device
    b: Device
    records: list[tuple[float, bytes]] = field(default_factory=list)
    delivered: dict[str, list[bytes]] = field(default_factory=lambda: {"a": [], "b": []})
    now: float = 0.0
    base: float = 1_764_000_000.0

    def pump(self) -> None:
        """Carry datagrams both ways until both devices are quiet."""
        moved = True
        while moved:
            moved = False
            for src, dst, s_addr, d_addr, name in (
                (self.a, self.b, ADDR_A, ADDR_B, "b"),
                (self.b, self.a, ADDR_B, ADDR_A, "a"),
            ):
                for data, _to in src.datagrams_to_send():
                    moved = True
                    self.now += 0.001
                    outer = packets.udp(s_addr[0], d_addr[0], s_addr[1], d_addr[1], data)
                    self.records.append((self.base + self.now, outer))
                    dst.receive_datagram(data, s_addr, now=self.now)
                    self.delivered[name] += dst.tun_packets_to_write()


def inner(src: str, dst: str, payload: bytes = PAYLOAD) -> bytes:
    return packets.udp(src, dst, 40000, 9999, payload)


def converse(
    *, psk: bytes | None = None, sink_a: Sink | None = None, sink_b: Sink | None = None
) -> Conversation:
    """A initiates (its first packet is staged), B answers; one known payload each way, then
    a second handshake initiated by B, so that both roles log a session on each side."""
    key_a, key_b = crypto.generate_private_key(), crypto.generate_private_key()
    a = Device(wall_time_ns=time.time_ns, key_log_sink=sink_a)
    b = Device(wall_time_ns=time.time_ns, key_log_sink=sink_b)
    a.set_private_key(key_a, now=0.0)
    b.set_private_key(key_b, now=0.0)
    for dev, other, ep, tun in ((a, key_b, ADDR_B, TUN_B), (b, key_a, ADDR_A, TUN_A)):
        p = dev.add_peer(crypto.public_key(other), now=0.0)
        dev.set_endpoint(p, ep)
        dev.set_allowed_ips(p, [f"{tun}/32"])
        if psk is not None:
            dev.set_preshared_key(p, psk)
    c = Conversation(a, b)
    a.receive_tun_packet(inner(TUN_A, TUN_B), now=c.now)
    c.pump()
    b.receive_tun_packet(inner(TUN_B, TUN_A), now=c.now)
    c.pump()
    c.now += 6.0  # past REKEY_TIMEOUT since B last sent a handshake message
    b.initiate(b.peers[crypto.public_key(key_a)], now=c.now)
    c.pump()
    b.receive_tun_packet(inner(TUN_B, TUN_A, PAYLOAD + b" (second session)"), now=c.now)
    c.pump()
    return c
