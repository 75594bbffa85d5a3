"""The Linux TUN device over python-pytun (protocol doc §9).

pytun does the ``TUNSETIFF`` ioctl and the interface ioctls (MTU, up/down); packets move with
plain ``os.read``/``os.write`` on the non-blocking fd, which is the fastest path from Python.
Addresses and routes belong to :mod:`tun.netlink`.

With ``vnet_hdr=True`` the TUN is opened with ``IFF_VNET_HDR``: every read and write carries a
10-byte ``virtio_net_hdr`` first. ``read``/``read_into``/``write`` hide it (reads drop it, writes
send a zeroed one), so callers see bare IP packets either way; the fast path uses the header to
write coalesced TCP segments as one GSO packet (:mod:`wgpy.io.gro`).

With ``offload=True`` as well, ``TUNSETOFFLOAD`` asks for TCP (and, where the kernel has it,
UDP) super-packets and partial checksums on reads (:mod:`tun.offload`); ``offload`` tells
which flags the kernel took (0: none, reads stay plain packets). The fast path splits what it
reads itself; ``read``/``read_into`` split too, and return the segments one per call.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

import pytun

from tun import offload as _offload
from tun.base import VNET_HDR_LEN, ZERO_VNET_HDR, TunError, validate_ifname

_DEV_TUN = "/dev/net/tun"
# Without IFF_VNET_HDR the kernel never hands us more than the MTU, but the MTU can be raised
# behind our back (wg-quick runs ``ip link set mtu``), so read with the largest IP packet size.
_READ_SIZE = 65535

# Interface ioctls (linux/sockios.h) on an AF_INET socket; ``struct ifreq`` is 40 bytes.
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_SIOCGIFMTU = 0x8921
_SIOCSIFMTU = 0x8922
_IFF_UP = 0x1
_IFREQ_SHORT = struct.Struct("16sh22x")
_IFREQ_INT = struct.Struct("16si20x")
IFF_VNET_HDR = 0x4000


def _flags(*, multi_queue: bool, exclusive: bool, vnet_hdr: bool = False) -> int:
    flags = int(pytun.IFF_TUN) | int(pytun.IFF_NO_PI)
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    if multi_queue:
        flags |= int(pytun.IFF_MULTI_QUEUE)
    if exclusive:
        flags |= int(pytun.IFF_TUN_EXCL)
    return flags


def _exists_here(name: str) -> bool:
    """Whether a link called ``name`` exists in the calling thread's network namespace."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _errno_of(exc: OSError) -> int | None:
    if exc.errno is not None:
        return exc.errno
    if exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return None


class LinuxTun:
    """A kernel TUN interface (``IFF_TUN | IFF_NO_PI``) with a non-blocking fd.

    ``LinuxTun("wg0")`` creates ``wg0`` or attaches to an existing persistent TUN of that name;
    with ``create_only=True`` an existing interface is an error. The interface disappears when
    the last fd closes unless it was made persistent (``ip tuntap add``).

    ``multi_queue=True`` opens the first queue of a multi-queue TUN; :meth:`open_queue` adds
    more (one fd per worker, as boringtun).

    ``vnet_hdr=True`` adds ``IFF_VNET_HDR`` (module docstring); ``vnet_hdr`` tells which.
    ``offload=True`` (with ``vnet_hdr``) asks for send offloads: TSO/USO super-packets on reads
    (module docstring); ``offload`` tells which flags the kernel took.
    """

    def __init__(
        self,
        name: str,
        *,
        create_only: bool = False,
        multi_queue: bool = False,
        mtu: int | None = None,
        dev_path: str = _DEV_TUN,
        vnet_hdr: bool = False,
        offload: bool = False,
    ) -> None:
        validate_ifname(name)
        if not os.path.exists(dev_path):
            raise TunError(
                f"no {dev_path}: load the tun module (modprobe tun) or give the container "
                f"the device (--device {_DEV_TUN})"
            )
        if create_only and _exists_here(name):
            # IFF_TUN_EXCL below closes the race; this gives the clear message for non-TUN links.
            raise TunError(f"interface {name} already exists")
        self._multi_queue = multi_queue
        self._dev_path = dev_path
        self.vnet_hdr = vnet_hdr
        self._hdr = bytearray(VNET_HDR_LEN)  # where reads put the header they drop
        self.offload = 0  # the TUNSETOFFLOAD flags in force
        self._segments: list[bytes] = []  # of a split super-packet, not yet read (reversed)
        self.segmenter: _offload.Segmenter | None = None
        try:
            self._dev = pytun.TunTapDevice(
                name=name,
                flags=_flags(multi_queue=multi_queue, exclusive=create_only, vnet_hdr=vnet_hdr),
                dev=dev_path,
            )
        except OSError as exc:
            raise self._translate(exc, name, create_only=create_only) from None
        self._name: str = self._dev.name
        self._fd: int = self._dev.fileno()
        self._closed = False
        # pytun's up()/mtu open a fresh socket per call in the *current* namespace, which breaks
        # once the caller leaves the namespace the TUN was created in. A control socket made
        # now stays bound to the TUN's namespace.
        self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._ifname = self._name.encode()
        os.set_blocking(self._fd, False)
        if offload and vnet_hdr:
            self.set_offload(_offload.TSO | _offload.USO)
        if mtu is not None:
            try:
                self.set_mtu(mtu)
            except BaseException:
                self.close()
                raise

    @staticmethod
    def _translate(exc: OSError, name: str, *, create_only: bool) -> TunError:
        code = _errno_of(exc)
        if code in (errno.EPERM, errno.EACCES):
            return TunError(
                f"permission denied opening TUN {name!r}: run as root or with CAP_NET_ADMIN"
            )
        if code == errno.EBUSY:
            if create_only:
                return TunError(f"interface {name} already exists")
            return TunError(
                f"interface {name} is in use (an open non-persistent TUN cannot be attached; "
                "use multi_queue on both sides)"
            )
        if code == errno.EINVAL:
            return TunError(f"cannot open TUN {name!r}: a non-TUN interface has that name?")
        return TunError(f"cannot open TUN {name!r}: {exc}")

    # --- TunDevice ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def mtu(self) -> int:
        """The current MTU, read from the kernel (it may change under us)."""
        self._check_open()
        req = _IFREQ_INT.pack(self._ifname, 0)
        return int(_IFREQ_INT.unpack(fcntl.ioctl(self._ctl, _SIOCGIFMTU, req))[1])

    def fileno(self) -> int:
        return self._fd

    def read(self) -> bytes:
        """One IP packet; ``BlockingIOError`` when the queue is empty."""
        if self._segments:
            return self._segments.pop()
        if self.offload:
            return self._read_offloaded()
        if self.vnet_hdr:
            return os.read(self._fd, VNET_HDR_LEN + _READ_SIZE)[VNET_HDR_LEN:]
        return os.read(self._fd, _READ_SIZE)

    def read_into(self, buf: bytearray | memoryview) -> int:
        """Read one packet into ``buf`` (truncated if it does not fit); return its length."""
        if self.offload or self._segments:
            packet = self.read()
            n = min(len(packet), len(buf))
            buf[:n] = packet[:n]
            return n
        if self.vnet_hdr:
            return max(0, os.readv(self._fd, [self._hdr, buf]) - VNET_HDR_LEN)
        return os.readv(self._fd, [buf])

    @property
    def pending(self) -> int:
        """Segments of a split super-packet that ``read`` returns before reading again."""
        return len(self._segments)

    def set_offload(self, flags: int) -> int:
        """``TUNSETOFFLOAD``: ask for ``flags``; without USO if the kernel refuses it, none if
        it refuses TSO too. Returns (and keeps in ``offload``) the flags now in force."""
        if not self.vnet_hdr:
            raise TunError("offloads need a TUN opened with vnet_hdr=True")
        for want in (flags, flags & ~_offload.USO, 0):
            try:
                fcntl.ioctl(self._fd, _offload.TUNSETOFFLOAD, want)
            except OSError:
                continue
            self.offload = want
            return want
        self.offload = 0
        return 0

    def _read_offloaded(self) -> bytes:
        """One read with offloads on: a super-packet is split (its first segment returned,
        the rest kept for the next calls), a partial checksum completed; a packet that
        cannot be split is skipped (the next one read)."""
        while True:
            raw = bytearray(os.read(self._fd, VNET_HDR_LEN + _READ_SIZE))
            hdr = _offload.VNET_HDR.unpack_from(raw, 0)
            n = len(raw) - VNET_HDR_LEN
            if hdr[1] != _offload.GSO_NONE:
                if self.segmenter is None:
                    self.segmenter = _offload.Segmenter()
                seg = self.segmenter
                rows = seg.split(raw, VNET_HDR_LEN, n, hdr, self.mtu)
                if rows == 0:
                    continue
                view, stride = seg.view, seg.stride
                out = [bytes(view[k * stride : k * stride + seg.lengths[k]]) for k in range(rows)]
                out.reverse()
                self._segments = out
                return self._segments.pop()
            if hdr[0] & _offload.NEEDS_CSUM and not _offload.complete_checksum(
                raw, VNET_HDR_LEN, n, hdr[4], hdr[5]
            ):
                continue
            return bytes(raw[VNET_HDR_LEN:])

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Inject one IP packet into the kernel's stack as if received on this interface."""
        if self.vnet_hdr:
            return os.writev(self._fd, [ZERO_VNET_HDR, packet]) - VNET_HDR_LEN
        return os.write(self._fd, packet)

    def close(self) -> None:
        """Close this queue's fd; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._ctl.close()
        self._dev.close()

    # --- configuration ------------------------------------------------------------------------

    def set_mtu(self, mtu: int) -> None:
        """Set the interface MTU (``SIOCSIFMTU``)."""
        self._check_open()
        if not 68 <= mtu <= 65535:
            raise TunError(f"MTU {mtu} out of range 68..65535")
        try:
            fcntl.ioctl(self._ctl, _SIOCSIFMTU, _IFREQ_INT.pack(self._ifname, mtu))
        except OSError as exc:
            raise TunError(f"cannot set MTU {mtu} on {self._name}: {exc}") from None

    def up(self) -> None:
        """Bring the link administratively up."""
        self._set_flag(_IFF_UP, on=True)

    def down(self) -> None:
        """Bring the link administratively down."""
        self._set_flag(_IFF_UP, on=False)

    @property
    def is_up(self) -> bool:
        """Whether the link is administratively up."""
        return bool(self._get_flags() & _IFF_UP)

    def _get_flags(self) -> int:
        self._check_open()
        req = _IFREQ_SHORT.pack(self._ifname, 0)
        try:
            res = fcntl.ioctl(self._ctl, _SIOCGIFFLAGS, req)
        except OSError as exc:
            raise TunError(f"cannot read flags of {self._name}: {exc}") from None
        return int(_IFREQ_SHORT.unpack(res)[1]) & 0xFFFF

    def _set_flag(self, flag: int, *, on: bool) -> None:
        flags = self._get_flags()
        flags = flags | flag if on else flags & ~flag
        # ifr_flags is a C short: wrap to signed.
        signed = flags - 0x10000 if flags & 0x8000 else flags
        try:
            fcntl.ioctl(self._ctl, _SIOCSIFFLAGS, _IFREQ_SHORT.pack(self._ifname, signed))
        except OSError as exc:
            state = "up" if on else "down"
            raise TunError(f"cannot bring {self._name} {state}: {exc}") from None

    def open_queue(self) -> LinuxTun:
        """Attach another queue (fd) to this multi-queue TUN."""
        if not self._multi_queue:
            raise TunError(f"{self._name} was not opened with multi_queue=True")
        return LinuxTun(
            self._name, multi_queue=True, dev_path=self._dev_path, vnet_hdr=self.vnet_hdr
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise TunError(f"TUN {self._name} is closed")

    def __enter__(self) -> LinuxTun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return f"LinuxTun(name={self._name!r}, {state})"
