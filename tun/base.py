"""The TUN device boundary: what the WireGuard device needs from an OS tunnel interface.

Mirrors wireguard-go's ``tun.Device``: one IP packet per read or write, no packet-information
header. ``tun.linux.LinuxTun`` is the real thing; ``tun.memory.MemoryTun`` is an in-process
double that lets two devices talk in one test without root.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

# Linux IFNAMSIZ is 16 including the terminating NUL.
IFNAMSIZ = 16
# WireGuard's default link MTU (1500 minus the 80 bytes of IPv6, UDP and WireGuard headers)
DEFAULT_MTU = 1420
# With IFF_VNET_HDR every TUN read and write starts with a struct virtio_net_hdr (the kernel's
# default size); a zeroed one means "a plain packet, checksums complete".
VNET_HDR_LEN = 10
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)


class TunError(Exception):
    """A TUN device or a link could not be created, opened or configured.

    Its own root: ``tun`` is a layer below wgpy and imports nothing from it.
    """


@runtime_checkable
class TunDevice(Protocol):
    """A layer-3 tunnel interface carrying bare IP packets (``IFF_TUN | IFF_NO_PI``)."""

    @property
    def name(self) -> str:
        """The interface name."""
        ...

    @property
    def mtu(self) -> int:
        """The interface MTU in bytes."""
        ...

    def fileno(self) -> int:
        """A file descriptor that polls readable when :meth:`read` has a packet."""
        ...

    def read(self) -> bytes:
        """Return one IP packet sent by the OS; raise ``BlockingIOError`` when there is none."""
        ...

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Read one packet into ``buf`` and return its length (``BlockingIOError`` if none)."""
        ...

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Hand one IP packet to the OS; return the number of bytes written."""
        ...

    def close(self) -> None:
        """Release the device; idempotent."""
        ...


def validate_ifname(name: str) -> None:
    """Raise :class:`TunError` unless ``name`` is a name the kernel accepts for a link.

    Same rules as the kernel's ``dev_valid_name``: 1..15 bytes, not ``.``/``..``, no ``/``,
    ``:`` or whitespace.
    """
    raw = name.encode("utf-8", "surrogateescape")
    if not raw:
        raise TunError("invalid interface name '': empty")
    if len(raw) >= IFNAMSIZ:
        raise TunError(f"invalid interface name {name!r}: longer than {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise TunError(f"invalid interface name {name!r}")
