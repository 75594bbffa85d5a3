"""Kubernetes mode: wire the API client, the Lease elector, the Secret and Service watchers,
Events and the HTTP port to the manager (:class:`wgpy.supervisor.manager.Supervisor`).

Settings use kube-vip's environment variable names where they exist (docs
kube-vip-wireguard.md §3); flags override nothing here — ``main.py`` builds
:class:`KubeSettings` from both. Differences from kube-vip, on purpose:

* the Secret namespace defaults to the pod's namespace (``POD_NAMESPACE`` or the
  service-account file), not ``kube-system`` (B11); ``cp_namespace`` overrides it;
* ``svc_enable`` works without ``cp_enable`` (B1);
* the Secret is watched (B10) and ``/healthz`` really checks the process (see :mod:`.http`).

Data flow: Secret → ``manager.apply_tunnels`` and ``services.set_tunnels``; Services,
EndpointSlices, ``default/kubernetes`` → ``manager.set_forward_rules(vip, rules)``; the elector
callbacks go through :class:`KubeWiring` (Events, Service status only while leading) to the
manager's own callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wgpy.core.errors import ConfigError
from wgpy.core.keys import redact
from wgpy.supervisor.election import LeaderElector
from wgpy.supervisor.events import EventRecorder, lease_ref, secret_ref
from wgpy.supervisor.http import HttpServer
from wgpy.supervisor.lease import ElectionConfig
from wgpy.supervisor.secret import SecretController, api_client, pod_namespace
from wgpy.supervisor.services import DEFAULT_LB_CLASS, ServiceController, ServiceOptions
from wgpy.supervisor.watch import Obj

log = logging.getLogger(__name__)

_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def go_bool(text: str | None, default: bool, what: str) -> bool:
    """Go's ``strconv.ParseBool`` (kube-vip parses its env that way)."""
    if text is None or text == "":
        return default
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{what}: {text!r} is not a boolean")


def _float(text: str | None, default: float, what: str) -> float:
    if text is None or text == "":
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a number") from None


@dataclass(frozen=True)
class KubeSettings:
    identity: str
    namespace: str  # the pod's: Lease and Events
    cp_namespace: str  # the Secret's
    lease_name: str = "plndr-cp-lock"
    lease_namespace: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    cp_enable: bool = True
    svc_enable: bool = True
    vip_address: str | None = None
    svc_namespace: str | None = None
    lb_class_name: str = DEFAULT_LB_CLASS
    lb_class_only: bool = False
    lb_class_legacy: bool = True
    write_service_status: bool = True
    pod_cidr: str | None = None
    service_cidr: str | None = None
    # POD_IP (the DaemonSet sets it): the kubelet probes the pod IP, and a wildcard bind
    # would also answer on the VIP, i.e. to anyone behind the VPN node
    http_host: str = "0.0.0.0"  # noqa: S104 (only without POD_IP)
    http_port: int = 2112
    kubeconfig: str | None = None
    clock_offset: float = 0.0  # WGPY_CLOCK_OFFSET: shifts TAI64N timestamps (tests only)
    keylogs: tuple[tuple[str, str], ...] = ()  # --keylog TUNNEL=PATH (debugging only)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> KubeSettings:
        """kube-vip's variables (``vip_nodename``, ``cp_namespace``, ``vip_lease*``, ...);
        ``overrides`` (from flags) win over the environment."""
        env = os.environ if env is None else env
        identity = (env.get("vip_nodename") or socket.gethostname()).strip().lower()
        ns = pod_namespace(env) or "kube-system"
        lease = env.get("vip_leasename") or "plndr-cp-lock"
        lease_ns, _, lease_name = lease.rpartition("/")
        values: dict[str, Any] = {
            "identity": identity,
            "namespace": ns,
            "cp_namespace": env.get("cp_namespace") or ns,
            "lease_name": lease_name,
            "lease_namespace": lease_ns or ns,
            "lease_duration": _float(env.get("vip_leaseduration"), 15, "vip_leaseduration"),
            "renew_deadline": _float(env.get("vip_renewdeadline"), 10, "vip_renewdeadline"),
            "retry_period": _float(env.get("vip_retryperiod"), 2, "vip_retryperiod"),
            "cp_enable": go_bool(env.get("cp_enable"), True, "cp_enable"),
            "svc_enable": go_bool(env.get("svc_enable"), True, "svc_enable"),
            # kube-vip reads both names (``address`` is the current one)
            "vip_address": env.get("vip_address") or env.get("address") or None,
            "svc_namespace": env.get("svc_namespace") or None,
            "lb_class_name": env.get("lb_class_name") or DEFAULT_LB_CLASS,
            "lb_class_only": go_bool(env.get("lb_class_only"), False, "lb_class_only"),
            "lb_class_legacy": go_bool(env.get("lb_class_legacy_handling"), True,
                                       "lb_class_legacy_handling"),
            "write_service_status": not go_bool(env.get("disable_service_updates"), False,
                                                "disable_service_updates"),
            "pod_cidr": env.get("pod_cidr") or None,
            "service_cidr": env.get("service_cidr") or None,
            "kubeconfig": env.get("k8s_config_file") or None,
            "clock_offset": _float(env.get("WGPY_CLOCK_OFFSET"), 0.0, "WGPY_CLOCK_OFFSET"),
            "http_host": (env.get("POD_IP") or "").strip() or "0.0.0.0",  # noqa: S104
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def election(self) -> ElectionConfig:
        return ElectionConfig(self.lease_name, self.lease_namespace or self.namespace,
                              self.identity, self.lease_duration, self.renew_deadline,
                              self.retry_period)

    def service_options(self) -> ServiceOptions:
        return ServiceOptions(namespace=self.svc_namespace, lb_class_name=self.lb_class_name,
                              lb_class_only=self.lb_class_only,
                              lb_class_legacy=self.lb_class_legacy, cp_enable=self.cp_enable,
                              cp_vip=self.vip_address, svc_enable=self.svc_enable,
                              write_status=self.write_service_status)


Callback = Callable[[], Awaitable[None] | None]


class KubeWiring:
    """Builds the Lease elector for the manager, with Events and Service-status gating
    around the manager's own callbacks."""

    def __init__(self, settings: KubeSettings, api: Any, services: ServiceController,
                 recorder: EventRecorder) -> None:
        self.settings = settings
        self.api = api
        self.services = services
        self.recorder = recorder
        cfg = settings.election()
        self.lease = lease_ref(cfg.namespace, cfg.name)
        self._bg: set[asyncio.Task[Any]] = set()

    def _background(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    def elector_factory(self, *, on_started_leading: Callback, on_stopped_leading: Callback,
                        on_new_leader: Callable[[str], Awaitable[None] | None]) -> LeaderElector:
        elector: LeaderElector | None = None

        async def started() -> None:
            self._background(self.recorder.became_leader(self.lease))
            self._background(self.services.set_leader(True))
            result = on_started_leading()
            if result is not None:
                await result  # the manager's leading task: runs until cancelled

        async def stopped() -> None:
            await self.services.set_leader(False)
            result = on_stopped_leading()  # tunnels down before the elector releases
            if result is not None:
                await result
            why = "lease lost" if elector is not None and elector.lost_leadership else "stopping"
            self._background(self.recorder.lost_leader(self.lease, why))

        elector = LeaderElector(self.settings.election(), self.api,
                                on_started_leading=started, on_stopped_leading=stopped,
                                on_new_leader=on_new_leader)
        return elector

    async def drain(self) -> None:
        """Wait (briefly) for pending Events to be posted."""
        if self._bg:
            await asyncio.wait(set(self._bg), timeout=2)


ManagerFactory = Callable[..., Any]


def _default_manager(settings: KubeSettings) -> ManagerFactory:
    def build(identity: str, *, elector_factory: Any) -> Any:
        from wgpy.supervisor.manager import Supervisor

        offset = int(settings.clock_offset * 1_000_000_000)
        if offset:
            log.warning("TAI64N clock offset %+.3f s (WGPY_CLOCK_OFFSET): testing only",
                        settings.clock_offset)
        return Supervisor(identity, elector_factory=elector_factory,
                          wall_time_ns=lambda: time.time_ns() + offset,
                          keylogs=dict(settings.keylogs))

    return build


async def run_kubernetes_mode(settings: KubeSettings,
                              manager_factory: ManagerFactory | None = None,
                              *, stop: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); returns the exit status.

    ``manager_factory(identity, elector_factory=...)`` builds the manager (default
    :class:`~wgpy.supervisor.manager.Supervisor`).
    """
    api = await api_client(settings.kubeconfig)
    loop = asyncio.get_running_loop()
    recorder = EventRecorder(api, host=settings.identity)
    manager_box: list[Any] = []

    def rules_sink() -> Any:
        return manager_box[0]

    class _Sink:
        def set_forward_rules(self, vip: str, rules: Any) -> Any:
            return rules_sink().set_forward_rules(vip, rules)

        async def set_problem(self, key: str, problem: str | None) -> None:
            rules_sink().set_problem(key, problem)
            if problem:
                await recorder.emit(secret_ref(None, settings.cp_namespace, "wireguard"),
                                    "Warning", "InvalidConfig", problem)

    services = ServiceController(api, _Sink(), settings.service_options())
    wiring = KubeWiring(settings, api, services, recorder)
    manager = (manager_factory or _default_manager(settings))(settings.identity,
                                                    elector_factory=wiring.elector_factory)
    manager_box.append(manager)

    async def on_reject(error: str, obj: Obj | None) -> None:
        manager.reject_config(redact(error))
        await recorder.rejected_secret(
            secret_ref(obj, settings.cp_namespace, "wireguard"), error)

    async def on_tunnels(tunnels: Any) -> None:
        note = (f"secret {settings.cp_namespace}/wireguard not found"
                if secret.absent else "")
        result = manager.apply_tunnels(tunnels, note=note)
        del result  # applied in the manager's own task; not awaited (no head-of-line block)

    secret = SecretController(api, settings.cp_namespace,
                              on_tunnels=[on_tunnels, services.set_tunnels],
                              on_reject=[on_reject], pod_cidr=settings.pod_cidr,
                              service_cidr=settings.service_cidr)
    http = HttpServer(manager.status, loop=loop, host=settings.http_host,
                      port=settings.http_port)
    http.start()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    log.info("kubernetes mode: identity %s, lease %s/%s, secret %s/wireguard, control plane %s, "
             "services %s", settings.identity, settings.lease_namespace or settings.namespace,
             settings.lease_name, settings.cp_namespace, settings.cp_enable,
             settings.svc_enable)
    watchers = [asyncio.ensure_future(secret.run()), asyncio.ensure_future(services.run())]
    run = asyncio.ensure_future(manager.run())
    stopper = asyncio.ensure_future(stop.wait())
    status = 0
    try:
        await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper.done() and not run.done():
            log.info("stopping: tearing down and releasing the lease")
            manager.stop(release=True)
        await run
    except Exception:
        log.exception("supervisor failed")
        status = 1
    finally:
        stopper.cancel()
        for w in watchers:
            w.cancel()
        for w in watchers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await w
        await wiring.drain()
        http.stop()
        await api.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
    return status
