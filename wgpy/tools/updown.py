"""``wgpy up CONF`` / ``wgpy down CONF|IFACE``: a small wg-quick for the userspace device.

``up`` follows wg-quick's ``linux.bash``: the interface is named after the config file
(``NAME.conf``; a bare ``NAME`` means ``/etc/wireguard/NAME.conf``), the userspace daemon
creates it, the ``wg`` part of the config goes over UAPI, then addresses, MTU (1420 unless
``MTU =`` says otherwise), link up and one route per AllowedIPs prefix not already covered.

Deliberately not done (use ``wg-quick`` with ``WG_QUICK_USERSPACE_IMPLEMENTATION=wgpy-userspace``
for these): full-tunnel ``/0`` routes in the main table, which need wg-quick's fwmark policy
routing to avoid cutting the host off its own default route; DNS; the Pre/Post hooks; SaveConfig.
Every check that can fail is done before anything is created; after creation any failure deletes
the link again, which makes the daemon exit.

Environment (mostly for tests): ``WGPY_SOCKET_DIR`` (UAPI socket directory, passed on to
``wgpy-userspace``), ``WGPY_TUN_DEVICE`` (the TUN clone device, default ``/dev/net/tun``) and
``WGPY_USERSPACE_IMPLEMENTATION`` (another daemon command, e.g. ``wireguard-go``).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import wgpy
from tun.base import TunError
from wgpy.core.constants import DEFAULT_MTU
from wgpy.core.errors import ConfigError, WgpyError
from wgpy.core.uapi import SetRequest
from wgpy.io import uapi_client
from wgpy.io.keyfiles import insecure_file_warning
from wgpy.tools import quickconf

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

TUN_DEVICE_ENV = "WGPY_TUN_DEVICE"
IMPLEMENTATION_ENV = "WGPY_USERSPACE_IMPLEMENTATION"
DEFAULT_TUN_DEVICE = "/dev/net/tun"
CONFIG_DIR = "/etc/wireguard"
RT_TABLE_MAIN = 254
DAEMON_TIMEOUT = 15.0  # seconds for the daemon to create TUN + socket and fork
SOCKET_GONE_TIMEOUT = 5.0  # seconds for the daemon to exit after its link is deleted
_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
_CONF = re.compile(r"(?:^|/)([a-zA-Z0-9_=+.-]{1,15})\.conf$")
_RT_TABLES = ("/etc/iproute2/rt_tables", "/usr/share/iproute2/rt_tables")


class QuickError(WgpyError):
    """A ``wgpy up``/``down`` failure; the message is meant for the user as it is."""


def _say(line: str) -> None:
    """wg-quick's ``[#]`` trace on stderr, so the user sees what was done."""
    print(f"[#] {line}", file=sys.stderr, flush=True)


# --- checks and plans (no side effects) ----------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise QuickError("must be run as root (it creates network interfaces)")


def config_path(arg: str) -> tuple[str, str]:
    """``(path, interface name)`` for ``wgpy up ARG``, with wg-quick's naming rules.

    One deliberate difference: wg-quick reads ``wg0.conf`` as ``/etc/wireguard/wg0.conf.conf``;
    here a bare argument already ending in ``.conf`` is taken as a path.
    """
    bare = _NAME.fullmatch(arg) and not arg.endswith(".conf")
    path = f"{CONFIG_DIR}/{arg}.conf" if bare else arg
    if not os.path.exists(path):
        raise QuickError(f"`{path}' does not exist")
    m = _CONF.search(path)
    if m is None:
        raise QuickError(
            "the config file must be a valid interface name (at most 15 characters of "
            "a-z A-Z 0-9 _=+.-), followed by .conf"
        )
    return path, m.group(1)


def interface_name(arg: str) -> str:
    """The interface of ``wgpy down ARG``: a config file's stem, or ARG as a name."""
    m = _CONF.search(arg)
    if m is not None:
        return m.group(1)
    if not _NAME.fullmatch(arg):
        raise QuickError(f"`{arg}' is neither an interface name nor a NAME.conf file")
    return arg


def route_table(table: str | None) -> int | None:
    """The routing table for ``Table =``: ``None`` for ``off`` (add no routes)."""
    if table is None or table in ("auto", "main"):
        return RT_TABLE_MAIN
    if table == "off":
        return None
    if table.isdigit():
        return int(table)
    for path in _RT_TABLES:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.split("#", 1)[0].split()
            if len(parts) == 2 and parts[1] == table and parts[0].isdigit():
                return int(parts[0])
    raise QuickError(f"Table = {table}: no such routing table in {_RT_TABLES[0]}")


def plan_routes(cfg: quickconf.WgQuickConfig, table: int | None) -> list[Network]:
    """The prefixes to route into the tunnel, most specific first (wg-quick's ``sort -nr``).

    Raises :class:`QuickError` for a ``/0`` destined for the main table: it would replace or
    fight the host's own default route, which wg-quick avoids with policy routing.
    """
    if table is None:
        return []
    nets = {n for p in cfg.peers for n in p.allowed_ips}
    if table == RT_TABLE_MAIN and any(n.prefixlen == 0 for n in nets):
        raise QuickError(
            "AllowedIPs includes a default route (0.0.0.0/0 or ::/0): full-tunnel default "
            "routes are not supported by `wgpy up`. Use `WG_QUICK_USERSPACE_IMPLEMENTATION="
            "wgpy-userspace wg-quick up CONF` (policy routing), or set `Table = off` and add "
            "routes yourself."
        )
    return sorted(nets, key=lambda n: (-n.prefixlen, n.version, int(n.network_address)))


def resolve_endpoint(host: str, port: int) -> tuple[str, int]:
    """A host name to an address, as ``wg`` does it (getaddrinfo, first answer, UDP)."""
    try:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, socket.IPPROTO_UDP
        )
    except socket.gaierror as exc:
        raise ConfigError(f"unable to resolve endpoint host {host!r}: {exc.strerror}") from None
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


def check_tun_device() -> None:
    path = os.environ.get(TUN_DEVICE_ENV) or DEFAULT_TUN_DEVICE
    if not os.path.exists(path):
        raise QuickError(
            f"{path} does not exist: the TUN driver is missing (try `modprobe tun`) or, in a "
            "container, the device is not passed in (e.g. --device /dev/net/tun)"
        )


def link_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def check_port_free(port: int) -> None:
    """Fail early if the UDP ``ListenPort`` is taken (the daemon binds it only once up)."""
    families = ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::"))  # noqa: S104
    for family, any_addr in families:
        try:
            s = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            continue  # no IPv6 here: nothing to collide with
        with s:
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((any_addr, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise QuickError(f"ListenPort {port} is already in use") from None
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise


# --- the daemon ---------------------------------------------------------------------------------


def daemon_command(ifname: str, directory: str | None) -> list[str]:
    """``wgpy-userspace IFACE`` (as this Python), or ``$WGPY_USERSPACE_IMPLEMENTATION IFACE``."""
    custom = os.environ.get(IMPLEMENTATION_ENV)
    if custom:
        return [*shlex.split(custom), ifname]
    cmd = [sys.executable, "-m", "wgpy.tools.userspace", ifname]
    sock_dir = uapi_client.socket_dir(directory)
    if sock_dir != uapi_client.DEFAULT_SOCKET_DIR:
        cmd += ["--socket-dir", sock_dir]
    return cmd


def start_daemon(ifname: str, directory: str | None) -> None:
    """Run the daemon command and wait for its foreground part to exit 0 (TUN + socket exist)."""
    cmd = daemon_command(ifname, directory)
    env = dict(os.environ)
    env.pop("WG_PROCESS_FOREGROUND", None)  # it must fork, or we would wait forever
    # `python -m wgpy.tools.userspace` must find this very wgpy, installed or run from a checkout.
    root = str(Path(wgpy.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    _say(shlex.join(cmd))
    # stderr to a file, not a pipe: the daemonized child might keep a pipe open forever.
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env)
        except OSError as exc:
            raise QuickError(f"cannot run {cmd[0]}: {exc.strerror}") from None
        try:
            rc = proc.wait(DAEMON_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        err.seek(0)
        detail = err.read(4000).decode("utf-8", "replace").strip()
    if rc != 0:
        what = "did not start in time" if rc is None else f"exited with status {rc}"
        raise QuickError(f"{cmd[0]} {what}" + (f": {detail}" if detail else ""))


def wait_socket_gone(ifname: str, directory: str | None, timeout: float) -> bool:
    path = uapi_client.socket_path(ifname, directory)
    deadline = time.monotonic() + timeout
    while os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def teardown(ifname: str, directory: str | None) -> bool:
    """Delete the link (the daemon exits on that); True once its socket is gone too."""
    from tun import netlink

    netlink.delete_link(ifname)
    return wait_socket_gone(ifname, directory, SOCKET_GONE_TIMEOUT)


# --- up / down ----------------------------------------------------------------------------------


def _covers(outer: Network, inner: Network) -> bool:
    if isinstance(outer, ipaddress.IPv4Network) and isinstance(inner, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(outer, ipaddress.IPv6Network) and isinstance(inner, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False


def _configure(
    ifname: str,
    cfg: quickconf.WgQuickConfig,
    request: SetRequest,
    routes: list[Network],
    *,
    table: int | None,
    directory: str | None,
) -> None:
    # pyroute2 is imported only here, after the root check: a user without it (or without
    # access to it) gets "must be run as root", not an ImportError.
    from tun import netlink

    _say(f"wgpy set {ifname} (private key, {len(cfg.peers)} peer(s))")
    uapi_client.set_device(ifname, request, directory=directory)
    for addr in cfg.addresses:
        _say(f"ip -{addr.version} address add {addr} dev {ifname}")
        netlink.add_address(ifname, addr)
    mtu = cfg.mtu or DEFAULT_MTU
    _say(f"ip link set mtu {mtu} up dev {ifname}")
    netlink.set_link_mtu(ifname, mtu)
    netlink.set_link_up(ifname)
    for net in routes:
        if table == RT_TABLE_MAIN:
            present = netlink.list_routes(ifname)
            if any(_covers(r, net) for r in present):
                continue  # wg-quick: `ip route show dev IF match NET` is non-empty
        suffix = "" if table == RT_TABLE_MAIN else f" table {table}"
        _say(f"ip -{net.version} route add {net} dev {ifname}{suffix}")
        netlink.add_route(net, dev=ifname, table=None if table == RT_TABLE_MAIN else table)


def up(arg: str, *, directory: str | None = None) -> str:
    """Bring up the interface of config ``arg``; return its name. Raises :class:`QuickError`."""
    require_root()
    path, ifname = config_path(arg)
    try:
        cfg = quickconf.parse_file(path)
    except ConfigError as exc:
        raise QuickError(f"{path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QuickError(f"{path}: cannot read: {exc}") from None
    warning = insecure_file_warning(path)
    if warning:
        print(f"wgpy: {warning}", file=sys.stderr)
    table = route_table(cfg.table)
    routes = plan_routes(cfg, table)
    try:
        request = quickconf.to_set_request(cfg, resolve=resolve_endpoint)
    except ConfigError as exc:
        raise QuickError(f"{path}: {exc}") from None
    ignored = [
        name
        for name, present in (
            ("DNS", cfg.dns or cfg.dns_search),
            ("PreUp", cfg.pre_up),
            ("PostUp", cfg.post_up),
            ("PreDown", cfg.pre_down),
            ("PostDown", cfg.post_down),
            ("SaveConfig", cfg.save_config),
        )
        if present
    ]
    if ignored:
        print(f"wgpy: warning: ignoring {', '.join(ignored)} (use wg-quick)", file=sys.stderr)
    check_tun_device()
    if link_exists(ifname):
        raise QuickError(f"`{ifname}' already exists")
    if uapi_client.has_interface(ifname, directory):
        raise QuickError(
            f"a daemon already answers on {uapi_client.socket_path(ifname, directory)} "
            "(is the interface up in another network namespace?)"
        )
    if cfg.listen_port:
        check_port_free(cfg.listen_port)
    start_daemon(ifname, directory)
    try:
        if not uapi_client.has_interface(ifname, directory):
            sock = uapi_client.socket_path(ifname, directory)
            raise QuickError(f"the daemon did not create {sock}")
        _configure(ifname, cfg, request, routes, table=table, directory=directory)
    except BaseException as exc:
        # Whatever went wrong (pyroute2 errors included, even ^C), do not leave a half-set-up
        # interface behind: deleting the link also makes the daemon exit.
        _say(f"ip link delete dev {ifname}")
        teardown(ifname, directory)
        if not isinstance(exc, Exception):
            raise
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if not isinstance(exc, WgpyError | OSError):
            text = f"{type(exc).__name__}: {text}"
        raise QuickError(f"configuring {ifname} failed: {text}") from None
    return ifname


def down(arg: str, *, directory: str | None = None) -> str:
    """Delete the interface named by ``arg`` and wait for its daemon to exit."""
    require_root()
    ifname = interface_name(arg)
    if not uapi_client.has_interface(ifname, directory) or not link_exists(ifname):
        raise QuickError(f"`{ifname}' is not a WireGuard interface")
    _say(f"ip link delete dev {ifname}")
    if not teardown(ifname, directory):
        raise QuickError(f"{ifname} deleted, but its daemon did not remove its UAPI socket")
    return ifname


def _run(action: Callable[..., str], argv: list[str], prog: str, help_: str) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=help_)
    parser.add_argument("config", metavar="CONF_FILE | INTERFACE")
    parser.add_argument("--socket-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        action(args.config, directory=args.socket_dir)
    except (QuickError, WgpyError, TunError) as exc:
        print(f"wgpy: {exc}", file=sys.stderr)
        return 1
    return 0


def up_main(argv: list[str], prog: str) -> int:
    """``wgpy up CONF``."""
    return _run(up, argv, prog, "Bring up a userspace WireGuard interface from a wg-quick file.")


def down_main(argv: list[str], prog: str) -> int:
    """``wgpy down CONF|IFACE``."""
    return _run(down, argv, prog, "Delete an interface brought up by `wgpy up`.")
