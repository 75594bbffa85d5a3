"""Source-based routing for a tunnel, and the check that the pod's own paths stay off it.

The Secret's ``allowedIPs`` often covers the cluster itself (the seed's example routes
``10.0.0.0/8``, which holds the usual Service range 10.96.0.0/12, pod and node ranges;
VPN-provider setups route ``0.0.0.0/0``). Routed through the pod's main table, that sends the
leader's API traffic, DNS and forward targets into the tunnel: it loses its Lease, the next
leader does the same, and it never settles. So, as kube-vip does with a table of its own, the
allowedIPs routes go into a per-tunnel table ``T`` and one rule sends only traffic *from the
VIP* there (``ip rule add from VIP lookup T``): the VIP's replies and connections use the
tunnel, everything else (the pod's address, the forwarders' connections to their targets)
stays on the pod network. A destination outside allowedIPs falls through ``T`` to the main
table as usual.

:func:`leaks` is the check that keeps this honest: after bring-up, the addresses the pod must
reach without the tunnel (its own addresses' networks, the API server, the ``resolv.conf``
nameservers, the forward targets; :func:`pod_view`) are looked up as the kernel would route
them from the pod; any that would leave through a tunnel is an error, named.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from wgpy.core.errors import WgpyError

TABLE_BASE = 0x5767_0000  # "Wg" << 16: tables 0x57670000 + ifindex, far from 0-255
RULE_PRIORITY = 5208  # before main (32766), after local (0)
RESOLV_CONF = "/etc/resolv.conf"
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class RouteError(WgpyError):
    """A rule could not be installed, or a pod path would leave through a tunnel."""


def table_for(ifindex: int) -> int:
    """The routing table of the tunnel whose TUN has ``ifindex`` (unique while it exists)."""
    return TABLE_BASE + ifindex


def _rule_kwargs(vip: ipaddress.IPv4Address | ipaddress.IPv6Address, table: int) -> dict[str, Any]:
    return {
        "family": _AF[vip.version],
        "src": str(vip),
        "src_len": vip.max_prefixlen,
        "table": table,
        "priority": RULE_PRIORITY,
    }


def add_rule(vip: ipaddress.IPv4Address | ipaddress.IPv6Address, table: int) -> None:
    """``ip rule add from VIP lookup TABLE priority RULE_PRIORITY`` (a stale one for the same
    VIP, left by a process that died, is replaced)."""
    del_rules(vip)
    with IPRoute() as ipr:
        try:
            ipr.rule("add", **_rule_kwargs(vip, table))
        except NetlinkError as e:
            raise RouteError(f"cannot add the source rule for {vip}: {_reason(e)}") from None


def del_rules(vip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    """Remove every rule of ours for ``vip`` (any table); returns how many. Never raises."""
    removed = 0
    with IPRoute() as ipr:
        try:
            rules = list(ipr.get_rules(family=_AF[vip.version]))
        except NetlinkError:
            return 0
        for r in rules:
            if (
                r.get_attr("FRA_PRIORITY") == RULE_PRIORITY
                and r.get_attr("FRA_SRC") == str(vip)
                and r["src_len"] == vip.max_prefixlen
            ):
                table = r.get_attr("FRA_TABLE") or r["table"]
                try:
                    ipr.rule("del", **_rule_kwargs(vip, int(table)))
                    removed += 1
                except NetlinkError:
                    pass
    return removed


def _reason(e: NetlinkError) -> str:
    code = e.code
    return errno.errorcode.get(code, str(code)) if isinstance(code, int) else str(code)


# -- what the pod must reach without the tunnel ------------------------------------------------


def nameservers(path: str = RESOLV_CONF) -> list[str]:
    """The ``nameserver`` addresses of ``resolv.conf`` (missing file: none)."""
    out: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    try:
                        out.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
                    except ValueError:
                        continue
    except OSError:
        return []
    return out


def own_addresses(exclude_ifindexes: Iterable[int] = ()) -> list[str]:
    """The pod's global addresses on links other than loopback and the given ones."""
    skip = set(exclude_ifindexes)
    out: list[str] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr():
            if msg["index"] in skip or msg["scope"] != 0:  # 0: RT_SCOPE_UNIVERSE
                continue
            addr = msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(str(addr))
    return out


def pod_view(
    env: Mapping[str, str] | None = None,
    *,
    targets: Iterable[str] = (),
    exclude_ifindexes: Iterable[int] = (),
    resolv_conf: str = RESOLV_CONF,
) -> dict[str, str]:
    """``{address: why}`` for every address the pod must reach without a tunnel."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for a in own_addresses(exclude_ifindexes):
        out.setdefault(a, "the pod's own address")
    api = env.get("KUBERNETES_SERVICE_HOST", "")
    if api:
        out.setdefault(api, "the API server (KUBERNETES_SERVICE_HOST)")
    for ns in nameservers(resolv_conf):
        out.setdefault(ns, f"a nameserver of {resolv_conf}")
    for t in targets:
        out.setdefault(t, "a forward target")
    return {
        a: why for a, why in out.items() if _is_ip(a) and not ipaddress.ip_address(a).is_loopback
    }


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def leaks(addresses: Mapping[str, str], tunnel_ifindexes: Iterable[int]) -> list[str]:
    """Descriptions of the ``addresses`` the kernel would route out of a tunnel (from the pod's
    own source, i.e. not from a VIP)."""
    tunnels = set(tunnel_ifindexes)
    bad: list[str] = []
    with IPRoute() as ipr:
        for addr, why in sorted(addresses.items()):
            ip = ipaddress.ip_address(addr)
            try:
                msgs = list(ipr.route("get", dst=addr, family=_AF[ip.version]))
            except NetlinkError:
                continue  # unreachable is not our doing
            if msgs and msgs[0].get_attr("RTA_OIF") in tunnels:
                bad.append(f"{addr} ({why})")
    return bad
