"""Micro-benchmarks of the per-packet paths (pytest-benchmark); not part of the default run.

    python3 -m pytest benchmarks/micro -q --benchmark-columns=median,iqr,ops

Packets are 1420 bytes (a full tunnel MTU) unless the name says otherwise. The FastPath
batches (64 packets) use an in-memory TUN and real UDP sockets on 127.0.0.1, so they include
the send/receive syscalls; divide by 64 for a per-packet figure.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from noise.crypto import TransportCipher
from tests.simlink import A_TUN, B_TUN, Pair, ipv4
from tun.memory import MemoryTun
from wgpy.core.allowedips import AllowedIPs
from wgpy.core.replay import ReplayFilter
from wgpy.io import accel
from wgpy.io.fastpath import FastPath, enable_gro
from wgpy.io.udp import UdpBind, set_buffers

BATCH = 64
PACKET = ipv4(A_TUN, B_TUN, bytes(1400))
assert len(PACKET) == 1420


@pytest.fixture
def pair() -> Pair:
    p = Pair()
    p.a.receive_tun_packet(ipv4(A_TUN, B_TUN, b"hi"), now=p.clock.now)
    p.pump()
    assert p.pb.current is not None and p.pa.current is not None
    return p


def test_seal_into_1420(benchmark: Any) -> None:
    c = TransportCipher(bytes(32))
    plain = memoryview(bytearray(PACKET))
    out = memoryview(bytearray(1500))  # never in place: cryptography 51 refuses overlaps
    benchmark(c.seal_into, 7, plain, out[16:1452])


def test_open_into_1420(benchmark: Any) -> None:
    c = TransportCipher(bytes(32))
    sealed = bytearray(c.seal(7, PACKET))
    view = memoryview(sealed)
    out = bytearray(1420)
    assert benchmark(c.open_into, 7, view, out)


def test_replay_validate_in_order(benchmark: Any) -> None:
    r = ReplayFilter()
    counter = iter(range(10**9))
    benchmark(lambda: r.validate(next(counter)))


def test_allowedips_lookup_v4(benchmark: Any) -> None:
    t: AllowedIPs[str] = AllowedIPs()
    for i in range(100):
        t.insert(f"10.{i}.0.0/16", f"peer{i}")
    dst = bytes([10, 42, 1, 2])
    assert benchmark(t.lookup, dst) == "peer42"


def test_device_send_one_packet(benchmark: Any, pair: Pair) -> None:
    """The sans-IO per-packet path: route, stage, pad, seal, new bytes, timers."""
    dev = pair.a

    def one() -> None:
        dev.receive_tun_packet(PACKET, now=pair.clock.now)
        dev.datagrams_to_send()

    benchmark(one)


def test_device_receive_one_packet(benchmark: Any, pair: Pair) -> None:
    a, b = pair.a, pair.b

    def setup() -> tuple[tuple[bytes], dict[str, object]]:
        a.receive_tun_packet(PACKET, now=pair.clock.now)
        ((d, _addr),) = a.datagrams_to_send()
        return (d,), {}

    def one(d: bytes) -> None:
        b.receive_datagram(d, pair.a_addr, now=pair.clock.now)
        assert b.tun_packets_to_write()

    benchmark.pedantic(one, setup=setup, rounds=2000)


def test_responder_handshake(benchmark: Any, pair: Pair) -> None:
    """One initiation consumed and a response created (≈ 4 X25519): the responder's cost."""
    a, b = pair.a, pair.b

    def setup() -> tuple[tuple[bytes], dict[str, object]]:
        pair.clock.now += 1.0  # past the 20 ms flood limit and REKEY_TIMEOUT
        pair.pb.last_sent_handshake = -100.0
        assert a.initiate(pair.pb, now=pair.clock.now)
        ((msg, _addr),) = a.datagrams_to_send()
        return (msg,), {}

    def one(msg: bytes) -> None:
        b.receive_datagram(msg, pair.a_addr, now=pair.clock.now)
        assert len(b.datagrams_to_send()) == 1

    benchmark.pedantic(one, setup=setup, rounds=200)


# --- the fast path over real sockets -----------------------------------------------------------


@pytest.fixture(params=["python", "compiled"])
def fast(
    pair: Pair, request: pytest.FixtureRequest
) -> Iterator[tuple[FastPath, FastPath, socket.socket, MemoryTun, MemoryTun]]:
    """Two fast paths: per-packet work in Python, or in wgpy.io._batch (where built)."""
    compiled = request.param == "compiled"
    if compiled and accel.batch is None:
        pytest.skip(f"wgpy.io._batch: {accel.reason}")
    binds = [UdpBind(), UdpBind()]
    tuns = [MemoryTun("ma"), MemoryTun("mb")]
    for b in binds:
        b.open(0)
        for s in b.sockets():
            set_buffers(s)
    assert binds[1].v4 is not None
    clock = lambda: pair.clock.now  # noqa: E731
    enable_gro(binds[1].v4)  # as the event loop does: a receive takes a GSO run at once
    fa = FastPath(pair.a, tuns[0], binds[0], clock=clock, use_compiled=compiled)
    fb = FastPath(pair.b, tuns[1], binds[1], clock=clock, use_compiled=compiled)
    pair.a.set_endpoint(pair.pb, ("127.0.0.1", binds[1].port))
    pair.b.set_endpoint(pair.pa, ("127.0.0.1", binds[0].port))
    try:
        yield fa, fb, binds[1].v4, tuns[0], tuns[1]
    finally:
        for b in binds:
            b.close()


def test_fastpath_send_batch_of_64(benchmark: Any, fast: Any) -> None:
    fa, _fb, sink, tun_a, _tun_b = fast

    def setup() -> tuple[tuple[()], dict[str, object]]:
        while select.select([sink], [], [], 0)[0]:
            sink.recv(65536)
        tun_a.inject_many([PACKET] * BATCH)
        return (), {}

    benchmark.pedantic(fa.on_tun, setup=setup, rounds=300)


def test_fastpath_receive_batch_of_64(benchmark: Any, fast: Any) -> None:
    fa, fb, sink, tun_a, tun_b = fast

    def setup() -> tuple[tuple[socket.socket], dict[str, object]]:
        tun_b.take()
        tun_a.inject_many([PACKET] * BATCH)
        fa.on_tun()
        select.select([sink], [], [], 1.0)
        return (sink,), {}

    def one(sock: socket.socket) -> None:
        fb.on_udp(sock)

    benchmark.pedantic(one, setup=setup, rounds=300)
    assert len(tun_b.take()) == BATCH
    assert fb.device.drops == {}


SMALL = ipv4(A_TUN, B_TUN, bytes(64))  # a ping-sized packet


def test_fastpath_one_small_packet_send(benchmark: Any, fast: Any) -> None:
    """One ping-sized packet: the per-hop latency cost of the send side (TUN → UDP)."""
    fa, _fb, sink, tun_a, _tun_b = fast

    def setup() -> tuple[tuple[()], dict[str, object]]:
        while select.select([sink], [], [], 0)[0]:
            sink.recv(65536)
        tun_a.inject(SMALL)
        return (), {}

    benchmark.pedantic(fa.on_tun, setup=setup, rounds=2000)


def test_fastpath_one_small_packet_receive(benchmark: Any, fast: Any) -> None:
    """One ping-sized datagram: the per-hop latency cost of the receive side (UDP → TUN)."""
    fa, fb, sink, tun_a, tun_b = fast

    def setup() -> tuple[tuple[socket.socket], dict[str, object]]:
        tun_b.take()
        tun_a.inject(SMALL)
        fa.on_tun()
        select.select([sink], [], [], 1.0)
        return (sink,), {}

    benchmark.pedantic(fb.on_udp, setup=setup, rounds=2000)
    assert fb.device.drops == {}


def test_gro_coalesce_47_segments(benchmark: Any) -> None:
    """47 full TCP segments (1368-byte payloads, timestamps) into one GSO write; per
    segment, divide by 47."""
    from tests.test_gro import segments
    from wgpy.io.gro import TcpCoalescer

    segs = segments(47)
    buf = bytearray(sum(len(s) for s in segs))
    spans, off = [], 0
    for s in segs:
        buf[off : off + len(s)] = s
        spans.append((off, len(s)))
        off += len(s)
    view = memoryview(buf)
    written: list[int] = []
    gro = TcpCoalescer(lambda data: written.append(len(data)))

    def run() -> None:
        for start, length in spans:
            gro.offer(view, start, length)
        gro.flush()

    benchmark(run)
    assert gro.segments == 47 * gro.coalesced and written[-1] == 10 + 52 + 47 * 1368


def _tso_read() -> tuple[bytearray, int, tuple[int, ...]]:
    """A 64 KiB TCP super-packet as a TSO read hands it over (47 × 1368 + 300 bytes of payload,
    timestamps), in a buffer with room behind it; its virtio_net_hdr fields."""
    from tests.test_offload import super_packet
    from tun.offload import GSO_TCPV4, NEEDS_CSUM

    pkt, ihl, thl = super_packet(4, 6, bytes(range(256)) * 252, opts=12)
    buf = bytearray(10) + pkt + bytearray(1400)
    return buf, len(pkt), (NEEDS_CSUM, GSO_TCPV4, ihl + thl, 1368, ihl, 16)


@pytest.mark.parametrize("how", ["in_place", "split"])
def test_tso_split_48_segments(benchmark: Any, how: str) -> None:
    """A TSO read cut into 48 checksummed segments (tun.offload): headers only (``in_place``)
    or every segment copied (``split``); per segment, divide by 48. Needs numpy."""
    from tun.offload import Segmenter

    seg = Segmenter()
    if not seg.vectorised:
        pytest.skip("numpy not installed")
    buf, n, hdr = _tso_read()
    cut = seg.headers_in_place if how == "in_place" else seg.split
    assert benchmark(cut, buf, 10, n, hdr, 1420) == 48


def test_tso_cut_and_sealed_48_segments_compiled(benchmark: Any) -> None:
    """The same TSO read cut, checksummed and sealed, all 48 segments, in one
    ``wgpy.io._batch`` call (what the compiled fast path does per read); per segment, divide by
    48. Compare with ``test_tso_split_48_segments`` plus 48 seals."""
    if accel.batch is None:
        pytest.skip(f"wgpy.io._batch: {accel.reason}")
    from tun.offload import VNET_HDR

    sealer = accel.batch.Sealer(bytes(32))
    buf, n, hdr = _tso_read()
    VNET_HDR.pack_into(buf, 0, *hdr)
    out = bytearray(1 << 17)
    got = benchmark(sealer.seal, buf, 10, n, True, 1420, 1, 0, out, 0)
    assert got[0] == 48
