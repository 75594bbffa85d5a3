"""TUN devices: the OS boundary of the WireGuard data plane.

``TunDevice`` is the protocol, ``MemoryTun`` the in-process double; the Linux implementation
(``tun.linux.LinuxTun``) and netlink helpers (``tun.netlink``) import native modules and are
imported explicitly by callers that need them.
"""

from __future__ import annotations

from tun.base import TunDevice, TunError, validate_ifname
from tun.memory import MemoryTun

__all__ = ["MemoryTun", "TunDevice", "TunError", "validate_ifname"]
