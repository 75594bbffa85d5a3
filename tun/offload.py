"""TUN send offloads: TCP/UDP super-packets read from the TUN, split into segments here.

After ``TUNSETOFFLOAD`` with ``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`` (and ``TUN_F_USO4/6``
where the kernel has them) a TUN opened with ``IFF_VNET_HDR`` hands the reader what a NIC with
TSO gets: up to 64 KiB of one TCP flow (or of one UDP socket's GSO send) in one read, its
``virtio_net_hdr`` saying how to cut it (``gso_type``, ``gso_size``), and packets whose
transport checksum is only partial (``NEEDS_CSUM``: the checksum field holds the pseudo-header
sum, the rest is to be added from ``csum_start`` to the end). One read then replaces dozens,
and the kernel's TCP stack does its work once per super-packet instead of once per segment.

:class:`Segmenter` does the NIC's part: it cuts a super-packet into segments of at most
``gso_size`` payload bytes (fewer if the MTU given is smaller), each a complete IP packet in
a row of its own buffer, zero-padded to the row's end (a multiple of 16, as WireGuard pads):

* IPv4: total length, ID (the first one's plus the segment number), header checksum;
  IPv6: payload length.
* TCP: sequence number advanced by the payload before it; FIN and PSH only on the last
  segment, CWR only on the first (as Linux's ``tcp_gso_segment``).
  UDP (``GSO_UDP_L4``): the length.
* The transport checksum computed in full: pseudo-header (addresses, protocol, the
  segment's length) plus header and payload. A receiver that gets the segments one by one
  (wireguard-go, or any stack without GRO) checks it.

The checksums are the costly part in Python (``int.from_bytes(...) % 0xFFFF``: about 3 µs
per 1400 bytes). The rows are equally long and zero-padded, so all segments of one read are
summed at once as a 2-D array of 16-bit words with numpy (about 0.2 µs per segment); each
row's sum then only needs the pseudo-header added. numpy is optional (``wgpy[tso]``): without
it the rows are summed one by one (correct, slow). Both sum little-endian words, which gives
the byte-swapped ones'-complement sum (RFC 1071: the sum does not depend on byte order),
swapped back per row. :meth:`Segmenter.headers_in_place` does the same without copying the
payload: only the headers are built, to be written in front of each segment where it lies.
"""

from __future__ import annotations

import importlib
import struct
from typing import Any, NamedTuple

_np: Any = None  # numpy, imported by the first vectorised Segmenter (16 MB resident)


def _numpy() -> Any:
    global _np  # noqa: PLW0603 - a module imported once, on first use
    if _np is None:
        try:
            _np = importlib.import_module("numpy")
        except ImportError:  # optional (wgpy[tso]): without it the split goes row by row
            _np = False
    return _np or None


VNET_HDR = struct.Struct("=BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, offset
NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

# TUNSETOFFLOAD (linux/if_tun.h): _IOW('T', 208, unsigned int), and its flags
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TSO = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
USO = TUN_F_USO4 | TUN_F_USO6

_FIN, _PSH, _CWR = 0x01, 0x08, 0x80
MAX_ROWS = 2048  # more segments than this in one read (an MSS under 32 bytes): dropped
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_ZEROS = memoryview(bytes(65536 + 16))


def ones_sum(data: bytes | bytearray | memoryview) -> int:
    """The ones'-complement sum of ``data`` as big-endian 16-bit words (an odd last byte
    padded with zero), folded to 16 bits: 0 only for all-zero data, else 1..0xFFFF."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    whole = int.from_bytes(data, "big")
    rest = whole % 0xFFFF
    return 0xFFFF if rest == 0 and whole else rest


def fold(x: int) -> int:
    """Fold a sum of 16-bit words to 16 bits, end-around carry (0 stays 0)."""
    while x > 0xFFFF:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def complete_checksum(buf: bytearray, start: int, length: int, cs: int, co: int) -> bool:
    """``NEEDS_CSUM`` without GSO: finish the checksum of the packet ``buf[start:start+length]``
    in place (the field at ``cs + co`` holds the pseudo-header sum; everything from ``cs`` on
    is added). False if the offsets do not fit the packet (the caller drops it)."""
    field = start + cs + co
    if cs < 20 or co + 2 > length - cs or field + 2 > start + length:
        return False
    s = ones_sum(memoryview(buf)[start + cs : start + length])
    check = 0xFFFF - s
    if check == 0 and co == 6:  # UDP: 0 means "no checksum"; the kernel sends 0xFFFF
        check = 0xFFFF
    _U16.pack_into(buf, field, check)
    return True


class Segmenter:
    """Cuts offloaded super-packets into checksummed segments (module docstring).

    :meth:`split` leaves segment ``k`` at ``buf[k * stride : k * stride + lengths[k]]``,
    zeros after it up to the row's end, and returns how many there are.
    """

    def __init__(self, *, vectorised: bool = True) -> None:
        self.buf = bytearray(96 * 1024)
        self.view = memoryview(self.buf)
        self.stride = 0
        self.lengths: list[int] = []
        self.headers = b""  # of headers_in_place: hlen bytes per segment
        self.hlen = self.mss = 0
        self.vectorised = vectorised and _numpy() is not None
        self.split_packets = 0  # super-packets split
        self.segments = 0  # segments they gave

    def split(self, src: Any, start: int, length: int, hdr: tuple[int, ...], mtu: int) -> int:
        """Split the super-packet ``src[start:start+length]`` whose ``virtio_net_hdr`` fields
        are ``hdr`` (as :data:`VNET_HDR` unpacks them) into segments of at most ``mtu`` bytes.
        Returns their number; 0 for a packet that cannot be split (malformed: drop it)."""
        lay = layout(src, start, length, hdr, mtu)
        if lay is None:
            return 0
        rows, stride = lay.rows, lay.stride
        need = rows * stride
        if need > len(self.buf):
            self.buf = bytearray(need)
            self.view = memoryview(self.buf)
        ip_id, pseudo = _ip_fields(src, start, lay)
        cut = self._cut_numpy if self.vectorised else self._cut_python
        self.lengths = cut(src, start, length, lay, ip_id=ip_id, pseudo=pseudo)
        self.stride = stride
        self.split_packets += 1
        self.segments += rows
        return rows

    def headers_in_place(
        self, src: bytearray, start: int, length: int, hdr: tuple[int, ...], mtu: int
    ) -> int:
        """Like :meth:`split`, without copying the payload: segment ``k`` is to be sealed
        at ``src[start + k * mss:]``, ``lengths[k]`` bytes, once its header (``headers[k *
        hlen:][:hlen]``) is written there, over the end of the segment before it. So the
        segments must be taken in order, each used before the next header is written; and a
        segment padded in place must have its padding undone before the next is taken.
        Checksums are computed here, from the payload as read. Returns the number of
        segments, 0 for a malformed packet, -1 when only :meth:`split` can do it (no numpy,
        or the payload does not start on an even offset: an odd MSS)."""
        if not self.vectorised:
            return -1
        lay = layout(src, start, length, hdr, mtu)
        if lay is None:
            return 0
        version, proto, cs, hlen, check_at, mss, rows, _stride = lay
        p0 = start + hlen
        if p0 & 1 or mss & 1:
            return -1
        np = _np
        last = rows - 1
        last_len = length - hlen - last * mss
        end = p0 + rows * mss  # the payload as whole rows: the last one filled with zeros
        if end > len(src):
            return -1
        src[start + length : end] = _ZEROS[: end - start - length]
        words = np.frombuffer(src, dtype="<u2", count=end // 2)
        pay = words[p0 // 2 :].reshape(rows, mss // 2).sum(axis=1, dtype=np.uint32)
        pay = pay.astype(np.int64)  # (summing into 64 bits directly is twice as slow)
        ip_id, pseudo = _ip_fields(src, start, lay)
        h = np.empty((rows, hlen), dtype=np.uint8)
        h[:] = np.frombuffer(src, dtype=np.uint8, count=hlen, offset=start)
        h16 = h.view(">u2")
        lens = np.full(rows, hlen + mss, dtype=np.int64)
        lens[last] = hlen + last_len
        k = np.arange(rows, dtype=np.int64)
        if version == 4:
            head = bytearray(src[start : start + cs])
            head[2:6] = bytes(4)
            head[10:12] = bytes(2)
            ids = (ip_id + k) & 0xFFFF
            h16[:, 1] = lens
            h16[:, 2] = ids
            h16[:, 5] = 0xFFFF - _mod_fold(ones_sum(head) + lens + ids)
        else:
            h16[:, 2] = lens - 40
        if proto == 6:
            seqs = (_U32.unpack_from(src, start + cs + 4)[0] + k * mss) & 0xFFFFFFFF
            h16[:, (cs + 4) // 2] = seqs >> 16
            h16[:, (cs + 6) // 2] = seqs & 0xFFFF
            f = src[start + cs + 13]
            h[:, cs + 13] = f & ~(_FIN | _PSH | _CWR)
            h[0, cs + 13] = f & ~(_FIN | _PSH) if last else f
            if last:
                h[last, cs + 13] = f & ~_CWR
        else:
            h16[:, (cs + 4) // 2] = lens - cs
        h16[:, check_at // 2] = 0
        x = _mod_fold(pay)
        x = ((x & 0xFF) << 8) | (x >> 8)  # little-endian words: the byte-swapped sum
        x += h16[:, cs // 2 :].sum(axis=1, dtype=np.int64)
        check = 0xFFFF - _mod_fold(x + pseudo + lens)
        if proto == 17:
            check[check == 0] = 0xFFFF
        h16[:, check_at // 2] = check
        self.headers = h.tobytes()
        self.hlen, self.mss = hlen, mss
        self.lengths = lens.tolist()
        self.split_packets += 1
        self.segments += rows
        return rows

    def _cut_python(
        self, src: Any, start: int, length: int, lay: _Layout, *, ip_id: int, pseudo: int
    ) -> list[int]:
        """Row by row: the reference, and the way without numpy."""
        version, proto, cs, hlen, check_at, mss, rows, stride = lay
        buf = self.buf
        srcv = memoryview(src)
        header = srcv[start : start + hlen]
        seq = _U32.unpack_from(src, start + cs + 4)[0] if proto == 6 else 0
        tflags = src[start + cs + 13] if proto == 6 else 0
        lengths: list[int] = []
        pos = start + hlen
        end = start + length
        last = rows - 1
        for k in range(rows):
            row = k * stride
            chunk = mss if k < last else end - pos
            seg_len = hlen + chunk
            buf[row : row + hlen] = header
            buf[row + hlen : row + seg_len] = srcv[pos : pos + chunk]
            pad = stride - seg_len
            if pad:
                buf[row + seg_len : row + stride] = _ZEROS[:pad]
            pos += chunk
            if version == 4:
                _U16.pack_into(buf, row + 2, seg_len)
                _U16.pack_into(buf, row + 4, (ip_id + k) & 0xFFFF)
                buf[row + 10 : row + 12] = b"\0\0"
                _U16.pack_into(buf, row + 10, 0xFFFF - ones_sum(buf[row : row + cs]))
            else:
                _U16.pack_into(buf, row + 4, seg_len - 40)
            if proto == 6:
                _U32.pack_into(buf, row + cs + 4, (seq + k * mss) & 0xFFFFFFFF)
                f = tflags
                if k < last:
                    f &= ~(_FIN | _PSH)
                if k:
                    f &= ~_CWR
                buf[row + cs + 13] = f
            else:
                _U16.pack_into(buf, row + cs + 4, seg_len - cs)
            buf[row + check_at : row + check_at + 2] = b"\0\0"
            lengths.append(seg_len)
        view = memoryview(buf)
        for k in range(rows):
            whole = int.from_bytes(view[k * stride + cs : (k + 1) * stride], "little")
            s = whole % 0xFFFF or (0xFFFF if whole else 0)  # of little-endian words:
            s = ((s & 0xFF) << 8) | (s >> 8)  # the byte-swapped sum (RFC 1071)
            check = 0xFFFF - fold(s + pseudo + lengths[k])
            if check == 0 and proto == 17:
                check = 0xFFFF
            _U16.pack_into(buf, k * stride + check_at, check)
        return lengths

    def _cut_numpy(
        self, src: Any, start: int, length: int, lay: _Layout, *, ip_id: int, pseudo: int
    ) -> list[int]:
        """All rows at once: the rows are a 2-D array of bytes, each header field a column."""
        np = _np
        version, proto, cs, hlen, check_at, mss, rows, stride = lay
        g = np.frombuffer(self.buf, dtype=np.uint8, count=rows * stride).reshape(rows, stride)
        s = np.frombuffer(src, dtype=np.uint8, count=length, offset=start)
        last = rows - 1
        last_len = length - hlen - last * mss  # 1..mss
        g[:, :hlen] = s[:hlen]
        if last:
            g[:last, hlen : hlen + mss] = s[hlen : hlen + last * mss].reshape(last, mss)
            g[:last, hlen + mss :] = 0
        g[last, hlen : hlen + last_len] = s[hlen + last * mss : length]
        g[last, hlen + last_len :] = 0
        lens = np.full(rows, hlen + mss, dtype=np.int64)
        lens[last] = hlen + last_len
        k = np.arange(rows, dtype=np.int64)
        if version == 4:
            _put16(g, 2, lens)
            ids = (ip_id + k) & 0xFFFF
            _put16(g, 4, ids)
            g[:, 10:12] = 0
            head = bytearray(src[start : start + cs])
            head[2:6] = bytes(4)
            head[10:12] = bytes(2)
            base = ones_sum(head)  # the header without length, ID and checksum
            _put16(g, 10, 0xFFFF - _fold(base + lens + ids))
        else:
            _put16(g, 4, lens - 40)
        if proto == 6:
            seq = _U32.unpack_from(src, start + cs + 4)[0]
            seqs = (seq + k * mss) & 0xFFFFFFFF
            _put16(g, cs + 4, seqs >> 16)
            _put16(g, cs + 6, seqs & 0xFFFF)
            f = src[start + cs + 13]
            g[:, cs + 13] = f & ~(_FIN | _PSH | _CWR)
            g[0, cs + 13] = f & ~(_FIN | _PSH) if last else f
            if last:
                g[last, cs + 13] = f & ~_CWR
        else:
            _put16(g, cs + 4, lens - cs)
        g[:, check_at : check_at + 2] = 0
        words = np.frombuffer(self.buf, dtype="<u2", count=rows * stride // 2)
        sums = words.reshape(rows, stride // 2)[:, cs // 2 :].sum(axis=1, dtype=np.int64)
        x = _fold(sums)
        x = ((x & 0xFF) << 8) | (x >> 8)  # little-endian words: the byte-swapped sum
        check = 0xFFFF - _fold(x + pseudo + lens)
        if proto == 17:
            check[check == 0] = 0xFFFF
        _put16(g, check_at, check)
        out: list[int] = lens.tolist()
        return out


def layout(src: Any, start: int, length: int, hdr: tuple[int, ...], mtu: int) -> _Layout | None:
    """How the super-packet ``src[start:start+length]`` with ``virtio_net_hdr`` fields
    ``hdr`` is cut (segments no longer than ``mtu``); None if it cannot be (malformed)."""
    _flags, gso_type, _hlen, gso_size, cs, _co = hdr
    gso = gso_type & ~GSO_ECN
    if length < 20 or cs & 1 or gso_size == 0:
        return None
    version = src[start] >> 4
    if gso in (GSO_TCPV4, GSO_TCPV6):
        if version != (4 if gso == GSO_TCPV4 else 6) or cs + 20 > length:
            return None
        thl = int(src[start + cs + 12] >> 4) * 4
        if thl < 20:
            return None
        hlen, proto, check_at = cs + thl, 6, cs + 16
    elif gso == GSO_UDP_L4 and version in (4, 6):
        hlen, proto, check_at = cs + 8, 17, cs + 6
    else:
        return None
    if (cs != (src[start] & 0x0F) * 4 or cs < 20) if version == 4 else cs < 40:
        return None
    payload = length - hlen
    mss = gso_size if hlen + gso_size <= mtu else mtu - hlen
    if payload <= 0 or mss <= 0:
        return None
    rows = (payload + mss - 1) // mss
    if rows > MAX_ROWS:
        return None
    return _Layout(version, proto, cs, hlen, check_at, mss, rows, (hlen + mss + 15) & ~15)


def _ip_fields(src: Any, start: int, lay: _Layout) -> tuple[int, int]:
    """The first IPv4 ID (0 for IPv6) and the pseudo-header sum without the length (and
    less ``cs``, so that adding a segment's IP length gives its transport length)."""
    if lay.version == 4:
        ip_id = (src[start + 4] << 8) | src[start + 5]
        addr_sum = ones_sum(memoryview(src)[start + 12 : start + 20])
    else:
        ip_id = 0
        addr_sum = ones_sum(memoryview(src)[start + 8 : start + 40])
    return ip_id, addr_sum + lay.proto - lay.cs


class _Layout(NamedTuple):
    version: int
    proto: int
    cs: int  # where the transport header starts
    hlen: int  # IP and transport headers
    check_at: int  # the transport checksum's offset
    mss: int
    rows: int
    stride: int


def _fold(x: Any) -> Any:
    """``fold`` for numpy arrays of sums below 2**47."""
    x = (x & 0xFFFF) + (x >> 16)
    x = (x & 0xFFFF) + (x >> 16)
    return (x & 0xFFFF) + (x >> 16)


def _mod_fold(x: Any) -> Any:
    """``fold`` for numpy arrays of positive sums (0 becomes 0xFFFF: the same in ones'
    complement, and only ever added to more)."""
    return (x - 1) % 0xFFFF + 1


def _put16(g: Any, col: int, values: Any) -> None:
    """Column ``col`` and the next of every row: ``values`` as big-endian 16-bit numbers."""
    g[:, col] = (values >> 8) & 0xFF
    g[:, col + 1] = values & 0xFF
