"""What the event loop and the fast path need of a UDP bind (wireguard-go's ``conn.Bind``).

A bind opens one listen port and gives the loop its endpoints, one per address family
(``v4``, ``v6``); each is a :class:`DatagramSocket`: an fd the loop polls, and the socket calls
the data path makes. The loop and the fast path call those methods directly, so a real bind
(:class:`wgpy.io.udp.UdpBind`) costs nothing per packet over plain sockets: its endpoints *are*
the kernel sockets, with their batched ``recvmsg_into``, UDP GRO and GSO ``sendmsg``. Another
bind (:class:`wgpy.io.membind.MemoryBind`, wireguard-go's ``bindtest``) hands datagrams over
in memory, so two ``DeviceRunner``\\ s talk in one process with no sockets and no root.

The bind is chosen once, when the ``DeviceRunner`` is built (``bind=``); the default is the
real one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from _typeshed import ReadableBuffer, WriteableBuffer


class DatagramSocket(Protocol):
    """The part of ``socket.socket`` (SOCK_DGRAM) the data path uses."""

    def fileno(self) -> int: ...

    def recvfrom(self, bufsize: int, flags: int = 0, /) -> tuple[bytes, Any]: ...

    def recvmsg_into(
        self, buffers: Iterable[WriteableBuffer], ancbufsize: int = 0, flags: int = 0, /
    ) -> tuple[int, list[tuple[int, int, bytes]], int, Any]: ...

    def sendto(self, data: ReadableBuffer, address: Any, /) -> int: ...

    def sendmsg(
        self,
        buffers: Iterable[ReadableBuffer],
        ancdata: Iterable[tuple[int, int, ReadableBuffer]] = ...,
        flags: int = 0,
        address: Any = None,
        /,
    ) -> int: ...

    def setsockopt(self, level: int, optname: int, value: int | ReadableBuffer, /) -> None: ...


class Bind(Protocol):
    """One listen port's endpoints; see the module docstring."""

    port: int

    @property
    def v4(self) -> DatagramSocket | None: ...

    @property
    def v6(self) -> DatagramSocket | None: ...

    def sockets(self) -> Sequence[DatagramSocket]:
        """The open endpoints, for the loop to poll (empty before ``open``)."""
        ...

    def open(self, port: int, fwmark: int = 0) -> int:
        """Bind ``port`` (0 = any), replacing the endpoints open so far; returns the port.
        ``UapiError(EADDRINUSE)`` and the old endpoints kept if it is taken."""
        ...

    def set_fwmark(self, fwmark: int) -> None: ...

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        """One datagram from the endpoint of ``addr``'s family (OSError if there is none)."""
        ...

    def close(self) -> None: ...
