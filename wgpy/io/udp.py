"""The device's UDP sockets: one IPv4 and (where available) one IPv6 socket on one port."""

from __future__ import annotations

import contextlib
import errno
import socket

from wgpy.core.errors import UapiError

SOCKET_BUFFER = 7 * 1024 * 1024  # wireguard-go's 7 MiB: the default drops at Gbit rates
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def set_buffers(sock: socket.socket) -> None:
    """Ask for 7 MiB socket buffers (the FORCE options as root, else up to rmem_max)."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


class UdpBind:
    """Bound UDP sockets for one listen port; ``fwmark`` applied when set."""

    def __init__(self) -> None:
        self.v4: socket.socket | None = None
        self.v6: socket.socket | None = None
        self.port = 0

    def sockets(self) -> list[socket.socket]:
        return [s for s in (self.v4, self.v6) if s is not None]

    def open(self, port: int, fwmark: int = 0) -> int:
        """Bind ``port`` (0 = random) on both families; returns the port bound.

        Raises ``UapiError(EADDRINUSE)`` and leaves the old sockets in place on failure.
        """
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            v4.bind(("0.0.0.0", port))  # noqa: S104 - a VPN endpoint listens on all addresses
        except OSError as e:
            v4.close()
            raise UapiError(
                f"cannot bind UDP port {port}: {e.strerror}", errno.EADDRINUSE
            ) from None
        bound: int = v4.getsockname()[1]
        v6: socket.socket | None = None
        try:
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::", bound))
        except OSError:
            if v6 is not None:
                v6.close()
            v6 = None  # no IPv6 here (or the port is taken on v6 only): IPv4 alone
        for s in (v4, v6):
            if s is None:
                continue
            s.setblocking(False)
            set_buffers(s)
            if fwmark:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)
        self.close()
        self.v4, self.v6, self.port = v4, v6, bound
        return bound

    def set_fwmark(self, fwmark: int) -> None:
        for s in self.sockets():
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, fwmark)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        sock = self.v6 if ":" in addr[0] else self.v4
        if sock is None:
            raise OSError(errno.EAFNOSUPPORT, "no socket for this address family")
        sock.sendto(data, addr)

    def close(self) -> None:
        for s in self.sockets():
            s.close()
        self.v4 = self.v6 = None
