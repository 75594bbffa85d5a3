"""Shared parts of the supervisor's end-to-end tests (embedded and Kubernetes mode, faults).

* :class:`Scenario` — the seed topology (:mod:`wgpy.testbed.topology`) with ``wgpy supervisor
  --tunnels-file`` processes in nodes a and b sharing one lock file.
* :class:`KubeScenario` — the same topology plus an ``api`` namespace running the strict fake
  API server (under ``deploy/rbac.yaml``); the supervisors run in Kubernetes mode against it,
  forwarding VIP:6443 to the ``default/kubernetes`` EndpointSlice (127.0.0.1:7443 in each
  node: the stand-in server that answers the node's name).
* :class:`TunnelWatch` — samples, continuously, which nodes have the tunnel's link and where
  the VPN node sends the tunnel's traffic, to prove "never two nodes with the tunnel up" and
  "the VPN node's endpoint never flaps back".
* The fake-API helpers (RBAC, Secret/Service/EndpointSlice builders).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from tests.fakeapi import KINDS, FakeApiServer, parse_field_selector, write_kubeconfig
from tun.netlink import in_netns
from wgpy.supervisor.locallock import read_sidecar
from wgpy.testbed import wait_for
from wgpy.testbed.topology import Topology, VpnTunnel, tunnels_yaml

ROOT = Path(__file__).resolve().parent.parent
NS = "kube-system"
FORWARD = [
    {"port": 6443, "protocol": "TCP", "target": "127.0.0.1:7443"},
    {"port": 53, "protocol": "UDP", "target": "127.0.0.1:5353"},
]
RETRY = 0.5
LEASE = (3.0, 2.0, 0.5)  # duration, renew deadline, retry period (short: keep tests fast)


# -- the fake API server with the RBAC of deploy/ ----------------------------------------------

_SECRET_KIND = KINDS["secrets"]


class RbacFakeApi(FakeApiServer):
    """The fake, plus one real-server RBAC rule the base class does not model: a list or
    watch with ``fieldSelector=metadata.name=X`` is authorized as a request naming ``X`` (so
    ``resourceNames`` applies to it). Optionally listens on a pre-made socket (e.g. one made
    inside a network namespace)."""

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
        return await super()._handle_inner(req, path)

    def _authorize(self, verb: str, kind: Any, sub: str | None, ns: str | None,
                   name: str | None) -> None:
        if name is None and verb in ("list", "watch"):
            name = self._selected_name
        super()._authorize(verb, kind, sub, ns, name)

    async def start(self) -> str:
        if self._sock is None:
            return await super().start()
        from aiohttp import web
        self._loop = asyncio.get_running_loop()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._sock)
        await site.start()
        host, port = self._sock.getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self.url


def deploy_rbac(srv: FakeApiServer) -> None:
    """Load the Role (namespaced) and ClusterRole rules of deploy/rbac.yaml into the fake."""
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
    role = next(d for d in docs if d and d["kind"] == "Role")
    crole = next(d for d in docs if d and d["kind"] == "ClusterRole")
    srv.enable_rbac(role["rules"], namespace=role["metadata"]["namespace"])
    srv.enable_rbac(crole["rules"])


def secret(text: str, ns: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "wireguard", "namespace": ns}, "stringData": {"tunnels": text}}


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


# -- processes and logs -------------------------------------------------------------------------


class _Nodes:
    """Supervisor processes by node, each with its log file."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        self.topo = topo
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.logs: dict[str, IO[str]] = {}
        for n in topo.nodes:
            topo.serve_name(n, f"node-{n}")

    @property
    def wg0(self) -> VpnTunnel:
        return self.topo.tunnels["wg0"]

    def _logfile(self, node: str) -> IO[str]:
        if node not in self.logs:
            self.logs[node] = open(self.tmp / f"{node}.log", "a+")  # noqa: SIM115 (close())
        return self.logs[node]

    def log(self, node: str) -> str:
        f = self.logs[node]
        f.seek(0)
        return f.read()

    def all_logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-4000:]}" for n in self.logs)

    def kill(self, node: str, sig: int = 9) -> None:
        os.kill(self.procs[node].pid, sig)

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
        for f in self.logs.values():
            f.close()


class Scenario(_Nodes):
    """Embedded mode: ``wgpy supervisor --tunnels-file`` in each node, one shared lock."""

    def __init__(self, topo: Topology, tmp: Path) -> None:
        super().__init__(topo, tmp)
        self.file = tmp / "tunnels.yaml"
        self.lock = str(tmp / "supervisor.lock")

    def write(self, text: str) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.file)  # a new inode: the watcher must notice

    def start(self, node: str, env: dict[str, str] | None = None,
              extra_args: Sequence[str] = ()) -> subprocess.Popen[Any]:
        proc = self.topo.start_supervisor(
            node, str(self.file), lock_file=self.lock, retry_period=RETRY, env=env,
            log=self._logfile(node), extra_args=extra_args,
        )
        self.procs[node] = proc
        return proc

    def holder(self) -> str:
        return str(read_sidecar(self.lock).get("holderIdentity") or "")


@contextlib.contextmanager
def embedded_scenario(tmp: Path, **topo_kw: Any) -> Iterator[Scenario]:
    kw: dict[str, Any] = {"vpn_node": "wireguard-go", "nodes": ("a", "b"), **topo_kw}
    with Topology(**kw) as topo:
        sc = Scenario(topo, tmp)
        try:
            yield sc
        finally:
            sc.close()


def answered_by(sc: _Nodes, node: str, *, host: str | None = None, source: str | None = None,
                timeout: float = 10.0) -> float:
    """Wait until TCP VIP:6443 is answered by ``node``; return how long it took."""
    vip = host or sc.wg0.vip
    t0 = time.monotonic()
    wait_for(
        lambda: sc.topo.tcp_request(vip, 6443, source=source, timeout=0.3) == f"node-{node}",
        timeout,
        f"{vip}:6443 answered by node-{node}",
        interval=0.02,
    )
    return time.monotonic() - t0


def start_leader_and_follower(sc: Scenario, spec: dict[str, Any] | None = None,
                              env_b: dict[str, str] | None = None) -> None:
    sc.write(tunnels_yaml(spec or {"wg0": sc.wg0.spec(forward=FORWARD)}))
    sc.start("a")
    wait_for(lambda: sc.holder() == "node-a", 10, "node-a to lead")
    sc.start("b", env=env_b)
    answered_by(sc, "a")
    wait_for(lambda: "new leader node-a" in sc.log("b"), 10, "node-b to follow")


# -- Kubernetes mode on the same topology --------------------------------------------------------


class KubeScenario(_Nodes):
    """Supervisors in Kubernetes mode against the fake API server in namespace ``api``."""

    def __init__(self, topo: Topology, tmp: Path, srv: RbacFakeApi, kubeconfig: Path,
                 lease: tuple[float, float, float] = LEASE) -> None:
        super().__init__(topo, tmp)
        self.srv = srv
        self.kubeconfig = kubeconfig
        self.lease = lease

    @property
    def api_ip(self) -> str:
        return self.topo.extra_ips["api"]

    def set_tunnels(self, specs: dict[str, dict[str, Any]]) -> None:
        self.srv.seed(secret(tunnels_yaml(specs)))

    def start(self, node: str, *, offset: float = 0.0, args: Sequence[str] = (),
              env: dict[str, str] | None = None) -> subprocess.Popen[Any]:
        duration, renew, retry = self.lease
        full = {"KUBECONFIG": str(self.kubeconfig), "vip_nodename": f"node-{node}",
                "POD_NAMESPACE": NS, "vip_leaseduration": str(duration),
                "vip_renewdeadline": str(renew), "vip_retryperiod": str(retry),
                "cp_enable": "true", "svc_enable": "false", "vip_address": self.wg0.vip,
                "WGPY_CLOCK_OFFSET": str(offset), "PYTHONPATH": str(ROOT), **(env or {})}
        log = self._logfile(node)
        proc = self.topo.nodes[node].popen(
            [sys.executable, "-m", "wgpy", "supervisor", "--log-level", "debug", *args],
            env=full, stdout=log, stderr=subprocess.STDOUT)
        self.procs[node] = proc
        return proc

    def lease_obj(self) -> dict[str, Any]:
        return self.srv.get("leases", NS, "plndr-cp-lock") or {}

    def holder(self) -> str:
        return str(self.lease_obj().get("spec", {}).get("holderIdentity") or "")


@contextlib.contextmanager
def kube_scenario(tmp: Path, lease: tuple[float, float, float] = LEASE,
                  **topo_kw: Any) -> Iterator[KubeScenario]:
    """The topology with an ``api`` namespace serving the fake API; wg0's Secret seeded."""
    kw: dict[str, Any] = {"vpn_node": "wireguard-go", "nodes": ("a", "b"), "extra": ("api",),
                          **topo_kw}
    with Topology(**kw) as topo, contextlib.ExitStack() as stack:
        ip = topo.extra_ips["api"]
        with in_netns(topo.extra["api"].name):
            sock = socket.create_server((ip, 0))
        stack.callback(sock.close)
        srv = RbacFakeApi(sock=sock, bookmark_interval=1)
        srv.start_in_thread()
        stack.callback(srv.stop)
        deploy_rbac(srv)
        kc = write_kubeconfig(tmp / "kubeconfig", f"http://{ip}:{sock.getsockname()[1]}")
        sc = KubeScenario(topo, tmp, srv, kc, lease)
        stack.callback(sc.close)  # before the server stops: no reconnect storms in the logs
        srv.seed(slice_("kubernetes", ["127.0.0.1"], [("https", 7443, "TCP")]))
        sc.set_tunnels({"wg0": sc.wg0.spec()})
        yield sc


# -- continuous split-brain check ------------------------------------------------------------------


@dataclass
class TunnelWatch:
    """Samples (every ``interval`` s, in a thread) which nodes have link ``iface`` and the VPN
    node's current endpoint for the tunnel. Use as a context manager."""

    topo: Topology
    iface: str = "wg0"
    interval: float = 0.05
    samples: list[tuple[float, frozenset[str], str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _up(self, node: str) -> bool:
        with in_netns(self.topo.nodes[node].name):
            try:
                socket.if_nametoindex(self.iface)
            except OSError:
                return False
            return True

    def _endpoint(self) -> str | None:
        try:
            return self.topo.tunnels[self.iface].peer_endpoint()
        except Exception:
            return None  # the VPN node is being restarted

    def _run(self) -> None:
        while not self._stop.is_set():
            up = frozenset(n for n in self.topo.nodes if self._up(n))
            self.samples.append((time.monotonic(), up, self._endpoint()))
            self._stop.wait(self.interval)

    def __enter__(self) -> TunnelWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    # -- what was seen --------------------------------------------------------------------

    def node_of(self, endpoint: str | None) -> str | None:
        if endpoint is None:
            return None
        host = endpoint.rsplit(":", 1)[0]
        return next((n for n, ip in self.topo.node_ips.items() if ip == host), "?")

    def both_up(self) -> list[float]:
        """Times at which more than one node had the link."""
        return [t for t, up, _ in self.samples if len(up) > 1]

    def endpoint_nodes(self) -> list[str]:
        """The VPN node's endpoint as a sequence of nodes, consecutive repeats collapsed."""
        out: list[str] = []
        for _, _, ep in self.samples:
            n = self.node_of(ep)
            if n is not None and (not out or out[-1] != n):
                out.append(n)
        return out

    def first(self, pred: Callable[[frozenset[str]], bool], after: float = 0.0) -> float | None:
        """The first sample time (≥ ``after``) whose set of nodes with the link satisfies
        ``pred``."""
        return next((t for t, up, _ in self.samples if t >= after and pred(up)), None)

    def assert_no_split_brain(self) -> None:
        assert not self.both_up(), f"two nodes had {self.iface} at {self.both_up()[:5]}"
        seq = self.endpoint_nodes()
        assert len(seq) == len(set(seq)), f"the VPN node's endpoint flapped: {seq}"
