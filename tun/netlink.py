"""Links, addresses, routes and network namespaces over rtnetlink (pyroute2), never ``ip``.

Every function takes an optional ``netns`` (a name under ``/run/netns``) because the supervisor
and the tests work inside namespaces. A fresh ``IPRoute`` socket is opened per call: these are
configuration-time operations, not a hot path, and it keeps the functions stateless.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2 import netns as _netns
from pyroute2.netlink.exceptions import NetlinkError

from tun.base import TunError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IFF_UP = 0x1
RT_TABLE_MAIN = 254
_AF = {4: socket.AF_INET.value, 6: socket.AF_INET6.value}
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


@contextlib.contextmanager
def _ipr(netns: str | None) -> Iterator[Any]:
    ipr = IPRoute(netns=netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _fail(what: str, exc: NetlinkError) -> TunError:
    code = exc.code
    reason = errno.errorcode.get(code, str(code)) if isinstance(code, int) else str(code)
    return TunError(f"{what}: {reason} ({exc})")


def _index(ipr: Any, name: str, netns: str | None) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        where = f" in netns {netns}" if netns else ""
        raise TunError(f"no interface {name}{where}")
    return int(found[0])


# --- namespaces --------------------------------------------------------------------------------


def netns_create(name: str) -> None:
    """Create the named network namespace (``ip netns add``); error if it exists."""
    if name in _netns.listnetns():
        raise TunError(f"network namespace {name} already exists")
    _netns.create(name)


def netns_remove(name: str) -> None:
    """Delete the named namespace; links inside it go with it. Missing is not an error."""
    if name in _netns.listnetns():
        _netns.remove(name)


def netns_list() -> list[str]:
    return list(_netns.listnetns())


def setns(path: str) -> None:
    """Switch the *calling thread* into the network namespace at ``path`` (a file under
    ``/run/netns`` or ``/proc/.../ns/net``). Other threads stay where they are."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd, path)
    finally:
        os.close(fd)


def _setns_fd(fd: int, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the *calling thread* switched into namespace ``name``, then back.

    Sockets and TUN devices created inside the block stay in that namespace after it ends,
    which is how a test opens a TUN and a UDP socket "inside" a namespace from one process.
    Safe from several threads at once: each saves its own namespace
    (``/proc/thread-self``), where pyroute2's ``pushns`` saves the main thread's on a stack
    all threads share.
    """
    if name not in _netns.listnetns():
        raise TunError(f"no network namespace {name}")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        setns(os.path.join(NETNS_DIR, name))
        try:
            yield
        finally:
            _setns_fd(home, "the thread's own namespace")
    finally:
        os.close(home)


# --- links -------------------------------------------------------------------------------------


def link_exists(name: str, *, netns: str | None = None) -> bool:
    with _ipr(netns) as ipr:
        return bool(ipr.link_lookup(ifname=name))


def link_index(name: str, *, netns: str | None = None) -> int:
    """The interface index of ``name``; :class:`TunError` if there is no such link."""
    with _ipr(netns) as ipr:
        return _index(ipr, name, netns)


def _link_msg(name: str, netns: str | None) -> Any:
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        return ipr.link("get", index=idx)[0]


def link_mtu(name: str, *, netns: str | None = None) -> int:
    return int(_link_msg(name, netns).get_attr("IFLA_MTU"))


def link_is_up(name: str, *, netns: str | None = None) -> bool:
    """Whether the link is administratively up (``IFF_UP``)."""
    return bool(int(_link_msg(name, netns)["flags"]) & _IFF_UP)


def _link_set(name: str, netns: str | None, what: str, **attrs: Any) -> None:
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        try:
            ipr.link("set", index=idx, **attrs)
        except NetlinkError as exc:
            raise _fail(f"{what} on {name}", exc) from None


def set_link_up(name: str, *, netns: str | None = None) -> None:
    _link_set(name, netns, "link up", state="up")


def set_link_down(name: str, *, netns: str | None = None) -> None:
    _link_set(name, netns, "link down", state="down")


def set_link_mtu(name: str, mtu: int, *, netns: str | None = None) -> None:
    _link_set(name, netns, f"set MTU {mtu}", mtu=mtu)


def delete_link(name: str, *, netns: str | None = None) -> None:
    """Delete the link (``ip link del``); a missing link is not an error."""
    with _ipr(netns) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        try:
            ipr.link("del", index=found[0])
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise _fail(f"delete {name}", exc) from None


def wait_for_deletion(
    name: str, *, timeout: float, netns: str | None = None, interval: float = 0.02
) -> bool:
    """Poll until ``name`` no longer exists; return False if it still does after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    with _ipr(netns) as ipr:
        while ipr.link_lookup(ifname=name):
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
    return True


def add_veth(
    name: str, peer: str, *, netns: str | None = None, peer_netns: str | None = None
) -> None:
    """Create a veth pair ``name``/``peer`` in ``netns``, then move ``peer`` to ``peer_netns``."""
    with _ipr(netns) as ipr:
        try:
            ipr.link("add", ifname=name, kind="veth", peer=peer)
            if peer_netns is not None:
                idx = _index(ipr, peer, netns)
                ipr.link("set", index=idx, net_ns_fd=peer_netns)
        except NetlinkError as exc:
            raise _fail(f"create veth {name}/{peer}", exc) from None


# --- addresses ---------------------------------------------------------------------------------


def _as_interface(address: IPInterface | str) -> IPInterface:
    try:
        return ipaddress.ip_interface(address)
    except ValueError:
        raise TunError(f"not an interface address: {address!r}") from None


def add_address(name: str, address: IPInterface | str, *, netns: str | None = None) -> None:
    """Add ``address`` (e.g. ``10.0.0.1/24``) to the link; adds the connected route too."""
    iface = _as_interface(address)
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        try:
            ipr.addr("add", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            raise _fail(f"add address {iface} to {name}", exc) from None


def del_address(name: str, address: IPInterface | str, *, netns: str | None = None) -> None:
    iface = _as_interface(address)
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        try:
            ipr.addr("del", index=idx, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            raise _fail(f"delete address {iface} from {name}", exc) from None


def list_addresses(name: str, *, netns: str | None = None) -> list[IPInterface]:
    """The link's addresses (both families), IPv6 link-local ones included."""
    with _ipr(netns) as ipr:
        idx = _index(ipr, name, netns)
        out: list[IPInterface] = []
        for msg in ipr.get_addr(index=idx):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr is None:
                continue
            out.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        return out


# --- routes ------------------------------------------------------------------------------------


def _as_network(dst: IPNetwork | str) -> IPNetwork:
    try:
        return ipaddress.ip_network(dst, strict=False)
    except ValueError:
        raise TunError(f"not a network: {dst!r}") from None


def _route(
    cmd: str,
    dst: IPNetwork | str,
    *,
    dev: str,
    table: int | None,
    metric: int | None,
    netns: str | None,
) -> None:
    net = _as_network(dst)
    with _ipr(netns) as ipr:
        idx = _index(ipr, dev, netns)
        kwargs: dict[str, Any] = {
            "dst": str(net.network_address),
            "dst_len": net.prefixlen,
            "oif": idx,
            "family": _AF[net.version],
        }
        if table is not None:
            kwargs["table"] = table
        if metric is not None:
            kwargs["priority"] = metric
        try:
            ipr.route(cmd, **kwargs)
        except NetlinkError as exc:
            raise _fail(f"route {cmd} {net} dev {dev}", exc) from None


def add_route(
    dst: IPNetwork | str,
    *,
    dev: str,
    table: int | None = None,
    metric: int | None = None,
    netns: str | None = None,
) -> None:
    """Route ``dst`` out of ``dev`` (``ip route add DST dev DEV [table T] [metric M]``)."""
    _route("add", dst, dev=dev, table=table, metric=metric, netns=netns)


def del_route(
    dst: IPNetwork | str,
    *,
    dev: str,
    table: int | None = None,
    metric: int | None = None,
    netns: str | None = None,
) -> None:
    _route("del", dst, dev=dev, table=table, metric=metric, netns=netns)


def list_routes(
    dev: str, *, table: int = RT_TABLE_MAIN, netns: str | None = None
) -> list[IPNetwork]:
    """Destinations routed out of ``dev`` in ``table`` (default main), both families."""
    with _ipr(netns) as ipr:
        idx = _index(ipr, dev, netns)
        out: list[IPNetwork] = []
        for family in _AF.values():
            for msg in ipr.get_routes(family=family, oif=idx):
                if msg.get_attr("RTA_OIF") != idx or msg.get_attr("RTA_TABLE") != table:
                    continue
                dst = msg.get_attr("RTA_DST")
                if dst is None:  # a default route carries no RTA_DST
                    dst = "::" if family == _AF[6] else "0.0.0.0"  # noqa: S104
                out.append(ipaddress.ip_network(f"{dst}/{msg['dst_len']}", strict=False))
        return out
