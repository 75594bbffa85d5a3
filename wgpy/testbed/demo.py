"""``wgpy demo``: the seed scenario on one machine, in network namespaces, in a few seconds.

A VPN node (wgpy by default, wireguard-go, or the kernel's WireGuard in a User-Mode Linux
guest), two cluster nodes running ``wgpy supervisor``
in embedded mode with the same tunnels file and a shared lock, and an external client. The
client's requests to the VIP (TCP 6443, UDP 53) are answered through the tunnel by whichever
node leads; the demo kills the leader (SIGKILL), measures how long until the other node
answers, then shows a graceful handover. Everything it creates is removed at the end, also on
Ctrl-C or SIGTERM. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

OK, FAIL, STEP = "✓", "✗", "…"
FORWARD = [
    {"port": 6443, "protocol": "TCP", "target": "127.0.0.1:7443"},
    {"port": 53, "protocol": "UDP", "target": "127.0.0.1:5353"},
]
RETRY = 0.5
TOOLS = ("ip", "setpriv", "nsenter", "wg", "sysctl")


class Report:
    """Aligned result lines with ✓/✗ marks; remembers whether anything failed."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.failed = 0
        self.t0 = time.monotonic()

    def line(self, ok: bool | None, what: str, detail: str = "") -> None:
        mark = STEP if ok is None else OK if ok else FAIL
        if ok is False:
            self.failed += 1
        text = f"  {mark} {what:<44} {detail}".rstrip()
        print(text, file=self.out, flush=True)


def _wait(cond: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``cond()`` held, or None after ``timeout`` (the demo reports, not raises)."""
    from wgpy.testbed import WaitTimeout, wait_for

    t0 = time.monotonic()
    try:
        wait_for(cond, timeout)
    except WaitTimeout:
        return None
    return time.monotonic() - t0


def _tail(path: str, lines: int = 15) -> str:
    from wgpy.testbed import redact

    try:
        with open(path) as f:
            return redact("".join(f.readlines()[-lines:]))
    except OSError:
        return ""


def run_demo(vpn_node: str, out: IO[str]) -> int:
    """Build, demonstrate, tear down; returns the exit status."""
    from wgpy import testbed
    from wgpy.supervisor.locallock import read_sidecar
    from wgpy.testbed.topology import Topology, tunnels_yaml

    rep = Report(out)
    node = "kernel WireGuard in a UML guest" if vpn_node == "kernel" else vpn_node
    print(
        f"wgpy demo: kube-vip's WireGuard mode on userspace WireGuard (VPN node: {node})",
        file=out,
        flush=True,
    )
    tmp = tempfile.mkdtemp(prefix="wgpy-demo-")
    logs: dict[str, IO[str]] = {}
    names: list[str] = []
    try:
        with Topology(vpn_node=vpn_node, nodes=("a", "b")) as topo:
            names = [ns.name for ns in (*topo.nodes.values(), topo.vpn, topo.client) if ns]
            wg0 = topo.tunnels["wg0"]
            vip = wg0.vip
            rep.line(
                True,
                "topology in network namespaces",
                f"client → VPN node {wg0.iface} → node a | node b, VIP {vip}",
            )
            tunnels = os.path.join(tmp, "tunnels.yaml")
            with open(tunnels, "w") as tf:
                tf.write(tunnels_yaml({"wg0": wg0.spec(forward=FORWARD)}))
            lock = os.path.join(tmp, "supervisor.lock")
            for n in ("a", "b"):
                topo.serve_name(n, f"node-{n}")
                logs[n] = open(os.path.join(tmp, f"node-{n}.log"), "a+")  # noqa: SIM115

            def start(node: str) -> subprocess.Popen[Any]:
                return topo.start_supervisor(
                    node, tunnels, lock_file=lock, retry_period=RETRY, log=logs[node]
                )

            def holder() -> str:
                return str(read_sidecar(lock).get("holderIdentity") or "")

            def answered(node: str, timeout: float) -> float | None:
                want = f"node-{node}"
                return _wait(lambda: topo.tcp_request(vip, 6443, timeout=0.3) == want, timeout)

            def show_traffic(node: str, *, label: str = "", took: float | None = None) -> None:
                got_tcp = topo.tcp_request(vip, 6443, timeout=1.0)
                got_udp = topo.udp_request(vip, 53, timeout=1.0)
                extra = f"{label} {took * 1000:.0f} ms" if took is not None else ""
                rep.line(
                    got_tcp == f"node-{node}",
                    f"TCP {vip}:6443 from the client",
                    f"answered by {got_tcp or 'nobody'}  {extra}".rstrip(),
                )
                rep.line(
                    got_udp == f"node-{node}",
                    f"UDP {vip}:53 from the client",
                    f"answered by {got_udp or 'nobody'}",
                )
                endpoint = wg0.peer_endpoint()
                rep.line(
                    endpoint == f"{topo.node_ips[node]}:{wg0.port}",
                    "VPN node's peer endpoint",
                    f"{endpoint} (node {node} is {topo.node_ips[node]})",
                )

            procs = {"a": start("a")}
            ok = _wait(lambda: holder() == "node-a", 10) is not None
            procs["b"] = start("b")
            ok = ok and answered("a", 10) is not None
            rep.line(ok, "supervisors started (embedded mode)", "node-a leads, node-b follows")
            show_traffic("a")

            rep.line(None, f"kill -9 node-a (pid {procs['a'].pid})")
            t0 = time.monotonic()
            os.kill(procs["a"].pid, signal.SIGKILL)
            ok = answered("b", 15) is not None
            failover = time.monotonic() - t0
            show_traffic("b", label="failover", took=failover if ok else None)

            procs["a"].wait(5)
            procs["a"] = start("a")
            _wait(lambda: "new leader node-b" in _read(logs["a"]), 10)
            rep.line(None, "node-a back as a candidate; SIGTERM node-b (graceful stop)")
            t0 = time.monotonic()
            procs["b"].send_signal(signal.SIGTERM)
            ok = answered("a", 15) is not None
            handover = time.monotonic() - t0
            show_traffic("a", label="handover", took=handover if ok else None)
            clean = procs["b"].wait(10) == 0
            gone = "wg0" not in topo.nodes["b"].ip("link", "show").stdout
            rep.line(clean and gone, "node-b exited cleanly", "its tunnel removed")
            if rep.failed:
                for n, f in logs.items():
                    print(f"--- node-{n} log (last lines) ---\n{_tail(f.name)}", file=out)
    finally:
        for f in logs.values():
            f.close()
        shutil.rmtree(tmp, ignore_errors=True)
        left = [n for n in names if n in testbed.list_netns()]
        rep.line(not left, "cleanup", "namespaces, links and processes removed")
    total = time.monotonic() - rep.t0
    if rep.failed:
        print(f"{FAIL} {rep.failed} check(s) failed ({total:.1f} s)", file=out)
        return 1
    print(f"{OK} all checks passed in {total:.1f} s", file=out)
    return 0


def _read(f: IO[str]) -> str:
    f.seek(0)
    return f.read()


def main(argv: list[str], prog: str = "wgpy demo") -> int:
    """Entry point of ``wgpy demo`` (registered in :mod:`wgpy.tools.cli`)."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--vpn-node",
        choices=("wgpy", "wireguard-go", "kernel"),
        default="wgpy",
        help="WireGuard implementation of the VPN node (default: wgpy); kernel: the kernel's "
        "WireGuard in a User-Mode Linux guest (python -m wgpy.testbed.uml makes it)",
    )
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print(f"{prog}: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 1
    tools = list(TOOLS) + (["wireguard-go"] if args.vpn_node == "wireguard-go" else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print(f"{prog}: missing tools: {', '.join(missing)}", file=sys.stderr)
        return 1
    if args.vpn_node == "kernel":
        from wgpy.testbed.uml import build

        if build.find() is None:
            print(f"{prog}: --vpn-node kernel: {build.missing_reason()}", file=sys.stderr)
            return 1
    from wgpy import testbed

    testbed.install_signal_handlers()  # SIGTERM/SIGHUP unwind the with-blocks as Ctrl-C does
    try:
        return run_demo(args.vpn_node, sys.stdout)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; everything removed", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM/SIGHUP via install_signal_handlers
        print(f"\n{prog}: terminated; everything removed", file=sys.stderr)
        return e.code if isinstance(e.code, int) else 1
    except testbed.TestbedError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
