"""A small reader and writer for classic libpcap files, and UDP extraction from frames.

Reads both byte orders and both timestamp resolutions (magic ``a1b2c3d4`` µs, ``a1b23c4d``
ns); link types Ethernet (1, with 802.1Q/802.1ad tags), raw IP (101, and 12/14 as some
platforms number it), Linux cooked v1 (113) and v2 (276), and loopback/null (0). pcapng is read
by :mod:`wgpy.harness.pcapng`; :mod:`wgpy.harness.capture` tells the two apart. IP fragments
are not reassembled: only the first fragment of a fragmented datagram would carry the UDP
header, so fragments are skipped.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
_RAW_ALIASES = (12, 14)

_MAGIC_US = 0xA1B2C3D4
_MAGIC_NS = 0xA1B23C4D
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
_VLAN_TAGS = (0x8100, 0x88A8)


class PcapError(ValueError):
    """Not a capture file, or damaged in a way that cannot be skipped."""


@dataclass(frozen=True, slots=True)
class Frame:
    timestamp: float  # Unix seconds
    linktype: int  # of the interface it was captured on
    data: bytes


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    """A UDP datagram found in a frame: addresses, ports and payload."""

    timestamp: float
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytes


def read_pcap(f: BinaryIO, first: bytes = b"") -> Iterator[Frame]:
    """The frames of a classic pcap stream. ``first``: bytes already read from the start of
    ``f`` (at most the 24 of the file header), for a caller that sniffed them."""
    header = first + f.read(24 - len(first))
    if len(header) < 24:
        raise PcapError("file too short for a pcap header")
    for order in ("<", ">"):
        magic = struct.unpack(order + "I", header[:4])[0]
        if magic in (_MAGIC_US, _MAGIC_NS):
            break
    else:
        raise PcapError("not a pcap file")
    divisor = 1e9 if magic == _MAGIC_NS else 1e6
    linktype = struct.unpack(order + "I", header[20:24])[0] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    while True:
        rh = f.read(16)
        if len(rh) < 16:
            return  # end of file (a truncated last record is dropped, as tcpdump does)
        sec, frac, incl, _orig = record.unpack(rh)
        data = f.read(incl)
        if len(data) < incl:
            return
        yield Frame(sec + frac / divisor, linktype, data)


def _network_layer(linktype: int, data: bytes) -> tuple[int, bytes] | None:
    """``(ethertype, IP packet)`` from a link-layer frame."""
    if linktype == LINKTYPE_ETHERNET:
        if len(data) < 14:
            return None
        ethertype, off = struct.unpack_from("!H", data, 12)[0], 14
        while ethertype in _VLAN_TAGS and len(data) >= off + 4:
            ethertype, off = struct.unpack_from("!H", data, off + 2)[0], off + 4
        return ethertype, data[off:]
    if linktype == LINKTYPE_LINUX_SLL:
        if len(data) < 16:
            return None
        return struct.unpack_from("!H", data, 14)[0], data[16:]
    if linktype == LINKTYPE_LINUX_SLL2:
        if len(data) < 20:
            return None
        return struct.unpack_from("!H", data, 0)[0], data[20:]
    if linktype == LINKTYPE_RAW or linktype in _RAW_ALIASES:
        if not data:
            return None
        return (ETHERTYPE_IPV6 if data[0] >> 4 == 6 else ETHERTYPE_IPV4), data
    if linktype == LINKTYPE_NULL:
        if len(data) < 4:
            return None
        family = struct.unpack_from("<I", data)[0]
        if family > 0xFFFF:
            family = struct.unpack_from(">I", data)[0]
        return (ETHERTYPE_IPV4 if family == 2 else ETHERTYPE_IPV6), data[4:]
    return None


def udp_in_frame(frame: Frame) -> UdpDatagram | None:
    """The UDP datagram carried by ``frame``, or ``None`` (not UDP, fragment, truncated)."""
    net = _network_layer(frame.linktype, frame.data)
    if net is None:
        return None
    ethertype, ip = net
    if ethertype == ETHERTYPE_IPV4 and len(ip) >= 20 and ip[0] >> 4 == 4:
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        flags_frag = struct.unpack_from("!H", ip, 6)[0]
        if ip[9] != 17 or flags_frag & 0x3FFF or ihl < 20:  # not UDP, or a fragment
            return None
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        seg = ip[ihl : min(total, len(ip))]
    elif ethertype == ETHERTYPE_IPV6 and len(ip) >= 40 and ip[0] >> 4 == 6:
        if ip[6] != 17:  # extension headers are not followed
            return None
        plen = struct.unpack_from("!H", ip, 4)[0]
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        seg = ip[40 : 40 + plen]
    else:
        return None
    if len(seg) < 8:
        return None
    sport, dport, length = struct.unpack_from("!HHH", seg)
    payload = seg[8 : max(8, min(length, len(seg)))]
    return UdpDatagram(frame.timestamp, src, sport, dst, dport, bytes(payload))


class PcapWriter:
    """Writes a raw-IP (link type 101) classic pcap: what the harness records itself."""

    def __init__(self, f: BinaryIO, *, snaplen: int = 65535) -> None:
        self.f = f
        f.write(struct.pack("<IHHiIII", _MAGIC_US, 2, 4, 0, 0, snaplen, LINKTYPE_RAW))

    def write(self, timestamp: float, packet: bytes) -> None:
        sec = int(timestamp)
        usec = int((timestamp - sec) * 1e6)
        self.f.write(struct.pack("<IIII", sec, usec, len(packet), len(packet)) + packet)
