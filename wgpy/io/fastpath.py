"""The data-plane fast path: transport data sealed and opened in batches.

The sans-IO :class:`~wgpy.core.device.Device` handles one packet per call and returns new ``bytes``
for each; at a Gbit/s that bookkeeping costs more than the crypto (docs/benchmarks.md). This
layer moves the common case — a data packet on an established session — without it:

* **TUN → UDP** (:meth:`FastPath.on_tun`): up to ``BATCH`` packets are read one by one into a
  plaintext buffer, padded there and sealed (``encrypt_into``) into an arena behind their
  header; consecutive same-size datagrams to one endpoint form a run sent with one
  ``sendmsg`` carrying a ``UDP_SEGMENT`` cmsg (UDP GSO), at most ``GSO_MAX_SEGMENTS`` per run.
  On a TUN with send offloads (``LinuxTun(offload=True)``) a read may be a TCP or UDP
  super-packet of up to 64 KiB: :class:`tun.offload.Segmenter` cuts it into checksummed
  segments, which are sealed one after the other as if read one by one (a read whose
  checksum is only partial gets it completed first).
* **UDP → TUN** (:meth:`FastPath.on_udp`): ``recvmsg_into`` one buffer; with ``UDP_GRO`` the
  kernel hands several datagrams of one flow at once, split by the cmsg's segment size. Each is
  opened (``decrypt_into``) into a packet buffer, replay-checked *after* authentication,
  source-checked and written to the TUN from there. On a TUN opened with ``IFF_VNET_HDR``, TCP
  segments are held instead and consecutive ones of a flow go to the TUN as one GSO write
  (:mod:`wgpy.io.gro`), at the latest when the socket has nothing more to read.

Where the compiled part is built (:mod:`wgpy.io.accel`, ``wgpy/io/_batch.c``), the work per
packet around the AEAD goes to C: ``on_tun`` hands each whole read to ``Sealer.seal`` (pad,
header, seal; a super-packet cut, checksummed and sealed segment by segment in one call, its
segments then sent as GSO runs), and ``on_udp`` opens all datagrams of one receiver index in a
GRO read with one ``Opener.open`` call, each into its own slot of ``_opened``; the replay
check, routing and everything after stay here, the same for both. ``use_compiled=False`` (or
``WGPY_ACCEL=0``) keeps it all in Python; the tests run both.

The AEAD never works in place: its input and output are always different buffers. That is
what ``*_into`` is documented for (cryptography 51 refuses overlapping buffers, which cost a
fresh install all its data, issue 13), and it costs nothing, since the output is written
anyway. An unexpected exception on the per-packet path sends that packet the ordinary way
(the ciphertext of a received one is still intact), is counted in :attr:`FastPath.faults` and
logged sparingly (:mod:`wgpy.io.faults`); when they come densely the fast path asks to be
switched off (``on_broken``), and the ordinary path carries everything from then on.

Latency comes first where it costs nothing in throughput: the first packet of a TUN read is
sent at once, before the rest of the batch; and after the first packet ``on_udp`` writes to
the TUN it reads the TUN (``on_tun``) before reading on, because the answer of a local stack
(ICMP echo reply, TCP ACK) is usually queued by then. Bookkeeping comes after. On an idle
machine every wake-up runs with cold caches, so each step saved before the ``sendto`` shows
in the round-trip time (docs/benchmarks.md).

And right after that first ``sendto``, and after the first TUN write of an ``on_udp``, the fast
path hands the CPU over (``sched_yield``): the kernel wakes a datagram's receiver (or the
local reader of a written packet) with a "sync" hint and often queues it on the waker's CPU,
where it would otherwise wait for the waker's bookkeeping and its return to epoll. A syscall
or two per wake-up; the idle round trip gains tens of µs on 2 vCPUs (docs/benchmarks.md).
Not under a handshake flood (``Device.handshake_pressure``): then every wake-up is busy, and
each yield hands the CPU to the flood's other consumers while the socket fills (issue 16).

Timers, endpoint and byte counters are updated once per batch and peer through
``Device.sent_batch`` / ``Device.received_batch``. Handshake messages only go into the Device's
backlog (``Device.queue_handshake``: a type and size check, no crypto); the event loop works on
them after the data, within a budget (``Device.process_handshakes``, via ``get_timer``), so a
handshake flood cannot starve the data read in the same wake-up. Anything else — a first
packet on a ``next`` session, no or ageing session, staged packets — goes to the ordinary
``Device`` methods, whose outputs are sent before the fast path carries on, so per-peer order
is kept. Nonces come from ``kp.send_counter`` in read order; the replay window is the Device's.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from noise.crypto import AuthenticationFailed
from noise.crypto import pack_nonce as _nonce
from tun.base import VNET_HDR_LEN, TunDevice
from tun.offload import MAX_ROWS, VNET_HDR, Segmenter, complete_checksum
from wgpy.core import messages
from wgpy.core.device import Device
from wgpy.core.drops import Drop
from wgpy.core.keypair import Keypair
from wgpy.core.peer import Endpoint, Peer
from wgpy.io import accel
from wgpy.io.bind import Bind, DatagramSocket
from wgpy.io.faults import FaultLog
from wgpy.io.gro import NEEDS_CSUM, TcpCoalescer

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104

BATCH = 128  # packets per wake-up and source (wireguard-go IdealBatchSize)
MAX_SEALED = BATCH + MAX_ROWS  # packets one on_tun may seal: reads, then a split's segments
GSO_MAX_SEGMENTS = 64  # the kernel takes 128; wireguard-go stops at 64
GSO_MAX_BYTES = 65000  # one GSO send is one IP packet: ≤ 65535 with headers
MAX_TUN_READ = 65535  # the largest IP packet a TUN read can return
HEADROOM = messages.TRANSPORT_HEADER_SIZE
TAG = messages.TAG_SIZE
ARENA = 4 * (MAX_TUN_READ + 64)
RX_BUFFER = 65536 + 64
_ARENA_LIMIT = ARENA - MAX_TUN_READ - HEADROOM - TAG - 16  # start a new arena pass beyond

# Plaintext buffers (``_pt`` for sending, ``_pkt`` for receiving) hold the IP packet at _P,
# behind room for a virtio_net_hdr: fixed offsets for the header fields.
_P = VNET_HDR_LEN
# a packet, its padding and the header in front; and room for tun.offload to fill up the
# last segment of a super-packet split in place (at most an MSS more)
PLAINTEXT = _P + 2 * MAX_TUN_READ + 16

_HEADER = messages.TRANSPORT_HEADER
_SEGMENT = struct.Struct("=H")
_ZEROS = bytes(16)
_CMSG_SPACE = socket.CMSG_SPACE(4)
padding_size = messages.padding_size
_TRANSPORT = messages.MESSAGE_TRANSPORT
_KEEPALIVE = messages.MESSAGE_KEEPALIVE_SIZE

log = logging.getLogger(__name__)


class FastPath:
    """Batched data plane for one ``Device``, its TUN and its UDP bind.

    ``send_errors`` / ``tun_write_errors`` count datagrams and packets the OS refused (dropped,
    as the ordinary path does). ``gso`` turns off by itself when a GSO send fails with EIO.
    """

    def __init__(
        self,
        device: Device,
        tun: TunDevice,
        bind: Bind,
        *,
        clock: Callable[[], float],
        hand_over: Callable[[], None] | None = os.sched_yield,
        on_broken: Callable[[str], None] | None = None,
        may_send: Callable[[], bool] | None = None,
        use_compiled: bool = True,
    ) -> None:
        self.device = device
        self.tun = tun
        self.bind = bind
        self.clock = clock
        self.hand_over = hand_over
        # the previous on_tun sealed / on_udp opened more than one packet: a bulk flow (one
        # way, its ACKs the other), in which a hand-over only costs (a yield per wake-up:
        # 7-16 % of each end's samples)
        self._bulk_tx = self._bulk_rx = False
        self.gso = True
        self.gso_refused = 0  # GSO sends the kernel refused (each sent one by one instead)
        self.send_errors = 0
        self.tun_write_errors = 0
        self.tun_error: str | None = None  # set when a TUN read inside on_udp failed
        self.faults = FaultLog("fast path", clock=clock, logger=log)
        self.on_broken = on_broken  # called when faults come densely: switch me off
        self.may_send = may_send  # asked before each send; False: dropped, counted in fenced
        self.fenced = 0
        self._file = _raw_file(tun)
        # IFF_VNET_HDR: reads put the header in the head-room, writes carry one (gro.py)
        vnet = bool(getattr(tun, "vnet_hdr", False))
        self._read_into: Callable[[Any], int | None]
        self._write: Callable[[Any], object]
        if self._file is not None:
            self._read_into, self._write = self._file.readinto, self._file.write
        elif vnet:  # an in-memory TUN playing one (tun.memory)
            self._read_into, self._write = tun.raw_read_into, tun.raw_write  # type: ignore[attr-defined]
        else:
            self._read_into, self._write = tun.read_into, tun.write
        self._vnet_len = VNET_HDR_LEN if vnet else 0
        self.gro = TcpCoalescer(self._write) if vnet else None
        # the compiled per-read seal (wgpy.io._batch), or None: the same work in Python
        self.compiled = accel.batch if use_compiled else None
        # TUNSETOFFLOAD done: reads may be super-packets, split here (compiled, or tun.offload)
        self.offloads = vnet and bool(getattr(tun, "offload", False))
        self.tso = Segmenter() if self.offloads and self.compiled is None else None
        self.compiled_splits = self.compiled_segments = 0  # super-packets the compiled path cut
        self.compiled_runs = 0  # GRO reads (or their tails) received by the compiled path
        self._pending_rx: dict[Peer, list[Any]] = {}  # received, not yet committed
        self._tx = bytearray(ARENA)  # sealed datagrams, sent in GSO runs
        self._txv = memoryview(self._tx)
        self._pt = bytearray(PLAINTEXT)  # the TUN packet being sealed
        self._ptv = memoryview(self._pt)
        self._pt_read = self._ptv[_P - self._vnet_len : _P + MAX_TUN_READ]
        self._rx = bytearray(RX_BUFFER)  # received datagrams
        self._rxv = memoryview(self._rx)
        self._pkt = bytearray(PLAINTEXT)  # the opened packet, written to the TUN from here
        self._pktv = memoryview(self._pkt)
        # the compiled path opens a GRO read's datagrams at once: packet i at _P + i * stride
        self._opened = bytearray(_P + RX_BUFFER + 64 * _P) if self.compiled else bytearray()
        self._openedv = memoryview(self._opened)
        # ... or, on a TUN taking GSO writes, also checks and coalesces them: the TUN writes
        self._rxout = bytearray(2 * RX_BUFFER + _P) if self.compiled and self.gro else bytearray()
        self._rxoutv = memoryview(self._rxout)
        self._rx_bufs = [self._rxv]
        # the GSO run being built in the arena: [start, end) of datagrams of `seg` bytes each
        self._run_start = 0
        self._run_end = 0
        self._run_seg = 0
        self._run_n = 0
        self._run_addr: Endpoint | None = None

    # --- sending -------------------------------------------------------------------------------

    def _send_run(self) -> None:
        """Send the pending run (one GSO ``sendmsg`` or one ``sendto``) and forget it."""
        n, addr = self._run_n, self._run_addr
        if n == 0 or addr is None:
            return
        data = self._txv[self._run_start : self._run_end]
        seg = self._run_seg
        self._run_n = 0
        self._run_addr = None
        if self.may_send is not None and not self.may_send():
            self.fenced += n
            return
        sock = self.bind.v6 if ":" in addr[0] else self.bind.v4
        if sock is None:
            self.send_errors += n
            return
        try:
            if n == 1:
                sock.sendto(data, addr)
            elif self.gso:
                sock.sendmsg([data], [(SOL_UDP, UDP_SEGMENT, _SEGMENT.pack(seg))], 0, addr)
            else:
                for off in range(0, len(data), seg):
                    sock.sendto(data[off : off + seg], addr)
        except OSError as e:
            if n > 1 and self.gso and e.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP):
                # The kernel refused the GSO send: this run goes datagram by datagram.
                # Only EIO (no checksum offload on the route) turns GSO off for good, as in
                # wireguard-go; EINVAL or EOPNOTSUPP can come from a passing state (a smaller
                # path MTU, a route change) and must not cost GSO for the process lifetime.
                self.gso_refused += 1
                if e.errno == errno.EIO:
                    self.gso = False
                for off in range(0, len(data), seg):
                    try:
                        sock.sendto(data[off : off + seg], addr)
                    except OSError:
                        self.send_errors += 1
                return
            self.send_errors += n

    def _send_one(self, data: bytes | memoryview, addr: Endpoint) -> None:
        """One datagram; a refusal by the OS is counted in ``send_errors``."""
        if self.may_send is not None and not self.may_send():
            self.fenced += 1
            return
        sock = self.bind.v6 if ":" in addr[0] else self.bind.v4
        try:
            if sock is None:
                raise OSError(errno.EAFNOSUPPORT, "no socket for this address family")
            sock.sendto(data, addr)
        except OSError:
            self.send_errors += 1

    def _add_to_run(self, start: int, length: int, addr: Endpoint) -> None:
        """Append the datagram at ``arena[start:start+length]`` (right after the run) to it."""
        if self._run_n:
            seg = self._run_seg
            if (
                addr == self._run_addr
                and start == self._run_end
                and length <= seg
                and self._run_n < GSO_MAX_SEGMENTS
                and self._run_end - self._run_start + length <= GSO_MAX_BYTES
            ):
                self._run_end = start + length
                self._run_n += 1
                if length < seg:  # a shorter datagram may only end a run
                    self._send_run()
                return
            self._send_run()
        self._run_start, self._run_end = start, start + length
        self._run_seg, self._run_n, self._run_addr = length, 1, addr

    def tso_counts(self) -> tuple[int, int] | None:
        """Super-packets read and split into segments, and how many segments they gave (by
        the compiled path or :class:`tun.offload.Segmenter`); None without TUN offloads."""
        if not self.offloads:
            return None
        reads, segments = self.compiled_splits, self.compiled_segments
        if self.tso is not None:
            reads, segments = reads + self.tso.split_packets, segments + self.tso.segments
        return reads, segments

    def _send_segments(self, start: int, size: int, seg: int, addr: Endpoint) -> None:
        """Send the datagrams at ``arena[start:start+size]``, all ``seg`` bytes long but the
        last (a super-packet's segments, sealed by the compiled path) in GSO runs, after the
        pending run."""
        self._send_run()
        per = max(1, min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // seg)) * seg
        end = start + size
        while start < end:
            stop = min(start + per, end)
            self._run_start, self._run_end, self._run_seg = start, stop, seg
            self._run_n, self._run_addr = -(-(stop - start) // seg), addr
            self._send_run()
            start = stop

    def send_device_output(self) -> None:
        """Send what the Device queued (handshakes, slow-path data) after the pending run."""
        self._send_run()
        datagrams = self.device.datagrams_to_send()
        if not datagrams:
            return
        for data, addr in datagrams:
            self._send_one(data, addr)

    def on_tun(self) -> str | None:
        """Read, seal and send up to ``BATCH`` TUN packets. Returns an error text if the TUN
        failed (the loop then stops), else None.

        Written for the first packet after idle as much as for throughput: the packet is sent
        before any bookkeeping, and the loop keeps its state in locals (no per-packet calls
        besides read, lookup and seal). Each packet is read into the plaintext buffer and
        sealed into the arena: the AEAD's input and output never overlap.
        """
        dev = self.device
        now = self.clock()
        read_into = self._read_into
        route = dev.route
        mtu = dev.mtu
        pt, ptv, into = self._pt, self._ptv, self._pt_read
        view = self._txv
        vnet = self._vnet_len
        tso = self.tso
        offloads = self.offloads
        compiled = self.compiled
        sealer: Any = None  # the keypair's compiled AEAD (compiled is not None)
        # the packet being sealed is src[p:p+n]: the TUN read in pt, or a segment of it (tso)
        src, srcv, p, n = pt, ptv, _P, 0
        # segments of the latest read: how many, the next one, where they start and how far
        # apart; in place (heads: their headers, hlen bytes each) or copied by tso.split
        rows = k = base = step = hlen = 0
        heads: bytes | None = None
        lengths: list[int] = []
        restore = 0  # in place: the padding of the previous segment covers the next one's
        saved = b""  # start, kept here
        # the peer of the previous packet, its keypair, seal and endpoint
        last_peer: Peer | None = None
        peer: Peer | None = None
        kp: Keypair | None = None
        seal = None
        endpoint: Endpoint | None = None
        sent: list[tuple[Peer, int, int]] = []  # (peer, bytes, packets) of finished peers
        nbytes = count = 0
        off = 0
        budget = BATCH
        first = True
        error: str | None = None
        while True:
            if off > _ARENA_LIMIT:
                self._send_run()
                off = 0
            if k < rows:  # the next segment of a split read: same flow, same peer
                if restore:
                    src[restore : restore + len(saved)] = saved
                    restore = 0
                p, n = base + k * step, lengths[k]
                if heads is not None:
                    src[p : p + hlen] = heads[k * hlen : (k + 1) * hlen]
                k += 1
            else:
                if budget <= 0:
                    break
                budget -= 1
                try:
                    got = read_into(into)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.EAGAIN):
                        break
                    error = f"TUN read failed: {e.strerror}"
                    break
                if got is None:  # FileIO's EAGAIN
                    break
                n = got
                src, srcv, p = pt, ptv, _P
                offloaded = 0
                if vnet:  # its virtio_net_hdr comes first
                    n -= vnet
                    offloaded = pt[1] or pt[0] & NEEDS_CSUM  # offloads (tun.offload)
                    if offloaded and not offloads:  # not asked for
                        dev.drops[Drop.MALFORMED_OUTBOUND] += 1
                        continue
                peer = route(pt, _P, n)
                if peer is None:
                    continue
                if offloaded and tso is not None:  # split in Python (else: compiled, below)
                    assert tso is not None
                    hdr = VNET_HDR.unpack_from(pt, 0)
                    if pt[1]:
                        rows = tso.headers_in_place(pt, _P, n, hdr, mtu)
                        if rows > 0:
                            base, step, heads, hlen = _P, tso.mss, tso.headers, tso.hlen
                        else:
                            rows = tso.split(pt, _P, n, hdr, mtu) if rows < 0 else 0
                            src, srcv, base, step, heads = tso.buf, tso.view, 0, tso.stride, None
                        if not rows:
                            dev.drops[Drop.MALFORMED_OUTBOUND] += 1
                            continue
                        lengths, k = tso.lengths, 0
                        budget -= rows - 1
                        continue  # its first segment, at the top
                    if not complete_checksum(pt, _P, n, hdr[4], hdr[5]):
                        dev.drops[Drop.MALFORMED_OUTBOUND] += 1
                        continue
            try:
                if peer is not last_peer:
                    if count:
                        sent.append((last_peer, nbytes, count))  # type: ignore[arg-type]
                        nbytes = count = 0
                    last_peer = peer
                    kp = dev.sendable_keypair(peer, now=now, count=MAX_SEALED)  # type: ignore[arg-type]
                    seal = kp.send.encrypt_into if kp is not None else None
                    endpoint = peer.endpoint  # type: ignore[union-attr]
                    sealer = None
                    if compiled is not None and kp is not None:
                        sealer = kp.send.compiled
                        if sealer is None:
                            sealer = kp.send.compiled = compiled.Sealer(kp.send.key)
                if kp is None or seal is None or endpoint is None:
                    # the ordinary path: it stages, handshakes or renews as the protocol says
                    if count:
                        sent.append((last_peer, nbytes, count))  # type: ignore[arg-type]
                        nbytes = count = 0
                    last_peer = None  # its state may change
                    self._ordinary_tun(bytes(srcv[p : p + n]), sent, now)
                    continue
                if sealer is not None:  # the whole read: padded, cut, checksummed, sealed
                    counter = kp.send_counter
                    segs, length, last = sealer.seal(
                        pt, _P, n, vnet, mtu, kp.remote_index, counter, view, off
                    )
                    if segs < 0:  # no room left in the arena: send it, start again
                        self._send_run()
                        off = 0
                        segs, length, last = sealer.seal(
                            pt, _P, n, vnet, mtu, kp.remote_index, counter, view, off
                        )
                    if segs <= 0:
                        dev.drops[Drop.MALFORMED_OUTBOUND] += 1
                        continue
                    kp.send_counter = counter + segs
                    if segs > 1:  # a super-packet's segments: GSO runs of their own
                        self.compiled_splits += 1
                        self.compiled_segments += segs
                        budget -= segs - 1
                        size = (segs - 1) * length + last
                        nbytes += size
                        count += segs
                        first = False
                        self._send_segments(off, size, length, endpoint)
                        off += size
                        continue
                else:
                    if n < mtu:  # messages.padding_size, inlined for the common case
                        pad = (n + 15) & ~15
                        pad = (pad if pad < mtu else mtu) - n
                    else:
                        pad = padding_size(n, mtu)
                    size = n + pad
                    if pad:
                        if heads is not None and k < rows:  # the next segment starts here
                            restore, saved = p + n, bytes(src[p + n : p + size])
                        src[p + n : p + size] = _ZEROS[:pad]
                    counter = kp.send_counter
                    kp.send_counter = counter + 1
                    body = off + HEADROOM
                    _HEADER.pack_into(view, off, _TRANSPORT, kp.remote_index, counter)
                    seal(_nonce(counter), srcv[p : p + size], None, view[body : body + size + TAG])
                    length = size + HEADROOM + TAG
            except Exception as e:  # a bug or a dependency's change: the packet goes the
                self._fault(e)  # ordinary way, and the fault is counted and shown
                last_peer = None
                self._ordinary_tun(bytes(srcv[p : p + n]), sent, now)
                continue
            nbytes += length
            count += 1
            if first:  # out at once, before reading on: the latency of a lone packet
                first = False
                self._send_one(view[off : off + length], endpoint)
                if not (self._bulk_tx or self._bulk_rx or self.hand_over is None) and not (
                    dev.handshake_pressure(now)
                ):
                    self.hand_over()  # the woken receiver may be queued on this CPU
                continue  # its arena space is free again
            if self._run_n:
                self._add_to_run(off, length, endpoint)
            else:
                self._run_start, self._run_end = off, off + length
                self._run_seg, self._run_n, self._run_addr = length, 1, endpoint
            off += length
        self._send_run()
        self._bulk_tx = not first and (count > 1 or bool(sent))
        if count:
            sent.append((last_peer, nbytes, count))  # type: ignore[arg-type]
        self._commit(sent, now)
        return error

    def _ordinary_tun(self, packet: bytes, sent: list[tuple[Peer, int, int]], now: float) -> None:
        """One TUN packet through ``Device.receive_tun_packet``, in order: what the batch
        holds is sent and committed first, what the Device produces is sent right after."""
        self._send_run()
        self._commit(sent, now)
        self.device.receive_tun_packet(packet, now=now)
        self.send_device_output()

    def _fault(self, e: Exception) -> None:
        """An unexpected exception on the per-packet path: counted and logged sparingly;
        dense faults switch the fast path off (``on_broken``)."""
        if self.faults.record(e) and self.on_broken is not None:
            self.on_broken(f"{self.faults.count} faults, the latest: {self.faults.last}")

    def _commit(self, sent: list[tuple[Peer, int, int]], now: float) -> None:
        """Bookkeeping of what was received (first: the receive timers come before the send
        timers, as on the ordinary path) and then of what ``sent`` lists."""
        if self._pending_rx:
            self._commit_received(now)
        for peer, nbytes, count in sent:
            self.device.sent_batch(peer, nbytes, now=now, data=count > 0)
        sent.clear()

    # --- receiving -----------------------------------------------------------------------------

    def on_udp(self, sock: DatagramSocket) -> None:
        """Receive, open and write to the TUN up to ``BATCH`` UDP reads' worth of datagrams.

        When packets were written, the TUN is read right away, before the bookkeeping: a
        local answer (ICMP echo reply, TCP ACK) is usually queued by then, and sent first.
        """
        dev = self.device
        now = self.clock()
        buf, view = self._rx, self._rxv
        rx_bufs = self._rx_bufs
        write = self._write
        gro = self.gro
        vnet = self._vnet_len
        held = False  # gro holds segments of this read
        unpack_from = _HEADER.unpack_from
        inner_length = dev.inner_packet_length
        queue = dev.queue_handshake
        pending = self._pending_rx  # peer -> [bytes, data packets, last source]
        compiled = self.compiled
        # the receiver index, peer and keypair of the previous datagram
        last_receiver = -1
        peer: Peer | None = None
        kp: Keypair | None = None
        # the counters of datagrams opened at once (compiled), from the one at `opened_at`
        # on, with `opened_kp`'s key; packet i is at _P + i * stride in self._opened
        opened: list[int] = []
        opened_at = stride = 0
        opened_kp: Keypair | None = None
        # or (compiled, a TUN taking GSO writes, no destination filter) whole runs received
        # in C (_receive_run): each peer's source address seen allowed in this call, where
        # the latest run stopped (the datagram there goes the Python way) and where it ended
        sources: dict[Peer, bytes] | None = None
        if compiled is not None and gro is not None and not gro.refused:
            sources = {} if dev.accept_destinations is None else None
        totals: list[Any] | None = None
        written = chained = False
        for _ in range(BATCH):
            try:
                total, ancdata, _flags, raw_addr = sock.recvmsg_into(rx_bufs, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # ICMP errors reported on the socket: nothing to do
            addr: Endpoint = (raw_addr[0], raw_addr[1])
            if total == 0:  # an empty datagram: counted as the Device counts it
                dev.drops[Drop.UNKNOWN_TYPE] += 1
                continue
            seg = total
            if ancdata:
                for level, kind, data in ancdata:
                    if level == SOL_UDP and kind == UDP_GRO:
                        seg = int.from_bytes(data, sys.byteorder) or total
            opened, opened_kp = [], None
            tried_at = resume_at = -1
            for start in range(0, total, seg):
                if start < resume_at:  # received in C already
                    continue
                end = start + seg if start + seg < total else total
                if buf[start] != _TRANSPORT:  # a handshake message waits in the backlog,
                    queue(view[start:end], addr, now=now)  # after the data (Device)
                    continue
                if end - start < _KEEPALIVE:
                    self._slow_datagram(now, view[start:end], addr)
                    last_receiver = -1
                    continue
                try:
                    _t, receiver, counter = unpack_from(buf, start)
                    if receiver != last_receiver or _t != _TRANSPORT:
                        session = dev.receivable_keypair(receiver, now=now)
                        if session is None or _t != _TRANSPORT:
                            self._slow_datagram(now, view[start:end], addr)
                            last_receiver = -1  # e.g. a `next` session was confirmed
                            continue
                        peer, kp = session
                        last_receiver = receiver
                        totals = None
                    assert kp is not None and peer is not None
                    body = start + HEADROOM
                    size = end - TAG - body
                    if sources is not None and end < total and start != tried_at:
                        if held:  # what came before goes first
                            held = False
                            gro.flush()  # type: ignore[union-attr]
                        got, wrote = self._receive_run(
                            kp, peer, start, total, seg, addr=addr, sources=sources
                        )
                        if gro.refused:  # type: ignore[union-attr]
                            sources = None  # GSO writes refused: the Python way from here
                        if got:
                            resume_at = start + got * seg
                            totals = None
                            if wrote and not chained:
                                chained = True
                                self._answer_first(peer, addr, now)
                                last_receiver = -1  # sessions may have moved on
                            written = written or wrote
                            continue
                        tried_at = start  # this one goes the Python way; try C after it
                    i = (start - opened_at) // seg
                    if (
                        sources is None
                        and compiled is not None
                        and end < total
                        and (kp is not opened_kp or i >= len(opened))
                    ):
                        # more datagrams follow in this read: open those of this receiver
                        opener = kp.receive.compiled
                        if opener is None:
                            opener = kp.receive.compiled = compiled.Opener(kp.receive.key)
                        stride = seg - HEADROOM - TAG + _P
                        opened = opener.open(
                            buf, start, total, seg, receiver, self._opened, _P, stride
                        )
                        opened_at, opened_kp, i = start, kp, 0
                    if kp is opened_kp and i < len(opened):  # opened already
                        pkt, pktv, q = self._opened, self._openedv, _P + i * stride
                        if opened[i] < 0:
                            dev.drops[Drop.DECRYPTION_FAILED] += 1
                            continue
                    else:
                        pkt, pktv, q = self._pkt, self._pktv, _P
                        try:
                            kp.receive.decrypt_into(
                                _nonce(counter), view[body:end], None, pktv[_P : _P + size]
                            )
                        except AuthenticationFailed:
                            dev.drops[Drop.DECRYPTION_FAILED] += 1
                            continue
                    if not kp.replay.validate(counter):
                        dev.drops[Drop.REPLAYED] += 1
                        continue
                    if totals is None:
                        totals = pending.get(peer)
                        if totals is None:
                            totals = pending[peer] = [0, 0, addr]
                    totals[0] += end - start
                    totals[2] = addr
                    if size == 0:
                        continue  # keepalive
                    length = inner_length(peer, pkt, q, size)
                    if length < 0:
                        continue
                    if sources is not None and (start == tried_at or peer not in sources):
                        # allowed: C may take this source's packets (recorded when C stopped
                        # here, or for a peer without one: no allocation per packet)
                        v4 = pkt[q] >> 4 == 4
                        sources[peer] = bytes(pkt[q + 12 : q + 16] if v4 else pkt[q + 8 : q + 24])
                    totals[1] += 1
                    if gro is not None:
                        if gro.offer(pktv, q, length):
                            held = True
                            continue
                        if held:
                            held = False
                            gro.flush()
                    try:  # the virtio_net_hdr in front stays zero: nothing else writes there
                        write(pktv[q - vnet : q + length])
                    except OSError:
                        self.tun_write_errors += 1
                except Exception as e:  # a bug or a dependency's change: this datagram
                    self._fault(e)  # goes the ordinary way (its ciphertext is intact)
                    self._slow_datagram(now, view[start:end], addr)
                    last_receiver = -1
                    totals = None
                    continue
                written = True
                if not chained:
                    chained = True
                    written = False
                    self._answer_first(peer, addr, now)
                    totals = None  # committed
                    last_receiver = -1  # sessions may have moved on
        if held:  # the TCP segments of this wake-up go as few writes
            assert gro is not None
            gro.flush()
            written = True
        bulk, self._bulk_rx = self._bulk_rx, written  # written: more than one packet
        if not pending:
            return
        if written:
            for p, t in pending.items():
                p.endpoint = t[2]
            if not (chained or bulk or self.hand_over is None or dev.handshake_pressure(now)):
                self.hand_over()
            self._tun_answer()
        if pending:
            self._commit_received(now)

    def _receive_run(
        self,
        kp: Keypair,
        peer: Peer,
        start: int,
        total: int,
        seg: int,
        *,
        addr: Endpoint,
        sources: dict[Peer, bytes],
    ) -> tuple[int, bool]:
        """The datagrams of a GRO read from ``start`` on, for ``kp``, in one compiled call
        (``Opener.receive``: open, replay check, inner checks, TCP coalescing; it stops where
        a datagram needs this module's per-packet path). Counts, bookkeeping and the TUN
        writes here. Returns how many datagrams it took, and whether it wrote."""
        opener = kp.receive.compiled
        if opener is None:
            assert self.compiled is not None
            opener = kp.receive.compiled = self.compiled.Opener(kp.receive.key)
        replay = kp.replay
        got, nbytes, packets, last, failed, replayed, writes, gso_writes, gso_segs = opener.receive(
            self._rx,
            start,
            total,
            seg,
            kp.local_index,
            replay.ring,
            replay.last,
            sources.get(peer, b""),
            self._rxout,
        )
        if not got:
            return 0, False
        self.compiled_runs += 1
        replay.last = last
        drops = self.device.drops
        if failed:
            drops[Drop.DECRYPTION_FAILED] += failed
        if replayed:
            drops[Drop.REPLAYED] += replayed
        if nbytes:
            totals = self._pending_rx.get(peer)
            if totals is None:
                totals = self._pending_rx[peer] = [0, 0, addr]
            totals[0] += nbytes
            totals[1] += packets
            totals[2] = addr
        gro = self.gro
        assert gro is not None
        gro.coalesced += gso_writes
        gro.segments += gso_segs
        out, write = self._rxoutv, self._write
        for off, length, segments in writes:
            try:
                write(out[off : off + length])
            except OSError as e:
                if segments == 1:
                    self.tun_write_errors += 1
                    continue
                gro.errors += 1  # as TcpCoalescer.flush counts and reacts
                if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    gro.refused = True
        return got, bool(writes)

    def _answer_first(self, peer: Peer, addr: Endpoint, now: float) -> None:
        """After the first TUN write of a wake-up: send what it was answered with before
        reading on (roaming first, so that the answer goes where the packet came from)."""
        peer.endpoint = addr
        if not (self._bulk_rx or self._bulk_tx or self.hand_over is None) and not (
            self.device.handshake_pressure(now)
        ):
            self.hand_over()  # the write may have woken a local reader (ping)
        self._tun_answer()

    def _tun_answer(self) -> None:
        """Read the TUN right after writing to it: a local answer (ICMP echo reply, TCP ACK)
        is usually queued by then. ``on_tun`` commits what was received first."""
        error = self.on_tun()
        if error is not None:
            self.tun_error = error

    def _commit_received(self, now: float) -> None:
        pending = self._pending_rx
        for peer, (nbytes, packets, addr) in pending.items():
            self.device.received_batch(peer, addr, nbytes, now=now, data_packets=packets)
        pending.clear()

    def _slow_datagram(self, now: float, data: memoryview, addr: Endpoint) -> None:
        """Hand one datagram to ``Device.receive_datagram`` after committing the batch so far,
        then write and send what it produced."""
        if self._pending_rx:
            self._commit_received(now)
        if self.gro is not None:
            self.gro.flush()  # what came before goes first
        dev = self.device
        dev.receive_datagram(bytes(data), addr, now=now)
        packets = dev.tun_packets_to_write()
        for p in packets:
            try:
                self.tun.write(p)
            except OSError:
                self.tun_write_errors += 1
        self.send_device_output()


def _raw_file(tun: TunDevice) -> io.FileIO | None:
    """A kernel TUN's fd as ``io.FileIO``: ``readinto``/``write`` are one C call each, and
    EAGAIN comes back as None instead of an exception (≈ 0.45 µs less per read than
    ``os.readv``). None for other TUNs (in-memory ones), which keep their own methods."""
    try:
        from tun.linux import LinuxTun
    except ImportError:  # no python-pytun: there is no kernel TUN either
        return None
    if not isinstance(tun, LinuxTun):
        return None
    return io.FileIO(tun.fileno(), "r+b", closefd=False)


def enable_gro(sock: DatagramSocket) -> bool:
    """Ask the kernel for coalesced receives (``UDP_GRO``); False where unsupported."""
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    return False


def disable_gro(sock: DatagramSocket) -> None:
    """Turn ``UDP_GRO`` off again (for a reader that takes one datagram per read)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(SOL_UDP, UDP_GRO, 0)
