"""The seed scenario's topology in network namespaces (used by ``wgpy demo`` and the e2e tests).

::

      client ──veth── vpn (WireGuard server: wireguard-go, wgpy or kernel) ─┐
    10.77.{1,2,3}.2   10.77.{1,2,3}.1        10.77.0.1              │ bridge br0 in
                                                                     │ namespace "underlay"
                         node a 10.77.0.11 ─────────────────────────┤ (10.77.0.0/24)
                         node b 10.77.0.12 ─────────────────────────┤
                         extra  10.77.0.101… (fake API server, …) ──┘

* ``vpn`` runs one WireGuard interface per tunnel (``wg0`` on UDP 51820, ``wg1`` on 51821, …).
  Its single peer is the cluster's shared public key with AllowedIPs = the tunnel's VIP/32 and
  **no endpoint**: it learns (roams to) whichever node connects. IP forwarding is on and the
  VIP is routed into the interface, so the client's packets for the VIP enter the tunnel.
* ``vpn_node="kernel"``: the VPN node is the kernel's WireGuard in a User-Mode Linux guest
  (:class:`wgpy.testbed.UmlGuest`, one tunnel only). The guest boots in the ``vpn`` namespace,
  which bridges its two links (underlay and client) onto the guest's link; the guest holds the
  addresses above, forwards, and routes the VIP into its ``wg0``.
* ``client`` routes everything via the VPN node. It has one source address per client network
  (10.77.1.2, 10.77.2.2, 10.77.3.2) so tests can use tunnels with disjoint AllowedIPs and
  sources that a tunnel does or does not allow.
* node namespaces (``a``, ``b``, …) stand for pods with hostNetwork false: the supervisor runs
  inside and creates its TUN, VIP and routes there; nothing else is configured in them.
* extra namespaces hang off the same bridge (e.g. for the fake Kubernetes API server).

Every address lives only inside these namespaces; everything is removed on close, also when
building fails half-way. Helpers create sockets *inside* a namespace from this process
(a short-lived thread joins the namespace: the caller's thread never leaves its own), so
probes and stand-in servers need no subprocess and time their requests precisely.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self

import yaml

from wgpy import testbed
from wgpy.core.keys import generate_private_key, public_key, to_base64
from wgpy.testbed.netns import run_in_netns

UNDERLAY_NET = "10.77.0.0/24"
VPN_IP = "10.77.0.1"
NODE_BASE = 11  # node i gets 10.77.0.(11 + i)
EXTRA_BASE = 101
CLIENT_NETS = ("10.77.1.0/24", "10.77.2.0/24", "10.77.3.0/24")
VIPS = ("10.77.100.1", "10.77.100.2", "10.77.100.3")
VPN_PORT_BASE = 51820

IMPLS: dict[str, list[str]] = {
    "wireguard-go": ["wireguard-go"],
    "wgpy": [sys.executable, "-m", "wgpy.tools.userspace"],
}
KERNEL_VPN = "kernel"  # the kernel's WireGuard in a UML guest (wgpy.testbed.uml)


def client_ip(i: int) -> str:
    """The client's source address in client network ``i``."""
    return str(ipaddress.ip_network(CLIENT_NETS[i])[2])


def _gateway(i: int) -> str:
    return str(ipaddress.ip_network(CLIENT_NETS[i])[1])


@dataclass
class VpnTunnel:
    """One WireGuard interface of the VPN node and the cluster key pair that talks to it."""

    iface: str
    vip: str
    port: int
    wg: testbed.WgInstance | testbed.UmlGuest
    vpn_public: str
    cluster_private: str = field(repr=False)
    cluster_public: str
    vpn_private: str = field(default="", repr=False)

    def spec(
        self,
        *,
        allowed_ips: Sequence[str] = (CLIENT_NETS[0],),
        forward: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """This tunnel's entry of the ``tunnels`` YAML (same for every node)."""
        out: dict[str, Any] = {
            "vip": f"{self.vip}/32",
            "privateKey": self.cluster_private,
            "peerPublicKey": self.vpn_public,
            "peerEndpoint": f"{VPN_IP}:{self.port}",
            "listenPort": self.port,
            "allowedIPs": list(allowed_ips),
        }
        if forward:
            out["forward"] = [dict(f) for f in forward]
        return out

    def peer_endpoint(self) -> str | None:
        """Where the VPN node currently sends this tunnel's traffic (``host:port``)."""
        dump = self.wg.show_dump()
        return dump.peers[0].endpoint if dump.peers else None

    def latest_handshake(self) -> int:
        dump = self.wg.show_dump()
        return dump.peers[0].latest_handshake if dump.peers else 0


def tunnels_yaml(specs: dict[str, dict[str, Any]]) -> str:
    """``{name: spec}`` as the tunnels file / Secret key text."""
    return yaml.safe_dump(specs, sort_keys=False)


class Topology:
    """Build with ``with Topology(...) as topo:``; everything goes away on exit."""

    def __init__(
        self,
        *,
        vpn_node: str = "wireguard-go",
        nodes: Sequence[str] = ("a", "b"),
        extra: Sequence[str] = (),
        tunnels: int = 1,
        prefix: str = testbed.NS_PREFIX,
    ) -> None:
        if vpn_node not in (*IMPLS, KERNEL_VPN):
            raise ValueError(f"vpn node must be one of {', '.join(IMPLS)}, {KERNEL_VPN}")
        if vpn_node == KERNEL_VPN and tunnels > 1:
            raise ValueError("a kernel VPN node (UML guest) has one tunnel")
        self.vpn_impl = IMPLS.get(vpn_node, [])
        self.vpn_node = vpn_node
        self.prefix = prefix
        self._node_names = list(nodes)
        self._extra_names = list(extra)
        self._initial_tunnels = tunnels
        self._closeables: list[Any] = []
        self.underlay: testbed.Namespace | None = None
        self.vpn: testbed.Namespace | None = None
        self.client: testbed.Namespace | None = None
        self.nodes: dict[str, testbed.Namespace] = {}
        self.node_ips: dict[str, str] = {}
        self.extra: dict[str, testbed.Namespace] = {}
        self.extra_ips: dict[str, str] = {}
        self.tunnels: dict[str, VpnTunnel] = {}
        self._ports = 0
        self._client_link = ""
        self.guest: testbed.UmlGuest | None = None

    # -- build -----------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _ns(self) -> testbed.Namespace:
        ns = testbed.Namespace(self.prefix).create()
        self._closeables.append(ns)
        return ns

    def build(self) -> None:
        self.underlay = self._ns()
        self.underlay.ip("link", "add", "br0", "type", "bridge")
        self.underlay.ip("link", "set", "br0", "up")
        self.vpn = self._ns()
        self._attach(self.vpn, VPN_IP)
        self.vpn.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        for i, name in enumerate(self._node_names):
            ns = self._ns()
            self.nodes[name] = ns
            self.node_ips[name] = f"10.77.0.{NODE_BASE + i}"
            self._attach(ns, self.node_ips[name])
        for i, name in enumerate(self._extra_names):
            self.add_extra(name, f"10.77.0.{EXTRA_BASE + i}")
        self.client = self._ns()
        link = testbed.veth(self.client, self.vpn, f"{client_ip(0)}/24", f"{_gateway(0)}/24")
        for i in range(1, len(CLIENT_NETS)):
            self.client.ip("addr", "add", f"{client_ip(i)}/24", "dev", link.name_a)
            self.vpn.ip("addr", "add", f"{_gateway(i)}/24", "dev", link.name_b)
        self.client.ip("route", "add", "default", "via", _gateway(0))
        self._client_link = link.name_b
        for _ in range(self._initial_tunnels):
            self.add_vpn_tunnel()

    def _attach(self, ns: testbed.Namespace, address: str) -> None:
        """A veth from the bridge into ``ns`` (named ``ul0`` there) with ``address``/24."""
        assert self.underlay is not None
        port = f"ul{self._ports}"
        self._ports += 1
        self.underlay.ip(
            "link", "add", port, "type", "veth", "peer", "name", "ul0", "netns", ns.name
        )
        self.underlay.ip("link", "set", port, "master", "br0", "up")
        ns.ip("addr", "add", f"{address}/24", "dev", "ul0")
        ns.ip("link", "set", "ul0", "up")

    def add_extra(self, name: str, address: str) -> testbed.Namespace:
        """Another namespace on the underlay (e.g. for the fake API server)."""
        ns = self._ns()
        self.extra[name] = ns
        self.extra_ips[name] = address
        self._attach(ns, address)
        return ns

    def add_vpn_tunnel(self) -> VpnTunnel:
        """A new interface on the VPN node (wg0, wg1, …) with its own keys and VIP."""
        assert self.vpn is not None
        i = len(self.tunnels)
        iface, vip, port = f"wg{i}", VIPS[i], VPN_PORT_BASE + i
        wg: testbed.WgInstance | testbed.UmlGuest
        if self.vpn_node == KERNEL_VPN:
            if i:
                raise ValueError("a kernel VPN node (UML guest) has one tunnel")
            wg = self._start_guest()
        else:
            wg = testbed.WgInstance(self.vpn, self.vpn_impl, iface).start()
            self._closeables.append(wg)
        vpn_private, cluster_private = generate_private_key(), generate_private_key()
        t = VpnTunnel(
            iface=iface,
            vip=vip,
            port=port,
            wg=wg,
            vpn_public=to_base64(public_key(vpn_private)),
            cluster_private=to_base64(cluster_private),
            cluster_public=to_base64(public_key(cluster_private)),
            vpn_private=to_base64(vpn_private),
        )
        self._configure_vpn(t)
        self.tunnels[iface] = t
        return t

    def _configure_vpn(self, t: VpnTunnel) -> None:
        assert self.vpn is not None
        t.wg.set_conf(
            t.vpn_private,
            listen_port=t.port,
            peers=[testbed.PeerConf(t.cluster_public, None, [f"{t.vip}/32"])],
        )
        t.wg.up(1420)
        where = t.wg if isinstance(t.wg, testbed.UmlGuest) else self.vpn
        where.run(["ip", "route", "add", f"{t.vip}/32", "dev", t.iface])

    def _start_guest(self) -> testbed.UmlGuest:
        """Boot the kernel VPN node in ``vpn`` on both of its links, forwarding."""
        assert self.vpn is not None
        guest = testbed.UmlGuest(
            self.vpn, f"{VPN_IP}/24", bridge=("ul0", self._client_link)
        ).start()
        self._closeables.append(guest)
        self.guest = guest
        for i in range(len(CLIENT_NETS)):
            guest.run(["ip", "addr", "add", f"{_gateway(i)}/24", "dev", "eth0"])
        guest.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        return guest

    def restart_vpn_tunnel(self, iface: str = "wg0") -> None:
        """Stop the VPN node's implementation for ``iface`` and start it again with the same
        key and peer (a VPN node reboot: every session and learned endpoint is lost)."""
        t = self.tunnels[iface]
        t.wg.stop()
        if isinstance(t.wg, testbed.UmlGuest):
            self._closeables.remove(t.wg)
            t.wg = self._start_guest()
        else:
            t.wg.start()
        self._configure_vpn(t)

    def close(self) -> None:
        """Stop everything started here and delete every namespace. Idempotent."""
        while self._closeables:
            obj = self._closeables.pop()
            with contextlib.suppress(Exception):
                obj.close()

    # -- processes -------------------------------------------------------------------------

    def start_supervisor(
        self,
        node: str,
        tunnels_file: str,
        *,
        lock_file: str,
        retry_period: float = 0.5,
        env: dict[str, str] | None = None,
        log: IO[Any] | None = None,
        extra_args: Sequence[str] = (),
    ) -> subprocess.Popen[Any]:
        """``wgpy supervisor --tunnels-file`` in node ``node`` (identity ``node-<node>``);
        stopped by PID when the topology closes."""
        argv = [
            sys.executable,
            "-m",
            "wgpy.tools.cli",
            "supervisor",
            "--tunnels-file",
            tunnels_file,
            "--lock-file",
            lock_file,
            "--node-name",
            f"node-{node}",
            "--retry-period",
            str(retry_period),
            *extra_args,
        ]
        out = log if log is not None else subprocess.DEVNULL
        return self.nodes[node].popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    # -- sockets inside namespaces ----------------------------------------------------------

    def socket_in(self, ns: testbed.Namespace, kind: socket.SocketKind) -> socket.socket:
        """A socket created inside ``ns`` (it stays there wherever it is used)."""
        return run_in_netns(ns.name, lambda: socket.socket(socket.AF_INET, kind))

    def tcp_request(
        self, host: str, port: int, *, source: str | None = None, timeout: float = 1.0
    ) -> str | None:
        """From the client: connect, send a line, return the answer (``None`` on failure)."""
        assert self.client is not None
        s = self.socket_in(self.client, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            if source:
                s.bind((source, 0))
            s.connect((host, port))
            s.sendall(b"hello\n")
            s.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data.decode(errors="replace").strip() or None
        except OSError:
            return None
        finally:
            s.close()

    def udp_request(
        self, host: str, port: int, *, source: str | None = None, timeout: float = 0.5
    ) -> str | None:
        """From the client: one datagram, the answer (``None`` on timeout)."""
        assert self.client is not None
        s = self.socket_in(self.client, socket.SOCK_DGRAM)
        try:
            s.settimeout(timeout)
            s.bind((source or "0.0.0.0", 0))  # noqa: S104 (inside the client namespace)
            s.sendto(b"ping", (host, port))
            data, _ = s.recvfrom(4096)
            return data.decode(errors="replace").strip()
        except OSError:
            return None
        finally:
            s.close()

    def serve_name(
        self, node: str, text: str, *, tcp: int | None = 7443, udp: int | None = 5353
    ) -> NameServer:
        """Stand-in servers in node ``node`` on 127.0.0.1 answering ``text`` (TCP: the line
        ``text``; UDP: ``text`` for each datagram). Stopped when the topology closes."""
        ns = self.nodes[node]
        tcp_sock = udp_sock = None
        if tcp is not None:
            tcp_sock = self.socket_in(ns, socket.SOCK_STREAM)
            tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp_sock.bind(("127.0.0.1", tcp))
            tcp_sock.listen(64)
        if udp is not None:
            udp_sock = self.socket_in(ns, socket.SOCK_DGRAM)
            udp_sock.bind(("127.0.0.1", udp))
        server = NameServer(text, tcp_sock, udp_sock)
        self._closeables.append(server)
        return server


class NameServer:
    """Threads answering a fixed text on a TCP and a UDP socket (see :meth:`serve_name`)."""

    def __init__(self, text: str, tcp: socket.socket | None, udp: socket.socket | None) -> None:
        self.text = text.encode()
        self.tcp = tcp
        self.udp = udp
        self.stopped = threading.Event()
        self.threads = []
        for sock, fn in ((tcp, self._tcp_loop), (udp, self._udp_loop)):
            if sock is not None:
                sock.settimeout(0.2)
                t = threading.Thread(target=fn, args=(sock,), daemon=True)
                t.start()
                self.threads.append(t)

    def _tcp_loop(self, sock: socket.socket) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(1.0)
                conn.recv(4096)
                conn.sendall(self.text + b"\n")

    def _udp_loop(self, sock: socket.socket) -> None:
        while not self.stopped.is_set():
            try:
                _data, addr = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                sock.sendto(self.text, addr)

    def close(self) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(1.0)
        for s in (self.tcp, self.udp):
            if s is not None:
                s.close()


@contextlib.contextmanager
def topology(**kwargs: Any) -> Iterator[Topology]:
    """``with topology(vpn_node="wgpy") as topo:`` (same as ``with Topology(...)``)."""
    with Topology(**kwargs) as topo:
        yield topo
