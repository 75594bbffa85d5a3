"""UDP sockets inside a network namespace, and the transports the scripted peer talks through.

A socket belongs to the network namespace it was created in, whatever thread later uses it. So
:func:`udp_socket` creates the socket in a short-lived thread that first joins the namespace
(``setns(2)`` changes only the calling thread's namespace): the harness process itself never
leaves its own namespace, and no subprocess is needed.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

Address = tuple[str, int]
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
MAX_DATAGRAM = 65535
T = TypeVar("T")


class Transport(Protocol):
    """Where a :class:`~wgpy.harness.peer.ScriptedPeer` sends and receives datagrams."""

    def send(self, data: bytes, addr: Address) -> None: ...

    def recv(self, timeout: float) -> tuple[bytes, Address] | None:
        """One datagram, or ``None`` when nothing arrives within ``timeout`` seconds."""
        ...


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def run_in_netns(netns: str, make: Callable[[], T]) -> T:
    """``make()`` run in a short-lived thread that joined network namespace ``netns`` (a name
    under ``/run/netns`` or a path); its result or exception comes back to the caller.

    The caller's thread never changes namespace, so a signal handled meanwhile (SIGTERM
    raising in the main thread) cannot leave it stranded in ``netns``, where cleaning up the
    namespace would then kill this very process.
    """
    path = netns if "/" in netns else os.path.join(NETNS_DIR, netns)
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            _setns(path)
            result.append(make())
        except BaseException as e:  # handed to the caller's thread below
            error.append(e)

    t = threading.Thread(target=worker, name="wgpy-setns")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


def udp_socket(
    host: str = "127.0.0.1", port: int = 0, *, netns: str | None = None
) -> socket.socket:
    """A UDP socket bound to ``host:port``, created inside network namespace ``netns``.

    ``netns`` is a name under ``/run/netns`` (as ``ip netns add`` makes), a path, or ``None``
    for the caller's own namespace.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.bind((host, port))
        except BaseException:
            s.close()
            raise
        return s

    return make() if netns is None else run_in_netns(netns, make)


class UdpTransport:
    """A :class:`Transport` over one bound UDP socket (see :func:`udp_socket`).

    >>> t = UdpTransport.bind("127.0.0.1")
    >>> t.local_address
    ('127.0.0.1', 40321)
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)

    @classmethod
    def bind(
        cls, host: str = "127.0.0.1", port: int = 0, *, netns: str | None = None
    ) -> UdpTransport:
        return cls(udp_socket(host, port, netns=netns))

    @property
    def local_address(self) -> Address:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def send(self, data: bytes, addr: Address) -> None:
        try:
            self.sock.sendto(data, addr)
        except BlockingIOError:
            # A full send buffer (load generation): wait until it drains, then retry once.
            select.select([], [self.sock], [], 1.0)
            self.sock.sendto(data, addr)

    def recv(self, timeout: float) -> tuple[bytes, Address] | None:
        try:
            data, addr = self.sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
            if not ready:
                return None
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return None
        return data, (str(addr[0]), int(addr[1]))

    def drain(self) -> int:
        """Discard everything already queued on the socket; returns how many datagrams."""
        n = 0
        while True:
            try:
                self.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return n
            n += 1

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> UdpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
