"""wgpy.io._batch (the fast path's per-packet work in C) against the Python it replaces.

Each sealed datagram is opened with the Python AEAD (``TransportCipher``) and compared byte for
byte with what the Python path produces: ``padding_size`` and the transport header for a plain
packet, ``tun.offload``'s row-by-row ``Segmenter`` (itself checked word by word in
test_offload) for a super-packet, ``complete_checksum`` for a partial checksum. Skipped where
the extension was not built (the fast path then works in Python), except under CI, where
install.sh builds it and its absence is a failure.
"""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noise.crypto import TransportCipher
from tests.test_gro import segments as gro_segments
from tests.test_gro import tcp_segment
from tests.test_offload import CASES, check_segments, ref_sum, super_packet
from tun.base import VNET_HDR_LEN as VNET_LEN
from tun.offload import (
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    VNET_HDR,
    Segmenter,
    complete_checksum,
)
from wgpy.core import messages
from wgpy.core.replay import ReplayFilter
from wgpy.io import accel
from wgpy.io.gro import TcpCoalescer

if accel.batch is None:
    if os.environ.get("CI"):
        pytest.fail(f"wgpy.io._batch is not built under CI: {accel.reason}", pytrace=False)
    pytest.skip(f"wgpy.io._batch not built: {accel.reason}", allow_module_level=True)
batch = accel.batch

KEY = bytes(range(32))
RECEIVER = 0xA1B2C3D4


def sealer() -> object:
    return batch.Sealer(KEY)


def opened(data: bytes, counter: int) -> bytes:
    """Check the header of one datagram and open it with the Python AEAD."""
    kind, receiver, got = messages.TRANSPORT_HEADER.unpack_from(data)
    assert (kind, receiver, got) == (messages.MESSAGE_TRANSPORT, RECEIVER, counter)
    plain = TransportCipher(KEY).open(counter, data[16:])
    assert plain is not None, "the tag verifies"
    return plain


def seal(
    pkt: bytes, hdr: tuple[int, ...] = (0, 0, 0, 0, 0, 0), *, mtu: int = 1420, counter: int = 7
) -> tuple[int, int, int, bytes]:
    vnet = any(hdr)
    src = bytearray(b"\xee" * 5)
    src += VNET_HDR.pack(*hdr) if vnet else b""
    start = len(src)
    src += bytearray(pkt) + bytearray(b"\xee" * 3)
    before = bytes(src)
    out = bytearray(300_000)
    n, first, last = batch.Sealer(KEY).seal(
        src, start, len(pkt), vnet, mtu, RECEIVER, counter, out, 11
    )
    assert bytes(src) == before, "the read is left as it was"
    assert out[:11] == bytes(11), "nothing before out_off"
    return n, first, last, bytes(out[11:])


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100, 1404, 1419, 1420, 1421, 1500, 9000])
def test_a_plain_packet_is_sealed_as_the_python_path_seals_it(size: int) -> None:
    pkt = random.Random(size).randbytes(size)
    mtu = 1420
    n, first, last, out = seal(pkt, mtu=mtu, counter=99)
    padded = size + messages.padding_size(size, mtu)
    assert (n, first, last) == (1, padded + 32, padded + 32)
    expected = messages.TRANSPORT_HEADER.pack(4, RECEIVER, 99) + TransportCipher(KEY).seal(
        99, pkt + bytes(padded - size)
    )
    assert out[:first] == expected


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1367, 1368])
@pytest.mark.parametrize("proto", [6, 17])
def test_a_partial_checksum_is_completed_as_complete_checksum_does(n: int, proto: int) -> None:
    pkt, ihl, _thl = super_packet(4, proto, random.Random(n).randbytes(n))
    co = 16 if proto == 6 else 6
    count, first, _last, out = seal(bytes(pkt), (NEEDS_CSUM, 0, 0, 0, ihl, co))
    assert count == 1
    reference = bytearray(pkt)
    assert complete_checksum(reference, 0, len(pkt), ihl, co)
    assert opened(out[:first], 7)[: len(pkt)] == bytes(reference)


def test_checksum_offsets_outside_the_packet_are_refused() -> None:
    pkt, ihl, _ = super_packet(4, 6, b"abc")
    assert seal(bytes(pkt), (NEEDS_CSUM, 0, 0, 0, ihl, len(pkt)))[0] == 0
    assert seal(bytes(pkt), (NEEDS_CSUM, 0, 0, 0, 4, 16))[0] == 0


def segments_of(out: bytes, n: int, first: int, last: int, counter: int) -> list[bytes]:
    sizes = [first] * (n - 1) + [last]
    plains, at = [], 0
    for k, size in enumerate(sizes):
        plains.append(opened(out[at : at + size], counter + k))
        at += size
    return plains


@pytest.mark.parametrize("case", CASES)
def test_a_super_packet_is_cut_and_sealed_as_the_segmenter_cuts_it(
    case: tuple[int, int, int, int, int],
) -> None:
    version, proto, size, gso_size, mtu = case
    payload = random.Random(size).randbytes(size)
    flags = 0x18 | 0x01 | 0x80 if proto == 6 else 0
    pkt, ihl, thl = super_packet(version, proto, payload, flags=flags)
    gso = GSO_UDP_L4 if proto == 17 else GSO_TCPV4 if version == 4 else GSO_TCPV6
    hdr = (NEEDS_CSUM, gso, ihl + thl, gso_size, ihl, 16 if proto == 6 else 6)
    n, first, last, out = seal(bytes(pkt), hdr, mtu=mtu, counter=1000)
    ref = Segmenter(vectorised=False)
    rows = ref.split(bytearray(pkt), 0, len(pkt), hdr, mtu)
    assert n == rows
    plains = segments_of(out, n, first, last, 1000)
    for k, plain in enumerate(plains):
        length = ref.lengths[k]
        assert len(plain) == length + messages.padding_size(length, mtu)
        assert plain[:length] == bytes(ref.view[k * ref.stride : k * ref.stride + length])
        assert plain[length:] == bytes(len(plain) - length)
    # and the segments pass test_offload's own checks (a stack would accept them)
    ref.buf[:] = bytes(len(ref.buf))
    for k, plain in enumerate(plains):
        ref.buf[k * ref.stride : k * ref.stride + ref.lengths[k]] = plain[: ref.lengths[k]]
    mss = min(gso_size, mtu - ihl - thl)
    check_segments(ref, n, version=version, proto=proto, payload=payload, mss=mss, flags=flags)


@settings(max_examples=60, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    proto=st.sampled_from([6, 17]),
    size=st.integers(1, 20_000),
    gso_size=st.integers(1, 1500),
    mtu=st.integers(1280, 1500),
    opts=st.sampled_from([0, 12, 40]),
    ip_id=st.integers(0, 0xFFFF),
)
def test_any_super_packet_matches_the_segmenter(  # noqa: PLR0917 - hypothesis draws each
    version: int, proto: int, size: int, gso_size: int, mtu: int, opts: int, ip_id: int
) -> None:
    payload = random.Random(size).randbytes(size)
    pkt, ihl, thl = super_packet(version, proto, payload, flags=0x99, opts=opts)
    if version == 4:
        struct.pack_into("!H", pkt, 4, ip_id)
    gso = GSO_UDP_L4 if proto == 17 else GSO_TCPV4 if version == 4 else GSO_TCPV6
    hdr = (NEEDS_CSUM, gso, ihl + thl, gso_size, ihl, 16 if proto == 6 else 6)
    ref = Segmenter(vectorised=False)
    rows = ref.split(bytearray(pkt), 0, len(pkt), hdr, mtu)
    n, first, last, out = seal(bytes(pkt), hdr, mtu=mtu, counter=5)
    assert n == rows
    if rows:
        for k, plain in enumerate(segments_of(out, n, first, last, 5)):
            length = ref.lengths[k]
            assert plain[:length] == bytes(ref.view[k * ref.stride : k * ref.stride + length])
            l4 = plain[ihl:length]
            src, dst = (plain[12:16], plain[16:20]) if version == 4 else (plain[8:24], plain[24:40])
            pseudo = src + dst + struct.pack("!HH", proto, len(l4))
            assert ref_sum(bytes(pseudo) + l4) == 0xFFFF


@pytest.mark.parametrize(
    "hdr",
    [
        (NEEDS_CSUM, GSO_TCPV6, 0, 1368, 20, 16),  # TSO6 on an IPv4 packet
        (NEEDS_CSUM, GSO_TCPV4, 0, 0, 20, 16),  # no segment size
        (NEEDS_CSUM, GSO_TCPV4, 0, 1368, 21, 16),  # an odd transport offset
        (NEEDS_CSUM, 3, 0, 1368, 20, 16),  # an unknown GSO type
    ],
)
def test_malformed_super_packets_are_refused(hdr: tuple[int, ...]) -> None:
    pkt, _ihl, _thl = super_packet(4, 6, bytes(5000))
    assert seal(bytes(pkt), hdr)[0] == 0


def test_no_room_is_said_and_nothing_is_counted() -> None:
    pkt, ihl, thl = super_packet(4, 6, bytes(10_000))
    src = bytearray(VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, ihl + thl, 1368, ihl, 16)) + pkt
    out = bytearray(5000)
    s = batch.Sealer(KEY)
    assert s.seal(src, 10, len(pkt), True, 1420, 1, 0, out, 0) == (-1, 0, 0)
    assert s.seal(b"x" * 100, 0, 100, False, 1420, 1, 0, out, 4900) == (-1, 0, 0)


def test_bad_offsets_and_keys_raise() -> None:
    s = batch.Sealer(KEY)
    with pytest.raises(ValueError):
        s.seal(bytearray(10), 5, 10, False, 1420, 1, 0, bytearray(100), 0)
    with pytest.raises(ValueError):  # no room for the virtio_net_hdr before the packet
        s.seal(bytearray(100), 5, 10, True, 1420, 1, 0, bytearray(100), 0)
    with pytest.raises(ValueError):
        batch.Sealer(b"short")
    assert "hidden" in repr(s) and KEY.hex() not in repr(s)


def test_a_run_is_opened_until_another_receiver_and_forgeries_are_refused() -> None:
    payloads = [random.Random(i).randbytes(1404) for i in range(5)]

    def datagram(counter: int, payload: bytes, receiver: int = RECEIVER) -> bytes:
        header = messages.TRANSPORT_HEADER.pack(4, receiver, counter)
        return header + TransportCipher(KEY).seal(counter, payload)

    seg = 1404 + 32
    run = bytearray(b"".join(datagram(50 + i, p) for i, p in enumerate(payloads)))
    run[2 * seg + 100] ^= 1  # the third datagram's ciphertext
    buf = bytearray(b"\0" * 3) + run + datagram(60, b"end")  # a shorter last one
    out = bytearray(b"\xff" * 7 * 1500)  # what an earlier read left there
    before = bytes(buf)
    opener = batch.Opener(KEY)
    assert opener.open(buf, 3, len(buf), seg, RECEIVER, out, 20, 1500) == [50, 51, -1, 53, 54, 60]
    assert bytes(buf) == before
    for i in (0, 1, 3, 4, 5):  # each behind 20 zero bytes: room for a virtio_net_hdr
        assert out[i * 1500 : i * 1500 + 20] == bytes(20)
    for i in (0, 1, 3, 4):
        assert out[20 + i * 1500 : 20 + i * 1500 + 1404] == payloads[i]
    assert out[20 + 5 * 1500 : 20 + 5 * 1500 + 3] == b"end"
    # it stops at another receiver index, another type and a datagram too short for a tag
    other = run[:seg] + datagram(61, payloads[1], receiver=RECEIVER + 1) + run[:seg]
    assert opener.open(other, 0, len(other), seg, RECEIVER, out, 0, 1500) == [50]
    cookie = run[:seg] + b"\3" + run[seg + 1 :]
    assert opener.open(cookie, 0, len(cookie), seg, RECEIVER, out, 0, 1500) == [50]
    assert opener.open(run[:seg] + bytes(20), 0, seg + 20, seg, RECEIVER, out, 0, 1500) == [50]
    with pytest.raises(ValueError):
        opener.open(run, 0, len(run), 20, RECEIVER, out, 0, 1500)  # a segment shorter than a tag
    with pytest.raises(ValueError):  # slots too close for the zero bytes in front
        opener.open(run, 0, len(run), seg, RECEIVER, out, 20, seg - 32 + 19)


# --- Opener.receive: a GRO read opened, replay-checked, checked and coalesced in one call -----

SRC4 = gro_segments(1)[0][12:16]  # the source of tests.test_gro's segments


def _padded(packets: list[bytes]) -> tuple[list[bytes], int]:
    """Plaintexts of one size (a GRO read's datagrams are), zero-padded behind each packet."""
    size = max(len(p) for p in packets)
    size = (size + 15) & ~15
    return [p + bytes(size - len(p)) for p in packets], size + 32


def _read(plains: list[bytes], counters: list[int], *, receiver: int = RECEIVER) -> bytes:
    cipher = TransportCipher(KEY)
    return b"".join(
        messages.TRANSPORT_HEADER.pack(4, receiver, c) + cipher.seal(c, p)
        for c, p in zip(counters, plains, strict=True)
    )


def python_receive(
    read: bytes, seg: int, replay: ReplayFilter, source: bytes
) -> tuple[list[bytes], dict[str, int]]:
    """What FastPath.on_udp's Python path writes to a TUN with IFF_VNET_HDR, per datagram:
    open, replay check, inner checks (a source other than ``source`` stops, as in C), then
    wgpy.io.gro.TcpCoalescer; each write with its virtio_net_hdr."""
    writes: list[bytes] = []
    gro = TcpCoalescer(lambda data: writes.append(bytes(data)))
    counts = {"consumed": 0, "bytes": 0, "packets": 0, "failed": 0, "replayed": 0}
    cipher = TransportCipher(KEY)
    for at in range(0, len(read), seg):
        d = read[at : at + seg]
        _t, _r, counter = messages.TRANSPORT_HEADER.unpack_from(d)
        plain = cipher.open(counter, d[16:])
        if plain is None:
            counts["failed"] += 1
            counts["consumed"] += 1
            continue
        if plain:
            length = messages.ip_packet_length(plain)
            at_ = 12 if plain[0] >> 4 == 4 else 8
            if length is None or plain[at_ : at_ + 16][: len(source)] != source or not source:
                break
        counts["consumed"] += 1
        if not replay.validate(counter):
            counts["replayed"] += 1
            continue
        counts["bytes"] += len(d)
        if not plain:
            continue
        counts["packets"] += 1
        view = memoryview(bytearray(bytes(VNET_LEN) + plain))
        if not gro.offer(view, VNET_LEN, length):
            gro.flush()
            writes.append(bytes(view[: VNET_LEN + length]))
    gro.flush()
    return writes, counts


def compiled_receive(
    read: bytes, seg: int, replay: ReplayFilter, source: bytes
) -> tuple[list[bytes], dict[str, int]]:
    buf = bytearray(b"\x99" * 7) + read
    out = bytearray(b"\xaa" * (2 * len(read) + 10))
    got, nbytes, packets, last, failed, replayed, writes, gso_writes, gso_segs = batch.Opener(
        KEY
    ).receive(buf, 7, len(buf), seg, RECEIVER, replay.ring, replay.last, source, out)
    replay.last = last
    assert gso_segs >= 2 * gso_writes
    assert gso_writes == sum(1 for _o, _n, segs in writes if segs > 1)
    counts = {
        "consumed": got,
        "bytes": nbytes,
        "packets": packets,
        "failed": failed,
        "replayed": replayed,
    }
    return [bytes(out[off : off + n]) for off, n, _segs in writes], counts


def both_ways(plains: list[bytes], counters: list[int], *, source: bytes = SRC4) -> None:
    same, seg = _padded(plains)
    read = _read(same, counters)
    ref_replay, c_replay = ReplayFilter(), ReplayFilter()
    for r in (ref_replay, c_replay):
        r.validate(3)  # a window that has seen something
    expected = python_receive(read, seg, ref_replay, source)
    assert expected[1]["consumed"] >= len(plains) - 1 and expected[0], "the case is exercised"
    assert compiled_receive(read, seg, c_replay, source) == expected
    assert c_replay.last == ref_replay.last and c_replay.ring == ref_replay.ring


def test_a_run_of_tcp_segments_is_coalesced_as_tcp_coalescer_does() -> None:
    segs = gro_segments(12, last=700)
    both_ways(segs, list(range(10, 22)))
    same, seg = _padded(segs)
    writes, counts = compiled_receive(_read(same, list(range(12))), seg, ReplayFilter(), SRC4)
    assert len(writes) == 1 and writes[0][0] == NEEDS_CSUM  # one GSO write of all twelve
    assert len(writes[0]) == VNET_LEN + len(segs[0]) + 10 * 1368 + 700
    assert counts["packets"] == 12


def test_everything_that_breaks_a_group_breaks_it_in_c_too() -> None:
    s = gro_segments(8)
    other_flow = tcp_segment(99, b"x" * 1368, sport=1234)
    pure_ack = tcp_segment(5, b"", flags=0x10)
    psh = tcp_segment(7, b"y" * 100, flags=0x18)
    udp = SRC4 + bytes(16)  # not even a packet: the inner checks stop there
    packets = [s[0], s[1], other_flow, s[2], s[4], s[3], pure_ack, s[5], psh, s[6], s[7]]
    both_ways(packets, list(range(20, 20 + len(packets))))
    both_ways([*packets, udp], list(range(40, 40 + len(packets) + 1)))


def test_forged_and_replayed_datagrams_are_counted_and_skipped() -> None:
    s = gro_segments(6)
    same, seg = _padded(s)
    read = bytearray(_read(same, [50, 51, 51, 52, 3, 53]))  # 51 twice, 3 seen before
    read[4 * seg + 40] ^= 1  # and the fifth forged
    ref_replay, c_replay = ReplayFilter(), ReplayFilter()
    for r in (ref_replay, c_replay):
        r.validate(3)
    expected = python_receive(bytes(read), seg, ref_replay, SRC4)
    got = compiled_receive(bytes(read), seg, c_replay, SRC4)
    assert got == expected
    assert got[1] == {"consumed": 6, "bytes": 4 * seg, "packets": 4, "failed": 1, "replayed": 1}
    assert c_replay.ring == ref_replay.ring


def test_it_stops_before_a_new_source_without_marking_its_counter() -> None:
    s = gro_segments(4)
    stranger = bytearray(s[2])
    stranger[12:16] = bytes([10, 0, 0, 9])
    same, seg = _padded([s[0], s[1], bytes(stranger), s[3]])
    read = _read(same, [60, 61, 62, 63])
    replay = ReplayFilter()
    writes, counts = compiled_receive(read, seg, replay, SRC4)
    assert counts["consumed"] == 2 and len(writes) == 1
    assert replay.validate(62), "the counter it stopped at is still fresh"
    assert compiled_receive(read, seg, ReplayFilter(), b"")[1]["consumed"] == 0


def test_ipv6_segments_and_a_keepalive_last() -> None:
    segs = gro_segments(5, v6=True)
    same, seg = _padded(segs)
    src6 = segs[0][8:24]
    read = _read(same, [70, 71, 72, 73, 74]) + _read([b""], [75])
    ref_replay, c_replay = ReplayFilter(), ReplayFilter()
    expected = python_receive(read, seg, ref_replay, src6)
    assert compiled_receive(read, seg, c_replay, src6) == expected
    assert expected[1]["consumed"] == 6 and expected[1]["packets"] == 5
    assert c_replay.last == 75


@settings(max_examples=150, deadline=None)
@given(
    inner=st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=12),
    prefix=st.sampled_from([b"", b"\x45", b"\x60", b"\x45\x00\x00\x28", b"\x46"]),
    source=st.sampled_from([b"", SRC4, bytes(16)]),
)
def test_hostile_inner_packets_from_an_authenticated_peer_never_crash(
    inner: list[bytes], prefix: bytes, source: bytes
) -> None:
    """A peer with the keys can send anything inside: truncated headers, lying lengths, odd
    options. Opener.receive must answer every run the way the Python path does, and never
    read or write out of bounds (the sanitiser-free check: it stays within its buffers and
    the Python reference agrees)."""
    plains = [prefix + SRC4 * 3 + p if p else p for p in inner]
    same, seg = _padded([p or b"\0" for p in plains])
    read = _read(same, list(range(100, 100 + len(same))))
    ref_replay, c_replay = ReplayFilter(), ReplayFilter()
    expected = python_receive(read, seg, ref_replay, source)
    assert compiled_receive(read, seg, c_replay, source) == expected
    assert c_replay.ring == ref_replay.ring


@settings(max_examples=150, deadline=None)
@given(
    packet=st.binary(min_size=0, max_size=3000),
    hdr=st.tuples(
        st.integers(0, 3),
        st.sampled_from([0, 1, 3, 4, 5, 0x81]),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
        st.integers(0, 0xFFFF),
    ),
    mtu=st.sampled_from([0, 60, 1280, 1420, 65535]),
)
def test_any_tun_read_is_sealed_or_refused_as_the_segmenter_decides(
    packet: bytes, hdr: tuple[int, ...], mtu: int
) -> None:
    """Whatever header and bytes a TUN read holds, Sealer.seal seals it, refuses it (0) or
    says there is no room (-1): for a super-packet, exactly when tun.offload refuses it."""
    src = bytearray(VNET_HDR.pack(*hdr)) + packet
    out = bytearray(300_000)
    n, first, last = batch.Sealer(KEY).seal(src, 10, len(packet), True, mtu, 1, 0, out, 0)
    assert n >= 0
    if hdr[1] & 0x7F and packet:
        assert n == Segmenter(vectorised=False).split(bytearray(packet), 0, len(packet), hdr, mtu)
    if n:
        assert first >= 32 and last >= 32
