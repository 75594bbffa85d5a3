"""TSO reads (tun.offload, ``WGPY_TUN_TSO=1``) across implementations: wgpy reads TCP
super-packets from its TUN, splits and checksums them, and wireguard-go (Debian's build, and
upstream's when its path is known) takes them; then the other way. IPv4 and IPv6 inside the
tunnel, SHA-256 checked.

Upstream's binary: ``WGPY_UPSTREAM_WIREGUARD_GO`` or the team's build beside the project
(``../shared/tools/wireguard-go-0.0.20250522``); without it those cases are skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import IMPLS, add_ipv6, interop, tcp_transfer, wait_listening
from wgpy import testbed as tb
from wgpy.io import uapi_client

pytestmark = interop

_TEAM_BUILD = Path(__file__).resolve().parents[2] / "shared/tools/wireguard-go-0.0.20250522"
UPSTREAM = os.environ.get("WGPY_UPSTREAM_WIREGUARD_GO") or str(_TEAM_BUILD)
PEERS = {
    "wireguard-go": IMPLS["wireguard-go"],
    "upstream": [UPSTREAM],
}
NBYTES = 48 << 20
WGPY_TSO = ["env", "WGPY_TUN_TSO=1", *IMPLS["wgpy"]]  # on, compiled part or not (gro.tso_wanted)

_SINK = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.bind((sys.argv[1], 5302)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while d := c.recv(1 << 16):
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""
_SOURCE = """
import hashlib, os, socket, sys
data = os.urandom(1 << 20) * int(sys.argv[2])
s = socket.create_connection((sys.argv[1], 5302)); s.sendall(data); s.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def _transfer_v6(p: tb.Pair, *, a_to_b: bool) -> tuple[list[str], list[str]]:
    src, dst, ip = (p.ns_a, p.ns_b, "fd00:98::2") if a_to_b else (p.ns_b, p.ns_a, "fd00:98::1")
    sink = dst.popen([sys.executable, "-c", _SINK, ip], stdout=subprocess.PIPE)
    try:
        wait_listening(sink)
        sent = src.run(
            [sys.executable, "-c", _SOURCE, ip, str(NBYTES >> 20)], timeout=180
        ).stdout.split()
        assert sink.stdout is not None
        got = sink.stdout.readline().decode().split()
    finally:
        sink.kill()
        sink.wait()
    return sent, got


def _tcp_checksum_errors(ns: tb.Namespace) -> int:
    """The namespace's TCP ``InCsumErrors`` (IPv4 and IPv6 share the TCP counters)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    names, values = [ln for ln in lines if ln[0] == "Tcp:"][:2]
    return int(values[names.index("InCsumErrors")])


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("wgpy_sends", [True, False], ids=["wgpy-sends", "wgpy-receives"])
@pytest.mark.parametrize("peer", list(PEERS))
def test_tcp_with_tso_reads_across_implementations(
    peer: str, wgpy_sends: bool, version: int
) -> None:
    if peer == "upstream" and not os.access(UPSTREAM, os.X_OK):
        pytest.skip(f"no upstream wireguard-go at {UPSTREAM}")
    with tb.make_pair(WGPY_TSO, PEERS[peer]) as p:
        p.wait_handshake()
        if version == 4:
            sent_r, got_r = tcp_transfer(p, NBYTES, a_to_b=wgpy_sends)
            sent = [str(sent_r["bytes"]), str(sent_r["sha256"])]
            got = [str(got_r["bytes"]), str(got_r["sha256"])]
        else:
            add_ipv6(p, "fd00:98")
            sent, got = _transfer_v6(p, a_to_b=wgpy_sends)
        assert got == sent and int(sent[0]) == NBYTES
        receiver = p.ns_b if wgpy_sends else p.ns_a
        assert _tcp_checksum_errors(receiver) == 0, "the receiving stack saw bad checksums"
        assert isinstance(p.wg_a, tb.WgInstance)
        stats = uapi_client.stats_at(p.wg_a.socket_path)
        print(f"\n{peer} v{version} wgpy_sends={wgpy_sends}: {stats}")
        if wgpy_sends:  # the stream left wgpy's TUN as super-packets, split by wgpy
            assert stats["tun_tso_reads"] > 0
            assert stats["tun_tso_segments"] >= 2 * stats["tun_tso_reads"]
        assert stats["fastpath_faults"] == 0 and stats["fastpath_off"] == 0


@pytest.mark.parametrize("version", [4, 6])
def test_the_fast_path_in_python_splits_tso_reads_too(version: int) -> None:
    """The same without the compiled part (``WGPY_ACCEL=0``): tun.offload's Segmenter cuts
    and checksums the super-packets and the fast path seals them one by one."""
    wgpy = ["env", "WGPY_ACCEL=0", *WGPY_TSO]
    with tb.make_pair(wgpy, PEERS["wireguard-go"]) as p:
        p.wait_handshake()
        if version == 4:
            sent_r, got_r = tcp_transfer(p, 16 << 20, a_to_b=True)
            sent = [str(sent_r["bytes"]), str(sent_r["sha256"])]
            got = [str(got_r["bytes"]), str(got_r["sha256"])]
        else:
            add_ipv6(p, "fd00:98")  # the prefix _transfer_v6 uses
            sent, got = _transfer_v6(p, a_to_b=True)
        assert got == sent
        assert _tcp_checksum_errors(p.ns_b) == 0
        assert isinstance(p.wg_a, tb.WgInstance)
        stats = uapi_client.stats_at(p.wg_a.socket_path)
        assert stats["tun_tso_reads"] > 0 and stats["fastpath_faults"] == 0


def test_the_ordinary_path_splits_tso_reads_too() -> None:
    """With the fast path off (``WGPY_FASTPATH=0``) ``LinuxTun.read`` splits the super-packets
    and hands the Device one segment per call."""
    wgpy = ["env", "WGPY_FASTPATH=0", *WGPY_TSO]
    with tb.make_pair(wgpy, IMPLS["wireguard-go"]) as p:
        p.wait_handshake()
        sent, got = tcp_transfer(p, 16 << 20, a_to_b=True)
        assert got["bytes"] == sent["bytes"] == 16 << 20
        assert got["sha256"] == sent["sha256"]
        assert _tcp_checksum_errors(p.ns_b) == 0
        assert isinstance(p.wg_a, tb.WgInstance)
        stats = uapi_client.stats_at(p.wg_a.socket_path)
        assert stats["fastpath_off"] == 0  # never on, never switched off
        assert stats["tun_tso_reads"] > 0
        assert stats["tun_tso_segments"] >= 2 * stats["tun_tso_reads"]
