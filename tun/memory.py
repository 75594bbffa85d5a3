"""An in-memory TUN double (wireguard-go's ``tun/tuntest`` ChannelTUN).

Two queues stand in for the kernel: :meth:`MemoryTun.inject` plays the OS sending a packet
into the tunnel (the device then ``read()``\\ s it) and :meth:`MemoryTun.take` collects what
the device ``write()``\\ s. A socketpair gives a real, selectable file descriptor that is
readable exactly while an injected packet waits, so event loops can poll it like a real TUN.

``vnet_hdr=True`` plays a TUN opened with ``IFF_VNET_HDR``, as ``LinuxTun`` does: ``read`` and
``write`` still take plain packets, and :meth:`raw_read_into` / :meth:`raw_write` (what the
fast path uses on a kernel TUN's fd) carry a ``virtio_net_hdr`` first. A GSO write (coalesced
TCP segments, ``wgpy.io.gro``) is cut back into its segments as the kernel's stack would see
them (:class:`tun.offload.Segmenter`, checksums included), so :meth:`take` returns plain
packets either way; ``gso_writes`` counts those writes.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections import deque
from collections.abc import Iterable

from tun.base import DEFAULT_MTU, VNET_HDR_LEN, ZERO_VNET_HDR
from tun.offload import NEEDS_CSUM, VNET_HDR, Segmenter, complete_checksum


class MemoryTun:
    """A TUN device whose "kernel" is two deques; safe to use from two threads."""

    def __init__(
        self, name: str = "mem0", mtu: int = DEFAULT_MTU, *, vnet_hdr: bool = False
    ) -> None:
        self._name = name
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        self.gso_writes = 0
        self._inbound: deque[bytes] = deque()  # OS → device (read side)
        self._outbound: deque[bytes] = deque()  # device → OS (write side)
        self._lock = threading.Lock()
        # The readiness socket holds one byte while _inbound is non-empty and none otherwise
        # (level-triggered, like the kernel's poll on a TUN fd); it can never fill up.
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._closed = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """Selectable descriptor: readable while :meth:`read` would return a packet."""
        self._check_open()
        return self._rsock.fileno()

    # --- the device side (what WireGuard calls) -----------------------------------------------

    def read(self) -> bytes:
        """Pop the oldest injected packet; ``BlockingIOError`` if none is queued."""
        with self._lock:
            self._check_open()
            if not self._inbound:
                raise BlockingIOError(errno.EAGAIN, "no packet queued")
            packet = self._inbound.popleft()
            if not self._inbound:
                self._rsock.recv(1)
            return packet

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Copy the oldest injected packet into ``buf``; a too-small buffer truncates it.

        Truncation matches the Linux TUN driver, which copies what fits and drops the rest.
        """
        packet = self.read()
        n = min(len(packet), len(buf))
        memoryview(buf)[:n] = packet[:n]
        return n

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Record a packet the device hands to the OS."""
        data = bytes(packet)
        with self._lock:
            self._check_open()
            if not data:
                # The kernel rejects an empty write on an IFF_NO_PI TUN the same way.
                raise OSError(errno.EINVAL, "empty packet")
            self._outbound.append(data)
        return len(data)

    def raw_read_into(self, buf: bytearray | memoryview) -> int:
        """``read_into`` behind a zero ``virtio_net_hdr`` (``vnet_hdr=True``)."""
        packet = ZERO_VNET_HDR + self.read()
        n = min(len(packet), len(buf))
        memoryview(buf)[:n] = packet[:n]
        return n

    def raw_write(self, data: bytes | bytearray | memoryview) -> int:
        """A write that starts with a ``virtio_net_hdr`` (``vnet_hdr=True``)."""
        packets = self._unpack(bytes(data))
        with self._lock:
            self._check_open()
            self._outbound.extend(packets)
        return len(data)

    def _unpack(self, data: bytes) -> list[bytes]:
        """What the stack receives from a write with a ``virtio_net_hdr``."""
        if len(data) <= VNET_HDR_LEN:
            raise OSError(errno.EINVAL, "no packet behind the virtio_net_hdr")
        hdr = VNET_HDR.unpack_from(data)
        packet = bytearray(data[VNET_HDR_LEN:])
        flags, gso_type, _hlen, _size, start, offset = hdr
        if gso_type:
            seg = Segmenter(vectorised=False)
            rows = seg.split(packet, 0, len(packet), hdr, 65535)
            if not rows:
                raise OSError(errno.EINVAL, "a GSO packet that cannot be cut")
            self.gso_writes += 1
            return [bytes(seg.view[k * seg.stride :][:n]) for k, n in enumerate(seg.lengths)]
        if flags & NEEDS_CSUM and not complete_checksum(packet, 0, len(packet), start, offset):
            raise OSError(errno.EINVAL, "checksum offsets outside the packet")
        return [bytes(packet)]

    def close(self) -> None:
        """Close the readiness sockets and drop queued packets; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._inbound.clear()
            self._rsock.close()
            self._wsock.close()

    # --- the "kernel" side (what tests call) --------------------------------------------------

    def inject(self, packet: bytes | bytearray | memoryview) -> None:
        """Queue a packet as if the OS had routed it into the tunnel."""
        data = bytes(packet)
        with self._lock:
            self._check_open()
            if not self._inbound:
                self._wsock.send(b"\x00")
            self._inbound.append(data)

    def inject_many(self, packets: Iterable[bytes | bytearray | memoryview]) -> None:
        for p in packets:
            self.inject(p)

    def pending(self) -> int:
        """Number of injected packets not yet read by the device."""
        with self._lock:
            return len(self._inbound)

    def written(self) -> list[bytes]:
        """Packets the device wrote so far, oldest first, without removing them."""
        with self._lock:
            return list(self._outbound)

    def take(self) -> list[bytes]:
        """Remove and return the packets the device wrote, oldest first."""
        with self._lock:
            out = list(self._outbound)
            self._outbound.clear()
            return out

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "TUN device is closed")

    def __repr__(self) -> str:
        return f"MemoryTun(name={self._name!r}, mtu={self.mtu}, pending={len(self._inbound)})"
