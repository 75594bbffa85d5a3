"""Kubernetes mode of the supervisor.

Part 1 (no root): ``run_kubernetes_mode`` in-process with the real manager and fake tunnel
runtimes/forwarders, against the strict fake API under the RBAC of ``deploy/rbac.yaml``:
Secret → tunnels, invalid Secret → rejection + Warning Event, Services → forwarders, Events on
leadership, status written, a request outside the RBAC refused.

Part 2 (root, network namespaces): the end-to-end scenario of issue 8, see below.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from noise import tai64n
from tests.fakeapi import FakeApiServer
from tests.supervisor_support import RbacFakeApi, deploy_rbac, lb_service, secret, slice_
from tests.support import needs_root
from wgpy.supervisor.kubemode import KubeSettings, run_kubernetes_mode
from wgpy.supervisor.manager import Supervisor
from wgpy.supervisor.model import ForwardStats, Target, TunnelStatus
from wgpy.testbed import wait_for, wait_until

ROOT = Path(__file__).resolve().parent.parent
NS = "kube-system"
KEY = "YAZz1bqVoCv2ko9Phlp+EzYKYxyGlqMixBPOSTMhhEA="
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def tunnels_yaml(tunnels: dict[str, dict[str, Any]]) -> str:
    return yaml.safe_dump(tunnels)


def tunnel(vip: str, port: int, allowed: Sequence[str], *, endpoint: str = "10.99.0.1:51820",
           key: str = KEY, peer: str = PUB) -> dict[str, Any]:
    return {"vip": vip, "privateKey": key, "peerPublicKey": peer, "peerEndpoint": endpoint,
            "listenPort": port, "allowedIPs": list(allowed)}


# -- part 1: in-process wiring -----------------------------------------------------------------

class StubRuntime:
    def __init__(self, t: Any) -> None:
        self.t, self.alive, self.last_timestamp_sent = t, False, tai64n.ZERO

    def start(self, timestamp_floor: bytes) -> None:
        self.alive = True

    def stop(self) -> None:
        self.alive = False

    def status(self) -> TunnelStatus:
        return TunnelStatus(self.t.name, str(self.t.vip), up=self.alive)


class StubForwarder:
    def __init__(self, host: str, port: int, proto: str, targets: Sequence[Target]) -> None:
        self.host, self.port, self.proto = host, port, proto
        self.targets = tuple(targets)
        self.stats = ForwardStats()

    async def start(self) -> None:
        pass

    def update_targets(self, targets: Sequence[Target]) -> None:
        self.targets = tuple(targets)

    async def close(self) -> None:
        pass


def run(test: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout))


def events(srv: FakeApiServer) -> list[dict[str, Any]]:
    return [o for o in srv._objs.values() if o["kind"] == "Event"]



def stub_factory(managers: list[Supervisor]) -> Callable[..., Supervisor]:
    """A supervisor factory with stub tunnels and forwarders that records what it made."""

    def factory(identity: str, *, elector_factory: Any) -> Supervisor:
        m = Supervisor(identity, elector_factory=elector_factory,
                       runtime_factory=StubRuntime,
                       forwarder_factory=StubForwarder,   # type: ignore[arg-type]
                       restart_delay=0.1)
        managers.append(m)
        return m

    return factory

def test_kubernetes_mode_wiring_under_deploy_rbac(tmp_path: Path) -> None:
    from tests.fakeapi import write_kubeconfig

    async def main() -> None:
        async with RbacFakeApi(bookmark_interval=2) as srv:
            deploy_rbac(srv)
            srv.seed(secret(tunnels_yaml({"wg0": tunnel("10.200.0.1/32", 51820,
                                                         ["10.100.0.0/16"])})))
            srv.seed(lb_service("dns", "10.200.0.1", [(53, "UDP", 5353)]))
            srv.seed(slice_("dns", ["10.1.0.7"], [("p53", 5353, "UDP")]))
            srv.seed(slice_("kubernetes", ["192.168.5.5"], [("https", 6443, "TCP")]))
            kc = write_kubeconfig(tmp_path / "kc", srv.url)
            settings = KubeSettings.from_env(
                {"vip_nodename": "Node-A", "POD_NAMESPACE": NS, "vip_leaseduration": "2",
                 "vip_renewdeadline": "1", "vip_retryperiod": "0.3",
                 "vip_address": "10.200.0.1"},
                http_host="127.0.0.1", http_port=0, kubeconfig=str(kc))
            assert settings.identity == "node-a" and settings.cp_namespace == NS
            managers: list[Supervisor] = []
            factory = stub_factory(managers)

            stop = asyncio.Event()
            task = asyncio.ensure_future(run_kubernetes_mode(settings, factory, stop=stop))
            await wait_until(lambda: bool(managers) and managers[0].running == ["wg0"])
            m = managers[0]
            fwd: dict[tuple[int, str], Any] = {}

            def forwarders() -> dict[tuple[int, str], Any]:
                live = m._running.get("wg0")
                fwd.clear()
                if live is not None:
                    fwd.update(live.forwarders)
                return fwd
            await wait_until(lambda: set(forwarders()) == {(53, "UDP"), (6443, "TCP")})
            assert fwd[(53, "UDP")].targets == (Target("10.1.0.7", 5353),)
            assert fwd[(6443, "TCP")].targets == (Target("192.168.5.5", 6443),)
            assert fwd[(53, "UDP")].host == "10.200.0.1"
            await wait_until(lambda: "ingress" in str(srv.get("services", "default", "dns")))
            await wait_until(lambda: any(e["reason"] == "LeaderElected" for e in events(srv)))
            # an invalid edit: rejected, Warning Event, the tunnel stays
            srv.seed(secret(f"wg0: {{vip: 10.200.0.1/32, privateKey: '{KEY}'}}\n"))
            await wait_until(lambda: m.status().config_rejections == 1)
            await wait_until(lambda: any(e["reason"] == "InvalidConfig" for e in events(srv)))
            warn = next(e for e in events(srv) if e["reason"] == "InvalidConfig")
            assert warn["type"] == "Warning" and 'missing required field "peerPublicKey"' in \
                warn["message"]
            assert KEY not in str(events(srv))
            assert m.running == ["wg0"]
            # a new endpoint, then the Secret deleted: everything torn down
            srv.seed(slice_("dns", ["10.1.0.7", "10.1.0.8"], [("p53", 5353, "UDP")]))
            await wait_until(lambda: len(forwarders()[(53, "UDP")].targets) == 2)
            srv.delete("secrets", NS, "wireguard")
            await wait_until(lambda: m.running == [])
            stop.set()
            assert await asyncio.wait_for(task, 10) == 0
            # under deploy/rbac.yaml nothing the supervisor did was refused...
            refused = [r for r in srv.responses if r[2] == 403]
            assert refused == []
            lease = srv.get("leases", NS, "plndr-cp-lock")
            assert lease is not None and lease["spec"]["holderIdentity"] == ""  # released
            assert any(e["reason"] == "LeadershipLost" for e in events(srv))
            # ...and a request outside it is: an unfiltered Secret list, a Lease by another name
            import aiohttp
            async with aiohttp.ClientSession() as s:
                for url in (f"{srv.url}/api/v1/namespaces/{NS}/secrets",
                            f"{srv.url}/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/"
                            "kube-scheduler",
                            f"{srv.url}/api/v1/namespaces/default/secrets?fieldSelector="
                            "metadata.name%3Dwireguard"):
                    async with s.get(url) as r:
                        assert r.status == 403, url
    run(main)


def test_vip_address_matching_no_tunnel_fails_readyz_with_an_event(tmp_path: Path) -> None:
    """Issue 15 point 6: a vip_address that matches no tunnel is said in /readyz (503 with the
    reason, on every node) and in a Warning Event, and 6443 is forwarded nowhere."""
    import aiohttp

    from tests.fakeapi import write_kubeconfig
    from wgpy.supervisor.http import HttpServer

    async def main() -> None:
        async with RbacFakeApi(bookmark_interval=2) as srv:
            deploy_rbac(srv)
            srv.seed(secret(tunnels_yaml({"wg0": tunnel("10.200.0.1/32", 51820,
                                                         ["10.100.0.0/16"])})))
            srv.seed(slice_("kubernetes", ["192.168.5.5"], [("https", 6443, "TCP")]))
            kc = write_kubeconfig(tmp_path / "kc", srv.url)
            settings = KubeSettings.from_env(
                {"vip_nodename": "node-a", "POD_NAMESPACE": NS, "vip_leaseduration": "2",
                 "vip_renewdeadline": "1", "vip_retryperiod": "0.3", "svc_enable": "false",
                 "address": "10.200.0.9"},
                http_host="127.0.0.1", http_port=0, kubeconfig=str(kc))
            managers: list[Supervisor] = []
            factory = stub_factory(managers)

            stop = asyncio.Event()
            task = asyncio.ensure_future(run_kubernetes_mode(settings, factory, stop=stop))
            await wait_until(lambda: bool(managers) and managers[0].running == ["wg0"])
            m = managers[0]
            await wait_until(lambda: any(e["reason"] == "InvalidConfig" for e in events(srv)))
            warn = next(e for e in events(srv) if e["reason"] == "InvalidConfig")
            assert warn["type"] == "Warning"
            assert "vip_address 10.200.0.9 matches no tunnel VIP (10.200.0.1)" in warn["message"]
            assert not m.status().ready and m._running["wg0"].forwarders == {}
            http = HttpServer(m.status, loop=asyncio.get_running_loop(), host="127.0.0.1",
                              port=0)
            port = await asyncio.to_thread(http.start)
            try:
                async with aiohttp.ClientSession() as sess, \
                        sess.get(f"http://127.0.0.1:{port}/readyz") as r:
                    body = await r.text()
                assert r.status == 503 and "matches no tunnel VIP" in body, body
            finally:
                http.stop()
            stop.set()
            assert await asyncio.wait_for(task, 10) == 0
    run(main)


def test_settings_from_env_kube_vip_names() -> None:
    s = KubeSettings.from_env({"vip_nodename": "n1", "POD_NAMESPACE": "wg",
                               "vip_leasename": "other/my-lock", "cp_enable": "F",
                               "svc_enable": "1", "vip_leaseduration": "30"})
    assert (s.identity, s.namespace, s.cp_namespace) == ("n1", "wg", "wg")
    assert (s.lease_namespace, s.lease_name, s.lease_duration) == ("other", "my-lock", 30.0)
    assert (s.cp_enable, s.svc_enable) == (False, True)
    s2 = KubeSettings.from_env({"vip_nodename": "n1", "POD_NAMESPACE": "wg",
                                "cp_namespace": "kube-system"})
    assert s2.cp_namespace == "kube-system" and s2.lease_namespace == "wg"
    from wgpy.core.errors import ConfigError
    with pytest.raises(ConfigError, match="cp_enable"):
        KubeSettings.from_env({"cp_enable": "yes"})
    assert re.match(r"^[a-z0-9.-]+$", KubeSettings.from_env({}).identity)


# -- part 2: end to end in network namespaces ----------------------------------------------------
#
#   client 10.252.0.2 ── 10.252.0.1 VPN (wireguard-go wg0 :51820, wg1 :51821; lo 10.251.9.1)
#                                   │ 10.251.1.0/24        │ 10.251.2.0/24
#                               node A (wgpy supervisor)  node B (wgpy supervisor, clock -60 s)
#                                   │ 10.250.1.0/24        │ 10.250.2.0/24
#                         api: fake API server, "API server" TCP :6443, UDP "pod" :5353
#                              (all on lo 10.250.9.1)
#
# The VPN node routes the VIPs (10.200.0.1, 10.200.1.1) into its tunnels; whichever node leads
# holds them. Replies name the node that forwarded (its underlay source address).


API_IP, VPN_IP, VIP0, VIP1 = "10.250.9.1", "10.251.9.1", "10.200.0.1", "10.200.1.1"
CLIENT_NET = "10.252.0.0/24"
UNDERLAY = {"a": "10.250.1.2", "b": "10.250.2.2"}


def in_ns(ns: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread switched into namespace ``ns``; return its result."""
    from tun.netlink import in_netns
    out: list[Any] = []
    err: list[BaseException] = []

    def body() -> None:
        try:
            with in_netns(ns):
                out.append(fn())
        except BaseException as e:
            err.append(e)
    t = threading.Thread(target=body)
    t.start()
    t.join(30)
    if err:
        raise err[0]
    return out[0]


def serve_tcp(sock: socket.socket) -> None:
    """The API-server stand-in: answers ``cp <peer address>`` to each connection."""
    def loop() -> None:
        while True:
            try:
                c, addr = sock.accept()
            except OSError:
                return
            with c:
                c.settimeout(2)
                with contextlib.suppress(OSError):
                    c.recv(100)
                    c.sendall(f"cp {addr[0]}".encode())
    threading.Thread(target=loop, daemon=True).start()


def serve_udp(sock: socket.socket) -> None:
    def loop() -> None:
        while True:
            try:
                data, addr = sock.recvfrom(2048)
                sock.sendto(b"udp " + addr[0].encode() + b" " + data, addr)
            except OSError:
                return
    threading.Thread(target=loop, daemon=True).start()


def tcp_ask(client: str, vip: str, port: int = 6443, timeout: float = 1.0) -> str | None:
    def go() -> str | None:
        try:
            with socket.create_connection((vip, port), timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(b"hi")
                return s.recv(100).decode() or None
        except OSError:
            return None
    result: str | None = in_ns(client, go)
    return result


def udp_ask(client: str, vip: str, port: int = 53, timeout: float = 1.0) -> str | None:
    def go() -> str | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            try:
                s.sendto(b"q", (vip, port))
                data, addr = s.recvfrom(2048)
            except OSError:
                return None
            return data.decode() if addr == (vip, port) else None
    result: str | None = in_ns(client, go)
    return result


def http_get(path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:2112{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def served_by(answer: str | None) -> str | None:
    if answer is None:
        return None
    src = answer.split()[1]
    return next((n for n, ip in UNDERLAY.items() if ip == src), "?")


@pytest.mark.interop
@needs_root
def test_end_to_end_failover_secret_edits_clock_behind(tmp_path: Path) -> None:
    from tests.fakeapi import write_kubeconfig
    from wgpy import testbed
    from wgpy.testbed import Namespace, PeerConf, WgInstance, veth

    keys = {n: testbed.genkey() for n in ("c0", "c1", "v0", "v1")}
    pubs = {n: testbed.pubkey(k) for n, k in keys.items()}

    def wg_tunnel(vip: str, port: int, allowed: Sequence[str], c: str, v: str) -> dict[str, Any]:
        return tunnel(f"{vip}/32", port, allowed, endpoint=f"{VPN_IP}:{port}",
                      key=keys[c], peer=pubs[v])

    wg0 = wg_tunnel(VIP0, 51820, [CLIENT_NET], "c0", "v0")
    wg1 = wg_tunnel(VIP1, 51821, ["10.252.1.0/24"], "c1", "v1")
    srv: RbacFakeApi | None = None
    nodes: dict[str, subprocess.Popen[Any]] = {}
    with contextlib.ExitStack() as stack:
        api, vpn, client, na, nb = (stack.enter_context(Namespace()) for _ in range(5))
        node_ns = {"a": na, "b": nb}
        veth(api, na, "10.250.1.1/24", "10.250.1.2/24")
        veth(api, nb, "10.250.2.1/24", "10.250.2.2/24")
        veth(vpn, na, "10.251.1.1/24", "10.251.1.2/24")
        veth(vpn, nb, "10.251.2.1/24", "10.251.2.2/24")
        api.ip("addr", "add", f"{API_IP}/32", "dev", "lo")
        vpn.ip("addr", "add", f"{VPN_IP}/32", "dev", "lo")
        # the client has one source address per tunnel (AllowedIPs may not overlap)
        cv = veth(vpn, client, "10.252.0.1/24", "10.252.0.2/24")
        vpn.ip("addr", "add", "10.252.1.1/24", "dev", cv.name_a)
        client.ip("addr", "add", "10.252.1.2/24", "dev", cv.name_b)
        client.ip("route", "add", "10.200.0.0/24", "via", "10.252.0.1", "src", "10.252.0.2")
        client.ip("route", "add", "10.200.1.0/24", "via", "10.252.1.1", "src", "10.252.1.2")
        for n, i in (("a", 1), ("b", 2)):
            node_ns[n].ip("route", "add", "10.250.9.0/24", "via", f"10.250.{i}.1")
            node_ns[n].ip("route", "add", "10.251.9.0/24", "via", f"10.251.{i}.1")
        vpn.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        # the VPN node: one wireguard-go per tunnel, the VIP routed into it
        for iface, port, c, v, net in (("wg0", 51820, "c0", "v0", "10.200.0.0/24"),
                                       ("wg1", 51821, "c1", "v1", "10.200.1.0/24")):
            inst = stack.enter_context(WgInstance(vpn, iface=iface))
            inst.set_conf(keys[v], listen_port=port,
                          peers=[PeerConf(pubs[c], allowed_ips=(net.replace(".0/24", ".1/32"),))])
            inst.up()
            vpn.ip("route", "add", net, "dev", iface)
        # services in the api namespace: fake API server, API-server stand-in, UDP pod
        def listeners() -> tuple[socket.socket, socket.socket, socket.socket]:
            s_api = socket.create_server(("0.0.0.0", 0))
            s_cp = socket.create_server((API_IP, 6443))
            s_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s_udp.bind((API_IP, 5353))
            return s_api, s_cp, s_udp
        s_api, s_cp, s_udp = in_ns(api.name, listeners)
        for s in (s_api, s_cp, s_udp):
            stack.callback(s.close)
        serve_tcp(s_cp)
        serve_udp(s_udp)
        srv = RbacFakeApi(sock=s_api, bookmark_interval=1)
        srv.start_in_thread()
        stack.callback(srv.stop)
        url = f"http://{API_IP}:{s_api.getsockname()[1]}"
        deploy_rbac(srv)
        srv.seed(secret(tunnels_yaml({"wg0": wg0})))
        srv.seed(lb_service("dns", VIP0, [(53, "UDP", 5353)]))
        srv.seed(slice_("dns", [API_IP], [("p53", 5353, "UDP")]))
        # the control plane is served on vip_address (VIP0) only, as kube-vip does: wg1 is
        # checked through a LoadBalancer Service on its VIP
        srv.seed(lb_service("api1", VIP1, [(6443, "TCP", 6443)]))
        srv.seed(slice_("api1", [API_IP], [("p6443", 6443, "TCP")]))
        srv.seed(slice_("kubernetes", [API_IP], [("https", 6443, "TCP")]))
        kc = write_kubeconfig(tmp_path / "kubeconfig", url)

        def start(n: str, offset: float = 0.0) -> None:
            env = {"KUBECONFIG": str(kc), "vip_nodename": f"node-{n}",
                   "POD_NAMESPACE": NS, "vip_leaseduration": "3", "vip_renewdeadline": "2",
                   "vip_retryperiod": "0.5", "cp_enable": "true", "svc_enable": "true",
                   "vip_address": VIP0,
                   "WGPY_CLOCK_OFFSET": str(offset), "PYTHONPATH": str(ROOT)}
            log = (tmp_path / f"node-{n}.log").open("ab")
            stack.callback(log.close)
            nodes[n] = node_ns[n].popen(
                [sys.executable, "-m", "wgpy", "supervisor", "--http-port", "2112"],
                env=env, stdout=log, stderr=subprocess.STDOUT)

        def holder() -> str:
            lease = srv.get("leases", NS, "plndr-cp-lock") if srv else None
            return str((lease or {}).get("spec", {}).get("holderIdentity") or "")

        def logs() -> str:
            return "\n".join(testbed.redact(p.read_text()) for p in tmp_path.glob("node-*.log"))

        until = partial(wait_for, what=logs, interval=0.2)  # a failed wait shows the logs

        try:
            start("a")
            until(lambda: holder() == "node-a", 15)
            start("b", offset=-60.0)       # B's clock is a minute behind A's
            ans = until(lambda: tcp_ask(client.name, VIP0), 15)
            assert served_by(ans) == "a", (ans, logs())
            assert served_by(until(lambda: udp_ask(client.name, VIP0), 10)) == "a", logs()
            until(lambda: "ingress" in str(srv.get("services", "default", "dns")), 5)

            # Secret edits, each checked by traffic
            srv.seed(secret(tunnels_yaml({"wg0": wg0, "wg1": wg1})))
            assert served_by(until(lambda: tcp_ask(client.name, VIP1), 15)) == "a", logs()
            srv.seed(secret(tunnels_yaml({"wg0": dict(wg0, allowedIPs=["10.254.0.0/24"]),
                                          "wg1": wg1})))
            until(lambda: tcp_ask(client.name, VIP0) is None, 10)  # allowedIPs applied
            assert tcp_ask(client.name, VIP1) is not None   # the other tunnel undisturbed
            srv.seed(secret(tunnels_yaml({"wg0": wg0})))     # restore wg0, delete wg1
            assert served_by(until(lambda: tcp_ask(client.name, VIP0), 15)) == "a", logs()
            until(lambda: tcp_ask(client.name, VIP1, timeout=0.5) is None, 10)
            srv.seed(secret("wg0: [unclosed\n"))            # invalid YAML: nothing changes
            until(lambda: any(e["reason"] == "InvalidConfig" for e in events(srv)), 10)
            assert served_by(tcp_ask(client.name, VIP0)) == "a"
            srv.seed(secret(tunnels_yaml({"wg0": wg0})))
            # the leader's and the follower's /metrics and /readyz, from inside their pods
            def pod_http(ns: str) -> tuple[tuple[int, str], tuple[int, str]] | None:
                try:   # node-b may still be starting on a loaded machine: ask until ready
                    got = in_ns(ns, lambda: (http_get("/metrics"), http_get("/readyz")))
                except OSError:
                    return None
                return got if got[1][0] == 200 else None

            (met_a, ready_a), (met_b, ready_b) = (until(lambda n=n: pod_http(n), 20)
                                                  for n in (na.name, nb.name))
            assert ready_a[0] == ready_b[0] == 200, (ready_a, ready_b)
            assert 'wgpy_leader{identity="node-a"} 1' in met_a[1]
            assert 'wgpy_leader{identity="node-b"} 0' in met_b[1]
            assert re.search(r"wgpy_config_rejections_total [1-9]", met_a[1]), met_a[1]
            conns = re.search(r'wgpy_forwarded_connections_total\{tunnel="wg0",vip="10.200.0.1/32",'
                              r'port="6443",protocol="TCP"\} (\d+)', met_a[1])
            assert conns is not None and int(conns.group(1)) >= 2, met_a[1]  # since restart
            assert keys["c0"] not in met_a[1] + met_b[1]

            # kill -9 the leader: B (clock behind) takes over, traffic follows
            t0 = time.monotonic()
            nodes["a"].kill()
            ans = until(lambda: tcp_ask(client.name, VIP0, timeout=0.5), 20, interval=0.1)
            crash_failover = time.monotonic() - t0
            assert served_by(ans) == "b", (ans, logs())
            assert served_by(until(lambda: udp_ask(client.name, VIP0), 10)) == "b", logs()
            print(f"\nfailover after kill -9: {crash_failover:.2f} s (lease 3 s, retry 0.5 s)")

            # graceful stop of B hands over to a restarted A within about the retry period
            nodes["a"].wait(5)
            start("a")
            # A is up and a candidate: it has seen B's Lease
            until(lambda: "new leader node-b" in (tmp_path / "node-a.log").read_text(), 30)
            assert holder() == "node-b"
            t0 = time.monotonic()
            nodes["b"].terminate()
            ans = until(lambda: tcp_ask(client.name, VIP0, timeout=0.5), 15, interval=0.1)
            graceful = time.monotonic() - t0
            assert served_by(ans) == "a", (ans, logs())
            assert nodes["b"].wait(10) == 0, logs()
            print(f"handover after graceful stop: {graceful:.2f} s")
            assert graceful < crash_failover + 1.0 and graceful < 5.0, logs()
            assert [r for r in srv.responses if r[2] == 403] == [], "refused under RBAC"
            assert "PRIVATE KEY" not in logs() and keys["c0"] not in logs()
        finally:
            for p in nodes.values():
                with contextlib.suppress(Exception):
                    if p.poll() is None:
                        p.kill()
                        p.wait(5)
