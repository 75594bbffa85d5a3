"""tun.offload: the checksums against a word-by-word reference, and super-packets split as a
NIC's TSO/USO would (headers, sequence numbers, flags, lengths, checksums)."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest

from tun import offload
from tun.offload import (
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    NEEDS_CSUM,
    Segmenter,
    complete_checksum,
    ones_sum,
)


def ref_sum(data: bytes) -> int:
    """RFC 1071 word by word: big-endian 16-bit words, an odd last byte padded, end-around
    carry after every addition."""
    total = 0
    for i in range(0, len(data), 2):
        word = data[i] << 8 | (data[i + 1] if i + 1 < len(data) else 0)
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_checksum(data: bytes) -> int:
    return 0xFFFF - ref_sum(data)


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes([0, proto]) + struct.pack("!H", length)
    return src + dst + struct.pack("!I", length) + bytes([0, 0, 0, proto])


V4 = (ipaddress.ip_address("10.1.2.3").packed, ipaddress.ip_address("10.200.0.77").packed)
V6 = (ipaddress.ip_address("fd00::1").packed, ipaddress.ip_address("fd00:1:2::abcd").packed)


def ip_header(version: int, proto: int, total: int, ip_id: int = 0x1234) -> bytes:
    src, dst = V4 if version == 4 else V6
    if version == 4:
        h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ip_id, 0x4000, 64, proto, 0, src, dst)
        return h[:10] + struct.pack("!H", ref_checksum(h)) + h[12:]
    return struct.pack("!IHBB16s16s", 0x60012345, total - 40, proto, 64, src, dst)


def super_packet(version: int, proto: int, payload: bytes, *, flags: int = 0x18, opts: int = 12):
    """An offloaded packet as the kernel hands it: the checksum field holds only the
    pseudo-header sum (here: with the full length, as Linux leaves it)."""
    ihl = 20 if version == 4 else 40
    if proto == 6:
        thl = 20 + opts
        l4 = struct.pack("!HHIIBBHHH", 40000, 5201, 0xFFFFFF00, 77, thl // 4 << 4, flags, 500, 0, 0)
        l4 += bytes([1]) * (opts - 2) + bytes([0, 0]) if opts else b""
    else:
        l4 = struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0)
    total = ihl + len(l4) + len(payload)
    pkt = bytearray(ip_header(version, proto, total) + l4 + payload)
    src, dst = (pkt[12:16], pkt[16:20]) if version == 4 else (pkt[8:24], pkt[24:40])
    check_at = ihl + (16 if proto == 6 else 6)
    partial = ref_sum(pseudo(bytes(src), bytes(dst), proto, total - ihl))
    struct.pack_into("!H", pkt, check_at, partial)
    return pkt, ihl, len(l4)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 19, 20, 21, 1367, 1368, 1369, 1400, 65535])
def test_ones_sum_matches_word_by_word(n: int) -> None:
    rnd = random.Random(n)
    data = bytes(rnd.getrandbits(8) for _ in range(n))
    assert ones_sum(data) == ref_sum(data)
    assert ones_sum(b"\xff" * n) == ref_sum(b"\xff" * n)
    assert ones_sum(bytes(n)) == 0


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1367, 1368])
@pytest.mark.parametrize("proto", [6, 17])
def test_complete_checksum_of_a_single_packet(n: int, proto: int) -> None:
    payload = random.Random(n).randbytes(n)
    pkt, ihl, thl = super_packet(4, proto, payload)
    buf = bytearray(8) + pkt
    assert complete_checksum(buf, 8, len(pkt), ihl, 16 if proto == 6 else 6)
    seg = bytes(buf[8:])
    l4 = seg[ihl:]
    assert ref_sum(pseudo(V4[0], V4[1], proto, len(l4)) + l4) == 0xFFFF
    assert seg[ihl + thl :] == payload


def test_complete_checksum_refuses_offsets_outside_the_packet() -> None:
    pkt, ihl, _ = super_packet(4, 6, b"abc")
    assert not complete_checksum(pkt, 0, len(pkt), ihl, len(pkt))
    assert not complete_checksum(pkt, 0, len(pkt), 4, 16)


def check_segments(
    seg: Segmenter, rows: int, *, version: int, proto: int, payload: bytes, mss: int, flags: int
) -> None:
    ihl = 20 if version == 4 else 40
    src, dst = V4 if version == 4 else V6
    got = b""
    for k in range(rows):
        row = bytes(seg.view[k * seg.stride : (k + 1) * seg.stride])
        n = seg.lengths[k]
        p = row[:n]
        assert row[n:] == bytes(seg.stride - n), "zero padding up to the row's end"
        assert seg.stride % 16 == 0
        if version == 4:
            total, ip_id = struct.unpack_from("!HH", p, 2)
            assert total == n and ip_id == (0x1234 + k) & 0xFFFF
            assert ref_sum(p[:20]) == 0xFFFF, "IPv4 header checksum"
        else:
            assert struct.unpack_from("!H", p, 4)[0] == n - 40
        l4 = p[ihl:]
        assert ref_sum(pseudo(src, dst, proto, len(l4)) + l4) == 0xFFFF, f"segment {k}"
        if proto == 6:
            thl = (l4[12] >> 4) * 4
            seq = struct.unpack_from("!I", l4, 4)[0]
            assert seq == (0xFFFFFF00 + len(got)) & 0xFFFFFFFF
            f = l4[13]
            last, first = k == rows - 1, k == 0
            assert bool(f & 0x01) == (last and bool(flags & 0x01)), "FIN only last"
            assert bool(f & 0x08) == (last and bool(flags & 0x08)), "PSH only last"
            assert bool(f & 0x80) == (first and bool(flags & 0x80)), "CWR only first"
            assert f & 0x10
        else:
            thl = 8
            assert struct.unpack_from("!H", l4, 4)[0] == len(l4)
            assert struct.unpack_from("!H", l4, 6)[0] != 0
        body = l4[thl:]
        assert len(body) == (mss if k < rows - 1 else len(payload) - mss * (rows - 1))
        got += body
    assert got == payload


CASES = [
    # version, proto, payload bytes, gso_size, mtu
    (4, 6, 65000, 1368, 1420),
    (6, 6, 64000, 1348, 1420),
    (4, 6, 3 * 1368, 1368, 1420),  # the last segment full
    (4, 6, 2 * 1368 + 1, 1368, 1420),  # a 1-byte last segment
    (6, 6, 5000, 1367, 1500),  # an odd MSS: rows of odd payload
    (4, 6, 10000, 1368, 1000),  # the MTU smaller than the kernel's MSS: cut smaller
    (4, 17, 8 * 1200 + 3, 1200, 1420),  # USO, odd last
    (6, 17, 4000, 1000, 1420),
    (4, 6, 100, 1368, 1420),  # one segment
]


@pytest.mark.parametrize("vectorised", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_split_gives_segments_a_stack_accepts(
    case: tuple[int, int, int, int, int], vectorised: bool
) -> None:
    version, proto, size, gso_size, mtu = case
    if vectorised and offload._numpy() is None:
        pytest.skip("numpy not installed")
    payload = random.Random(size).randbytes(size)
    flags = 0x18 | 0x01 | 0x80 if proto == 6 else 0
    pkt, ihl, thl = super_packet(version, proto, payload, flags=flags)
    gso = GSO_UDP_L4 if proto == 17 else GSO_TCPV4 if version == 4 else GSO_TCPV6
    buf = bytearray(3) + pkt + bytearray(5)  # not at the buffer's start
    seg = Segmenter(vectorised=vectorised)
    rows = seg.split(buf, 3, len(pkt), (NEEDS_CSUM, gso, ihl + thl, gso_size, ihl, 16), mtu)
    hlen = ihl + thl
    mss = min(gso_size, mtu - hlen)
    assert rows == -(-size // mss)
    assert all(n <= mtu for n in seg.lengths)
    check_segments(seg, rows, version=version, proto=proto, payload=payload, mss=mss, flags=flags)


@pytest.mark.parametrize("case", CASES)
def test_numpy_and_python_cut_the_same_bytes(case: tuple[int, int, int, int, int]) -> None:
    if offload._numpy() is None:
        pytest.skip("numpy not installed")
    version, proto, size, gso_size, mtu = case
    payload = b"\xff" * 64 + random.Random(size + 1).randbytes(size - 64)  # a ±0 word sum too
    pkt, ihl, thl = super_packet(version, proto, payload, flags=0x19)
    gso = GSO_UDP_L4 if proto == 17 else GSO_TCPV4 if version == 4 else GSO_TCPV6
    hdr = (NEEDS_CSUM, gso, ihl + thl, gso_size, ihl, 16)
    out = []
    for vectorised in (True, False):
        seg = Segmenter(vectorised=vectorised)
        rows = seg.split(pkt, 0, len(pkt), hdr, mtu)
        out.append((rows, seg.stride, seg.lengths, bytes(seg.view[: rows * seg.stride])))
    assert out[0] == out[1]


@pytest.mark.parametrize(
    "hdr",
    [
        (NEEDS_CSUM, GSO_TCPV6, 52, 1368, 20, 16),  # the type says IPv6, the packet is IPv4
        (NEEDS_CSUM, GSO_TCPV4, 52, 0, 20, 16),  # no segment size
        (NEEDS_CSUM, GSO_TCPV4, 52, 1368, 24, 16),  # csum_start is not the IP header's end
        (NEEDS_CSUM, 3, 52, 1368, 20, 16),  # UFO: not asked for
    ],
)
def test_split_refuses_malformed_headers(hdr: tuple[int, ...]) -> None:
    pkt, _, _ = super_packet(4, 6, bytes(5000))
    assert Segmenter().split(pkt, 0, len(pkt), hdr, 1420) == 0


def test_split_refuses_a_tcp_header_longer_than_the_packet() -> None:
    pkt, _, _ = super_packet(4, 6, b"")
    assert Segmenter().split(pkt, 0, 30, (NEEDS_CSUM, GSO_TCPV4, 52, 1368, 20, 16), 1420) == 0


@pytest.mark.parametrize("case", CASES)
def test_headers_in_place_give_the_segments_of_split(case: tuple[int, int, int, int, int]) -> None:
    """Taken in order, each header written over the end of the segment before, the
    segments are byte for byte those of ``split``."""
    if offload._numpy() is None:
        pytest.skip("numpy not installed")
    version, proto, size, gso_size, mtu = case
    payload = random.Random(size + 2).randbytes(size)
    pkt, ihl, thl = super_packet(version, proto, payload, flags=0x99)
    gso = GSO_UDP_L4 if proto == 17 else GSO_TCPV4 if version == 4 else GSO_TCPV6
    hdr = (NEEDS_CSUM, gso, ihl + thl, gso_size, ihl, 16)
    ref = Segmenter()
    rows = ref.split(pkt, 0, len(pkt), hdr, mtu)
    buf = bytearray(10) + pkt + bytearray(gso_size)  # room to fill the last row
    seg = Segmenter()
    got = seg.headers_in_place(buf, 10, len(pkt), hdr, mtu)
    if gso_size % 2 and mtu - ihl - thl > gso_size:  # an odd MSS: only split can
        assert got == -1
        return
    assert got == rows and seg.lengths == ref.lengths
    h = seg.hlen
    for k in range(rows):
        p = 10 + k * seg.mss
        buf[p : p + h] = seg.headers[k * h : (k + 1) * h]
        n = seg.lengths[k]
        assert bytes(buf[p : p + n]) == bytes(ref.view[k * ref.stride :][:n]), f"segment {k}"


def test_headers_in_place_refuse_an_odd_payload_offset() -> None:
    if offload._numpy() is None:
        pytest.skip("numpy not installed")
    pkt, ihl, thl = super_packet(4, 6, bytes(5000))
    buf = bytearray(1) + pkt
    hdr = (NEEDS_CSUM, GSO_TCPV4, ihl + thl, 1368, ihl, 16)
    assert Segmenter().headers_in_place(buf, 1, len(pkt), hdr, 1420) == -1
    assert Segmenter(vectorised=False).headers_in_place(pkt, 0, len(pkt), hdr, 1420) == -1
    no_room = pkt + bytes(10)  # the last row, filled up, would not fit in the buffer
    assert Segmenter().headers_in_place(no_room, 0, len(pkt), hdr, 1420) == -1
