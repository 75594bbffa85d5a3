"""Two sans-IO devices over a simulated link with a float clock (aioquic-style pair helper)."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from noise import crypto
from wgpy.core.device import Device
from wgpy.core.peer import Endpoint, Peer

WALL_BASE_NS = 1_700_000_000 * 10**9
A_ADDR: Endpoint = ("192.0.2.1", 51820)
B_ADDR: Endpoint = ("192.0.2.2", 51820)
A_TUN = "10.99.0.1"
B_TUN = "10.99.0.2"


def ipv4(src: str, dst: str, payload: bytes, ident: int = 0) -> bytes:
    """A minimal IPv4/UDP-ish packet with a correct total length (checksums not needed)."""
    total = 20 + len(payload)
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        ident & 0xFFFF,
        0,
        64,
        17,
        0,
        bytes(int(x) for x in src.split(".")),
        bytes(int(x) for x in dst.split(".")),
    )
    return hdr + payload


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def wall_ns(self) -> int:
        return WALL_BASE_NS + int(self.now * 1e9)


@dataclass
class Link:
    """Carries datagrams between A and B with optional loss, duplication and reordering."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    seed: int = 1
    drop_to: set[str] = field(default_factory=set)  # "A"/"B": drop everything towards it
    dropped: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # seeded on purpose: a reproducible link

    def shape(self, batch: list[tuple[bytes, Endpoint]]) -> list[tuple[bytes, Endpoint]]:
        out: list[tuple[bytes, Endpoint]] = []
        for item in batch:
            if self.rng.random() < self.loss:
                self.dropped += 1
                continue
            out.append(item)
            if self.rng.random() < self.duplicate:
                out.append(item)
        if self.reorder and len(out) > 1:
            for i in range(len(out) - 1):
                if self.rng.random() < self.reorder:
                    out[i], out[i + 1] = out[i + 1], out[i]
        return out


class Pair:
    """Devices ``a`` and ``b`` that know each other, connected by ``link``."""

    def __init__(self, link: Link | None = None, psk: bool = False, seed: int = 7) -> None:
        self.clock = Clock()
        self.link = link or Link()
        rng = random.Random(seed)

        def mkrng() -> Callable[[int], bytes]:
            return rng.randbytes

        self.a = Device(wall_time_ns=self.clock.wall_ns, rng=mkrng())
        self.b = Device(wall_time_ns=self.clock.wall_ns, rng=mkrng())
        now = self.clock.now
        self.a.set_private_key(crypto.generate_private_key(), now=now)
        self.b.set_private_key(crypto.generate_private_key(), now=now)
        assert self.a.public_key and self.b.public_key
        self.pa: Peer = self.b.add_peer(self.a.public_key, now=now)  # A as seen by B
        self.pb: Peer = self.a.add_peer(self.b.public_key, now=now)  # B as seen by A
        if psk:
            key = crypto.generate_private_key()
            self.a.set_preshared_key(self.pb, key)
            self.b.set_preshared_key(self.pa, key)
        self.a.set_allowed_ips(self.pb, [B_TUN + "/32"])
        self.b.set_allowed_ips(self.pa, [A_TUN + "/32"])
        self.a.set_endpoint(self.pb, B_ADDR)
        self.b.set_endpoint(self.pa, A_ADDR)
        self.a_addr: Endpoint = A_ADDR
        self.delivered_a: list[bytes] = []  # packets A's TUN received
        self.delivered_b: list[bytes] = []
        self.sent_a: list[bytes] = []  # datagrams A put on the wire (for inspection)
        self.sent_b: list[bytes] = []

    def _carry(self, batch: list[tuple[bytes, Endpoint]], to: str) -> list[tuple[bytes, Endpoint]]:
        if to in self.link.drop_to:
            self.link.dropped += len(batch)
            return []
        return self.link.shape(batch)

    def pump(self, rounds: int = 20) -> None:
        """Move datagrams both ways until quiet (bounded)."""
        for _ in range(rounds):
            moved = False
            da = self._carry(self.a.datagrams_to_send(), "B")
            db = self._carry(self.b.datagrams_to_send(), "A")
            for data, _addr in da:
                self.sent_a.append(data)
                self.b.receive_datagram(data, self.a_addr, now=self.clock.now)
                moved = True
            for data, _addr in db:
                self.sent_b.append(data)
                self.a.receive_datagram(data, B_ADDR, now=self.clock.now)
                moved = True
            self.delivered_a += self.a.tun_packets_to_write()
            self.delivered_b += self.b.tun_packets_to_write()
            if not moved:
                return

    def advance(self, until: float) -> None:
        """Run both devices' timers up to ``until``, pumping after each firing."""
        while True:
            ts = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
            nxt = min(ts) if ts else None
            if nxt is None or nxt > until:
                self.clock.now = until
                return
            self.clock.now = max(self.clock.now, nxt)
            self.a.handle_timer(now=self.clock.now)
            self.b.handle_timer(now=self.clock.now)
            self.pump()

    def send_a(self, payload: bytes, ident: int = 0) -> bytes:
        pkt = ipv4(A_TUN, B_TUN, payload, ident)
        self.a.receive_tun_packet(pkt, now=self.clock.now)
        self.pump()
        return pkt

    def send_b(self, payload: bytes, ident: int = 0) -> bytes:
        pkt = ipv4(B_TUN, A_TUN, payload, ident)
        self.b.receive_tun_packet(pkt, now=self.clock.now)
        self.pump()
        return pkt
