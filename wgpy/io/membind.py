"""UDP in memory, for tests: wireguard-go's ``conn/bindtest``, for the :mod:`wgpy.io.bind` API.

A :class:`MemoryNetwork` is the wire: :meth:`MemoryNetwork.bind` gives a :class:`MemoryBind`
for a ``DeviceRunner`` (``DeviceRunner(..., bind=net.bind("127.0.0.1"))``), and a datagram one
endpoint sends is queued at the endpoint listening on its destination. No socket and no root:
each endpoint's readiness is an ``eventfd`` (readable exactly while datagrams wait), so the
real event loop polls it as it polls a kernel socket. The addresses are only names.

The endpoints behave like the kernel's where the data path can tell: ``sendmsg`` with a
``UDP_SEGMENT`` cmsg (GSO) sends one datagram per segment, and with ``UDP_GRO`` set a read
hands over consecutive same-size datagrams of one source at once with the segment size in a
cmsg. Tests steer the wire: :meth:`~MemoryNetwork.drop_next` and :attr:`~MemoryNetwork.drop`
lose datagrams, :meth:`~MemoryNetwork.hold` and :meth:`~MemoryNetwork.release` reorder them,
and :meth:`~MemoryNetwork.move` changes an endpoint's address (a NAT rebinding: roaming).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from wgpy.core.errors import UapiError
from wgpy.io.fastpath import SOL_UDP, UDP_GRO, UDP_SEGMENT

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

    from wgpy.io.bind import Bind

Address = tuple[str, int]
Datagram = tuple[bytes, Address, Address]  # data, source, destination
GRO_MAX_SEGMENTS = 64
FIRST_PORT = 40000
_SEGMENT = struct.Struct("=H")


class MemorySocket:
    """One bound endpoint: a queue of (data, source) and an eventfd for the poller."""

    def __init__(self, network: MemoryNetwork, addr: Address) -> None:
        self.network = network
        self.addr = addr
        self.gro = False
        self.mark = 0
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._lock = threading.Lock()
        # non-zero exactly while the queue holds a datagram (level-triggered, like a socket)
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False

    def fileno(self) -> int:
        return -1 if self._closed else self._fd

    def deliver(self, data: bytes, src: Address) -> None:
        """Queue a datagram that arrived from ``src`` (the wire calls this)."""
        with self._lock:
            if self._closed:
                return
            if not self._queue:
                os.eventfd_write(self._fd, 1)
            self._queue.append((data, src))

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _take(self, limit: int, gro: bool) -> tuple[list[bytes], Address]:
        """The oldest datagram, and with ``gro`` the same-size ones of its source right behind
        it (a shorter one may end the run), at most ``limit`` bytes in all."""
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "endpoint closed")
            if not self._queue:
                raise BlockingIOError(errno.EAGAIN, "no datagram queued")
            data, src = self._queue.popleft()
            out = [data]
            if gro:
                total, seg = len(data), len(data)
                while self._queue and len(out) < GRO_MAX_SEGMENTS:
                    nxt, nsrc = self._queue[0]
                    if nsrc != src or not 0 < len(nxt) <= seg or total + len(nxt) > limit:
                        break
                    self._queue.popleft()
                    out.append(nxt)
                    total += len(nxt)
                    if len(nxt) < seg:
                        break
            if not self._queue:
                os.eventfd_read(self._fd)
            return out, src

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]:
        (data,), src = self._take(bufsize, gro=False)
        return data[:bufsize], src

    def recvmsg_into(
        self, buffers: Iterable[WriteableBuffer], ancbufsize: int = 0, flags: int = 0, /
    ) -> tuple[int, list[tuple[int, int, bytes]], int, Any]:
        buf = memoryview(next(iter(buffers))).cast("B")
        datagrams, src = self._take(len(buf), gro=self.gro and ancbufsize > 0)
        off = 0
        for d in datagrams:
            n = min(len(d), len(buf) - off)
            buf[off : off + n] = d[:n]
            off += n
        ancdata = []
        if len(datagrams) > 1 and ancbufsize:
            ancdata.append((SOL_UDP, UDP_GRO, len(datagrams[0]).to_bytes(4, sys.byteorder)))
        return off, ancdata, 0, src

    def sendto(self, data: ReadableBuffer, address: Any, /) -> int:
        self._check_open()
        payload = bytes(data)
        self.network.send(payload, self.addr, (address[0], address[1]))
        return len(payload)

    def sendmsg(
        self,
        buffers: Iterable[ReadableBuffer],
        ancdata: Iterable[tuple[int, int, ReadableBuffer]] = (),
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int:
        self._check_open()
        payload = b"".join(bytes(b) for b in buffers)
        seg = len(payload)
        for level, kind, value in ancdata:
            if level == SOL_UDP and kind == UDP_SEGMENT:
                seg = _SEGMENT.unpack(bytes(value))[0] or seg
        dst = (address[0], address[1])
        for off in range(0, len(payload), seg or 1):  # GSO: one datagram per segment
            self.network.send(payload[off : off + seg], self.addr, dst)
        return len(payload)

    def setsockopt(self, level: int, optname: int, value: int | ReadableBuffer, /) -> None:
        self._check_open()
        if (level, optname) == (SOL_UDP, UDP_GRO):
            self.gro = bool(value)
        elif (level, optname) == (socket.SOL_SOCKET, socket.SO_MARK):
            self.mark = int(value)
        else:
            raise OSError(errno.ENOPROTOOPT, "not emulated by MemorySocket")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            os.close(self._fd)
        self.network.forget(self)

    def _check_open(self) -> None:
        if self._closed:
            raise OSError(errno.EBADF, "endpoint closed")

    def __repr__(self) -> str:
        return f"MemorySocket({self.addr[0]}:{self.addr[1]}, pending={len(self._queue)})"


class MemoryNetwork:
    """Who listens where, and what becomes of each datagram on the way. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._endpoints: dict[Address, MemorySocket] = {}
        self._next_port = FIRST_PORT
        self._held: list[Datagram] | None = None
        self._drop_next: list[list[int]] = []  # [count, message type or -1 for any]
        self.drop: Callable[[bytes, Address, Address], bool] | None = None  # True: lose it
        self.log: list[Datagram] = []  # every datagram sent, in order
        self.delivered = 0
        self.dropped = 0  # by drop_next or drop
        self.unreachable = 0  # nobody listening at the destination

    def bind(self, host: str = "127.0.0.1", host6: str | None = None) -> MemoryBind:
        """A bind for one device, listening on ``host`` (and ``host6`` for IPv6, if given)."""
        return MemoryBind(self, host, host6)

    # --- the wire ---------------------------------------------------------------------------

    def send(self, data: bytes, src: Address, dst: Address) -> None:
        with self._lock:
            self.log.append((data, src, dst))
            if self._should_drop(data, src, dst):
                self.dropped += 1
                return
            if self._held is not None:
                self._held.append((data, src, dst))
                return
            target = self._endpoints.get(dst)
            if target is None:
                self.unreachable += 1
                return
            self.delivered += 1
        target.deliver(data, src)

    def _should_drop(self, data: bytes, src: Address, dst: Address) -> bool:
        for rule in self._drop_next:
            if rule[1] == -1 or data[:1] == bytes([rule[1]]):
                rule[0] -= 1
                if rule[0] == 0:
                    self._drop_next.remove(rule)
                return True
        return self.drop is not None and self.drop(data, src, dst)

    def drop_next(self, count: int = 1, message_type: int | None = None) -> None:
        """Lose the next ``count`` datagrams (of that WireGuard message type, if given)."""
        with self._lock:
            self._drop_next.append([count, -1 if message_type is None else message_type])

    def hold(self) -> None:
        """Keep every datagram sent from now on until :meth:`release`."""
        with self._lock:
            if self._held is None:
                self._held = []

    def release(self, reverse: bool = False) -> int:
        """Deliver what :meth:`hold` kept, in order or the other way round; stop holding.
        Returns how many were released."""
        with self._lock:
            held, self._held = self._held or [], None
        for data, src, dst in reversed(held) if reverse else held:
            self.send(data, src, dst)
        return len(held)

    def held(self) -> int:
        with self._lock:
            return len(self._held or ())

    # --- addresses --------------------------------------------------------------------------

    def listen(
        self, hosts: list[str], port: int, replacing: Iterable[MemorySocket]
    ) -> list[MemorySocket]:
        """New endpoints on ``port`` (0 = a free one) for each host, in place of ``replacing``
        (whose ports may be taken again). ``UapiError(EADDRINUSE)`` if one is taken."""
        mine = [id(s) for s in replacing]
        with self._lock:
            ours = self._endpoints.items()
            taken = {a[1] for a, s in ours if a[0] in hosts and id(s) not in mine}
            if port == 0:
                port = self._next_port
                while port in taken:
                    port += 1
                self._next_port = port + 1
            elif port in taken:
                raise UapiError(f"cannot bind UDP port {port}: in use", errno.EADDRINUSE)
            made = [MemorySocket(self, (h, port)) for h in hosts]
            for s in made:
                self._endpoints[s.addr] = s
        return made

    def move(self, sock: MemorySocket, host: str) -> None:
        """Give ``sock`` another address, same port (a NAT rebinding or a new DHCP lease):
        what it sends comes from there, and only what is sent there reaches it."""
        with self._lock:
            if self._endpoints.get(sock.addr) is sock:
                del self._endpoints[sock.addr]
            sock.addr = (host, sock.addr[1])
            self._endpoints[sock.addr] = sock

    def forget(self, sock: MemorySocket) -> None:
        with self._lock:
            if self._endpoints.get(sock.addr) is sock:
                del self._endpoints[sock.addr]


class MemoryBind:
    """A :class:`~wgpy.io.bind.Bind` on a :class:`MemoryNetwork`."""

    def __init__(self, network: MemoryNetwork, host: str, host6: str | None = None) -> None:
        self.network = network
        self.hosts = [host] if host6 is None else [host, host6]
        self.v4: MemorySocket | None = None
        self.v6: MemorySocket | None = None
        self.port = 0

    def sockets(self) -> list[MemorySocket]:
        return [s for s in (self.v4, self.v6) if s is not None]

    def open(self, port: int, fwmark: int = 0) -> int:
        old = self.sockets()
        made = self.network.listen(self.hosts, port, old)
        for s in old:  # their addresses already lead to the new endpoints
            s.close()
        self.v4 = made[0]
        self.v6 = made[1] if len(made) > 1 else None
        self.port = made[0].addr[1]
        if fwmark:
            self.set_fwmark(fwmark)
        return self.port

    def set_fwmark(self, fwmark: int) -> None:
        for s in self.sockets():
            s.mark = fwmark

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        sock = self.v6 if ":" in addr[0] else self.v4
        if sock is None:
            raise OSError(errno.EAFNOSUPPORT, "no endpoint for this address family")
        sock.sendto(data, addr)

    def close(self) -> None:
        for s in self.sockets():
            s.close()
        self.v4 = self.v6 = None


if TYPE_CHECKING:

    def _is_a_bind(bind: MemoryBind) -> Bind:  # mypy checks that a MemoryBind is a Bind
        return bind
