"""Inner IP packets for the harness: IPv4/IPv6 with ICMP echo and UDP, checksums, summaries.

The scripted peer puts these inside transport messages; the kernel behind the target's TUN
answers ICMP echo requests to its own address, which is the harness's main observable: an echo
reply coming back through the tunnel proves the target accepted, decrypted, source-checked and
delivered the request, then routed and encrypted the answer.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from tun.offload import ones_sum

PROTO_ICMP = 1
PROTO_UDP = 17
PROTO_ICMPV6 = 58
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129

_PROTO_NAMES = {PROTO_ICMP: "icmp", 6: "tcp", PROTO_UDP: "udp", PROTO_ICMPV6: "icmpv6"}


def checksum(data: bytes | bytearray) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the complement of its ones'-complement
    sum (:func:`tun.offload.ones_sum`, which pads an odd last byte with zero)."""
    return ~ones_sum(data) & 0xFFFF


def _addr(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def ipv4(src: str, dst: str, proto: int, payload: bytes, *, ttl: int = 64, ident: int = 0) -> bytes:
    """An IPv4 packet (20-byte header, DF clear) carrying ``payload``; header checksum filled."""
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(payload),
            ident,
            0,
            ttl,
            proto,
            0,
            _addr(src).packed,
            _addr(dst).packed,
        )
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header) + payload


def ipv6(src: str, dst: str, next_header: int, payload: bytes, *, hop_limit: int = 64) -> bytes:
    """An IPv6 packet (no extension headers) carrying ``payload``."""
    return (
        struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit)
        + _addr(src).packed
        + _addr(dst).packed
        + payload
    )


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = _addr(src), _addr(dst)
    if s.version == 4:
        return s.packed + d.packed + struct.pack("!BBH", 0, proto, length)
    return s.packed + d.packed + struct.pack("!IxxxB", length, proto)


def icmp_echo(
    src: str, dst: str, *, ident: int, seq: int, payload: bytes = b"", reply: bool = False
) -> bytes:
    """An ICMP (IPv4) or ICMPv6 echo request (or reply) packet from ``src`` to ``dst``."""
    v6 = _addr(src).version == 6
    if v6:
        kind = ICMPV6_ECHO_REPLY if reply else ICMPV6_ECHO_REQUEST
    else:
        kind = ICMP_ECHO_REPLY if reply else ICMP_ECHO_REQUEST
    body = bytearray(struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload)
    if v6:
        pseudo = _pseudo(src, dst, PROTO_ICMPV6, len(body))
        struct.pack_into("!H", body, 2, checksum(pseudo + body))
        return ipv6(src, dst, PROTO_ICMPV6, bytes(body))
    struct.pack_into("!H", body, 2, checksum(body))
    return ipv4(src, dst, PROTO_ICMP, bytes(body))


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP datagram in IPv4 or IPv6, checksum filled."""
    body = bytearray(struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload)
    c = checksum(_pseudo(src, dst, PROTO_UDP, len(body)) + body) or 0xFFFF
    struct.pack_into("!H", body, 6, c)
    if _addr(src).version == 6:
        return ipv6(src, dst, PROTO_UDP, bytes(body))
    return ipv4(src, dst, PROTO_UDP, bytes(body))


@dataclass(frozen=True, slots=True)
class IpSummary:
    """The outline of an IP packet: addresses, protocol, total length, ICMP echo fields."""

    version: int
    src: str
    dst: str
    proto: int
    length: int
    payload: bytes  # the transport-layer bytes (after the IP header), trimmed by length
    icmp_type: int | None = None
    echo_id: int | None = None
    echo_seq: int | None = None

    @property
    def proto_name(self) -> str:
        return _PROTO_NAMES.get(self.proto, str(self.proto))

    @property
    def is_echo_reply(self) -> bool:
        return self.icmp_type in (ICMP_ECHO_REPLY, ICMPV6_ECHO_REPLY)

    @property
    def is_echo_request(self) -> bool:
        return self.icmp_type in (ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST)

    def __str__(self) -> str:
        text = f"{self.src} → {self.dst} {self.proto_name} len {self.length}"
        if self.echo_id is not None:
            kind = "reply" if self.is_echo_reply else "request"
            text += f" (echo {kind} id {self.echo_id} seq {self.echo_seq})"
        return text


def summarize(packet: bytes | bytearray | memoryview) -> IpSummary | None:
    """Parse an IPv4/IPv6 packet's header (and ICMP echo fields); ``None`` if it is not one."""
    data = bytes(packet)
    if not data:
        return None
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        length = struct.unpack_from("!H", data, 2)[0]
        if ihl < 20 or length < ihl or length > len(data):
            return None
        proto = data[9]
        src, dst = str(ipaddress.IPv4Address(data[12:16])), str(ipaddress.IPv4Address(data[16:20]))
        payload = data[ihl:length]
        echo = proto == PROTO_ICMP
    elif version == 6 and len(data) >= 40:
        length = 40 + struct.unpack_from("!H", data, 4)[0]
        if length > len(data):
            return None
        proto = data[6]
        src, dst = str(ipaddress.IPv6Address(data[8:24])), str(ipaddress.IPv6Address(data[24:40]))
        payload = data[40:length]
        echo = proto == PROTO_ICMPV6
    else:
        return None
    if echo and len(payload) >= 8:
        kind, _code, _sum, ident, seq = struct.unpack_from("!BBHHH", payload)
        if kind in (ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMPV6_ECHO_REQUEST, ICMPV6_ECHO_REPLY):
            return IpSummary(version, src, dst, proto, length, payload, kind, ident, seq)
        return IpSummary(version, src, dst, proto, length, payload, kind)
    return IpSummary(version, src, dst, proto, length, payload)
