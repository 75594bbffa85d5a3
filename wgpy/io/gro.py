"""TCP segments coalesced into one TUN write (GRO in userspace; protocol doc §9).

A TUN opened with ``IFF_VNET_HDR`` accepts a ``virtio_net_hdr`` in front of each write; with
``gso_type`` TCPV4/TCPV6 one write can carry many consecutive segments of a TCP flow as one
super-packet, and the kernel's stack then handles them as one (as after a NIC's GRO) instead
of one by one. On the receiving side of a tunnel the TUN writes are where most of the time
goes (docs/benchmarks.md), so :class:`TcpCoalescer` collects the segments that one UDP read
delivers and writes them together.

Segments join a group only when the result is what the sender's TCP would have sent as one
segment: same addresses, ports, ACK, window, flags (ACK alone), TCP options and IP header
fields apart from length, ID and checksum; sequence numbers adjacent; every payload the size
of the first, a smaller one only last. The written packet has its IP length (and IPv4 header
checksum) fixed, ``NEEDS_CSUM`` with the pseudo-header sum in the TCP checksum field, as a
NIC's ``CHECKSUM_PARTIAL`` packet has. Anything else is written as it came, with a zeroed
header. Sans-IO: the caller gives the write function.

The segments' own TCP checksums are not verified: the kernel then treats the packet as
checked. That is what the kernel's WireGuard does with every decrypted packet
(``CHECKSUM_UNNECESSARY``): the AEAD already proved it arrived as the peer sent it.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from tun.base import VNET_HDR_LEN, ZERO_VNET_HDR
from tun.offload import fold, ones_sum
from wgpy.io import accel

VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start/offset
NEEDS_CSUM = 1
GSO_TCPV4 = 1
GSO_TCPV6 = 4
MAX_IP = 65535  # IPv4 total length (IPv6: payload length) fits 16 bits
TCP_ACK = 0x10
_SEQ = struct.Struct("!I")
_U16 = struct.Struct("!H")
_H = VNET_HDR_LEN  # where the group's IP packet starts in the buffer

# The fields a segment must share with the first of its group, per TCP header length: all of
# the IP and TCP headers but lengths, IPv4 ID, checksums and the sequence number (skipped).
# IPv4: version/IHL/TOS; flags/fragment, TTL, protocol; addresses and ports; ACK, offset,
# flags, window; urgent pointer and options. IPv6: version/class/flow label; next header, hop
# limit, addresses and ports; then as IPv4.
_KEY_V4 = {thl: struct.Struct(f"!2s4x4s2x12s4x8s2x{thl - 18}s") for thl in range(20, 61, 4)}
_KEY_V6 = {thl: struct.Struct(f"!4s2x38s4x8s2x{thl - 18}s") for thl in range(20, 61, 4)}


def wanted() -> bool:
    """Whether TUNs are opened for coalesced writes: yes unless ``WGPY_TUN_GRO=0``."""
    return os.environ.get("WGPY_TUN_GRO", "1") != "0"


def tso_wanted() -> bool:
    """Whether those TUNs also take send offloads (``TUNSETOFFLOAD``, super-packets on reads,
    :mod:`tun.offload`): by default where the fast path's compiled part is built (it cuts,
    checksums and seals a 64 KiB read in one call), not without it (in Python the split costs
    what the reads it saves cost, and with ``TUN_F_CSUM`` every other locally sent TCP/UDP
    packet needs its checksum computed here; docs/benchmarks.md, sections 9 and 10).
    ``WGPY_TUN_TSO=1`` or ``=0`` decides either way; never with GRO off."""
    if not wanted():
        return False
    choice = os.environ.get("WGPY_TUN_TSO")
    if choice is not None:
        return choice == "1"
    return accel.batch is not None


class TcpCoalescer:
    """Holds consecutive segments of one TCP flow and writes them as one GSO packet.

    ``offer(view, start, length)`` takes the IP packet ``view[start:start+length]`` (a
    memoryview of bytes) into the group (True; it is copied, so the buffer may be reused) or
    refuses it (False: the caller writes it alone, after :meth:`flush`). :meth:`flush` writes
    the group, if any; call it before anything else goes to the TUN and at the end of each
    batch. ``write`` receives the bytes to write, ``virtio_net_hdr`` first; it may raise
    ``OSError`` (counted in ``errors``). When the kernel refuses a GSO write (EINVAL,
    EOPNOTSUPP), ``refused`` is set and every later packet refused, so the caller writes them
    one by one.
    """

    def __init__(self, write: Callable[[memoryview], object]) -> None:
        self.write = write
        self.buf = bytearray(_H + MAX_IP)
        self.view = memoryview(self.buf)
        self.held = 0  # segments in the group
        self.end = 0  # end of the group's data in buf
        self.ihl = 0  # IP header length (20 or 40)
        self.hlen = 0  # IP + TCP header length
        self.seg = 0  # payload size of the first segment: the GSO segment size
        self.next_seq = 0
        self.key: tuple[object, ...] = ()  # the header fields a joining segment must repeat
        self.key_of = _KEY_V4[20]
        self.coalesced = 0  # GSO packets written
        self.segments = 0  # segments they carried
        self.errors = 0  # writes the OS refused (their segments are lost, as TCP allows)
        self.refused = False  # the kernel refused a GSO write: write segments one by one

    def offer(self, view: memoryview, start: int, length: int) -> bool:
        if self.refused:
            return False
        b0 = view[start]
        if b0 == 0x45:  # IPv4 without options
            ihl = 20
        elif b0 >> 4 == 6:
            ihl = 40
        else:
            return False
        t = start + ihl
        if length < ihl + 20:
            return False
        hlen = ihl + (view[t + 12] >> 4) * 4
        payload = length - hlen
        if self.held:
            # the common case, a segment that joins: one unpack for every field but the
            # lengths, IPv4 ID, checksums and sequence number (the segment must repeat them)
            if (
                hlen == self.hlen
                and ihl == self.ihl
                and 0 < payload <= self.seg
                and _SEQ.unpack_from(view, t + 4)[0] == self.next_seq
                and self.key_of.unpack_from(view, start) == self.key
                and self.end + payload <= _H + MAX_IP
            ):
                end = self.end
                self.buf[end : end + payload] = view[start + hlen : start + length]
                self.end = end + payload
                self.held += 1
                self.next_seq = (self.next_seq + payload) & 0xFFFFFFFF
                if payload < self.seg:  # a short segment ends a group
                    self.flush()
                return True
            self.flush()
        # a new group: TCP (IPv4: not a fragment; IPv6: no extension header), flags ACK alone
        if ihl == 20:
            if view[start + 9] != 6 or view[start + 6] & 0x3F or view[start + 7]:
                return False
        elif view[start + 6] != 6:
            return False
        if view[t + 13] != TCP_ACK or payload <= 0 or hlen - ihl < 20:
            return False  # pure ACKs: nothing to gain, and they carry window updates
        key_of = (_KEY_V4 if ihl == 20 else _KEY_V6)[hlen - ihl]
        self.buf[_H : _H + length] = view[start : start + length]
        self.held, self.end = 1, _H + length
        self.ihl, self.hlen, self.seg = ihl, hlen, payload
        self.next_seq = (_SEQ.unpack_from(view, t + 4)[0] + payload) & 0xFFFFFFFF
        self.key_of, self.key = key_of, key_of.unpack_from(view, start)
        return True

    def flush(self) -> None:
        """Write the group (one GSO packet, or the lone segment as it came) and forget it."""
        held = self.held
        if not held:
            return
        self.held = 0
        g = self.buf
        if held == 1:
            g[0:_H] = ZERO_VNET_HDR
        else:
            ihl, total = self.ihl, self.end - _H
            t = _H + ihl
            tcp_len = total - ihl
            if ihl == 20:
                _U16.pack_into(g, _H + 2, total)
                g[_H + 10 : _H + 12] = b"\0\0"
                _U16.pack_into(g, _H + 10, 0xFFFF - ones_sum(g[_H : _H + 20]))
                addrs = g[_H + 12 : _H + 20]
                gso = GSO_TCPV4
            else:
                _U16.pack_into(g, _H + 4, tcp_len)
                addrs = g[_H + 8 : _H + 40]
                gso = GSO_TCPV6
            # CHECKSUM_PARTIAL: the field holds the pseudo-header sum, the kernel adds the rest
            _U16.pack_into(g, t + 16, fold(ones_sum(addrs) + 6 + tcp_len))
            VNET_HDR.pack_into(g, 0, NEEDS_CSUM, gso, self.hlen, self.seg, ihl, 16)
            self.coalesced += 1
            self.segments += held
        try:
            self.write(self.view[: self.end])
        except OSError as e:
            self.errors += 1
            if held > 1 and e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                # a kernel that does not take GSO packets on a TUN (the UDP GSO fallback's
                # counterpart): these segments are lost once, TCP resends them
                self.refused = True
