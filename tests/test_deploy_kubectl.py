"""``kubectl apply --dry-run=client -k deploy/`` and the opt-in sysctl overlay (issue 15).

kubectl needs an API server for discovery even in client dry-run (it maps kinds to resources
and reads the live objects to compute the patch), so a stub on 127.0.0.1 answers discovery for
the kinds of ``deploy/`` and 404 for every object: each one is "created (dry run)". Schema
validation (OpenAPI) is left to ``test_deploy``'s round trip through the client's models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAY = ROOT / "deploy-overlays" / "kube-vip-sysctls"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl")

RESOURCES = {
    "/api/v1": ("v1", [("serviceaccounts", "ServiceAccount", True)]),
    "/apis/apps/v1": ("apps/v1", [("daemonsets", "DaemonSet", True)]),
    "/apis/rbac.authorization.k8s.io/v1": ("rbac.authorization.k8s.io/v1", [
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
    ]),
}


class _Discovery(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        del format, args

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif path == "/apis":
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                 "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"}}
                for g in ("apps", "rbac.authorization.k8s.io")]})
        elif path in RESOURCES:
            gv, res = RESOURCES[path]
            self._send(200, {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                             "resources": [{"name": n, "singularName": "", "namespaced": ns,
                                            "kind": k, "verbs": ["create", "get", "patch"]}
                                           for n, k, ns in res]})
        else:
            self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "reason": "NotFound", "code": 404, "message": "not found"})


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def kubectl(*args: str, server: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["kubectl", *(["--server", server] if server else []), *args]
    with tempfile.TemporaryDirectory() as home:  # kubectl's discovery cache goes there
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                              env={"KUBECONFIG": "/nonexistent", "HOME": home,
                                   "PATH": os.environ.get("PATH", "/usr/bin:/bin")})


@pytest.mark.parametrize("target", [ROOT / "deploy", OVERLAY], ids=["deploy", "overlay"])
def test_apply_dry_run_client(server: str, target: Path) -> None:
    res = kubectl("apply", "--dry-run=client", "--validate=false", "-k", str(target),
                  server=server)
    assert res.returncode == 0, res.stderr
    created = sorted(line.split()[0] for line in res.stdout.splitlines())
    assert created == sorted([
        "serviceaccount/wgpy", "role.rbac.authorization.k8s.io/wgpy",
        "rolebinding.rbac.authorization.k8s.io/wgpy", "clusterrole.rbac.authorization.k8s.io/wgpy",
        "clusterrolebinding.rbac.authorization.k8s.io/wgpy", "daemonset.apps/wgpy"])


def test_overlay_adds_kube_vips_sysctls_to_the_base() -> None:
    res = kubectl("kustomize", str(OVERLAY))
    assert res.returncode == 0, res.stderr
    ds = next(d for d in yaml.safe_load_all(res.stdout) if d and d["kind"] == "DaemonSet")
    sysctls = {s["name"]: s["value"] for s in
               ds["spec"]["template"]["spec"]["securityContext"]["sysctls"]}
    assert sysctls == {"net.ipv4.ip_unprivileged_port_start": "0",
                       "net.ipv4.conf.all.src_valid_mark": "1",
                       "net.ipv4.conf.all.route_localnet": "1"}
    base = kubectl("kustomize", str(ROOT / "deploy"))
    assert base.returncode == 0, base.stderr
    assert "src_valid_mark" not in base.stdout
