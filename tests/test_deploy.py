"""``deploy/``: every manifest loads into the official client's models without losing a field,
the kustomization covers the manifests, the pod spec has what the supervisor needs, the RBAC
is exactly the minimal set, and the example Secret parses with the supervisor's parser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiClient

from wgpy.supervisor.config import find_by_vip, parse_tunnels

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
NAMESPACE = "kube-system"
EXAMPLE_SECRET = "secret-example.yaml"

Obj = dict[str, Any]


def load(name: str) -> list[Obj]:
    with (DEPLOY / name).open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifests() -> list[tuple[str, Obj]]:
    return [
        (p.name, doc)
        for p in sorted(DEPLOY.glob("*.yaml"))
        if p.name != "kustomization.yaml"
        for doc in load(p.name)
    ]


def one(kind: str) -> Obj:
    found = [d for _, d in manifests() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# -- the official client's models ----------------------------------------------------------------


def model_name(obj: Obj) -> str:
    version: str = obj["apiVersion"].rsplit("/", 1)[-1]  # apps/v1 -> v1
    kind: str = obj["kind"]
    return version[0].upper() + version[1:] + kind  # V1DaemonSet


def to_model(obj: Obj) -> Any:
    """Deserialize as the client does for a server answer (validates required fields)."""
    return ApiClient().deserialize(json.dumps(obj), model_name(obj), "application/json")


def to_dict(model: Any) -> Any:
    """Serialize as the client does for a request body."""
    return ApiClient().sanitize_for_serialization(model)  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    ("name", "obj"), manifests(), ids=[f"{n}:{d['kind']}" for n, d in manifests()]
)
def test_manifest_round_trips_through_client_models(name: str, obj: Obj) -> None:
    model = to_model(obj)
    assert type(model).__name__ == model_name(obj)
    # The models drop unknown keys silently, so a misspelt or misplaced field
    # (`sysctl`, `capabilities` at pod level, ...) shows up as a difference here.
    assert to_dict(model) == obj, name


def test_round_trip_catches_a_misspelt_field() -> None:
    ds = json.loads(json.dumps(one("DaemonSet")))
    ds["spec"]["template"]["spec"]["hostNetwrok"] = False
    assert to_dict(to_model(ds)) != ds


def test_every_object_in_one_namespace_with_one_service_account() -> None:
    for name, obj in manifests():
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, (name, obj["kind"])
    assert one("ServiceAccount")["metadata"]["name"] == "wgpy"


# -- kustomization -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kz,) = load("kustomization.yaml")
    assert kz["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and kz["kind"] == "Kustomization"
    assert kz["namespace"] == NAMESPACE
    files = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kz["resources"]) == files - {EXAMPLE_SECRET}
    assert len(kz["resources"]) == len(set(kz["resources"]))
    # Deliberately absent: `kubectl apply -k deploy/` must never replace a real Secret
    # with the fake example keys.
    assert EXAMPLE_SECRET not in kz["resources"]
    assert [i["name"] for i in kz["images"]] == [container()["image"]]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl (built-in kustomize)")
def test_kustomize_build_renders_models() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, check=True,
        timeout=60,
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    )
    for d in docs:
        assert to_dict(to_model(d)) == d
    ds = next(d for d in docs if d["kind"] == "DaemonSet")
    (kz,) = load("kustomization.yaml")
    img = kz["images"][0]
    assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"{img['newName']}:{img['newTag']}"
    )


# -- the pod spec --------------------------------------------------------------------------------


def pod() -> Obj:
    spec: Obj = one("DaemonSet")["spec"]["template"]["spec"]
    return spec


def container() -> Obj:
    (c,) = pod()["containers"]
    return dict(c)


def test_daemonset_selector_matches_template() -> None:
    ds = one("DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()


# Kubernetes' safe sysctls (allowed without a kubelet allow-list; docs "Using sysctls").
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}
OVERLAY = ROOT / "deploy-overlays" / "kube-vip-sysctls"


def test_pod_network_namespace_and_sysctls() -> None:
    """Issue 15 point 7: only safe sysctls (no SysctlForbidden on a standard kubelet), and
    Service ports below 1024 bindable with NET_ADMIN only."""
    spec = pod()
    assert spec["hostNetwork"] is False  # explicit: a crashed pod's tunnel dies with its netns
    sysctls = {s["name"]: s["value"] for s in spec["securityContext"]["sysctls"]}
    assert sysctls == {"net.ipv4.ip_unprivileged_port_start": "0"}
    assert set(sysctls) <= SAFE_SYSCTLS
    assert "sysctls" not in container()["securityContext"]


def test_metrics_listen_on_the_pod_ip_only() -> None:
    """Issue 15 point 7: /metrics on the pod IP, never on the VIP (a wildcard bind would
    answer anyone behind the VPN node)."""
    from wgpy.supervisor.kubemode import KubeSettings

    assert env()["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    s = KubeSettings.from_env({"POD_IP": "10.244.1.5", "vip_nodename": "n"})
    assert s.http_host == "10.244.1.5"


def test_capabilities_are_net_admin_only() -> None:
    sc = container()["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": ["NET_ADMIN"]}
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True


def test_dev_net_tun_is_a_char_device_host_path() -> None:
    volumes = {v["name"]: v for v in pod()["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    tun = volumes[mounts["/dev/net/tun"]]
    assert tun["hostPath"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    # Everything else the read-only root needs is pod-private scratch, not the host.
    for path, name in mounts.items():
        if path != "/dev/net/tun":
            assert "emptyDir" in volumes[name], path
    assert set(mounts.values()) == set(volumes)


def env() -> dict[str, Obj]:
    return {e["name"]: e for e in container()["env"]}


def test_downward_api_env_and_kube_vip_defaults() -> None:
    e = env()
    assert e["vip_nodename"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert e["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    values = {k: v.get("value") for k, v in e.items()}
    assert values["vip_leasename"] == "plndr-cp-lock"
    timings = [values[k] for k in ("vip_leaseduration", "vip_renewdeadline", "vip_retryperiod")]
    assert timings == ["15", "10", "2"]
    # client-go's rule: LeaseDuration > RenewDeadline > 1.2 x RetryPeriod.
    duration, renew, retry = map(int, timings)
    assert duration > renew > 1.2 * retry
    for name in ("cp_enable", "svc_enable"):
        assert values[name] == "true"


def test_probes_and_metrics_port() -> None:
    c = container()
    (port,) = c["ports"]
    assert port == {"name": "http-metrics", "containerPort": 2112, "protocol": "TCP"}
    assert c["args"] == [f"--http-port={port['containerPort']}"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    # Liveness must not kill a pod in the middle of one lease round: give it several periods.
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 15
    annotations = one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port["containerPort"])


def test_resources_and_service_account() -> None:
    res = container()["resources"]
    assert set(res) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert pod()["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]


def test_vip_address_matches_the_example_secret() -> None:
    tunnels = parse_tunnels(example_tunnels())
    assert find_by_vip(tunnels.values(), env()["vip_address"]["value"]) is not None


def test_env_names_are_read_by_the_supervisor() -> None:
    # Guards against a typo between the manifest and the code once the supervisor's
    # settings exist (kube-vip's env names are lower-case and easy to mistype).
    source = "\n".join(p.read_text() for p in (ROOT / "wgpy").rglob("*.py"))
    names = [n for n in env() if n != "POD_NAMESPACE"]
    missing = [n for n in names if f'"{n}"' not in source]
    assert not missing, f"env vars in daemonset.yaml that wgpy never reads: {missing}"
    assert '"--http-port"' in source


# -- RBAC ----------------------------------------------------------------------------------------

Grant = tuple[str, str, str, str | None]  # (apiGroup, resource, verb, resourceName or None)


def grants(role: Obj) -> set[Grant]:
    out: set[Grant] = set()
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        names = rule.get("resourceNames") or [None]
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                for v in rule["verbs"]:
                    for n in names:
                        assert "*" not in (g, r, v), "no wildcards"
                        out.add((g, r, v, n))
    return out


def test_role_is_exactly_the_minimal_namespaced_set() -> None:
    assert grants(one("Role")) == {
        ("", "secrets", "list", "wireguard"),
        ("", "secrets", "watch", "wireguard"),
        ("coordination.k8s.io", "leases", "get", "plndr-cp-lock"),
        ("coordination.k8s.io", "leases", "update", "plndr-cp-lock"),
        ("coordination.k8s.io", "leases", "create", None),
        ("", "events", "create", None),
    }


def test_cluster_role_is_exactly_services_status_and_slices() -> None:
    assert grants(one("ClusterRole")) == {   # issue 15 point 7: no verb that is never used
        ("", "services", "list", None),
        ("", "services", "watch", None),
        ("", "services/status", "update", None),
        ("discovery.k8s.io", "endpointslices", "list", None),
        ("discovery.k8s.io", "endpointslices", "watch", None),
    }


def test_bindings_tie_roles_to_the_service_account() -> None:
    sa = one("ServiceAccount")["metadata"]
    subject = {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    for binding, role in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        b = one(binding)
        assert b["subjects"] == [subject]
        assert b["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": role,
            "name": one(role)["metadata"]["name"],
        }
    assert one("RoleBinding")["metadata"]["namespace"] == sa["namespace"]
    lease_names = {n for g, r, _, n in grants(one("Role")) if r == "leases" and n}
    assert lease_names == {env()["vip_leasename"]["value"]}


# A small model of the RBAC authorizer, to show what the rules allow and refuse. Per the
# Kubernetes RBAC docs, a list/watch carrying fieldSelector metadata.name=X is authorized as a
# request for name X; create carries no name.


@dataclass(frozen=True)
class Request:
    verb: str
    group: str
    resource: str
    namespace: str | None  # None = cluster-wide (all namespaces)
    name: str | None = None
    field_selector: str = ""


def _authorized_name(req: Request) -> str | None:
    if req.verb in ("list", "watch") and req.name is None:
        m = re.fullmatch(r"metadata\.name=([^,]+)", req.field_selector)
        return m.group(1) if m else None
    return None if req.verb == "create" else req.name


def allowed(req: Request) -> bool:
    name = _authorized_name(req)
    checks: list[Iterator[Grant]] = [iter(grants(one("ClusterRole")))]
    if req.namespace == NAMESPACE:
        checks.append(iter(grants(one("Role"))))
    for grant_set in checks:
        for g, r, v, n in grant_set:
            if (g, r, v) == (req.group, req.resource, req.verb) and n in (None, name):
                return True
    return False


@pytest.mark.parametrize(
    "req",
    [
        Request("list", "", "secrets", NAMESPACE, field_selector="metadata.name=wireguard"),
        Request("watch", "", "secrets", NAMESPACE, field_selector="metadata.name=wireguard"),
        Request("get", "coordination.k8s.io", "leases", NAMESPACE, "plndr-cp-lock"),
        Request("create", "coordination.k8s.io", "leases", NAMESPACE),
        Request("update", "coordination.k8s.io", "leases", NAMESPACE, "plndr-cp-lock"),
        Request("create", "", "events", NAMESPACE),
        Request("watch", "", "services", None),
        Request("update", "", "services/status", "default", "web"),
        Request("list", "discovery.k8s.io", "endpointslices", None),
    ],
    ids=lambda r: f"{r.verb}-{r.resource}",
)
def test_supervisor_requests_are_allowed(req: Request) -> None:
    assert allowed(req)


@pytest.mark.parametrize(
    "req",
    [
        Request("list", "", "secrets", NAMESPACE),  # every Secret of kube-system: no
        Request("get", "", "secrets", NAMESPACE, "bootstrap-token-abcdef"),
        Request("get", "", "secrets", NAMESPACE, "wireguard"),  # never called: not granted
        Request("patch", "", "services/status", "default", "web"),
        Request("get", "", "secrets", "default", "wireguard"),
        Request("update", "coordination.k8s.io", "leases", NAMESPACE, "kube-controller-manager"),
        Request("delete", "coordination.k8s.io", "leases", NAMESPACE, "plndr-cp-lock"),
        Request("create", "coordination.k8s.io", "leases", "default"),
        Request("update", "", "services", "default", "web"),
        Request("patch", "", "events", NAMESPACE, "x"),
        Request("list", "", "pods", None),
        Request("list", "", "nodes", None),
        Request("list", "", "endpoints", None),
    ],
    ids=lambda r: f"{r.verb}-{r.resource}-{r.name or r.namespace}",
)
def test_everything_else_is_refused(req: Request) -> None:
    assert not allowed(req)


# -- the example Secret --------------------------------------------------------------------------


def example_tunnels() -> str:
    (secret,) = load(EXAMPLE_SECRET)
    text: str = secret["stringData"]["tunnels"]
    return text


def test_example_secret_parses_with_the_supervisor_parser() -> None:
    (secret,) = load(EXAMPLE_SECRET)
    assert secret["metadata"]["name"] == "wireguard" and secret["type"] == "Opaque"
    tunnels = parse_tunnels(
        example_tunnels(), pod_cidr="10.244.0.0/16", service_cidr="10.96.0.0/12"
    )
    assert sorted(tunnels) == ["wg0", "wg1"]
    assert {t.listen_port for t in tunnels.values()} == {51820, 51821}


def test_example_keys_are_obviously_fake() -> None:
    raw = yaml.safe_load(example_tunnels())
    for spec in raw.values():
        for field in ("privateKey", "peerPublicKey"):
            assert spec[field].startswith("EXAMPLE0"), field
    text = (DEPLOY / EXAMPLE_SECRET).read_text()
    assert "EXAMPLE ONLY" in text.splitlines()[0]


# -- the operator guide stays aligned with what ships --------------------------------------------


def test_operator_guide_lists_exactly_the_exported_metrics() -> None:
    from wgpy.supervisor import metrics
    from wgpy.supervisor.model import SupervisorStatus

    exported = {f.name for f in metrics.families(SupervisorStatus("n"), now_unix=0.0)}
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    table = guide[guide.index("| Metric | Type |"):guide.index("Suggested alerts")]
    documented = set(re.findall(r"`(wgpy_[a-z_]+)`", table))
    assert documented == exported


def test_operator_guide_quotes_the_manifests() -> None:
    guide = (ROOT / "docs" / "operator-guide.md").read_text()
    for name, value in (("vip_leaseduration", "15"), ("vip_renewdeadline", "10"),
                        ("vip_retryperiod", "2"), ("vip_leasename", "plndr-cp-lock")):
        assert env()[name]["value"] == value and f"`{name}={value}`" in guide
    overlay = yaml.safe_load((OVERLAY / "sysctls.yaml").read_text())
    sysctls = [s["name"] for s in overlay["spec"]["template"]["spec"]["securityContext"]
               ["sysctls"] if s["name"] not in SAFE_SYSCTLS]
    assert sysctls == ["net.ipv4.conf.all.src_valid_mark", "net.ipv4.conf.all.route_localnet"]
    kubelet = guide[guide.index("allowedUnsafeSysctls:"):]
    assert all(f'"{s}"' in kubelet.split("```")[0] for s in sysctls)
    assert f"--allowed-unsafe-sysctls={','.join(sysctls)}" in guide
    assert "kubectl apply -k deploy-overlays/kube-vip-sysctls" in guide
