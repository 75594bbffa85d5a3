"""LoadBalancer Services, EndpointSlices and the control plane → forwarding rules per VIP.

The pure functions (no I/O) decide, from plain JSON objects, which Services are ours, which
address each one asks for, and where each port's traffic goes; :class:`ServiceController`
keeps them fed from three reflectors and hands the result to the manager.

Rules, from kube-vip's WireGuard path (docs kube-vip-wireguard.md §6, §7), with its bugs fixed:

* Selection: ``spec.type == LoadBalancer`` (filtered here: the API server refuses a
  ``spec.type`` field selector), not ``kube-vip.io/ignore: "true"``, loadBalancerClass as
  kube-vip (legacy handling: a foreign class is skipped, no class only with ``lb_class_only``;
  non-legacy: the class must equal ``lb_class_name``).
* Address: annotation ``kube-vip.io/loadbalancerIPs`` (comma list), else
  ``spec.loadBalancerIP``, else ``status.loadBalancer.ingress[].ip``; CIDR suffixes stripped.
  Only addresses equal to a tunnel's VIP are served.
* Endpoints: every EndpointSlice labelled ``kubernetes.io/service-name=<svc>``, endpoints whose
  ``conditions.ready`` is not false (kube-vip takes the last slice per family and ignores
  readiness, B7); the target port is the slice port named like the Service port (that is how
  the EndpointSlice controller resolves named targetPorts), else a numeric ``targetPort``,
  else ``port``. Protocol is part of the rule (kube-vip's ids ignore it, B6).
* Control plane: ``VIP:6443`` TCP → ready addresses of the ``default/kubernetes`` slices, on the
  slice's ``https`` port (6443 when absent). kube-vip hard-codes 6443 on both sides and uses
  unready addresses. UDP is not forwarded: the API server speaks HTTPS over TCP only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wgpy.supervisor.config import Tunnel
from wgpy.supervisor.model import ForwardRule, Target
from wgpy.supervisor.watch import Backoff, Change, Obj, Reflector

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ANN_IPS = "kube-vip.io/loadbalancerIPs"
ANN_IGNORE = "kube-vip.io/ignore"
DEFAULT_LB_CLASS = "kube-vip.io/kube-vip-class"
CONTROLPLANE_PORT = 6443
RuleMap = dict[str, tuple[ForwardRule, ...]]  # VIP (address, no prefix) -> rules


@dataclass(frozen=True)
class ServiceOptions:
    """kube-vip's Service knobs (env ``svc_namespace``, ``lb_class_*``, ``cp_enable``...)."""

    namespace: str | None = None  # None: all namespaces
    lb_class_name: str = DEFAULT_LB_CLASS
    lb_class_only: bool = False
    lb_class_legacy: bool = True
    cp_enable: bool = True
    cp_vip: str | None = None  # None: no control-plane forwarding (kube-vip: no VIP, no cp)
    svc_enable: bool = True
    write_status: bool = True


# -- pure decisions -----------------------------------------------------------------------------


def _meta(obj: Obj) -> dict[str, Any]:
    return obj.get("metadata") or {}


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_interface(text.strip()).ip)
    except ValueError:
        return None


def is_selected(svc: Obj, opts: ServiceOptions) -> bool:
    """Is this Service one we serve (type, ignore annotation, loadBalancerClass)?"""
    spec = svc.get("spec") or {}
    if spec.get("type") != "LoadBalancer":
        return False
    if (_meta(svc).get("annotations") or {}).get(ANN_IGNORE) == "true":
        return False
    cls = spec.get("loadBalancerClass")
    if opts.lb_class_legacy:
        if cls:
            return bool(cls == opts.lb_class_name)
        return not opts.lb_class_only
    return bool(cls == opts.lb_class_name)


def service_ips(svc: Obj) -> list[str]:
    """Requested addresses: annotation, then ``spec.loadBalancerIP``, then status (§7.2)."""
    ann = (_meta(svc).get("annotations") or {}).get(ANN_IPS) or ""
    sources: list[list[str]] = [
        [p for p in ann.split(",") if p.strip()],
        [str((svc.get("spec") or {}).get("loadBalancerIP") or "")],
        [
            str(i.get("ip") or "")
            for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ],
    ]
    for texts in sources:
        ips = [ip for ip in (_ip(t) for t in texts if t) if ip is not None]
        if ips:
            return list(dict.fromkeys(ips))
    return []


def _ready_addresses(slices: Iterable[Obj]) -> Iterable[tuple[Obj, str]]:
    for sl in slices:
        if sl.get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices cannot be forwarded to
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue  # nil means ready (API semantics)
            addrs = ep.get("addresses") or []
            if addrs:
                yield sl, str(addrs[0])  # an endpoint's addresses are fungible


def port_targets(svc_port: Obj, slices: Iterable[Obj]) -> tuple[Target, ...]:
    """Ready endpoints of one Service port, sorted and unique."""
    name = svc_port.get("name") or ""
    proto = svc_port.get("protocol") or "TCP"
    tp = svc_port.get("targetPort")
    fallback = tp if isinstance(tp, int) else int(svc_port.get("port") or 0)
    out: set[Target] = set()
    for sl, addr in _ready_addresses(slices):
        port = None
        for p in sl.get("ports") or []:
            if (p.get("name") or "") == name and (p.get("protocol") or "TCP") == proto:
                port = p.get("port")
                break
        if port is None:
            if isinstance(tp, str) and tp:
                continue  # a named port this slice does not resolve: no idea where it goes
            port = fallback
        if isinstance(port, int) and 0 < port < 65536:
            out.add(Target(addr, port))
    return tuple(sorted(out, key=lambda t: (t.host, t.port)))


def controlplane_targets(slices: Iterable[Obj]) -> tuple[Target, ...]:
    out: set[Target] = set()
    for sl, addr in _ready_addresses(slices):
        ports = sl.get("ports") or []
        https = [p for p in ports if p.get("name") == "https" and p.get("port")]
        port = int(https[0]["port"]) if https else CONTROLPLANE_PORT
        out.add(Target(addr, port))
    return tuple(sorted(out, key=lambda t: (t.host, t.port)))


def service_rules(svc: Obj, slices: Iterable[Obj]) -> list[ForwardRule]:
    meta = _meta(svc)
    source = f"service/{meta.get('namespace')}/{meta.get('name')}"
    slices = list(slices)
    rules: list[ForwardRule] = []
    for p in (svc.get("spec") or {}).get("ports") or []:
        proto = p.get("protocol") or "TCP"
        if proto not in ("TCP", "UDP"):
            continue  # SCTP: the userspace forwarders do TCP and UDP only
        targets = port_targets(p, slices)
        if targets:  # no ready endpoint: no listener, so clients see a refusal, not a hang
            rules.append(ForwardRule(int(p["port"]), "TCP" if proto == "TCP" else "UDP",
                                     targets, source))
    return rules


def compute_rules(
    services: Iterable[Obj],
    slices: Iterable[Obj],
    cp_targets: Sequence[Target],
    vips: Iterable[str],
    opts: ServiceOptions,
) -> RuleMap:
    """All forwarding rules, per VIP. The control plane wins a port clash; between Services
    the first by namespace/name wins (both logged)."""
    vipset = set(vips)
    by_vip: dict[str, list[ForwardRule]] = {v: [] for v in vipset}
    taken: dict[tuple[str, int, str], str] = {}
    if opts.cp_enable and cp_targets:
        # kube-vip serves the control plane on its control-plane VIP only; without one
        # (vip_address/address unset) there is nothing to serve it on.
        cp_vips = [v for v in vipset if opts.cp_vip is not None and v == _ip(opts.cp_vip)]
        for v in cp_vips:
            by_vip[v].append(ForwardRule(CONTROLPLANE_PORT, "TCP", tuple(cp_targets),
                                         "controlplane"))
            taken[(v, CONTROLPLANE_PORT, "TCP")] = "controlplane"
    if opts.svc_enable:
        per_svc: dict[tuple[str, str], list[Obj]] = {}
        for sl in slices:
            owner = (_meta(sl).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if owner:
                per_svc.setdefault((str(_meta(sl).get("namespace")), owner), []).append(sl)
        for svc in sorted(services, key=lambda s: (_meta(s).get("namespace") or "",
                                                  _meta(s).get("name") or "")):
            if not is_selected(svc, opts):
                continue
            meta = _meta(svc)
            mine = [ip for ip in service_ips(svc) if ip in vipset]
            if not mine:
                continue
            key = (str(meta.get("namespace")), str(meta.get("name")))
            for rule in service_rules(svc, per_svc.get(key, [])):
                for v in mine:
                    holder = taken.get((v, rule.port, rule.protocol))
                    if holder is not None:
                        log.warning("%s: %s %s:%d already forwarded for %s; skipped",
                                    rule.source, rule.protocol, v, rule.port, holder)
                        continue
                    taken[(v, rule.port, rule.protocol)] = rule.source
                    by_vip[v].append(rule)
    return {v: tuple(sorted(r, key=lambda x: (x.port, x.protocol))) for v, r in by_vip.items()}


def cp_vip_problem(opts: ServiceOptions, vips: Iterable[str]) -> str | None:
    """Why the control plane cannot be served as configured (``None``: it can, or is off)."""
    vipset = set(vips)
    if not opts.cp_enable or opts.cp_vip is None or not vipset:
        return None
    if _ip(opts.cp_vip) in vipset:
        return None
    return (f"vip_address {opts.cp_vip} matches no tunnel VIP ({', '.join(sorted(vipset))}): "
            "the control plane is not forwarded")


def desired_ingress(svc: Obj, vips: Iterable[str]) -> list[dict[str, Any]]:
    """``status.loadBalancer.ingress`` for the Service's addresses that are our VIPs."""
    vipset = set(vips)
    ports = [
        {"port": int(p["port"]), "protocol": p.get("protocol") or "TCP"}
        for p in (svc.get("spec") or {}).get("ports") or []
    ]
    return [{"ip": ip, "ipMode": "VIP", "ports": ports} for ip in service_ips(svc)
            if ip in vipset]


def _same_ingress(current: list[Any], wanted: list[dict[str, Any]]) -> bool:
    def norm(items: list[Any]) -> list[tuple[str, str, tuple[tuple[int, str], ...]]]:
        return [(str(i.get("ip") or ""), str(i.get("ipMode") or "VIP"),
                 tuple((int(p.get("port") or 0), str(p.get("protocol") or "TCP"))
                       for p in i.get("ports") or [])) for i in items]
    return norm(current) == norm(wanted)


# -- the controller -----------------------------------------------------------------------------


class RuleSink(Protocol):
    """What the controller needs from the manager."""

    def set_forward_rules(self, vip: str, rules: Sequence[ForwardRule]) -> Any: ...

    # optional: ``set_problem(key, text or None)``, a configuration that cannot be served


class ServiceController:
    """Watch Services and EndpointSlices; push rules per VIP; write Service status as leader.

    Only the leader watches Services and EndpointSlices (cluster-wide, or ``svc_namespace``):
    N followers holding N cluster-wide watches would load the API server for nothing. A new
    leader lists them first (one LIST, a fraction of a second) and then pushes its rules; the
    small ``default/kubernetes`` watch for the control plane runs on every node.
    """

    def __init__(self, api: Any, sink: RuleSink, opts: ServiceOptions,
                 *, backoff: Backoff | None = None) -> None:
        from kubernetes.aio import client as k8s

        self._core = k8s.CoreV1Api(api)
        self._disc = k8s.DiscoveryV1Api(api)
        self._models = k8s
        self._sink = sink
        self.opts = opts
        self._vips: set[str] = set()
        self._leader = False
        self._applied: RuleMap = {}
        self._cp_last: tuple[Target, ...] = ()
        self._lock = asyncio.Lock()
        self.status_writes = 0
        self.problem: str | None = None  # a configuration that cannot be served (see /readyz)
        self.reflectors: list[Reflector] = []
        self._leader_only: list[Reflector] = []  # run while leading (Services, slices)
        self._leader_task: asyncio.Future[Any] | None = None
        kw: dict[str, Any] = {"on_change": self._changed, "on_synced": self.reconcile}
        if opts.svc_enable:
            if opts.namespace:
                svc_call: Any = (self._core.list_namespaced_service_without_preload_content,
                                 opts.namespace)
                sl_call: Any = (self._disc.list_namespaced_endpoint_slice_without_preload_content,
                                opts.namespace)
            else:
                svc_call = (self._core.list_service_for_all_namespaces_without_preload_content,)
                disc = self._disc
                sl_call = (disc.list_endpoint_slice_for_all_namespaces_without_preload_content,)
            self.services = Reflector("services", *svc_call, backoff=backoff, **kw)
            self.slices = Reflector("endpointslices", *sl_call, label_selector=SERVICE_NAME_LABEL,
                                    backoff=backoff, **kw)
            self.reflectors += [self.services, self.slices]
            self._leader_only = [self.services, self.slices]
        if opts.cp_enable:
            self.cp_slices = Reflector(
                "controlplane", self._disc.list_namespaced_endpoint_slice_without_preload_content,
                "default", label_selector=f"{SERVICE_NAME_LABEL}=kubernetes", backoff=backoff,
                **kw)
            self.reflectors.append(self.cp_slices)

    async def run(self) -> None:
        """Run the reflectors every node needs until cancelled (the leader's own ones run
        between :meth:`set_leader` calls)."""
        try:
            await asyncio.gather(*(r.run() for r in self.reflectors
                                   if r not in self._leader_only))
            await asyncio.Event().wait()  # nothing to run on every node: wait for cancel
        finally:
            await self._stop_leader_watches()

    async def _stop_leader_watches(self) -> None:
        task, self._leader_task = self._leader_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for r in self._leader_only:  # a stale cache must not serve the next term
            r.cache.clear()
            r.synced.clear()
            r.resource_version = ""

    async def set_tunnels(self, tunnels: Mapping[str, Tunnel]) -> None:
        self._vips = {str(t.vip.ip) for t in tunnels.values()}
        await self.reconcile()

    async def set_leader(self, leader: bool) -> None:
        self._leader = leader
        if leader:
            if self._leader_only and self._leader_task is None:
                self._leader_task = asyncio.ensure_future(
                    asyncio.gather(*(r.run() for r in self._leader_only)))
            await self.reconcile()
        else:
            await self._stop_leader_watches()

    @property
    def rules(self) -> RuleMap:
        return dict(self._applied)

    async def _changed(self, change: Change) -> None:
        del change
        await self.reconcile()

    async def reconcile(self) -> None:
        """Recompute everything from the caches; push only what changed."""
        async with self._lock:
            problem = cp_vip_problem(self.opts, self._vips)  # every node says so
            if problem != self.problem:
                self.problem = problem
                if problem:
                    log.error("%s", problem)
                report = getattr(self._sink, "set_problem", None)
                result = report("vip_address", problem) if report is not None else None
                if inspect.isawaitable(result):
                    await result
            if not all(r.synced.is_set() for r in self.reflectors):
                # A partial view would tear down rules that are still valid; a follower
                # (no Service watches) keeps what it has until it leads and has listed.
                return
            services = list(self.services.cache.values()) if self.opts.svc_enable else []
            slices = list(self.slices.cache.values()) if self.opts.svc_enable else []
            cp: tuple[Target, ...] = ()
            if self.opts.cp_enable:
                cp = controlplane_targets(self.cp_slices.cache.values())
                if not cp and self._cp_last:
                    log.warning("no ready kubernetes API server endpoints; keeping %d",
                                len(self._cp_last))
                    cp = self._cp_last
                self._cp_last = cp
            wanted = compute_rules(services, slices, cp, self._vips, self.opts)
            for vip in sorted(set(wanted) | set(self._applied)):
                rules = wanted.get(vip, ())
                if self._applied.get(vip) == rules:
                    continue
                log.info("forwarding on %s: %s", vip, ", ".join(
                    f"{r.protocol}/{r.port}->{len(r.targets)} ({r.source})" for r in rules)
                    or "none")
                result = self._sink.set_forward_rules(vip, list(rules))
                if inspect.isawaitable(result):
                    await result
                if rules:
                    self._applied[vip] = rules
                else:
                    self._applied.pop(vip, None)
            if self._leader and self.opts.write_status and self.opts.svc_enable:
                for svc in services:
                    if is_selected(svc, self.opts):
                        await self._write_status(svc)

    async def _write_status(self, svc: Obj) -> None:
        wanted = desired_ingress(svc, self._vips)
        current = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if not wanted or _same_ingress(current, wanted):
            return
        meta = _meta(svc)
        body = dict(svc, apiVersion="v1", kind="Service")
        body["status"] = {"loadBalancer": {"ingress": wanted}}
        model = self._models.V1Service.from_dict(body)
        assert model is not None
        try:
            await self._core.replace_namespaced_service_status(
                meta["name"], meta["namespace"], model
            )
            self.status_writes += 1
            log.info("service %s/%s: status ingress %s", meta["namespace"], meta["name"],
                     ", ".join(i["ip"] for i in wanted))
        except self._models.ApiException as e:
            # 409: a newer version exists; its watch event brings us back here.
            log.info("service %s/%s: status update failed: %s %s", meta["namespace"],
                     meta["name"], e.status, e.reason)
        except Exception as e:
            log.warning("service %s/%s: status update failed: %s", meta["namespace"],
                        meta["name"], e)
