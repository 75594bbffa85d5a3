"""Service / EndpointSlice / control-plane rules: pure decisions, then the controller live
against the strict fake (rules pushed per VIP only on change, status written only as leader)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from kubernetes.aio import client as _aclient

from tests.fakeapi import FakeApiServer
from tests.vtime import advance, run_virtual
from wgpy.supervisor.config import parse_tunnels
from wgpy.supervisor.model import ForwardRule, Target
from wgpy.supervisor.services import (
    ServiceController,
    ServiceOptions,
    compute_rules,
    controlplane_targets,
    cp_vip_problem,
    desired_ingress,
    is_selected,
    port_targets,
    service_ips,
)
from wgpy.supervisor.watch import Backoff
from wgpy.testbed import wait_until

aclient: Any = _aclient
VIP, VIP2 = "10.200.0.1", "10.200.0.2"
KEY = "YAZz1bqVoCv2ko9Phlp+EzYKYxyGlqMixBPOSTMhhEA="
PUB = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="


def svc(name: str, ports: Sequence[dict[str, Any]], *, ns: str = "default",
        typ: str = "LoadBalancer", lb_ip: str | None = None, ann: dict[str, str] | None = None,
        cls: str | None = None, ingress: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": typ, "ports": list(ports)}
    if lb_ip:
        spec["loadBalancerIP"] = lb_ip
    if cls:
        spec["loadBalancerClass"] = cls
    o: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": name, "namespace": ns, "annotations": ann or {}},
                         "spec": spec}
    if ingress:
        o["status"] = {"loadBalancer": {"ingress": [{"ip": i} for i in ingress]}}
    return o


def eps(service: str, endpoints: Sequence[tuple[str, bool | None]],
        ports: Sequence[dict[str, Any]], *, ns: str = "default", name: str | None = None,
        family: str = "IPv4") -> dict[str, Any]:
    out = []
    for addr, ready in endpoints:
        e: dict[str, Any] = {"addresses": [addr]}
        if ready is not None:
            e["conditions"] = {"ready": ready}
        out.append(e)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service}-abc", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": family, "endpoints": out, "ports": list(ports)}


DNS = [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
       {"name": "web", "port": 80, "protocol": "TCP", "targetPort": 8080}]
DNS_SLICE_PORTS = [{"name": "dns", "port": 5353, "protocol": "UDP"},
                   {"name": "web", "port": 8080, "protocol": "TCP"}]
OPTS = ServiceOptions(cp_vip=VIP)  # kube-vip: the control plane only on its VIP


# -- pure --------------------------------------------------------------------------------------

def test_address_order_annotation_then_spec_then_status() -> None:
    both = svc("a", DNS, lb_ip="10.0.0.9", ingress=["10.0.0.8"],
               ann={"kube-vip.io/loadbalancerIPs": f"{VIP}/32, {VIP2}"})
    assert service_ips(both) == [VIP, VIP2]
    assert service_ips(svc("a", DNS, lb_ip="10.0.0.9", ingress=["10.0.0.8"])) == ["10.0.0.9"]
    assert service_ips(svc("a", DNS, ingress=["10.0.0.8"])) == ["10.0.0.8"]
    assert service_ips(svc("a", DNS, ann={"kube-vip.io/loadbalancerIPs": "junk"},
                           lb_ip="10.0.0.9")) == ["10.0.0.9"]
    assert service_ips(svc("a", DNS)) == []


@pytest.mark.parametrize(("cls", "only", "legacy", "want"), [
    (None, False, True, True), (None, True, True, False),
    ("kube-vip.io/kube-vip-class", True, True, True), ("other", False, True, False),
    (None, False, False, False), ("kube-vip.io/kube-vip-class", False, False, True),
])
def test_load_balancer_class_rules(cls: str | None, only: bool, legacy: bool,
                                   want: bool) -> None:
    opts = ServiceOptions(lb_class_only=only, lb_class_legacy=legacy)
    assert is_selected(svc("a", DNS, cls=cls), opts) is want


def test_selection_type_and_ignore() -> None:
    assert not is_selected(svc("a", DNS, typ="ClusterIP"), OPTS)
    assert not is_selected(svc("a", DNS, ann={"kube-vip.io/ignore": "true"}), OPTS)
    assert is_selected(svc("a", DNS, ann={"kube-vip.io/ignore": "false"}), OPTS)


def test_port_targets_ready_named_and_numeric() -> None:
    sl = [eps("a", [("10.1.0.1", True), ("10.1.0.2", None), ("10.1.0.3", False)],
              DNS_SLICE_PORTS),
          eps("a", [("10.1.0.4", True)], DNS_SLICE_PORTS, name="a-2"),
          eps("a", [("db.example", True)], DNS_SLICE_PORTS, name="a-3", family="FQDN")]
    assert port_targets(DNS[0], sl) == (Target("10.1.0.1", 5353), Target("10.1.0.2", 5353),
                                        Target("10.1.0.4", 5353))
    assert port_targets(DNS[1], sl)[0] == Target("10.1.0.1", 8080)
    # numeric targetPort when the slice has no port of that name; named: unresolvable, skipped
    bare = [eps("a", [("10.1.0.1", True)], [])]
    assert port_targets({"port": 80, "targetPort": 9000}, bare) == (Target("10.1.0.1", 9000),)
    assert port_targets({"port": 80}, bare) == (Target("10.1.0.1", 80),)
    assert port_targets({"port": 53, "targetPort": "dns", "name": "dns"}, bare) == ()


def test_compute_rules_cp_wins_clash_and_unmatched_vip_ignored() -> None:
    s1 = svc("a", [*DNS, {"name": "api", "port": 6443, "protocol": "TCP"}], lb_ip=VIP)
    s2 = svc("b", [{"name": "web", "port": 80, "protocol": "TCP", "targetPort": 8080}],
             lb_ip=VIP)   # same VIP:80 as a/web, later by name: skipped
    s3 = svc("c", DNS, lb_ip="10.9.9.9")
    sl = [eps("a", [("10.1.0.1", True)], [*DNS_SLICE_PORTS,
                                          {"name": "api", "port": 7443, "protocol": "TCP"}]),
          eps("b", [("10.2.0.1", True)], [{"name": "web", "port": 8080, "protocol": "TCP"}]),
          eps("c", [("10.3.0.1", True)], DNS_SLICE_PORTS)]
    cp = controlplane_targets([eps("kubernetes", [("192.168.1.10", True),
                                                  ("192.168.1.11", False)],
                                   [{"name": "https", "port": 6443, "protocol": "TCP"}])])
    cp_opts = ServiceOptions(cp_vip=VIP)
    got = compute_rules([s2, s1, s3], sl, cp, [VIP, VIP2], cp_opts)
    assert got[VIP2] == ()
    assert got[VIP] == (
        ForwardRule(53, "UDP", (Target("10.1.0.1", 5353),), "service/default/a"),
        ForwardRule(80, "TCP", (Target("10.1.0.1", 8080),), "service/default/a"),
        ForwardRule(6443, "TCP", (Target("192.168.1.10", 6443),), "controlplane"))
    only_cp_vip = compute_rules([s1], sl, cp, [VIP, VIP2], ServiceOptions(cp_vip=f"{VIP2}/32"))
    assert [r.port for r in only_cp_vip[VIP]] == [53, 80, 6443]   # a/api gets 6443 there
    assert only_cp_vip[VIP][2].source == "service/default/a"
    assert [r.port for r in only_cp_vip[VIP2]] == [6443]


def test_no_control_plane_vip_means_no_control_plane_forwarding() -> None:
    """Issue 15 point 6: as kube-vip, an unset vip_address forwards 6443 on no tunnel VIP."""
    cp = controlplane_targets([eps("kubernetes", [("192.168.1.10", True)],
                                   [{"name": "https", "port": 6443, "protocol": "TCP"}])])
    got = compute_rules([], [], cp, [VIP, VIP2], ServiceOptions())
    assert got == {VIP: (), VIP2: ()}


def test_a_control_plane_vip_matching_no_tunnel_is_a_problem() -> None:
    assert cp_vip_problem(ServiceOptions(cp_vip=VIP), [VIP, VIP2]) is None
    assert cp_vip_problem(ServiceOptions(), [VIP]) is None
    assert cp_vip_problem(ServiceOptions(cp_vip="10.9.9.9", cp_enable=False), [VIP]) is None
    why = cp_vip_problem(ServiceOptions(cp_vip="10.9.9.9/32"), [VIP, VIP2])
    assert why is not None and "10.9.9.9/32 matches no tunnel VIP" in why and VIP in why


def test_desired_ingress_only_our_vips() -> None:
    s = svc("a", DNS, ann={"kube-vip.io/loadbalancerIPs": f"{VIP},10.9.9.9"})
    assert desired_ingress(s, {VIP}) == [{"ip": VIP, "ipMode": "VIP", "ports": [
        {"port": 53, "protocol": "UDP"}, {"port": 80, "protocol": "TCP"}]}]
    assert desired_ingress(s, {VIP2}) == []


# -- controller against the fake ---------------------------------------------------------------

class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[ForwardRule]]] = []
        self.current: dict[str, list[ForwardRule]] = {}
        self.problems: dict[str, str] = {}

    def set_problem(self, key: str, problem: str | None) -> None:
        if problem:
            self.problems[key] = problem
        else:
            self.problems.pop(key, None)

    async def set_forward_rules(self, vip: str, rules: Sequence[ForwardRule]) -> None:
        self.calls.append((vip, list(rules)))
        self.current[vip] = list(rules)

    def ports(self, vip: str) -> dict[tuple[int, str], set[Target]]:
        return {(r.port, r.protocol): set(r.targets) for r in self.current.get(vip, [])}


def tunnels_yaml(*vips: str) -> str:
    return "".join(
        f"wg{i}: {{vip: {v}/32, privateKey: '{KEY}', peerPublicKey: '{PUB}', "
        f"peerEndpoint: '10.99.0.1:{51820 + i}', listenPort: {51820 + i}, "
        f"allowedIPs: ['10.{100 + i}.0.0/16']}}\n" for i, v in enumerate(vips))


def run(test: Callable[[], Awaitable[None]]) -> None:
    run_virtual(test, 60)


@contextlib.asynccontextmanager
async def controller(srv: FakeApiServer, sink: Sink, opts: ServiceOptions = OPTS
                     ) -> AsyncIterator[ServiceController]:
    api = aclient.ApiClient(aclient.Configuration(host=srv.url))
    c = ServiceController(api, sink, opts, backoff=Backoff(0.05, 0.2))
    task = asyncio.ensure_future(c.run())
    try:
        yield c
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


def svc_requests(srv: FakeApiServer) -> list[str]:
    """The cluster-wide Service and EndpointSlice requests (not default/kubernetes)."""
    return [r.path for r in srv.requests
            if r.path in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices")]


def test_only_the_leader_watches_services_and_endpointslices() -> None:
    """Issue 15 point 9: followers hold no cluster-wide watches; leading starts them, losing
    the lead stops them and forgets their cache."""
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=5) as srv:
            srv.seed(svc("dns", DNS, ns="apps", ann={"kube-vip.io/loadbalancerIPs": VIP}))
            srv.seed(eps("dns", [("10.1.0.1", True)], DNS_SLICE_PORTS, ns="apps"))
            sink = Sink()
            async with controller(srv, sink, ServiceOptions(cp_enable=False)) as c:
                await c.set_tunnels(parse_tunnels(tunnels_yaml(VIP)))
                await advance(0.3)
                assert svc_requests(srv) == [] and sink.calls == []
                await c.set_leader(True)
                await wait_until(lambda: (53, "UDP") in sink.ports(VIP))
                assert len(svc_requests(srv)) >= 2
                await c.set_leader(False)
                assert not c.services.synced.is_set() and c.services.cache == {}
                n = len(svc_requests(srv))
                await advance(0.3)
                # no new LIST (open watch streams may still be logged as they end)
                assert svc_requests(srv)[n:] == []
    run(main)


def status_puts(srv: FakeApiServer) -> list[str]:
    return [p for m, p, code in srv.responses if m == "PUT" and p.endswith("/status")
            and code == 200]


def test_controller_live_rules_status_only_as_leader_and_unchanged_not_rewritten() -> None:
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=5) as srv:
            srv.seed(svc("dns", DNS, ns="apps",
                         ann={"kube-vip.io/loadbalancerIPs": VIP}))
            srv.seed(svc("plain", DNS, ns="apps", typ="ClusterIP", lb_ip=VIP))
            srv.seed(eps("dns", [("10.1.0.1", True)], DNS_SLICE_PORTS, ns="apps"))
            srv.seed(eps("kubernetes", [("192.168.1.10", True)],
                         [{"name": "https", "port": 6443, "protocol": "TCP"}]))
            sink = Sink()
            async with controller(srv, sink) as c:
                await c.set_tunnels(parse_tunnels(tunnels_yaml(VIP)))
                await wait_until(c.cp_slices.synced.is_set)
                await advance(0.3)
                assert status_puts(srv) == []          # follower: no writes...
                assert svc_requests(srv) == []         # ...and no Service/slice watches
                assert sink.calls == []
                await c.set_leader(True)
                await wait_until(lambda: len(sink.ports(VIP)) == 3)
                assert sink.ports(VIP) == {
                    (53, "UDP"): {Target("10.1.0.1", 5353)},
                    (80, "TCP"): {Target("10.1.0.1", 8080)},
                    (6443, "TCP"): {Target("192.168.1.10", 6443)}}
                await wait_until(lambda: len(status_puts(srv)) == 1)
                n_calls = len(sink.calls)
                stored = srv.get("services", "apps", "dns")
                assert stored is not None
                assert stored["status"]["loadBalancer"]["ingress"] == desired_ingress(
                    stored, {VIP})
                plain = srv.get("services", "apps", "plain")
                assert plain is not None and "ingress" not in str(plain.get("status"))
                # a new ready endpoint and an unready one: live update, status not rewritten
                srv.seed(eps("dns", [("10.1.0.1", True), ("10.1.0.2", True),
                                     ("10.1.0.3", False)], DNS_SLICE_PORTS, ns="apps"))
                await wait_until(lambda: len(sink.ports(VIP)[(53, "UDP")]) == 2)
                assert sink.ports(VIP)[(53, "UDP")] == {Target("10.1.0.1", 5353),
                                                        Target("10.1.0.2", 5353)}
                srv.seed(eps("kubernetes", [("192.168.1.11", True)],
                             [{"name": "https", "port": 6443, "protocol": "TCP"}]))
                await wait_until(lambda: sink.ports(VIP)[(6443, "TCP")]
                               == {Target("192.168.1.11", 6443)})
                await advance(0.3)
                assert len(status_puts(srv)) == 1
                assert len(sink.calls) == n_calls + 2  # one push per real change
                # type change away from LoadBalancer: its ports go, the control plane stays
                srv.seed(svc("dns", DNS, ns="apps", typ="ClusterIP",
                             ann={"kube-vip.io/loadbalancerIPs": VIP}))
                await wait_until(lambda: set(sink.ports(VIP)) == {(6443, "TCP")})
                # the tunnel goes away: its VIP is emptied
                assert sink.problems == {}
                await c.set_tunnels(parse_tunnels(tunnels_yaml(VIP2)))
                assert sink.current[VIP] == []
                # vip_address (VIP) now matches no tunnel: no 6443 anywhere, and it is said
                assert set(sink.ports(VIP2)) == set()
                assert "matches no tunnel VIP" in sink.problems["vip_address"]
                await c.set_tunnels(parse_tunnels(tunnels_yaml(VIP)))
                await wait_until(lambda: set(sink.ports(VIP)) == {(6443, "TCP")})
                assert sink.problems == {}
    run(main)


def test_controller_status_write_refused_by_rbac_is_survived() -> None:
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=5) as srv:
            srv.enable_rbac([{"apiGroups": [""], "resources": ["services"],
                              "verbs": ["list", "watch"]},
                             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                              "verbs": ["list", "watch"]}])
            srv.seed(svc("web", DNS[1:], lb_ip=VIP))
            srv.seed(eps("web", [("10.1.0.1", True)], DNS_SLICE_PORTS))
            sink = Sink()
            async with controller(srv, sink, ServiceOptions(cp_enable=False)) as c:
                await c.set_tunnels(parse_tunnels(tunnels_yaml(VIP)))
                await c.set_leader(True)
                await wait_until(lambda: (80, "TCP") in sink.ports(VIP))
                # the rules are pushed before the status is written: wait for the refusal
                await wait_until(lambda: ("PUT", "/api/v1/namespaces/default/services/web/status",
                                        403) in srv.responses)
                assert c.status_writes == 0
    run(main)


def test_kube_vip_address_variable_is_read_as_the_control_plane_vip() -> None:
    """Issue 15 point 6: kube-vip reads ``address`` (and the older ``vip_address``)."""
    from wgpy.supervisor.kubemode import KubeSettings

    assert KubeSettings.from_env({"address": "10.200.0.1"}).vip_address == "10.200.0.1"
    assert KubeSettings.from_env({"vip_address": "10.200.0.2", "address": "x"}).vip_address \
        == "10.200.0.2"
    assert KubeSettings.from_env({}).service_options().cp_vip is None
