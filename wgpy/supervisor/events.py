"""Kubernetes Events (core v1) for what an operator must see in ``kubectl describe``/``get events``:
becoming or losing leader (on the Lease) and a rejected ``wireguard`` Secret (on the Secret).

Events are best effort: a failure (no RBAC for events, API down) is logged and forgotten, never
raised into the supervisor. Messages are redacted before they leave the process: anything that
looks like a WireGuard key (44 base64 characters ending in ``=``) is replaced, so even a future
error message that quotes a bad value cannot leak the cluster's shared private key.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from wgpy.core.keys import redact

log = logging.getLogger(__name__)

COMPONENT = "wgpy-supervisor"
MAX_MESSAGE = 1024  # the API server truncates/limits event messages; keep them short




@dataclass(frozen=True)
class ObjectRef:
    """``involvedObject`` of an Event."""

    kind: str
    api_version: str
    namespace: str
    name: str
    uid: str = ""
    resource_version: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"kind": self.kind, "apiVersion": self.api_version,
               "namespace": self.namespace, "name": self.name}
        if self.uid:
            out["uid"] = self.uid
        if self.resource_version:
            out["resourceVersion"] = self.resource_version
        return out


def lease_ref(namespace: str, name: str) -> ObjectRef:
    return ObjectRef("Lease", "coordination.k8s.io/v1", namespace, name)


def secret_ref(obj: dict[str, Any] | None, namespace: str, name: str) -> ObjectRef:
    meta = (obj or {}).get("metadata") or {}
    return ObjectRef("Secret", "v1", namespace, name, str(meta.get("uid") or ""),
                     str(meta.get("resourceVersion") or ""))


def build_event(ref: ObjectRef, type_: Literal["Normal", "Warning"], reason: str,
                message: str, *, host: str, now: datetime) -> dict[str, Any]:
    """A core/v1 Event body (legacy form: first/lastTimestamp, no eventTime)."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    msg = redact(message)
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{ref.name}.{secrets.token_hex(8)}", "namespace": ref.namespace},
        "involvedObject": ref.to_json(),
        "reason": reason,
        "message": msg,
        "type": type_,
        "source": {"component": COMPONENT, "host": host},
        "reportingComponent": COMPONENT,
        "reportingInstance": host,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Posts Events; ``api`` is a ``kubernetes.aio`` ApiClient."""

    def __init__(self, api: Any, *, host: str) -> None:
        from kubernetes.aio import client as k8s

        self._core = k8s.CoreV1Api(api)
        self._models = k8s
        self.host = host
        self.sent = 0
        self.failed = 0

    async def emit(self, ref: ObjectRef, type_: Literal["Normal", "Warning"], reason: str,
                   message: str) -> bool:
        """Create one Event; True if the API server accepted it."""
        body = build_event(ref, type_, reason, message, host=self.host, now=datetime.now(UTC))
        try:
            model = self._models.CoreV1Event.from_dict(body)
            assert model is not None
            await self._core.create_namespaced_event(ref.namespace, model)
        except Exception as e:
            self.failed += 1
            log.warning("event %s on %s %s/%s not recorded: %s", reason, ref.kind,
                        ref.namespace, ref.name, getattr(e, "status", None) or e)
            return False
        self.sent += 1
        return True

    async def became_leader(self, lease: ObjectRef) -> bool:
        return await self.emit(lease, "Normal", "LeaderElected",
                               f"{self.host} became leader and brings the tunnels up")

    async def lost_leader(self, lease: ObjectRef, why: str) -> bool:
        return await self.emit(lease, "Normal", "LeadershipLost",
                               f"{self.host} stopped leading ({why}); tunnels torn down")

    async def rejected_secret(self, secret: ObjectRef, error: str) -> bool:
        return await self.emit(secret, "Warning", "InvalidConfig",
                               f"tunnels rejected, last good configuration kept: {error}")
