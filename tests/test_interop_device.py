"""wgpy-userspace against the real wireguard-go (and against itself) in network namespaces."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support import (
    IMPLS,
    NAT_REBIND,
    add_ipv6,
    interop,
    json_line,
    probe,
    tcp_transfer,
    wait_listening,
)
from wgpy import testbed as tb
from wgpy.io import uapi_client

pytestmark = interop
PAIRS = [("wgpy", "wireguard-go"), ("wireguard-go", "wgpy"), ("wgpy", "wgpy")]
ICMP_DATAGRAM = 16 + 96 + 16  # an 84-byte echo padded to 96, header and tag


def _ids(p: tuple[str, str]) -> str:
    return f"{p[0]}-{p[1]}"


@pytest.fixture(params=PAIRS, ids=_ids)
def pair(request: pytest.FixtureRequest) -> Iterator[tb.Pair]:
    a, b = request.param
    with tb.make_pair(IMPLS[a], IMPLS[b]) as p:
        yield p


def _peer(w: tb.WgInstance | tb.KernelWg) -> tb.PeerDump:
    return w.show_dump().peers[0]


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_each_side_initiates_and_ping_crosses_both_ways(pair: tb.Pair, initiator: str) -> None:
    assert _peer(pair.wg_a).latest_handshake == 0 and _peer(pair.wg_b).latest_handshake == 0
    first = pair.ping(from_a=initiator == "a", count=1, timeout=3.0)
    assert first.returncode == 0, first.stdout + first.stderr
    init, resp = (pair.wg_a, pair.wg_b) if initiator == "a" else (pair.wg_b, pair.wg_a)
    # counted as wireguard-go counts: the responder received the 148-byte initiation, the
    # initiator the 92-byte response; each received one echo datagram
    assert _peer(resp).rx_bytes == 148 + ICMP_DATAGRAM
    assert _peer(init).rx_bytes == 92 + ICMP_DATAGRAM
    assert _peer(init).latest_handshake > 0 and _peer(resp).latest_handshake > 0
    for from_a in (True, False):
        r = pair.ping(from_a=from_a, count=3)
        assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("impls", PAIRS[:2], ids=_ids)
def test_preshared_key(impls: tuple[str, str]) -> None:
    with tb.make_pair(IMPLS[impls[0]], IMPLS[impls[1]], psk=True) as p:
        assert _peer(p.wg_a).has_preshared_key and _peer(p.wg_b).has_preshared_key
        for from_a in (True, False):
            r = p.ping(from_a=from_a, count=2, timeout=3.0)
            assert r.returncode == 0, r.stdout


def test_mismatched_preshared_key_never_completes() -> None:
    with tb.make_pair(IMPLS["wgpy"], IMPLS["wireguard-go"], psk=True) as p:
        p.wg_b.wg(
            "set", "wg0", "peer", p.pub_a, "preshared-key", "/dev/stdin", input=tb.genpsk() + "\n"
        )
        r = p.ping(count=1, timeout=2.0)
        assert r.returncode != 0
        assert _peer(p.wg_a).latest_handshake == 0


def test_full_mtu_packet_with_dont_fragment(pair: tb.Pair) -> None:
    pair.wait_handshake()
    assert pair.ping(size=1392, dont_fragment=True).returncode == 0  # 1420-byte packet
    assert pair.ping(size=1393, dont_fragment=True).returncode != 0


@pytest.mark.parametrize(
    ("impls", "direction"),
    [(PAIRS[0], "a->b"), (PAIRS[0], "b->a"), (PAIRS[2], "a->b")],
    ids=["wgpy->wireguard-go", "wireguard-go->wgpy", "wgpy->wgpy"],
)
def test_tcp_transfer_100mb_checksum(impls: tuple[str, str], direction: str) -> None:
    nbytes = 100 * 1024 * 1024
    with tb.make_pair(IMPLS[impls[0]], IMPLS[impls[1]]) as p:
        p.wait_handshake()
        receiver, receiver_impl = (p.wg_b, impls[1]) if direction == "a->b" else (p.wg_a, impls[0])
        sent, got = tcp_transfer(p, nbytes, a_to_b=direction == "a->b")
        assert got["bytes"] == sent["bytes"] == nbytes
        assert got["sha256"] == sent["sha256"]
        secs = float(str(sent["seconds"]))
        print(f"\n{direction} {impls}: {nbytes * 8 / secs / 1e6:.0f} Mbit/s")
        if receiver_impl == "wgpy":  # it wrote the stream to its TUN in GSO packets
            assert isinstance(receiver, tb.WgInstance)
            stats = uapi_client.stats_at(receiver.socket_path)
            writes, segments = stats["tun_gso_writes"], stats["tun_gso_segments"]
            print(f"{segments} segments in {writes} GSO writes")
            assert writes > 0 and segments >= 2 * writes
            assert stats["tun_write_errors"] == 0 and stats["tun_gso_refused"] == 0


def test_udp_datagrams_both_ways(pair: tb.Pair) -> None:
    pair.wait_handshake()
    for server_ns, client_ns, ip in (
        (pair.ns_b, pair.ns_a, pair.tun_ip_b),
        (pair.ns_a, pair.ns_b, pair.tun_ip_a),
    ):
        echo = probe(server_ns, "udp-echo", ip, "7777", "300")
        wait_listening(echo)
        client = probe(client_ns, "udp-client", ip, "7777", "300")
        res = json_line(client, timeout=30)
        echo.kill()
        echo.wait()
        assert int(str(res["echoed"])) == 300


def _capture(ns: tb.Namespace, dev: str, seconds: float) -> list[str]:
    cap = ns.popen(
        ["tcpdump", "-l", "-n", "-i", dev, "udp", "port", "51820"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(seconds)
    cap.terminate()
    out, _ = cap.communicate(timeout=5)
    return list(out.decode().splitlines())


@pytest.mark.parametrize("impls", [PAIRS[0], PAIRS[2]], ids=_ids)
def test_persistent_keepalive_seen_on_the_wire(impls: tuple[str, str]) -> None:
    with tb.make_pair(IMPLS[impls[0]], IMPLS[impls[1]]) as p:
        p.wait_handshake()
        time.sleep(0.5)
        p.wg_a.wg("set", "wg0", "peer", p.pub_b, "persistent-keepalive", "1")
        assert _peer(p.wg_a).persistent_keepalive == 1
        lines = _capture(p.ns_b, p.veth.name_b, 3.6)
        keepalives = [
            ln for ln in lines if f"{p.veth.ip_a}.51820 >" in ln and ln.endswith("length 32")
        ]
        assert len(keepalives) >= 3, "\n".join(lines)


def test_roaming_endpoint_moves_and_traffic_continues(pair: tb.Pair) -> None:
    pair.wait_handshake()
    assert _peer(pair.wg_b).endpoint == f"{pair.veth.ip_a}:51820"
    # A's NAT rebinds: from now on B sees A's packets from port 40000 (a stateless rewrite
    # in A's namespace, so it works the same whatever implementation A runs)
    pair.ns_a.run(["nft", "-f", "-"], input=NAT_REBIND)
    r = pair.ping(from_a=True, count=2, timeout=3.0)
    assert r.returncode == 0, r.stdout
    assert _peer(pair.wg_b).endpoint == f"{pair.veth.ip_a}:40000"
    r = pair.ping(from_a=False, count=2, timeout=3.0)
    assert r.returncode == 0, r.stdout
    # A moves back: traffic follows again
    pair.ns_a.run(["nft", "delete", "table", "ip", "roam"])
    r = pair.ping(from_a=True, count=2, timeout=3.0)
    assert r.returncode == 0, r.stdout
    assert _peer(pair.wg_b).endpoint == f"{pair.veth.ip_a}:51820"


_V6_SINK = """
import hashlib, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.bind(("fd00:99::2", 5301)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while d := c.recv(1 << 16):
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
"""
_V6_SOURCE = """
import hashlib, os, socket
data = os.urandom(1 << 20) * 24
s = socket.create_connection(("fd00:99::2", 5301)); s.sendall(data); s.close()
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


def test_tcp_over_ipv6_from_wireguard_go_is_coalesced_intact() -> None:
    """IPv6 inside the tunnel: wgpy writes wireguard-go's TCP segments as TCPV6 GSO packets."""
    with tb.make_pair(IMPLS["wireguard-go"], IMPLS["wgpy"]) as p:
        p.wait_handshake()
        add_ipv6(p, "fd00:99")
        sink = p.ns_b.popen([sys.executable, "-c", _V6_SINK], stdout=subprocess.PIPE)
        wait_listening(sink)
        sent = p.ns_a.run([sys.executable, "-c", _V6_SOURCE], timeout=120).stdout.split()
        assert sink.stdout is not None
        got = sink.stdout.readline().decode().split()
        assert got == sent and int(sent[0]) == 24 << 20
        assert isinstance(p.wg_b, tb.WgInstance)
        stats = uapi_client.stats_at(p.wg_b.socket_path)
        assert stats["tun_gso_writes"] > 0
        assert stats["tun_gso_segments"] >= 2 * stats["tun_gso_writes"]
