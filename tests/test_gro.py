"""TCP segment coalescing for TUN writes (wgpy.io.gro), checked against a plain reference.

Segments are built with struct and a word-by-word checksum written here (not the module's
integer trick); the GSO packet must carry exactly what the kernel needs to finish it: the
virtio_net_hdr, fixed IP lengths and header checksum, and the pseudo-header sum in the TCP
checksum field such that the kernel's completion gives the checksum of the whole segment.
"""

from __future__ import annotations

import errno
import ipaddress
import struct

import pytest

from tun.base import VNET_HDR_LEN
from wgpy.io.gro import (
    GSO_TCPV4,
    GSO_TCPV6,
    NEEDS_CSUM,
    VNET_HDR,
    TcpCoalescer,
    ones_sum,
)

SRC4, DST4 = "10.7.0.1", "10.7.0.2"
SRC6, DST6 = "fd00::1", "fd00::2"
MSS = 1368
TS_OPTION = bytes([1, 1, 8, 10]) + struct.pack("!II", 111, 222)  # NOP NOP timestamps


def csum(data: bytes) -> int:
    """Reference Internet checksum: 16-bit words added one by one, carries folded."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_segment(
    seq: int,
    payload: bytes,
    *,
    v6: bool = False,
    flags: int = 0x10,
    ack: int = 5000,
    window: int = 500,
    sport: int = 40000,
    options: bytes = TS_OPTION,
    ident: int = 0,
    ttl: int = 64,
) -> bytes:
    """A TCP segment in IPv4 or IPv6 with correct checksums."""
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    thl = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (thl // 4) << 4, flags, window, 0, 0)
    tcp += options + payload
    pseudo = a + b + struct.pack("!BBH", 0, 6, len(tcp)) if not v6 else a + b
    if v6:
        pseudo += struct.pack("!I3xB", len(tcp), 6)
    tcp = tcp[:16] + struct.pack("!H", 0xFFFF - csum(pseudo + tcp)) + tcp[18:]
    if v6:
        return struct.pack("!IHBB", 6 << 28, len(tcp), 6, ttl) + a + b + tcp
    ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(tcp), ident, 0x4000, ttl, 6, 0) + a + b
    ip = ip[:10] + struct.pack("!H", 0xFFFF - csum(ip)) + ip[12:]
    return ip + tcp


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: memoryview) -> int:
        self.writes.append(bytes(data))
        return len(data)


def feed(packets: list[bytes]) -> tuple[TcpCoalescer, Sink, list[bool]]:
    """Offer each packet from a reused receive buffer, at an offset, then flush."""
    sink = Sink()
    gro = TcpCoalescer(sink)
    taken = []
    for p in packets:
        buf = bytearray(b"\xee" * 30 + p + b"\xee" * 20)  # the caller's buffer, reused
        ok = gro.offer(memoryview(buf), 30, len(p))
        if not ok:
            gro.flush()
            sink.writes.append(b"alone:" + p)
        taken.append(ok)
    gro.flush()
    return gro, sink, taken


def segments(n: int, *, v6: bool = False, last: int = MSS, seq0: int = 1000) -> list[bytes]:
    out, seq = [], seq0
    for i in range(n):
        size = last if i == n - 1 else MSS
        out.append(tcp_segment(seq, bytes([i % 251]) * size, v6=v6, ident=i))
        seq += size
    return out


def finish_checksum(packet: bytes) -> bytes:
    """What the kernel does with NEEDS_CSUM: add up from csum_start, store the complement."""
    _flags, _gso, _hlen, _size, start, offset = VNET_HDR.unpack_from(packet)
    ip = packet[VNET_HDR_LEN:]
    value = 0xFFFF - csum(ip[start:])
    return ip[: start + offset] + struct.pack("!H", value) + ip[start + offset + 2 :]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_run_of_segments_becomes_one_gso_write(v6: bool) -> None:
    segs = segments(10, v6=v6, last=700)
    gro, sink, taken = feed(segs)
    assert all(taken) and len(sink.writes) == 1
    out = sink.writes[0]
    flags, gso, hlen, size, start, offset = VNET_HDR.unpack_from(out)
    ihl = 40 if v6 else 20
    assert (flags, gso, hlen, size, start, offset) == (
        NEEDS_CSUM,
        GSO_TCPV6 if v6 else GSO_TCPV4,
        ihl + 32,
        MSS,
        ihl,
        16,
    )
    ip = out[VNET_HDR_LEN:]
    payload = b"".join(s[ihl + 32 :] for s in segs)
    assert ip[ihl + 32 :] == payload  # in order, headers dropped but the first
    assert len(ip) == ihl + 32 + 9 * MSS + 700
    if v6:
        assert struct.unpack_from("!H", ip, 4)[0] == len(ip) - 40
    else:
        assert struct.unpack_from("!H", ip, 2)[0] == len(ip)
        assert csum(ip[:20]) == 0xFFFF  # a valid header checksum
    # the first segment's header otherwise, sequence number included
    assert ip[ihl : ihl + 16] == segs[0][ihl : ihl + 16]
    # once the kernel completes the checksum, it is the one of the whole segment
    whole = tcp_segment(1000, payload, v6=v6)
    finished = finish_checksum(out)
    assert finished[ihl + 16 : ihl + 18] == whole[ihl + 16 : ihl + 18]
    assert (gro.coalesced, gro.segments, gro.errors) == (1, 10, 0)


def test_a_lone_segment_is_written_as_it_came() -> None:
    (seg,) = segments(1)
    gro, sink, taken = feed([seg])
    assert taken == [True]
    assert sink.writes == [bytes(VNET_HDR_LEN) + seg]
    assert gro.coalesced == 0


def _data_offset(packet: bytes, words: int) -> bytes:
    return packet[:32] + bytes([words << 4]) + packet[33:]


def _flags_and_offset(packet: bytes, value: int) -> bytes:
    return packet[:6] + struct.pack("!H", value) + packet[8:]


@pytest.mark.parametrize(
    "packet",
    [
        tcp_segment(1, b"x" * 100, flags=0x18),  # PSH
        tcp_segment(1, b"x" * 100, flags=0x11),  # FIN
        tcp_segment(1, b"x" * 100, flags=0x02),  # SYN
        tcp_segment(1, b""),  # a pure ACK
        bytes.fromhex("4500001c0000400040010000") + bytes(16),  # ICMP
        _data_offset(tcp_segment(1, b"x" * 100), 4),  # a TCP header shorter than 20 bytes
        _flags_and_offset(tcp_segment(1, b"x" * 100), 0x2000),  # a first fragment (MF)
        _flags_and_offset(tcp_segment(1, b"x" * 100), 0x0001),  # a later fragment
        bytes.fromhex("4600002000000000400600000a0700010a070002") + bytes(12),  # IP options
    ],
    ids=["psh", "fin", "syn", "pure-ack", "icmp", "short-tcp", "fragment", "offset", "ip-options"],
)
def test_what_cannot_be_coalesced_is_refused(packet: bytes) -> None:
    gro, sink, taken = feed([*segments(2), packet])
    assert taken == [True, True, False]
    # the held run goes first, then the refused packet on its own
    assert len(sink.writes) == 2 and sink.writes[1] == b"alone:" + packet
    assert gro.coalesced == 1


def _change(i: int, **kw: object) -> list[bytes]:
    """Four full segments; from the i-th on, with one field changed."""
    segs = segments(4)
    for j in range(i, 4):
        segs[j] = tcp_segment(1000 + j * MSS, bytes([j]) * MSS, ident=j, **kw)  # type: ignore[arg-type]
    return segs


@pytest.mark.parametrize(
    ("segs", "groups"),
    [
        (segments(4), [4]),
        (_change(2, ack=5001), [2, 2]),  # a new ACK number
        (_change(2, window=501), [2, 2]),  # a window update
        (_change(2, sport=40001), [2, 2]),  # another flow
        (_change(2, options=TS_OPTION[:-1] + b"\x07"), [2, 2]),  # a newer timestamp
        (_change(2, ttl=63), [2, 2]),
        (segments(2) + segments(2, seq0=99), [2, 2]),  # a gap in the sequence
        (segments(2, last=MSS - 1) + segments(2, seq0=1000 + 2 * MSS - 1), [2, 2]),  # short
        (segments(60), [47, 13]),  # one IP packet is at most 64 KiB
    ],
    ids=["run", "ack", "window", "flow", "options", "ttl", "gap", "short", "size"],
)
def test_groups_break_where_the_segments_differ(segs: list[bytes], groups: list[int]) -> None:
    _gro, sink, taken = feed(segs)
    assert all(taken)
    assert _groups(sink.writes) == groups
    assert sum(len(w) - VNET_HDR_LEN for w in sink.writes) == sum(len(s) for s in segs) - sum(
        52 * (g - 1) for g in groups
    )


def _groups(writes: list[bytes]) -> list[int]:
    out = []
    for w in writes:
        flags, _gso, hlen, size, _s, _o = VNET_HDR.unpack_from(w)
        out.append(-(-(len(w) - VNET_HDR_LEN - hlen) // size) if flags else 1)
    return out


@pytest.mark.parametrize(
    "change",
    [{"sport": 40001}, {"ack": 5001}, {"window": 501}, {"ttl": 63}, {"options": bytes(12)}],
    ids=["flow", "ack", "window", "hop-limit", "options"],
)
def test_ipv6_groups_break_where_the_segments_differ(change: dict[str, int]) -> None:
    segs = segments(2, v6=True) + [
        tcp_segment(1000 + j * MSS, bytes([j]) * MSS, v6=True, **change)  # type: ignore[arg-type]
        for j in (2, 3)
    ]
    _gro, sink, taken = feed(segs)
    assert all(taken) and _groups(sink.writes) == [2, 2]


def test_ones_sum_matches_the_word_by_word_sum() -> None:
    for data in (b"", bytes(8), b"\xff\xff", b"\xff\xff" * 3, bytes(range(256)) * 6):
        assert ones_sum(data) == csum(data)


def test_a_refused_write_is_counted_and_the_group_dropped() -> None:
    def refuse(_data: memoryview) -> int:
        raise OSError(5, "Input/output error")

    gro = TcpCoalescer(refuse)
    for seg in segments(3):
        assert gro.offer(memoryview(bytearray(seg)), 0, len(seg))
    gro.flush()
    assert gro.errors == 1 and gro.held == 0
    gro.flush()  # nothing held: nothing written
    assert gro.errors == 1


def test_a_kernel_refusing_gso_writes_turns_coalescing_off() -> None:
    """EINVAL for a GSO write: that group is lost once, later segments are refused (the
    caller writes them alone), and lone segments never trip it."""
    writes: list[bytes] = []

    def kernel(data: memoryview) -> int:
        if data[1]:  # a gso_type: this kernel does not take them
            raise OSError(errno.EINVAL, "Invalid argument")
        writes.append(bytes(data))
        return len(data)

    gro = TcpCoalescer(kernel)
    one = segments(1)[0]
    assert gro.offer(memoryview(bytearray(one)), 0, len(one))
    gro.flush()
    assert writes == [bytes(VNET_HDR_LEN) + one] and not gro.refused
    for seg in segments(3):
        assert gro.offer(memoryview(bytearray(seg)), 0, len(seg))
    gro.flush()
    assert gro.refused and gro.errors == 1
    later = segments(2, seq0=9000)
    assert not any(gro.offer(memoryview(bytearray(s)), 0, len(s)) for s in later)


def test_other_write_errors_keep_coalescing_on() -> None:
    def full(_data: memoryview) -> int:
        raise OSError(errno.ENOBUFS, "No buffer space available")

    gro = TcpCoalescer(full)
    for seg in segments(3):
        gro.offer(memoryview(bytearray(seg)), 0, len(seg))
    gro.flush()
    assert gro.errors == 1 and not gro.refused


def test_tso_reads_are_on_by_default_only_with_the_compiled_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wgpy.io import accel, gro

    for var in ("WGPY_TUN_TSO", "WGPY_TUN_GRO"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(accel, "batch", object())
    assert gro.tso_wanted()
    monkeypatch.setenv("WGPY_TUN_TSO", "0")
    assert not gro.tso_wanted()
    monkeypatch.setattr(accel, "batch", None)
    monkeypatch.delenv("WGPY_TUN_TSO")
    assert not gro.tso_wanted()
    monkeypatch.setenv("WGPY_TUN_TSO", "1")
    assert gro.tso_wanted()
    monkeypatch.setenv("WGPY_TUN_GRO", "0")  # no vnet header: no offloads either
    assert not gro.tso_wanted()
