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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from noise import tai64n
from tests.fakeapi import FakeApiServer, parse_field_selector
from wgpy.supervisor.kube import KubeSettings, run_kubernetes_mode
from wgpy.supervisor.manager import Supervisor
from wgpy.supervisor.model import ForwardStats, Target, TunnelStatus

ROOT = Path(__file__).resolve().parent.parent
NS = "kube-system"
KEY = "YAZz1bqVoCv2ko9Phlp+EzYKYxyGlqMixBPOSTMhhEA="
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


# -- the fake API server with the RBAC of deploy/ ------------------------------------------------

class RbacFakeApi(FakeApiServer):
    """The fake, plus one real-server RBAC rule the base class does not model: a list or
    watch with ``fieldSelector=metadata.name=X`` is authorized as a request naming ``X`` (so
    ``resourceNames`` applies to it). Optionally listens on a pre-made socket."""

    def __init__(self, *, sock: socket.socket | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._sock = sock
        self._selected_name: str | None = None

    async def _handle_inner(self, req: Any, path: str) -> Any:
        name = None
        with contextlib.suppress(Exception):
            for key, op, value in parse_field_selector(
                    _SECRET_KIND, req.query.get("fieldSelector", "")):
                if key == "metadata.name" and op == "=":
                    name = value
        self._selected_name = name
        return await super()._handle_inner(req, path)  # type: ignore[misc]

    def _authorize(self, verb: str, kind: Any, sub: str | None, ns: str | None,
                   name: str | None) -> None:
        if name is None and verb in ("list", "watch"):
            name = self._selected_name
        super()._authorize(verb, kind, sub, ns, name)  # type: ignore[misc]

    async def start(self) -> str:
        if self._sock is None:
            return await super().start()
        from aiohttp import web
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)  # type: ignore[attr-defined]
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._sock)
        await site.start()
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url


from tests.fakeapi import KINDS  # noqa: E402

_SECRET_KIND = KINDS["secrets"]


def deploy_rbac(srv: FakeApiServer) -> None:
    """Load the Role (namespaced) and ClusterRole rules of deploy/rbac.yaml into the fake."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
    role = next(d for d in docs if d and d["kind"] == "Role")
    crole = next(d for d in docs if d and d["kind"] == "ClusterRole")
    srv.enable_rbac(role["rules"], namespace=role["metadata"]["namespace"])
    srv.enable_rbac(crole["rules"])


def tunnels_yaml(tunnels: dict[str, dict[str, Any]]) -> str:
    return yaml.safe_dump(tunnels)


def secret(text: str, ns: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "wireguard", "namespace": ns}, "stringData": {"tunnels": text}}


def tunnel(vip: str, port: int, allowed: Sequence[str], *, endpoint: str = "10.99.0.1:51820",
           key: str = KEY, peer: str = PUB) -> dict[str, Any]:
    return {"vip": vip, "privateKey": key, "peerPublicKey": peer, "peerEndpoint": endpoint,
            "listenPort": port, "allowedIPs": list(allowed)}


def lb_service(name: str, vip: str, ports: Sequence[tuple[int, str, int]],
               ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns,
                         "annotations": {"kube-vip.io/loadbalancerIPs": vip}},
            "spec": {"type": "LoadBalancer", "ports": [
                {"name": f"p{p}", "port": p, "protocol": proto, "targetPort": tp}
                for p, proto, tp in ports]}}


def slice_(service: str, addrs: Sequence[str], ports: Sequence[tuple[str, int, str]],
           ns: str = "default") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-x", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addrs],
            "ports": [{"name": n, "port": p, "protocol": pr} for n, p, pr in ports]}


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


async def wait_for(cond: Callable[[], bool], timeout: float = 8.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def run(test: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout))


def events(srv: FakeApiServer) -> list[dict[str, Any]]:
    return [o for o in srv._objs.values() if o["kind"] == "Event"]


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

            def factory(identity: str, *, elector_factory: Any) -> Supervisor:
                m = Supervisor(identity, elector_factory=elector_factory,
                               runtime_factory=StubRuntime,
                               forwarder_factory=StubForwarder,   # type: ignore[arg-type]
                               restart_delay=0.1)
                managers.append(m)
                return m

            stop = asyncio.Event()
            task = asyncio.ensure_future(run_kubernetes_mode(settings, factory, stop=stop))
            await wait_for(lambda: bool(managers) and managers[0].running == ["wg0"])
            m = managers[0]
            fwd: dict[tuple[int, str], Any] = {}

            def forwarders() -> dict[tuple[int, str], Any]:
                live = m._running.get("wg0")
                fwd.clear()
                if live is not None:
                    fwd.update(live.forwarders)
                return fwd
            await wait_for(lambda: set(forwarders()) == {(53, "UDP"), (6443, "TCP")})
            assert fwd[(53, "UDP")].targets == (Target("10.1.0.7", 5353),)
            assert fwd[(6443, "TCP")].targets == (Target("192.168.5.5", 6443),)
            assert fwd[(53, "UDP")].host == "10.200.0.1"
            await wait_for(lambda: "ingress" in str(srv.get("services", "default", "dns")))
            await wait_for(lambda: any(e["reason"] == "LeaderElected" for e in events(srv)))
            # an invalid edit: rejected, Warning Event, the tunnel stays
            srv.seed(secret(f"wg0: {{vip: 10.200.0.1/32, privateKey: '{KEY}'}}\n"))
            await wait_for(lambda: m.status().config_rejections == 1)
            await wait_for(lambda: any(e["reason"] == "InvalidConfig" for e in events(srv)))
            warn = next(e for e in events(srv) if e["reason"] == "InvalidConfig")
            assert warn["type"] == "Warning" and 'missing required field "peerPublicKey"' in \
                warn["message"]
            assert KEY not in str(events(srv))
            assert m.running == ["wg0"]
            # a new endpoint, then the Secret deleted: everything torn down
            srv.seed(slice_("dns", ["10.1.0.7", "10.1.0.8"], [("p53", 5353, "UDP")]))
            await wait_for(lambda: len(forwarders().get((53, "UDP")).targets) == 2)
            srv.delete("secrets", NS, "wireguard")
            await wait_for(lambda: m.running == [])
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
    import pytest

    from wgpy.errors import ConfigError
    with pytest.raises(ConfigError, match="cp_enable"):
        KubeSettings.from_env({"cp_enable": "yes"})
    assert re.match(r"^[a-z0-9.-]+$", KubeSettings.from_env({}).identity)
