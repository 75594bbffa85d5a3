"""Keep the tunnel's own UDP out of the tunnel: a host route for the VPN node's endpoint.

A tunnel's allowedIPs routes only carry traffic from its VIP (:mod:`wgpy.supervisor.srcroute`),
so they never capture the encrypted UDP, which leaves from the pod's own address. The one route
a tunnel puts in the pod's main table is its VIP's prefix (``vip: 10.77.0.100/24``, say); when
that prefix covers the VPN node's endpoint, the encrypted UDP would be routed into the tunnel
itself: a loop, and the tunnel never comes up. So before the VIP is added we ask the kernel how
it reaches the endpoint *now* (``ip route get``) and pin that answer as
``<endpoint>/32 via <gateway> dev <oif>``, which is more specific than the VIP's prefix.

Two tunnels may share a VPN node address (different ports), so pins are reference-counted per
address; a route that existed before we looked (an operator's) is used but never deleted.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wgpy.core.errors import WgpyError

log = logging.getLogger(__name__)

RTN_LOCAL = 2


class PinError(WgpyError):
    """The endpoint cannot be reached without the tunnel, or the route cannot be added."""


@dataclass(frozen=True, slots=True)
class Pin:
    """A host route we hold a reference to (``owned``: we added it and delete it last)."""

    address: str
    oif: int
    gateway: str | None
    owned: bool


_lock = threading.Lock()
_refs: dict[str, tuple[Pin, int]] = {}


def covers(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], address: str
           ) -> bool:
    """True if ``address`` lies in one of ``networks`` (same family)."""
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in networks)


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


def _reason(e: NetlinkError) -> str:
    code = e.code
    return errno.errorcode.get(code, str(code)) if isinstance(code, int) else str(code)


def pin(address: str) -> Pin | None:
    """Pin the current route to ``address``; ``None`` if the address is local (no route).

    Call before any route that could capture ``address`` exists; release with :func:`unpin`.
    """
    with _lock:
        held = _refs.get(address)
        if held is not None:
            _refs[address] = (held[0], held[1] + 1)
            return held[0]
        fam = _family(address)
        bits = 128 if fam == socket.AF_INET6 else 32
        with IPRoute() as ipr:
            try:
                msgs: list[Any] = list(ipr.route("get", dst=address, family=fam))
            except NetlinkError as e:
                raise PinError(f"no route to the peer endpoint {address}: {_reason(e)}") from None
            msg = msgs[0]
            if msg["type"] == RTN_LOCAL:
                return None
            oif = int(msg.get_attr("RTA_OIF"))
            gateway = msg.get_attr("RTA_GATEWAY")
            kwargs: dict[str, Any] = {"dst": address, "dst_len": bits, "oif": oif, "family": fam}
            if gateway:
                kwargs["gateway"] = gateway
            owned = True
            try:
                ipr.route("add", **kwargs)
            except NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise PinError(
                        f"cannot add a host route for the peer endpoint {address}: {_reason(e)}"
                    ) from None
                owned = False  # someone else's route for exactly this address: use, keep
        p = Pin(address, oif, str(gateway) if gateway else None, owned)
        _refs[address] = (p, 1)
        log.info("peer endpoint %s is inside allowedIPs: pinned its route (via %s, ifindex %d) "
                 "so the tunnel's own packets do not loop into it", address,
                 p.gateway or "direct", oif)
        return p


def unpin(p: Pin) -> None:
    """Drop one reference; the last one deletes the route if we added it. Never raises."""
    with _lock:
        held = _refs.get(p.address)
        if held is None:
            return
        if held[1] > 1:
            _refs[p.address] = (held[0], held[1] - 1)
            return
        del _refs[p.address]
        if not p.owned:
            return
        fam = _family(p.address)
        kwargs: dict[str, Any] = {"dst": p.address, "dst_len": 128 if fam == socket.AF_INET6
                                  else 32, "oif": p.oif, "family": fam}
        if p.gateway:
            kwargs["gateway"] = p.gateway
        try:
            with IPRoute() as ipr:
                ipr.route("del", **kwargs)
        except NetlinkError as e:
            if e.code != errno.ESRCH:  # already gone (its link went away) is fine
                log.warning("cannot delete the host route for %s: %s", p.address, _reason(e))
