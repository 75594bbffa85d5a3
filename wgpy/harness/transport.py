"""UDP sockets inside a network namespace, and the transports the scripted peer talks through.

A socket belongs to the network namespace it was created in, whatever thread later uses it. So
:func:`udp_socket` creates the socket in a short-lived thread that first joins the namespace
(``setns(2)`` changes only the calling thread's namespace): the harness process itself never
leaves its own namespace, and no subprocess is needed.
"""

from __future__ import annotations

import select
import socket
from typing import Protocol, TypeVar

from wgpy.core.constants import MAX_DATAGRAM
from wgpy.testbed.netns import run_in_netns

Address = tuple[str, int]
T = TypeVar("T")


class Transport(Protocol):
    """Where a :class:`~wgpy.harness.peer.ScriptedPeer` sends and receives datagrams."""

    def send(self, data: bytes, addr: Address) -> None: ...

    def recv(self, timeout: float) -> tuple[bytes, Address] | None:
        """One datagram, or ``None`` when nothing arrives within ``timeout`` seconds."""
        ...




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
