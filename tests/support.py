"""Helpers for tests: real processes in network namespaces, and asyncio test bodies."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wgpy import testbed as tb

TOOLS = ("ip", "nsenter", "setpriv", "wg", "ping", "wireguard-go", "tcpdump")
_missing = [t for t in TOOLS if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing),
    reason=f"needs root and {', '.join(TOOLS)} (missing: {', '.join(_missing) or 'none'})",
)
interop = [pytest.mark.interop, needs_root]

WGPY = [sys.executable, "-m", "wgpy.tools.userspace"]
WIREGUARD_GO = ["wireguard-go"]
IMPLS = {"wgpy": WGPY, "wireguard-go": WIREGUARD_GO}


@contextmanager
def refused_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> Iterator[int]:
    """A port on ``host`` that refuses for as long as the block runs: TCP answers a connect
    with RST, UDP answers a datagram with ICMP port unreachable.

    The port stays taken, so nothing else gets it meanwhile: not a server binding port 0 later
    in the test, and not a client's own source port (a TCP client would connect to itself).
    Binding a port and closing it at once leaves it free for either. The TCP holder does not
    listen; the UDP holder is connected to its own address, so datagrams from anyone else
    find no socket.
    """
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        if kind == socket.SOCK_DGRAM:
            s.connect((host, port))
        yield port


def run_async(coro: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Run a test's coroutine function in a fresh event loop; fail after ``timeout`` s."""

    async def bounded() -> None:
        await asyncio.wait_for(coro(), timeout)

    asyncio.run(bounded())


NETPROBE = str(Path(__file__).with_name("netprobe.py"))


def probe(ns: tb.Namespace, *args: str) -> subprocess.Popen[bytes]:
    """``tests/netprobe.py ARGS`` inside ``ns``, its stdout piped."""
    return ns.popen([sys.executable, NETPROBE, *args], stdout=subprocess.PIPE)


def json_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, object]:
    """The last JSON line a probe printed, once it has exited."""
    out, _ = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert lines, f"the probe printed no result: {out.decode()[-500:]!r}"
    result: dict[str, object] = json.loads(lines[-1])
    return result


def wait_listening(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert b"listening" in line, line


def tcp_transfer(
    p: tb.Pair, nbytes: int, *, a_to_b: bool = True, timeout: float = 240
) -> tuple[dict[str, object], dict[str, object]]:
    """Send ``nbytes`` over TCP through the tunnel; (sender's, receiver's) report, each with
    ``bytes`` and ``sha256``."""
    src_ns, dst_ns, dst_ip = (
        (p.ns_a, p.ns_b, p.tun_ip_b) if a_to_b else (p.ns_b, p.ns_a, p.tun_ip_a)
    )
    sink = probe(dst_ns, "tcp-sink", dst_ip, "5201")
    try:
        wait_listening(sink)
        source = probe(src_ns, "tcp-source", dst_ip, "5201", str(nbytes))
        try:
            sent = json_line(source, timeout=timeout)
        finally:
            source.kill()
            source.wait()
        got = json_line(sink, timeout=30)
    finally:
        sink.kill()
        sink.wait()
    return sent, got


def require_uml() -> None:
    """Skip (saying how to build it) when the kernel-uml guest's kernel or root filesystem is
    missing; fail instead under CI, which must run the kernel tests."""
    from wgpy.testbed.uml import build

    if build.find() is None:
        reason = build.missing_reason()
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the kernel-uml tests: {reason}", pytrace=False)
        pytest.skip(reason)


# A's NAT "rebinds": B sees A's packets from port 40000 from now on (a stateless rewrite in A's
# namespace, so it works the same whatever implementation A runs). For roaming tests.
NAT_REBIND = """
table ip roam {
  chain out { type filter hook output priority -300; udp sport 51820 udp sport set 40000; }
  chain in { type filter hook prerouting priority -300; udp dport 40000 udp dport set 51820; }
}
"""


def add_ipv6(p: tb.Pair, prefix: str) -> None:
    """IPv6 inside a pair's tunnel: ``PREFIX::1`` on A's wg0, ``PREFIX::2`` on B's, each
    added to the other's allowed IPs (beside its IPv4 tunnel address)."""
    for w, ns, me, other, v4, pub in (
        (p.wg_a, p.ns_a, f"{prefix}::1", f"{prefix}::2", p.tun_ip_b, p.pub_b),
        (p.wg_b, p.ns_b, f"{prefix}::2", f"{prefix}::1", p.tun_ip_a, p.pub_a),
    ):
        w.wg("set", "wg0", "peer", pub, "allowed-ips", f"{v4}/32,{other}/128")
        ns.run(["ip", "-6", "addr", "add", f"{me}/64", "dev", "wg0", "nodad"])
