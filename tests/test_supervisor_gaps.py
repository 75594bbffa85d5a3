"""Five supervisor gaps found in review, each fixed and checked here.

a. allowedIPs covering the VPN node's endpoint: a pinned host route keeps the tunnel's own UDP
   out of the tunnel (root, namespaces).
b. the TAI64N bound is on the Lease *before* the device's first initiation.
c. readiness with the Secret missing / deleted: ready, saying "no tunnels configured".
d. ``--tunnels-file`` readable by others: a warning.
e. forward refusals: ``ForwardStats.refused`` exported as ``wgpy_forward_refused_total``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from noise import tai64n
from tests.fakeapi import FakeApiServer, write_kubeconfig
from tests.supervisor_support import (
    FORWARD,
    NS,
    Scenario,
    answered_by,
    embedded_scenario,
    secret,
)
from tests.support import needs_root
from tests.test_supervisor_k8s import StubForwarder, StubRuntime
from wgpy.supervisor import main as sup_main
from wgpy.supervisor import metrics
from wgpy.supervisor.http import HttpServer
from wgpy.supervisor.kubemode import KubeSettings, run_kubernetes_mode
from wgpy.supervisor.manager import FLOOR_ANNOTATION, Supervisor, parse_floor
from wgpy.supervisor.model import ForwardStats, SupervisorStatus, TunnelStatus
from wgpy.supervisor.pinroute import covers
from wgpy.testbed import wait_until
from wgpy.testbed.topology import CLIENT_NETS, VPN_IP, tunnels_yaml

KEY = "YAZz1bqVoCv2ko9Phlp+EzYKYxyGlqMixBPOSTMhhEA="
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


# -- a. routing loop ---------------------------------------------------------------------------


def test_covers() -> None:
    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert covers(nets, "10.1.2.3") and covers(nets, "fd00::1")
    assert not covers(nets, "11.0.0.1") and not covers(nets, "fe80::1")


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    with embedded_scenario(tmp_path, nodes=("a",)) as sc:
        yield sc


def _route_dev(sc: Scenario, dst: str, source: str | None = None) -> str:
    extra = ["from", source] if source else []
    out = sc.topo.nodes["a"].ip("route", "get", dst, *extra).stdout.split()
    return out[out.index("dev") + 1]


def _host_routes(sc: Scenario) -> str:
    return sc.topo.nodes["a"].ip("route", "show", f"{VPN_IP}/32").stdout.strip()


@pytest.mark.interop
@needs_root
def test_allowed_ips_covering_the_endpoint_do_not_loop(scenario: Scenario) -> None:
    """allowedIPs 10.77.0.0/30 contains the VPN node (10.77.0.1) and is more specific than
    the node's connected /24. The allowedIPs routes carry only traffic from the VIP (issue 15
    point 4), so the encrypted UDP (from the pod's address) keeps the underlay: no loop, and
    no host route needed."""
    sc = scenario
    spec = sc.wg0.spec(allowed_ips=["10.77.0.0/30", CLIENT_NETS[0]], forward=FORWARD)
    sc.write(tunnels_yaml({"wg0": spec}))
    sc.start("a")
    answered_by(sc, "a", timeout=15)
    assert _route_dev(sc, VPN_IP) == "ul0"      # the underlay, not the tunnel
    assert _route_dev(sc, "10.77.0.2") == "ul0"  # the pod's own traffic stays out...
    assert _route_dev(sc, "10.77.0.2", source=sc.wg0.vip) == "wg0"  # ...the VIP's goes in
    assert _host_routes(sc) == ""
    sc.procs["a"].send_signal(signal.SIGTERM)
    assert sc.procs["a"].wait(10) == 0
    assert "lookup" not in sc.topo.nodes["a"].ip("rule", "show", "from", sc.wg0.vip).stdout


# -- b. the TAI64N bound is stored before the first initiation ---------------------------------


def test_tai64n_bound_is_on_the_lease_before_the_first_initiation(tmp_path: Path) -> None:
    """The retry period is 5 s, so without an immediate write the bound would reach the Lease
    only ~5 s after the device started; the runtime checks the Lease when it starts."""
    srv = FakeApiServer(bookmark_interval=1)
    srv.start_in_thread()
    try:
        srv.seed(secret(tunnels_yaml({"wg0": {
            "vip": "10.200.0.1/32", "privateKey": KEY, "peerPublicKey": PUB,
            "peerEndpoint": "10.99.0.1:51820", "listenPort": 51820,
            "allowedIPs": ["10.100.0.0/16"]}})))
        kc = write_kubeconfig(tmp_path / "kc", srv.url)
        seen: list[tuple[str | None, int]] = []

        class CheckingRuntime(StubRuntime):
            def start(self, timestamp_floor: bytes) -> None:
                lease = srv.get("leases", NS, "plndr-cp-lock") or {}
                ann = (lease.get("metadata") or {}).get("annotations") or {}
                seen.append((ann.get(FLOOR_ANNOTATION + "wg0"), time.time_ns()))
                super().start(timestamp_floor)

        settings, factory, _managers = _kube_mode(kc, ("15", "10", "5"), CheckingRuntime)

        async def main() -> None:
            stop = asyncio.Event()
            task = asyncio.ensure_future(run_kubernetes_mode(settings, factory, stop=stop))
            try:
                await wait_until(lambda: bool(seen), 10, "the tunnel to start")
            finally:
                stop.set()
            assert await asyncio.wait_for(task, 15) == 0

        asyncio.run(main())
        assert seen, "the tunnel never started"
        stored, started_ns = seen[0]
        assert stored is not None, "no TAI64N bound on the Lease when the device started"
        # the bound is ahead of anything the device can send at start (its clock, now)
        assert tai64n.after(parse_floor(stored), tai64n.stamp(started_ns))
    finally:
        srv.stop()


# -- c. readiness without a Secret -------------------------------------------------------------


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_missing_then_deleted_secret_is_ready_with_no_tunnels(tmp_path: Path) -> None:
    """Decision (see SupervisorStatus.ready): a configuration with no tunnels — the Secret
    absent at start or deleted later — is a valid one: ready, running for election, and the
    /readyz text says why nothing is up. Not ready stays for "nothing read yet" and "leader
    with a tunnel down"."""
    srv = FakeApiServer(bookmark_interval=1)
    srv.start_in_thread()
    try:
        kc = write_kubeconfig(tmp_path / "kc", srv.url)
        settings, factory, managers = _kube_mode(kc, ("2", "1", "0.3"), StubRuntime)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            task = asyncio.ensure_future(run_kubernetes_mode(settings, factory, stop=stop))
            await wait_until(lambda: bool(managers), 10, "the manager")
            m = managers[0]
            assert not m.status().ready  # nothing read yet
            http = HttpServer(m.status, loop=loop, host="127.0.0.1", port=0)
            port = http.start()
            try:
                async def readyz() -> tuple[int, str]:
                    return await asyncio.to_thread(_get, port, "/readyz")

                await wait_until(lambda: m.status().ready and m.is_leader,
                                 what="ready leader, no Secret")
                code, text = await readyz()
                assert code == 200, text
                assert "no tunnels configured: secret kube-system/wireguard not found" in text
                srv.seed(secret(tunnels_yaml({"wg0": {
                    "vip": "10.200.0.1/32", "privateKey": KEY, "peerPublicKey": PUB,
                    "peerEndpoint": "10.99.0.1:51820", "listenPort": 51820,
                    "allowedIPs": ["10.100.0.0/16"]}})))
                # running first, then up (its first status): ready only once both
                await wait_until(lambda: m.running == ["wg0"] and m.status().ready,
                                 what="wg0 up and ready once the Secret exists")
                code, text = await readyz()
                assert (code, text) == (200, "ready\n")
                srv.delete("secrets", NS, "wireguard")
                await wait_until(lambda: m.running == [], what="everything down after the delete")
                code, text = await readyz()
                assert code == 200 and "secret kube-system/wireguard not found" in text
            finally:
                http.stop()
                stop.set()
                assert await asyncio.wait_for(task, 15) == 0

        asyncio.run(main())
    finally:
        srv.stop()


# -- d. the tunnels file's permissions ---------------------------------------------------------


@pytest.fixture
def root_handlers() -> Iterator[None]:
    """main() installs a stderr handler on the root logger; put the old ones back so later
    tests do not log into this test's closed capture stream."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


@pytest.mark.usefixtures("root_handlers")
def test_tunnels_file_readable_by_others_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "t.yaml"
    f.write_text("wg0:\n  vip: 10.0.0.1/32\n")  # invalid: exits before running
    lock = str(tmp_path / "l")
    os.chmod(f, 0o644)
    assert sup_main.main(["--tunnels-file", str(f), "--lock-file", lock]) == 2
    err = capsys.readouterr().err
    assert f"WARNING {f} holds keys and is accessible by others (mode 0644); chmod 600" in err
    os.chmod(f, 0o600)
    assert sup_main.main(["--tunnels-file", str(f), "--lock-file", lock]) == 2
    assert "accessible by others" not in capsys.readouterr().err


# -- e. forward refusals in /metrics -----------------------------------------------------------


def test_refusals_are_exported() -> None:
    t = TunnelStatus("wg0", "10.200.0.1/32", up=True,
                     forwards={(6443, "TCP"): ForwardStats(connections=5, errors=4, refused=3)})
    st = SupervisorStatus("n", leader=True, config_loaded=True, tunnels={"wg0": t})
    text = metrics.render(st, now_unix=time.time())
    assert ('wgpy_forward_refused_total{tunnel="wg0",vip="10.200.0.1/32",port="6443",'
            'protocol="TCP"} 3') in text
    assert "# TYPE wgpy_forward_refused_total counter" in text


def _kube_mode(
    kc: Path, timings: tuple[str, str, str], runtime: type
) -> tuple[KubeSettings, Any, list[Supervisor]]:
    """Kubernetes-mode settings (lease duration/renew/retry), a manager factory using
    ``runtime`` and stub forwarders, and the list the factory appends its managers to."""
    duration, renew, retry = timings
    settings = KubeSettings.from_env(
        {"vip_nodename": "n1", "POD_NAMESPACE": NS, "vip_leaseduration": duration,
         "vip_renewdeadline": renew, "vip_retryperiod": retry, "svc_enable": "false",
         "cp_enable": "false"}, http_host="127.0.0.1", http_port=0, kubeconfig=str(kc))
    managers: list[Supervisor] = []

    def factory(identity: str, *, elector_factory: Any) -> Supervisor:
        m = Supervisor(identity, elector_factory=elector_factory, runtime_factory=runtime,
                       forwarder_factory=StubForwarder)  # type: ignore[arg-type]
        managers.append(m)
        return m

    return settings, factory, managers
