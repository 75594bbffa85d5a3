"""Key-leak audit (issue 6 item 5): run full scenarios with the most verbose logging and grep
*everything* they emit for every private and preshared key, in every encoding a bug could
produce: standard and URL-safe base64, hex (both cases), the raw bytes and their ``repr``.

What is collected: the supervisors' output in text and JSON log formats at debug level
(embedded mode with a failover and invalid edits quoting the key, Kubernetes mode with the
rejected-Secret Events the fake API received), ``/metrics``, ``/readyz``, ``/healthz``,
``wgpy-userspace -f`` at ``LOG_LEVEL=debug`` during handshakes, UAPI error replies to requests
that carry keys, ``wgpy show``, ``wgpy up`` on broken configs, and ``wgpy demo``.
Public keys may appear; only secrets are searched for.

Key logs (``WGPY_KEYLOG`` for ``wgpy-userspace``, ``--keylog`` for a supervisor tunnel) are on
in the device and embedded-mode runs: every key they hold (static, preshared, and the ephemeral
and transport keys that exist nowhere else) must be in that file, mode 0600, and in no output.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeapi import write_kubeconfig
from tests.supervisor_support import (
    FORWARD,
    NS,
    ROOT,
    RbacFakeApi,
    Scenario,
    deploy_rbac,
    embedded_scenario,
    secret,
)
from tests.support import WGPY, WIREGUARD_GO, needs_root
from tests.test_supervisor_k8s import StubForwarder, StubRuntime
from tun.netlink import in_netns
from wgpy.core.keys import generate_private_key, public_key, to_base64
from wgpy.supervisor.kubemode import KubeSettings, run_kubernetes_mode
from wgpy.supervisor.main import JsonFormatter, TextFormatter
from wgpy.supervisor.manager import Supervisor
from wgpy.testbed import Namespace, PeerConf, WgInstance, make_pair, wait_for, wait_until
from wgpy.testbed.topology import tunnels_yaml


def forms(raw: bytes) -> dict[str, bytes]:
    """Every encoding of ``raw`` searched for, as bytes."""
    b64 = base64.b64encode(raw)
    return {
        "base64": b64,
        "base64 (no padding)": b64.rstrip(b"="),
        "urlsafe base64": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "bytes repr": repr(raw)[2:-1].encode(),
        "raw bytes": raw,
    }


def audit_key_log(a: Audit, path: Path, must_hold: dict[str, bytes]) -> int:
    """Check a device's key log (0600, holds ``must_hold``) and add every key in it to the
    secrets of ``a``; returns the number of sessions it records."""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    for name, key in must_hold.items():
        assert base64.b64encode(key).decode() in text, f"{name} not in the key log"
    sessions = 0
    for n, line in enumerate(text.splitlines()):
        if line.startswith("REMOTE_STATIC_PUBLIC_KEY"):
            continue  # public
        sessions += line.startswith("LOCAL_EPHEMERAL_PRIVATE_KEY")
        a.secret(f"key log line {n + 1} ({line.split()[0]})", line.split()[-1])
    return sessions


class Audit:
    """Secrets to look for and everything collected; :meth:`check` fails on any hit."""

    def __init__(self) -> None:
        self.secrets: dict[str, bytes] = {}
        self.outputs: list[tuple[str, bytes]] = []

    def secret(self, name: str, key: str | bytes) -> None:
        self.secrets[name] = base64.b64decode(key) if isinstance(key, str) else key

    def add(self, label: str, data: str | bytes) -> None:
        self.outputs.append((label, data.encode() if isinstance(data, str) else data))

    def check(self) -> None:
        assert self.secrets and self.outputs
        hits = []
        for label, data in self.outputs:
            for name, raw in self.secrets.items():
                for form, needle in forms(raw).items():
                    if needle in data:
                        at = data.index(needle)
                        ctx = data[max(0, at - 60):at].decode(errors="replace")
                        hits.append(f"{name} as {form} in {label} after …{ctx!r}")
        assert not hits, "key leaks:\n" + "\n".join(hits)
        total = sum(len(d) for _, d in self.outputs)
        print(f"\naudited {len(self.outputs)} outputs, {total} bytes, for {len(self.secrets)} "
              f"secrets in {len(forms(b'x' * 32))} encodings: clean")


def test_the_audit_finds_a_key_in_each_encoding() -> None:
    key = generate_private_key()
    for form, needle in forms(key).items():
        a = Audit()
        a.secret("k", key)
        a.add(form, b"prefix " + needle + b" suffix")
        with pytest.raises(AssertionError, match="key leaks"):
            a.check()


# -- Kubernetes mode in-process: logs (both formats, debug) and Events -------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.raw: list[str] = []
        self.text: list[str] = []
        self.json: list[str] = []
        self._t, self._j = TextFormatter(), JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.raw.append(record.getMessage() + (logging.Formatter().formatException(
            record.exc_info) if record.exc_info else ""))
        self.text.append(self._t.format(record))
        self.json.append(self._j.format(record))


@pytest.fixture
def capture() -> Iterator[_Capture]:
    h = _Capture()
    root = logging.getLogger()
    old = root.level
    root.addHandler(h)
    root.setLevel(logging.DEBUG)
    try:
        yield h
    finally:
        root.removeHandler(h)
        root.setLevel(old)


def bad_configs(priv: str, psk_like: str) -> list[str]:
    """Invalid tunnels YAML that quotes the key where validation has to complain about it."""
    raw = base64.b64decode(priv)
    good = {"vip": "10.200.0.1/32", "privateKey": priv, "peerPublicKey": psk_like,
            "peerEndpoint": "10.99.0.1:51820", "listenPort": 51820,
            "allowedIPs": ["10.100.0.0/16"]}
    return [
        tunnels_yaml({"wg0": dict(good, privateKey=raw.hex())}),          # hex, not base64
        tunnels_yaml({"wg0": dict(good, privateKey=priv[:-2] + "!=")}),  # corrupted
        tunnels_yaml({"wg0": dict(good, privateKey=priv + priv)}),       # too long
        tunnels_yaml({"wg0": dict(good, peerPublicKey=priv, vip="nope")}),
        tunnels_yaml({"wg0": dict(good, vip="10.200.0.1/33")}),
        f"wg0: {{privateKey: {priv}, vip: [unclosed\n",                # YAML error
        f"wg0:\n  privateKey: {priv}\n\tvip: x\n",                       # tab: YAML error
        f"- {priv}\n",                                                  # not a mapping
    ]


def test_kubernetes_mode_logs_and_events(tmp_path: Path, capture: _Capture) -> None:
    a = Audit()
    priv, other = to_base64(generate_private_key()), to_base64(generate_private_key())
    a.secret("cluster private key", priv)
    a.secret("second private key", other)

    async def main() -> None:
        async with RbacFakeApi(bookmark_interval=1) as srv:
            deploy_rbac(srv)
            good = tunnels_yaml({"wg0": {
                "vip": "10.200.0.1/32", "privateKey": priv,
                "peerPublicKey": to_base64(public_key(base64.b64decode(other))),
                "peerEndpoint": "10.99.0.1:51820", "listenPort": 51820,
                "allowedIPs": ["10.100.0.0/16"]}})
            srv.seed(secret(good))
            kc = write_kubeconfig(tmp_path / "kc", srv.url)
            settings = KubeSettings.from_env(
                {"vip_nodename": "n1", "POD_NAMESPACE": NS, "vip_leaseduration": "2",
                 "vip_renewdeadline": "1", "vip_retryperiod": "0.3"},
                http_host="127.0.0.1", http_port=0, kubeconfig=str(kc))
            managers: list[Supervisor] = []

            def factory(identity: str, *, elector_factory: Any) -> Supervisor:
                m = Supervisor(identity, elector_factory=elector_factory,
                               runtime_factory=StubRuntime,
                               forwarder_factory=StubForwarder)  # type: ignore[arg-type]
                managers.append(m)
                return m

            stop = asyncio.Event()
            task = asyncio.ensure_future(run_kubernetes_mode(settings, factory, stop=stop))
            await wait_until(lambda: bool(managers) and managers[0].running == ["wg0"])
            m = managers[0]
            for n, text in enumerate(bad_configs(priv, other), 1):
                srv.seed(secret(text))
                await wait_until(lambda n=n: m.status().config_rejections >= n,  # type: ignore[misc]
                                 what=f"rejection {n}")
                a.add(f"last_config_error {n}", m.status().last_config_error)
            srv.seed(secret(good))
            await asyncio.sleep(0.5)
            stop.set()
            assert await asyncio.wait_for(task, 10) == 0
            events = [o for o in srv._objs.values() if o["kind"] == "Event"]
            assert sum(e["reason"] == "InvalidConfig" for e in events) >= 1
            for e in events:
                a.add(f"Event {e['reason']}", str(e))

    asyncio.run(asyncio.wait_for(main(), 90))
    assert any("rejected tunnels configuration" in t for t in capture.text)
    a.add("log records (unformatted)", "\n".join(capture.raw))
    a.add("text log", "\n".join(capture.text))
    a.add("json log", "\n".join(capture.json))
    a.check()


# -- embedded mode end to end: both log formats, HTTP, failover, invalid edits -----------------


def _http(sc: Scenario, node: str, path: str) -> str:
    def get() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:2112{path}", timeout=3) as r:
                return f"{r.status} {r.read().decode()}"
        except urllib.error.HTTPError as e:
            return f"{e.code} {e.read().decode()}"
        except OSError as e:
            return f"error {e}"

    out: list[str] = []

    def run() -> None:
        with in_netns(sc.topo.nodes[node].name):
            out.append(get())
    import threading
    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    return out[0] if out else ""


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    with embedded_scenario(tmp_path) as sc:
        yield sc


@pytest.mark.interop
@needs_root
def test_embedded_supervisors_emit_no_key(scenario: Scenario) -> None:
    sc = scenario
    a = Audit()
    a.secret("cluster private key", sc.wg0.cluster_private)
    a.secret("VPN node private key", sc.wg0.vpn_private)
    keylog = sc.file.parent / "a-wg0.keys"
    args = {"a": ["--log-level", "debug", "--log-format", "text", "--http-port", "2112",
                  "--keylog", f"wg0={keylog}"],
            "b": ["--log-level", "debug", "--log-format", "json", "--http-port", "2112"]}
    spec = sc.wg0.spec(forward=FORWARD)
    sc.write(tunnels_yaml({"wg0": spec}))
    os.chmod(sc.file, 0o644)  # the warning names the file, never its content
    sc.start("a", extra_args=args["a"])
    wait_for(lambda: sc.holder() == "node-a", 10, "node-a to lead")
    sc.start("b", extra_args=args["b"])
    wait_for(lambda: sc.topo.tcp_request(sc.wg0.vip, 6443, timeout=0.3) == "node-a", 10, "a")
    wait_for(lambda: "new leader node-a" in sc.log("b"), 10, "b to follow")
    for n, text in enumerate(bad_configs(sc.wg0.cluster_private, sc.wg0.vpn_private), 1):
        sc.write(text)
        wait_for(lambda n=n: sc.log("a").count("rejected tunnels configuration") >= n,  # type: ignore[misc]
                 5, f"rejection {n}")
    sc.write(tunnels_yaml({"wg0": spec}))
    for node in ("a", "b"):
        for path in ("/metrics", "/readyz", "/healthz", "/nothing"):
            a.add(f"{node} {path}", _http(sc, node, path))
    assert "wgpy_tunnel_up" in _http(sc, "a", "/metrics")
    sc.kill("a")
    wait_for(lambda: sc.topo.tcp_request(sc.wg0.vip, 6443, timeout=0.3) == "node-b", 10, "b")
    a.add("b /metrics after failover", _http(sc, "b", "/metrics"))
    sc.procs["b"].terminate()
    sc.procs["b"].wait(10)
    for node in ("a", "b"):
        a.add(f"{node} log", sc.log(node))
    assert '"level": "DEBUG"' in sc.log("b") or '"level": "INFO"' in sc.log("b")
    assert "accessible by others" in sc.log("a")
    assert sc.log("a").count("writing secret session keys") == 1
    assert audit_key_log(a, keylog, {"cluster private key": base64.b64decode(
        sc.wg0.cluster_private)}) >= 1
    a.check()


# -- the device: wgpy-userspace -f at debug, UAPI errors, wgpy show, wgpy up -------------------


def _uapi(path: str, request: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(request.encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.interop
@needs_root
def test_userspace_device_and_cli_emit_no_key(tmp_path: Path) -> None:
    a = Audit()
    keylog = tmp_path / "wgpy.core.keys"  # only wgpy reads WGPY_KEYLOG; wireguard-go ignores it
    env = {"LOG_LEVEL": "debug", "PYTHONPATH": str(ROOT), "WGPY_KEYLOG": str(keylog)}
    priv_a, priv_b = generate_private_key(), generate_private_key()
    psk = generate_private_key()  # any 32 random bytes
    a.secret("wgpy private key", priv_a)
    a.secret("wireguard-go private key", priv_b)
    a.secret("preshared key", psk)
    with make_pair(WGPY, WIREGUARD_GO, env=env) as pair:
        wg_a, wg_b = pair.wg_a, pair.wg_b
        assert isinstance(wg_a, WgInstance) and isinstance(wg_b, WgInstance)
        pub_a, pub_b = to_base64(public_key(priv_a)), to_base64(public_key(priv_b))
        pair.wg_a.set_conf(to_base64(priv_a), listen_port=pair.port, peers=[PeerConf(
            pub_b, f"{pair.veth.ip_b}:{pair.port}", [f"{pair.tun_ip_b}/32"], to_base64(psk))])
        pair.wg_b.set_conf(to_base64(priv_b), listen_port=pair.port, peers=[PeerConf(
            pub_a, f"{pair.veth.ip_a}:{pair.port}", [f"{pair.tun_ip_a}/32"], to_base64(psk))])
        pair.wait_handshake()
        assert pair.ping(count=3, interval=0.2).returncode == 0
        sock = wg_a.socket_path
        pub_hex = public_key(priv_a).hex()
        for req in (
            f"set=1\nprivate_key={priv_a.hex()}zz\n\n",
            f"set=1\nprivate_key={priv_a.hex()[:-2]}\n\n",
            f"set=1\nprivate_key={to_base64(priv_a)}\n\n",
            f"set=1\npublic_key={public_key(priv_b).hex()}\npreshared_key={psk.hex()}0\n\n",
            f"set=1\npublic_key={pub_hex}\npreshared_key={psk.hex()}\nbogus=1\n\n",
            f"set=1\npreshared_key={psk.hex()}\n\n",
            f"get=1\nprivate_key={priv_a.hex()}\n\n",
        ):
            a.add(f"UAPI reply to {req.split(chr(10))[1].split('=')[0]}", _uapi(sock, req))
        show = [*pair.wg_a._prefix(), sys.executable, "-m", "wgpy", "show"]
        for extra in ([], ["all"], ["wg0"], ["all", "dump"], ["wg0", "preshared-keys"]):
            r = subprocess.run([*show, *extra], capture_output=True, env={**os.environ, **env},
                               timeout=30, check=False)
            a.add(f"wgpy show {' '.join(extra)}", r.stdout + r.stderr)
        assert pub_a.encode() in subprocess.run(
            show, capture_output=True, env={**os.environ, **env}, timeout=30,
            check=False).stdout
        time.sleep(0.5)
        wg_a.stop()
        wg_b.stop()
        a.add("wgpy-userspace -f output", wg_a.output())
        a.add("wireguard-go -f output", wg_b.output())
        assert wg_a.output().strip(), "no debug output to audit"
        assert wg_a.output().count("writing secret session keys") == 1
        assert "writing secret" not in wg_b.output()
    assert audit_key_log(a, keylog, {"wgpy private key": priv_a, "preshared key": psk}) >= 1

    # wgpy up on broken configs, in a namespace of its own (nothing can reach the host)
    b64 = to_base64(priv_a)
    broken = [
        f"[Interface]\nPrivateKey = {priv_a.hex()}\n",
        f"[Interface]\nPrivateKey = {b64}x\n",
        f"[Interface]\nPrivateKey = {b64}\nAddress = nope\n",
        f"[Interface]\nPrivateKey = {b64}\n[Peer]\nPublicKey = {b64}\n"
        f"PresharedKey = {to_base64(psk)}junk\n",
        f"[Interface]\nPrivateKey = {b64}\nbogus line {b64}\n",
    ]
    with Namespace() as ns:
        for i, text in enumerate(broken):
            conf = tmp_path / f"wgx{i}.conf"
            conf.write_text(text)
            os.chmod(conf, 0o600)
            up = ns.run([sys.executable, "-m", "wgpy", "up", str(conf)], check=False,
                        timeout=30)
            assert up.returncode != 0, text
            assert f"wgx{i}.conf" in up.stderr, up  # a real complaint about the file
            a.add(f"wgpy up broken config {i}", f"{up.stdout}\n{up.stderr}")
    a.check()


# -- the demo ----------------------------------------------------------------------------------

_DEMO = """
import sys
import wgpy.testbed.topology as t
keys = open(sys.argv[1], "a")
orig = t.generate_private_key
def record():
    k = orig()
    keys.write(k.hex() + "\\n")
    keys.flush()
    return k
t.generate_private_key = record
from wgpy.testbed.demo import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.interop
@needs_root
def test_demo_emits_no_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    r = subprocess.run([sys.executable, "-c", _DEMO, str(keys), "--vpn-node", "wireguard-go"],
                       cwd=ROOT, capture_output=True, timeout=120, check=False,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    a = Audit()
    for i, line in enumerate(keys.read_text().split()):
        a.secret(f"demo key {i}", bytes.fromhex(line))
    assert len(a.secrets) >= 2
    assert b"failover" in r.stdout.lower(), r.stdout  # the demo really ran
    a.add("demo stdout", r.stdout)
    a.add("demo stderr", r.stderr)
    a.check()
