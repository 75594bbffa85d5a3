"""The container image, built with podman and run for real (marker ``image``; needs root).

The Dockerfile is built unchanged on a local Debian 12 base (``--build-arg BASE``; the upstream
python image cannot be pulled where CI runs), then ``wgpy-userspace`` runs in it under the
DaemonSet's securityContext, devices and volumes (read from deploy/daemonset.yaml), in a
network namespace joined by a veth to wireguard-go in another. From inside the container: a
ping through the tunnel and 1 MB of TCP whose SHA-256 must match what wireguard-go's side got.
Then the DaemonSet's own command, ``wgpy supervisor`` with the manifest's args and env, takes
the Lease on a fake API server and brings its tunnel up to wireguard-go.

Cost: about 45 s once per machine for the debootstrap base (cached in /var/cache/wgpy), then
about 50 s per run (import, build with pip from PyPI, run). podman missing or unable to run
fails the test with the reason; it never skips when run as root.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import image_support as im
from tests.support import json_line, needs_root, probe, wait_listening
from wgpy.testbed import netns, wg
from wgpy.testbed.proc import redact, wait_for

pytestmark = [pytest.mark.image, needs_root]

ROOT = Path(__file__).resolve().parent.parent
NETPROBE = (ROOT / "tests" / "netprobe.py").read_text()
SMOKE = (ROOT / "tests" / "image" / "smoke.py").read_text()
SIZE_LIMIT = 250_000_000  # bytes, as `podman images` counts them (issue 18's target)
CAPS = {"NET_ADMIN": 12}  # capability numbers (linux/capability.h)
VETH_GO, VETH_WGPY = "192.168.243.1/24", "192.168.243.2/24"
TUN_GO, TUN_WGPY = "10.99.3.1", "10.99.3.2"
PORT = 51820


def daemonset_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "daemonset.yaml").read_text()))
    pod: dict[str, Any] = docs[0]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


@pytest.fixture(scope="module")
def name() -> str:
    return im.unique_name()


@pytest.fixture(scope="module")
def image(name: str) -> Iterator[str]:
    im.require_podman()
    tables = im.nft_tables()
    t0 = time.monotonic()
    with im.built_image(name) as ref:
        print(f"\nimage {ref}: base and build in {time.monotonic() - t0:.0f} s")
        yield ref
    assert im.images_named(name) == [], "an image of this run was left behind"
    assert im.containers_named(name) == [], "a container of this run was left behind"
    new = {t for t in im.nft_tables() - tables if any(k in t for k in ("podman", "netavark",
                                                                        "cni"))}
    assert not new, f"container networking left nftables tables behind: {new}"


def run_in(image: str, script: str, *args: str) -> str:
    """``python -c SCRIPT`` in a throwaway container without network; its stdout."""
    res = im.podman("run", "--rm", "--network=none", "--read-only", "--entrypoint=python",
                    image, "-c", script, *args, timeout=120)
    return res.stdout


# -- what is in the image -------------------------------------------------------------------------

CONTENTS = """
import importlib.metadata as md, json, os, platform, resource, shutil, sys, sysconfig
from pathlib import Path
purelib = Path(sysconfig.get_path("purelib"))
k8s = purelib / "kubernetes"
from kubernetes.aio import client
used = ["ApiClient", "Configuration", "ApiException", "CoordinationV1Api", "CoreV1Api",
        "DiscoveryV1Api", "V1Lease"]
import wgpy.tools.cli, wgpy.supervisor.election, wgpy.supervisor.events, wgpy.supervisor.secret
import wgpy.supervisor.services
missing = [n for n in used if getattr(client, n, None) is None]
print(json.dumps({
    "dists": {d.metadata["Name"].lower().replace("_", "-"): d.version
              for d in md.distributions()},
    "compilers": [c for c in ("gcc", "cc", "c++", "ld") if shutil.which(c)],
    "sync_api_modules": len(list((k8s / "client" / "api").glob("*_api.py"))),
    "aio_api_modules": len(list((k8s / "aio" / "client" / "api").glob("*_api.py"))),
    "missing": missing,
    "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "markers": {"python_version": platform.python_version().rsplit(".", 1)[0],
                "python_full_version": platform.python_version(),
                "sys_platform": sys.platform, "platform_system": platform.system(),
                "platform_machine": platform.machine(), "os_name": os.name,
                "implementation_name": sys.implementation.name,
                "platform_python_implementation": platform.python_implementation()},
}))
"""


def lock_pins(path: Path, environment: dict[str, str]) -> dict[str, str]:
    """name -> version of the lock's requirements whose markers hold in ``environment``."""
    from packaging.requirements import Requirement

    text = re.sub(r"\\\n", " ", path.read_text())
    pins = {}
    for raw in text.splitlines():
        line = re.sub(r"\s--hash=\S+", "", raw.split("#", 1)[0]).strip()
        if line:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(environment):
                (spec,) = req.specifier
                pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_image_is_small_and_holds_exactly_the_runtime_lock(image: str) -> None:
    size = int(im.image_config(image)["Size"])
    breakdown = im.podman("run", "--rm", "--network=none", "--entrypoint=du", image, "-sx",
                          "/opt/venv", "/usr", "/var", "/etc", timeout=60).stdout
    print(f"\nimage size {size / 1e6:.0f} MB\n{breakdown}")
    assert size < SIZE_LIMIT, f"image is {size / 1e6:.0f} MB\n{breakdown}"
    got = json.loads(run_in(image, CONTENTS))
    expected = lock_pins(ROOT / "requirements" / "runtime.lock", got["markers"])
    dists = got["dists"]
    assert dists.pop("wgpy") == "0.1.0"
    # Exactly the lock, but for the build backend; no pip, no test extras.
    for build_tool in ("setuptools", "wheel"):
        expected.pop(build_tool)
    assert dists == expected
    assert got["compilers"] == []
    # The synchronous client's API modules are gone; the asyncio client wgpy uses is whole.
    assert got["sync_api_modules"] == 0 and got["aio_api_modules"] > 50
    assert got["missing"] == []
    # Loading the supervisor and the APIs it calls stays well inside the pod's memory limit
    # (a generated module compiled at start-up instead of loaded from .pyc costs a lot).
    limit = daemonset_pod()[1]["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and got["peak_rss_kib"] < int(limit[:-2]) * 1024 // 2, got
    print(f"supervisor imports: peak RSS {got['peak_rss_kib'] // 1024} MiB")


def test_entrypoint_is_the_supervisor_with_the_daemonsets_args(image: str) -> None:
    _pod, container = daemonset_pod()
    res = im.podman("run", "--rm", "--network=none", "--read-only", image, *container["args"],
                    "--help", timeout=60)
    assert "--http-port" in res.stdout
    config = im.image_config(image)["Config"]
    assert config["Entrypoint"] == ["wgpy", "supervisor"]


# -- wgpy-userspace under the DaemonSet's settings, against wireguard-go --------------------------


@dataclass
class Running:
    container: str
    ns_go: netns.Namespace
    ns_wgpy: netns.Namespace
    go: wg.WgInstance

    def exec(self, *argv: str, input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return im.podman("exec", "-i", self.container, *argv, input=input, timeout=120,
                         check=check)


def _start_container(image: str, name: str, ns: netns.Namespace) -> str:
    pod, container = daemonset_pod()
    # What the kubelet does for the pod: its namespaced sysctls, in the pod's network namespace.
    for s in pod["securityContext"].get("sysctls", []):
        ns.run(["sysctl", "-q", "-w", f"{s['name']}={s['value']}"])
    # For the smoke's ping only: ICMP datagram sockets for GID 0 in this namespace, since the
    # container holds no NET_RAW (wgpy itself never pings).
    ns.run(["sysctl", "-q", "-w", "net.ipv4.ping_group_range=0 0"])
    ctr = f"{name}-userspace"
    im.podman("run", "--detach", f"--name={ctr}", f"--network=ns:/run/netns/{ns.name}",
              *im.podman_flags(pod, container), "--entrypoint=wgpy-userspace", image,
              "-f", "wg0", timeout=120)
    return ctr


def _still_running(ctr: str) -> bool:
    """True while the container runs; its exit fails the test at once, with its logs."""
    state = json.loads(im.podman("inspect", ctr, timeout=60).stdout)[0]["State"]
    if not state["Running"]:
        res = im.podman("logs", ctr, check=False)
        raise AssertionError(f"{ctr} exited ({state['ExitCode']}):\n"
                             f"{redact(res.stdout + res.stderr)[-3000:]}")
    return True


def _wait_for_socket(ctr: str) -> None:
    def ready() -> bool:
        res = im.podman("exec", ctr, "test", "-S", "/var/run/wireguard/wg0.sock",
                        check=False, timeout=60)
        return _still_running(ctr) and res.returncode == 0

    wait_for(ready, 60, "the UAPI socket in the container", interval=0.2)


def _hex(key: str) -> str:
    return base64.b64decode(key).hex()


@pytest.fixture(scope="module")
def running(image: str, name: str) -> Iterator[Running]:
    ctr = None
    with netns.Namespace() as ns_go, netns.Namespace() as ns_wgpy:
        link = netns.veth(ns_go, ns_wgpy, VETH_GO, VETH_WGPY)
        try:
            ctr = _start_container(image, name, ns_wgpy)
            _wait_for_socket(ctr)
            with wg.WgInstance(ns_go, ["wireguard-go"], "wg0") as go:
                priv_go, priv_wgpy = wg.genkey(), wg.genkey()
                pub_go, pub_wgpy = wg.pubkey(priv_go), wg.pubkey(priv_wgpy)
                go.set_conf(priv_go, listen_port=PORT, peers=[
                    wg.PeerConf(pub_wgpy, f"{link.ip_b}:{PORT}", [f"{TUN_WGPY}/32"])])
                go.address(f"{TUN_GO}/24")
                go.up(1420)
                run = Running(ctr, ns_go, ns_wgpy, go)
                uapi = [f"private_key={_hex(priv_wgpy)}", f"listen_port={PORT}",
                        f"public_key={_hex(pub_go)}", f"endpoint={link.ip_a}:{PORT}",
                        f"allowed_ip={TUN_GO}/32"]
                run.exec("python", "-c", SMOKE, "configure", "wg0", input="\n".join(uapi))
                ns_wgpy.ip("addr", "add", f"{TUN_WGPY}/24", "dev", "wg0")
                ns_wgpy.ip("link", "set", "wg0", "mtu", "1420", "up")
                yield run
        finally:
            if ctr is not None:
                im.podman("rm", "--force", "--time=5", ctr, check=False, timeout=120)
    assert im.containers_named(name) == [], "a container of this run was left behind"


def _status(run: Running) -> dict[str, str]:
    text = run.exec("cat", "/proc/1/status").stdout
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}


WRITES = """
import errno, os, sys
out = []
for d in sys.argv[1:]:
    try:
        with open(os.path.join(d, "probe"), "w") as f:
            f.write("x")
        os.unlink(os.path.join(d, "probe"))
        out.append("ok")
    except OSError as e:
        out.append(errno.errorcode[e.errno])
print(" ".join(out))
"""


def test_wgpy_runs_under_the_daemonsets_security_context(running: Running) -> None:
    _pod, container = daemonset_pod()
    sc = container["securityContext"]
    status = _status(running)
    assert "wgpy-userspace" in running.exec("cat", "/proc/1/cmdline").stdout
    assert status["Uid"].split()[:2] == [str(sc["runAsUser"])] * 2
    assert sc["capabilities"]["drop"] == ["ALL"]
    allowed = sum(1 << CAPS[c] for c in sc["capabilities"]["add"])
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == allowed, (field, status[field])
    assert status["NoNewPrivs"] == "1"  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == "2"  # a filter: the runtime's default profile
    # readOnlyRootFilesystem, and the manifest's volumes are the only writable places.
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["mountPath"] != "/dev/net/tun"]
    res = running.exec("python", "-c", WRITES, "/", "/opt/venv", "/var/tmp", *mounts)
    assert res.stdout.split() == ["EROFS"] * 3 + ["ok"] * len(mounts)


def test_ping_and_1mb_tcp_from_inside_the_container(running: Running) -> None:
    nbytes = 1 << 20
    pinged = json.loads(running.exec("python", "-c", SMOKE, "ping", TUN_GO, "60").stdout)
    assert pinged["rtt_ms"] is not None, f"no ping reply through the tunnel: {pinged}"
    sink = probe(running.ns_go, "tcp-sink", TUN_GO, "5201")
    try:
        wait_listening(sink)
        res = running.exec("python", "-c", NETPROBE, "tcp-source", TUN_GO, "5201", str(nbytes))
        sent = json.loads(res.stdout.splitlines()[-1])
        got = json_line(sink, timeout=60)
    finally:
        sink.kill()
        sink.wait()
    assert got["bytes"] == sent["bytes"] == nbytes
    assert got["sha256"] == sent["sha256"]
    peer = running.go.show_dump().peers[0]
    assert peer.latest_handshake > 0 and peer.rx_bytes > nbytes
    print(f"\nping {pinged['rtt_ms']:.2f} ms after {pinged['pings']} echo(es); 1 MB TCP intact")


# -- the DaemonSet's own command: `wgpy supervisor` against a fake API server ---------------------

API_VETH, NODE_VETH = "10.250.7.1/24", "10.250.7.2/24"
POD_IP = NODE_VETH.partition("/")[0]  # the container shares the node namespace's network
NODE_NAME = "node-image"


def _pod_env(container: dict[str, Any], namespace: str) -> list[str]:
    """The manifest's env as ``--env`` flags, the downward-API fields filled as the kubelet
    would fill them on node ``NODE_NAME`` in ``namespace``, for a pod at ``POD_IP``."""
    fields = {
        "spec.nodeName": NODE_NAME,
        "metadata.namespace": namespace,
        "status.podIP": POD_IP,
    }
    out = []
    for e in container["env"]:
        value = e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        out.append(f"--env={e['name']}={value}")
    return out


def _http_get(ns: netns.Namespace, path: str) -> int:
    """The status of ``GET http://POD_IP:2112/PATH`` from inside ``ns``, as the kubelet probes
    (the supervisor listens on the pod IP only, not on the VIP or loopback)."""
    url = f"http://{POD_IP}:2112{path}"
    script = ("import sys, urllib.error, urllib.request\n"
              "try:\n"
              f"    print(urllib.request.urlopen({url!r}, timeout=5).status)\n"
              "except urllib.error.HTTPError as e:\n"
              "    print(e.code)\n"
              "except OSError:\n"
              "    print(0)\n")
    return int(ns.run([sys.executable, "-c", script], timeout=30).stdout.strip() or 0)


def test_supervisor_leads_and_connects_under_the_daemonset(image: str, name: str,
                                                           tmp_path: Path) -> None:
    """The image's ENTRYPOINT with the manifest's args, env, securityContext and volumes:
    it takes the Lease on a fake API server (through the kubernetes client the build slimmed),
    reads the Secret, and its tunnel handshakes with wireguard-go; both probes answer 200."""
    from tests.fakeapi import write_kubeconfig
    from tests.supervisor_support import RbacFakeApi, deploy_rbac, secret
    from wgpy.testbed.netns import run_in_netns

    pod, container = daemonset_pod()
    namespace = "kube-system"
    vip = next(e["value"] for e in container["env"] if e["name"] == "vip_address")
    ctr = f"{name}-supervisor"
    with contextlib.ExitStack() as stack:
        ns_api = stack.enter_context(netns.Namespace())
        ns_node = stack.enter_context(netns.Namespace())
        link = netns.veth(ns_api, ns_node, API_VETH, NODE_VETH)
        for s in pod["securityContext"].get("sysctls", []):
            ns_node.run(["sysctl", "-q", "-w", f"{s['name']}={s['value']}"])
        # The VPN node: wireguard-go next to the API server.
        priv_vpn, priv_cluster = wg.genkey(), wg.genkey()
        vpn = stack.enter_context(wg.WgInstance(ns_api, ["wireguard-go"], "wg0"))
        vpn.set_conf(priv_vpn, listen_port=PORT,
                     peers=[wg.PeerConf(wg.pubkey(priv_cluster), allowed_ips=(f"{vip}/32",))])
        vpn.up()
        sock = run_in_netns(ns_api.name, lambda: socket.create_server((link.ip_a, 0)))
        stack.callback(sock.close)
        srv = RbacFakeApi(sock=sock, bookmark_interval=1)
        srv.start_in_thread()
        stack.callback(srv.stop)
        url = f"http://{link.ip_a}:{sock.getsockname()[1]}"
        deploy_rbac(srv)
        srv.seed(secret(yaml.safe_dump({"wg0": {
            "vip": f"{vip}/32", "privateKey": priv_cluster, "peerPublicKey": wg.pubkey(priv_vpn),
            "peerEndpoint": f"{link.ip_a}:{PORT}", "listenPort": PORT,
            "allowedIPs": ["10.99.4.0/24"]}}), ns=namespace))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url, namespace)
        stack.callback(im.podman, "rm", "--force", "--time=5", ctr, check=False, timeout=120)
        im.podman("run", "--detach", f"--name={ctr}", f"--network=ns:/run/netns/{ns_node.name}",
                  *im.podman_flags(pod, container), *_pod_env(container, namespace),
                  f"--volume={kubeconfig}:/etc/wgpy/kubeconfig:ro",
                  "--env=KUBECONFIG=/etc/wgpy/kubeconfig", image, *container["args"],
                  timeout=120)

        def logs() -> str:
            res = im.podman("logs", ctr, check=False)
            return redact(res.stdout + res.stderr)[-3000:]

        def holder() -> str:
            lease = srv.get("leases", namespace, "plndr-cp-lock") or {}
            return str(lease.get("spec", {}).get("holderIdentity") or "")

        wait_for(lambda: _still_running(ctr) and holder() == NODE_NAME, 90, logs, interval=0.5)
        wait_for(lambda: vpn.show_dump().peers[0].latest_handshake > 0, 60, logs, interval=0.5)
        wait_for(lambda: _http_get(ns_node, "/readyz") == 200, 60, logs, interval=0.5)
        assert _http_get(ns_node, "/healthz") == 200
