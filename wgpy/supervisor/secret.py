"""Kubernetes plumbing of the supervisor: the API client, the pod's namespace, and the
``wireguard`` Secret watched live (kube-vip-wireguard.md §2).

kube-vip reads the Secret once at start-up (B10): an edit needs a pod restart, and a deleted
Secret goes unnoticed, so every node keeps the old tunnels — including their shared private
key — up for as long as the pod lives. Here the Secret is LIST+WATCHed (:mod:`.watch`):

* a valid ``tunnels`` key is applied live (the manager restarts only the tunnels that changed);
* an invalid one (YAML, fields, keys, overlaps, a missing ``tunnels`` key, bad base64) is
  rejected: the running tunnels stay, the error is logged, counted and reported as a Warning
  Event on the Secret;
* a deleted Secret tears every tunnel down (an empty configuration), and re-creating it brings
  them back.
"""

from __future__ import annotations

import base64
import binascii
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wgpy.core.errors import ConfigError
from wgpy.supervisor.config import Tunnel, parse_tunnels
from wgpy.supervisor.watch import Backoff, Change, Obj, Reflector

log = logging.getLogger(__name__)

SECRET_NAME = "wireguard"  # noqa: S105 (a name, not a password)
SECRET_KEY = "tunnels"  # noqa: S105
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

TunnelsCallback = Callable[[Mapping[str, Tunnel]], Awaitable[Any] | Any]
RejectCallback = Callable[[str, Obj | None], Awaitable[Any] | Any]


def pod_namespace(env: Mapping[str, str] | None = None,
                  sa_file: str | Path = SA_NAMESPACE_FILE) -> str | None:
    """``POD_NAMESPACE`` (downward API), else the service-account namespace file."""
    env = os.environ if env is None else env
    ns = (env.get("POD_NAMESPACE") or "").strip()
    if ns:
        return ns
    try:
        return Path(sa_file).read_text().strip() or None
    except OSError:
        return None


async def api_client(kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.aio`` ApiClient: in-cluster config when running in a pod (and no
    kubeconfig was given), else ``kubeconfig`` / ``$KUBECONFIG`` / ``~/.kube/config``."""
    from kubernetes.aio import client
    from kubernetes.aio import config as _config

    config: Any = _config  # untyped package
    cfg = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get(
        "KUBECONFIG"
    ):
        config.load_incluster_config(client_configuration=cfg)
        log.info("kubernetes: in-cluster configuration")
    else:
        path = kubeconfig or os.environ.get("KUBECONFIG") or None
        if path and os.pathsep in path:
            path = path.split(os.pathsep)[0]  # the first file of a KUBECONFIG list
        await config.load_kube_config(config_file=path, client_configuration=cfg)
        log.info("kubernetes: kubeconfig %s, server %s", path or "~/.kube/config", cfg.host)
    return client.ApiClient(cfg)


def decode_tunnels(obj: Obj, *, key: str = SECRET_KEY) -> str:
    """The ``tunnels`` text of a Secret object (``data`` is base64, as the API returns it)."""
    meta = obj.get("metadata") or {}
    where = f"secret {meta.get('namespace')}/{meta.get('name')}"
    data = obj.get("data") or {}
    if key not in data:
        raise ConfigError(f"{where} must contain a {key!r} key")
    try:
        return base64.b64decode(str(data[key]), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: key {key!r} is not valid base64 UTF-8 text") from None


async def _call(fn: Callable[..., Any], *args: Any) -> None:
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


class SecretController:
    """Watch Secret ``namespace/wireguard``; hand each valid configuration to ``on_tunnels``
    callbacks (in order), each rejection to ``on_reject``."""

    def __init__(
        self,
        api: Any,
        namespace: str,
        *,
        on_tunnels: Sequence[TunnelsCallback],
        on_reject: Sequence[RejectCallback] = (),
        name: str = SECRET_NAME,
        key: str = SECRET_KEY,
        pod_cidr: str | None = None,
        service_cidr: str | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        from kubernetes.aio import client as k8s

        self.namespace, self.name, self.key = namespace, name, key
        self.pod_cidr, self.service_cidr = pod_cidr, service_cidr
        self._on_tunnels = list(on_tunnels)
        self._on_reject = list(on_reject)
        self.reflector = Reflector(
            f"secret {namespace}/{name}",
            k8s.CoreV1Api(api).list_namespaced_secret_without_preload_content,
            namespace,
            field_selector=f"metadata.name={name}",
            on_change=self._changed,
            on_synced=self.reconcile,
            backoff=backoff,
        )
        self.tunnels: dict[str, Tunnel] | None = None  # last applied (None: never)
        self.absent = False  # the last configuration applied came from a missing Secret
        self._seen_rv: str | None = None
        self.applied = 0
        self.rejected = 0

    async def run(self) -> None:
        await self.reflector.run()

    async def _changed(self, change: Change) -> None:
        del change
        await self.reconcile()

    async def reconcile(self) -> None:
        obj = self.reflector.cache.get((self.namespace, self.name))
        rv = str((obj or {}).get("metadata", {}).get("resourceVersion") or "") if obj else ""
        if obj is not None and rv == self._seen_rv:
            return  # this version was handled already (relist, duplicate)
        self._seen_rv = rv if obj is not None else None
        if obj is None:
            # Absent = an empty configuration (no tunnels), applied like any other: the
            # manager then runs for election and reports ready with "no tunnels configured"
            # (see Supervisor.apply_tunnels for why that is the right readiness).
            if self.tunnels:
                log.warning("secret %s/%s deleted: tearing every tunnel down",
                            self.namespace, self.name)
            elif self.tunnels is None:
                log.warning("secret %s/%s not found: no tunnels until it is created",
                            self.namespace, self.name)
            if self.tunnels is None or self.tunnels or not self.absent:
                self.absent = True
                await self._apply({})
            return
        was_absent, self.absent = self.absent, False
        try:
            tunnels = parse_tunnels(decode_tunnels(obj, key=self.key), pod_cidr=self.pod_cidr,
                                    service_cidr=self.service_cidr)
        except ConfigError as e:
            self.rejected += 1
            for cb in self._on_reject:
                try:
                    await _call(cb, str(e), obj)
                except Exception:
                    log.exception("reject callback failed")
            return
        if tunnels == self.tunnels and not was_absent:
            return  # e.g. an annotation changed: nothing to do
        await self._apply(tunnels)

    async def _apply(self, tunnels: dict[str, Tunnel]) -> None:
        self.tunnels = tunnels
        self.applied += 1
        for cb in self._on_tunnels:
            await _call(cb, tunnels)
