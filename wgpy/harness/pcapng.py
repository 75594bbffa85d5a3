"""A pcapng reader: the frames of every packet block, each with its interface's link type.

pcapng (draft-ietf-opsawg-pcapng) is a sequence of blocks: type, total length, body, total
length again, all in the byte order that the section's Section Header Block (SHB) announces with
its byte-order magic. A file may hold several sections (``cat a.pcapng b.pcapng``), each with its
own byte order and its own interfaces. Read here:

* SHB: byte order and version (major 1); a new section forgets the previous one's interfaces;
* Interface Description Block (IDB): link type, snap length, ``if_tsresol`` (10^-n, or 2^-n with
  the top bit set; default microseconds) and ``if_tsoffset`` (seconds added to each timestamp);
* Enhanced Packet Block (EPB), Simple Packet Block (SPB: interface 0, no timestamp, captured
  length from the snap length and the block) and the obsolete Packet Block that old tools wrote.

A Decryption Secrets Block (what ``editcap --inject-secrets wg,keys.log`` adds) is handed to
``on_secrets(secrets_type, data)`` when the caller gives one: ``wgpy decode`` then needs no
``--keylog`` for such a file. Every other block (name resolution, interface statistics, custom
blocks, …) is skipped. A truncated last block ends the file quietly, as a truncated last record of a
classic pcap does; a block that contradicts itself raises :class:`PcapError`.

Our own code rather than a library: dpkt 1.9.8, the small and common choice, keeps only the
first IDB's link type and timestamp resolution for every packet and reads no SPB, and the rest
of this module is what any reader must do anyway (about a hundred lines).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from wgpy.harness.pcap import Frame, PcapError

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_PB = 0x00000002  # obsolete Packet Block
BT_SPB = 0x00000003
BT_EPB = 0x00000006
BT_DSB = 0x0000000A
SECRETS_WIREGUARD = 0x57474B4C  # "WGKL": WireGuard key log lines
SHB_MAGIC = struct.pack("<I", BT_SHB)  # a palindrome: the same bytes in both orders
_BOM_LE, _BOM_BE = b"\x4d\x3c\x2b\x1a", b"\x1a\x2b\x3c\x4d"
OPT_ENDOFOPT = 0
OPT_IF_TSRESOL = 9
OPT_IF_TSOFFSET = 14
MAX_BLOCK = 1 << 28  # 256 MiB: larger is a corrupt length, not a packet


@dataclass(frozen=True, slots=True)
class Interface:
    linktype: int
    snaplen: int  # 0: no limit
    units_per_second: int = 1_000_000
    offset: int = 0  # seconds


def _options(body: bytes, start: int, order: str) -> Iterator[tuple[int, bytes]]:
    off = start
    while off + 4 <= len(body):
        code, length = struct.unpack_from(order + "HH", body, off)
        if code == OPT_ENDOFOPT:
            return
        value = body[off + 4 : off + 4 + length]
        if len(value) < length:
            raise PcapError("pcapng option runs past its block")
        yield code, value
        off += 4 + (length + 3) // 4 * 4


def _interface(body: bytes, order: str) -> Interface:
    if len(body) < 8:
        raise PcapError("pcapng interface description block too short")
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", body)
    units, offset = 1_000_000, 0
    for code, value in _options(body, 8, order):
        if code == OPT_IF_TSRESOL and len(value) >= 1:
            exp = value[0] & 0x7F
            units = 2**exp if value[0] & 0x80 else 10**exp
        elif code == OPT_IF_TSOFFSET and len(value) >= 8:
            offset = struct.unpack_from(order + "q", value)[0]
    return Interface(linktype, snaplen, units, offset)


def _timestamp(iface: Interface, high: int, low: int) -> float:
    ticks = high << 32 | low
    whole, frac = divmod(ticks, iface.units_per_second)
    return iface.offset + whole + frac / iface.units_per_second


def _lookup(interfaces: list[Interface], index: int) -> Interface:
    if index >= len(interfaces):
        raise PcapError(
            f"pcapng packet on interface {index}, but the section describes {len(interfaces)}"
        )
    return interfaces[index]


SecretsSink = Callable[[int, bytes], None]


def read_pcapng(
    f: BinaryIO, first: bytes = b"", *, on_secrets: SecretsSink | None = None
) -> Iterator[Frame]:
    """Every packet of a pcapng stream, in file order. ``first``: bytes already read from the
    start of ``f`` (at most the 4 of the first block type), for a caller that sniffed them;
    ``on_secrets`` gets each Decryption Secrets Block as it is read."""
    pending = first
    order = ""
    interfaces: list[Interface] = []
    while True:
        head = pending + f.read(8 - len(pending))
        pending = b""
        if len(head) < 8:
            return  # end of file (or a truncated last block)
        if head[:4] == SHB_MAGIC:
            bom = f.read(4)
            if bom == _BOM_LE:
                order = "<"
            elif bom == _BOM_BE:
                order = ">"
            elif len(bom) < 4:
                return
            else:
                raise PcapError("pcapng section header with no byte-order magic")
            already = bom
        elif not order:
            raise PcapError("not a pcapng file (no section header block first)")
        else:
            already = b""
        btype, length = struct.unpack(order + "II", head)
        if length < 12 or length % 4 or length > MAX_BLOCK:
            raise PcapError(f"pcapng block of type {btype:#x} has a bad length {length}")
        rest = already + f.read(length - 8 - len(already))
        if len(rest) < length - 8:
            return  # truncated last block: dropped
        if struct.unpack_from(order + "I", rest, len(rest) - 4)[0] != length:
            raise PcapError(f"pcapng block of type {btype:#x}: trailing length differs")
        body = rest[:-4]
        if btype == BT_SHB:
            if len(body) < 16:
                raise PcapError("pcapng section header block too short")
            major = struct.unpack_from(order + "H", body, 4)[0]
            if major != 1:
                raise PcapError(f"pcapng version {major} is not supported")
            interfaces = []
        elif btype == BT_IDB:
            interfaces.append(_interface(body, order))
        elif btype in (BT_EPB, BT_PB):
            if len(body) < 20:
                raise PcapError("pcapng packet block too short")
            if btype == BT_EPB:
                index, high, low, caplen, _orig = struct.unpack_from(order + "5I", body)
            else:
                index, _drops, high, low, caplen, _orig = struct.unpack_from(order + "HH4I", body)
            iface = _lookup(interfaces, index)
            data = body[20 : 20 + caplen]
            if len(data) < caplen:
                raise PcapError("pcapng packet data runs past its block")
            yield Frame(_timestamp(iface, high, low), iface.linktype, data)
        elif btype == BT_SPB:
            if len(body) < 4:
                raise PcapError("pcapng simple packet block too short")
            iface = _lookup(interfaces, 0)
            caplen = struct.unpack_from(order + "I", body)[0]
            if iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            yield Frame(0.0, iface.linktype, body[4 : 4 + caplen])
        elif btype == BT_DSB and on_secrets is not None:
            if len(body) < 8:
                raise PcapError("pcapng decryption secrets block too short")
            kind, size = struct.unpack_from(order + "II", body)
            if 8 + size > len(body):
                raise PcapError("pcapng secrets run past their block")
            on_secrets(kind, body[8 : 8 + size])
        # any other block type: skipped
