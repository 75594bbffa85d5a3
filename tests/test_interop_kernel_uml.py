"""wgpy-userspace against the kernel's WireGuard, run in a User-Mode Linux guest.

Side A is wgpy in a namespace; side B is the UML guest bridged onto the veth (see
wgpy/testbed/uml/guest.py), its wg0 the real kernel driver (Linux 6.1). The kernel and root
filesystem come from ``python -m wgpy.testbed.uml`` (./install.sh runs it; cached under
/var/cache/wgpy/uml). Without them the tests skip and say how to build them, except under CI,
where they fail: CI must run them.

Each test boots its own guest (about 1.5 s).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import (
    IMPLS,
    NAT_REBIND,
    interop,
    json_line,
    probe,
    require_uml,
    wait_listening,
)
from wgpy import testbed as tb
from wgpy.core.constants import REKEY_AFTER_TIME

pytestmark = interop
ICMP_DATAGRAM = 16 + 96 + 16  # an 84-byte echo padded to 96, header and tag
TCP_BYTES = 10 * 1024 * 1024
V6_A, V6_B = "fd00:99::1", "fd00:99::2"


@pytest.fixture(scope="module", autouse=True)
def _images() -> None:
    require_uml()


@pytest.fixture
def pair() -> Iterator[tb.Pair]:
    with tb.make_pair(IMPLS["wgpy"], tb.KERNEL_UML) as p:
        yield p


def _guest(p: tb.Pair) -> tb.UmlGuest:
    assert isinstance(p.wg_b, tb.UmlGuest)
    return p.wg_b


def _peer(w: tb.WgInstance | tb.KernelWg | tb.UmlGuest) -> tb.PeerDump:
    return w.show_dump().peers[0]


def _ping_both_ways(p: tb.Pair, count: int = 2) -> None:
    for from_a in (True, False):
        r = p.ping(from_a=from_a, count=count, timeout=3.0)
        assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("psk", [False, True], ids=["no-psk", "psk"])
@pytest.mark.parametrize("initiator", ["wgpy", "kernel"])
def test_handshake_either_side_initiates(initiator: str, psk: bool) -> None:
    with tb.make_pair(IMPLS["wgpy"], tb.KERNEL_UML, psk=psk) as p:
        assert _peer(p.wg_a).has_preshared_key is psk and _peer(p.wg_b).has_preshared_key is psk
        assert _peer(p.wg_a).latest_handshake == 0 and _peer(p.wg_b).latest_handshake == 0
        first = p.ping(from_a=initiator == "wgpy", count=1, timeout=3.0)
        assert first.returncode == 0, first.stdout
        init, resp = (p.wg_a, p.wg_b) if initiator == "wgpy" else (p.wg_b, p.wg_a)
        # both count as wireguard-go counts: the initiation (148) or response (92) plus the
        # one echo datagram each side received
        assert _peer(resp).rx_bytes == 148 + ICMP_DATAGRAM
        assert _peer(init).rx_bytes == 92 + ICMP_DATAGRAM
        assert _peer(init).latest_handshake > 0 and _peer(resp).latest_handshake > 0
        _ping_both_ways(p, count=3)


def test_ipv6_inside_the_tunnel(pair: tb.Pair) -> None:
    guest = _guest(pair)
    pair.wg_a.wg("set", "wg0", "peer", pair.pub_b, "allowed-ips", f"{pair.tun_ip_b}/32,{V6_B}/128")
    guest.wg("set", "wg0", "peer", pair.pub_a, "allowed-ips", f"{pair.tun_ip_a}/32,{V6_A}/128")
    pair.ns_a.ip("-6", "addr", "add", f"{V6_A}/64", "dev", "wg0", "nodad")
    guest.address(f"{V6_B}/64")
    r = guest.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "3", V6_A], check=False)
    assert r.returncode == 0, r.stdout
    r = pair.ns_a.run(["ping", "-n", "-c", "3", "-i", "0.2", "-W", "3", V6_B], check=False)
    assert r.returncode == 0, r.stdout
    assert V6_B + "/128" in _peer(pair.wg_a).allowed_ips


def _guest_listening(guest: tb.UmlGuest, port: int) -> bool:
    return bool(guest.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.strip())


def test_tcp_10mb_wgpy_to_kernel(pair: tb.Pair) -> None:
    guest = _guest(pair)
    pair.wait_handshake()
    got: list[str] = []
    # the guest keeps what arrives in its tmpfs, then reports size and checksum
    receiver = threading.Thread(
        target=lambda: got.append(
            guest.sh(
                "nc -l 5201 > /tmp/rx; wc -c < /tmp/rx; sha256sum < /tmp/rx", timeout=180
            ).stdout
        )
    )
    receiver.start()
    try:
        tb.wait_for(lambda: _guest_listening(guest, 5201), 20, "nc listening in the guest", 0.1)
        source = probe(pair.ns_a, "tcp-source", pair.tun_ip_b, "5201", str(TCP_BYTES))
        try:
            sent = json_line(source, timeout=180)
        finally:
            source.kill()
            source.wait()
    finally:
        receiver.join(200)
    size, digest = got[0].split()[:2]
    assert int(size) == sent["bytes"] == TCP_BYTES
    assert digest == sent["sha256"]
    print(f"\nwgpy->kernel(UML): {TCP_BYTES / float(str(sent['seconds'])) / 1e6:.0f} MB/s")


def test_tcp_10mb_kernel_to_wgpy(pair: tb.Pair) -> None:
    guest = _guest(pair)
    pair.wait_handshake()
    sink = probe(pair.ns_a, "tcp-sink", pair.tun_ip_a, "5201")
    try:
        wait_listening(sink)
        start = time.monotonic()
        out = guest.sh(
            f"head -c {TCP_BYTES} /dev/urandom > /tmp/tx; sha256sum < /tmp/tx; "
            f"nc -N {pair.tun_ip_a} 5201 < /tmp/tx",
            timeout=180,
        )
        got = json_line(sink, timeout=60)
        secs = time.monotonic() - start
    finally:
        sink.kill()
        sink.wait()
    assert out.returncode == 0, out.stdout
    assert got["bytes"] == TCP_BYTES
    assert got["sha256"] == out.stdout.split()[0]
    print(f"\nkernel(UML)->wgpy: {TCP_BYTES / secs / 1e6:.0f} MB/s (file made in the guest too)")


def test_kernel_follows_wgpy_roaming(pair: tb.Pair) -> None:
    pair.wait_handshake()
    assert _peer(pair.wg_b).endpoint == f"{pair.veth.ip_a}:51820"
    # wgpy's side rebinds (a NAT rewrite in its namespace): the kernel must follow
    pair.ns_a.run(["nft", "-f", "-"], input=NAT_REBIND)
    try:
        r = pair.ping(from_a=True, count=2, timeout=3.0)
        assert r.returncode == 0, r.stdout
        assert _peer(pair.wg_b).endpoint == f"{pair.veth.ip_a}:40000"
        r = pair.ping(from_a=False, count=2, timeout=3.0)
        assert r.returncode == 0, r.stdout
    finally:
        pair.ns_a.run(["nft", "delete", "table", "ip", "roam"], check=False)
    r = pair.ping(from_a=True, count=2, timeout=3.0)
    assert r.returncode == 0, r.stdout
    assert _peer(pair.wg_b).endpoint == f"{pair.veth.ip_a}:51820"


def test_wgpy_follows_kernel_roaming(pair: tb.Pair) -> None:
    guest = _guest(pair)
    pair.wait_handshake()
    assert _peer(pair.wg_a).endpoint == f"{pair.veth.ip_b}:51820"
    # the guest moves to a new address on the same link; its kernel sends from there (the new
    # address is promoted to primary instead of going with the old one)
    moved = "192.168.241.12"
    guest.sh(
        "sysctl -qw net.ipv4.conf.eth0.promote_secondaries=1 && "
        f"ip addr add {moved}/24 dev eth0 && ip addr del {pair.veth.addr_b} dev eth0"
    )
    assert guest.run(["ip", "-4", "-br", "addr", "show", "eth0"]).stdout.split()[2:] == [
        f"{moved}/24"
    ]
    r = pair.ping(from_a=False, count=2, timeout=3.0)
    assert r.returncode == 0, r.stdout
    assert _peer(pair.wg_a).endpoint == f"{moved}:51820"
    r = pair.ping(from_a=True, count=2, timeout=3.0)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("renewer", ["wgpy", "kernel"])
def test_new_session_replaces_the_running_one(pair: tb.Pair, renewer: str) -> None:
    """One side forgets its session (peer removed and added again) and handshakes anew while the
    other still holds the old one: the other must take the new keypair and keep the traffic."""
    pair.wait_handshake()
    _ping_both_ways(pair)
    before = _peer(pair.wg_a).latest_handshake, _peer(pair.wg_b).latest_handshake
    # latest-handshake counts whole seconds: a new handshake must fall in a later one
    tb.wait_for(lambda: time.time() >= max(before) + 1, 3, "the next second")
    w, other_pub, other_ip, endpoint, from_a = (
        (pair.wg_a, pair.pub_b, pair.tun_ip_b, f"{pair.veth.ip_b}:51820", True)
        if renewer == "wgpy"
        else (pair.wg_b, pair.pub_a, pair.tun_ip_a, f"{pair.veth.ip_a}:51820", False)
    )
    w.wg("set", "wg0", "peer", other_pub, "remove")
    w.wg("set", "wg0", "peer", other_pub, "endpoint", endpoint, "allowed-ips", f"{other_ip}/32")
    r = pair.ping(from_a=from_a, count=2, timeout=3.0)
    assert r.returncode == 0, r.stdout
    after = _peer(pair.wg_a).latest_handshake, _peer(pair.wg_b).latest_handshake
    assert after[0] > before[0] and after[1] > before[1]
    _ping_both_ways(pair)


@pytest.mark.slow
@pytest.mark.parametrize("sender", ["wgpy", "kernel"])
def test_rekey_after_time_with_traffic(pair: tb.Pair, sender: str) -> None:
    """REKEY_AFTER_TIME (120 s) after the first handshake the sending side (the initiator) starts
    a new one; pings every 0.5 s carry on across it (slow: about 2.5 minutes)."""
    from_a = sender == "wgpy"
    first = pair.ping(from_a=from_a, count=1, timeout=3.0)
    assert first.returncode == 0, first.stdout
    hs0 = _peer(pair.wg_a).latest_handshake
    count = int((REKEY_AFTER_TIME + 15) / 0.5)
    r = pair.ping(from_a=from_a, count=count, interval=0.5, timeout=3.0)
    lost = count - sum(1 for ln in r.stdout.splitlines() if "bytes from" in ln)
    assert lost <= 1, r.stdout[-500:]
    hs1_a, hs1_b = _peer(pair.wg_a).latest_handshake, _peer(pair.wg_b).latest_handshake
    assert hs1_a >= hs0 + REKEY_AFTER_TIME and hs1_b >= hs0 + REKEY_AFTER_TIME


def test_kernel_answers_an_unroutable_packet_with_icmp_unreachable(pair: tb.Pair) -> None:
    """Protocol doc §7.2: no peer allows the destination. The kernel tells the sender at once
    (ICMP host unreachable from wg0); wireguard-go and wgpy drop silently (wgpy counts it)."""
    guest = _guest(pair)
    guest.run(["ip", "route", "add", "10.99.1.0/24", "dev", "wg0"])
    r = guest.run(["ping", "-n", "-c", "1", "-W", "2", "10.99.1.7"], check=False)
    assert r.returncode != 0
    assert "Destination Host Unreachable" in r.stdout, r.stdout
    assert _peer(pair.wg_b).tx_bytes == 0  # nothing went out: no peer, no handshake
