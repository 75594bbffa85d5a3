"""TunnelRuntime in a namespace shaped like a pod (issue 15 points 3 and 4).

The namespace has ``eth0`` with 10.244.1.5/24 and a default route via 10.244.1.1, as a pod
has (a veth whose peer stays in the namespace); the API server is 10.96.0.1 (only looked up,
never contacted), the VPN node's endpoint is a UDP socket on 127.0.0.1 in the same
namespace. Everything runs inside the namespace through ``run_in_netns`` (the device thread
inherits it) and is removed on exit.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pyroute2 import IPRoute

from tun import netlink
from wgpy.core.keys import generate_private_key, public_key
from wgpy.supervisor import srcroute, tunnel
from wgpy.supervisor.config import Tunnel
from wgpy.supervisor.tunnel import TunnelError, TunnelRuntime
from wgpy.testbed import Namespace, WaitTimeout, wait_for
from wgpy.testbed.netns import run_in_netns

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, TUN)")

API = "10.96.0.1"
GATEWAY = "10.244.1.1"


@pytest.fixture
def pod() -> Iterator[Namespace]:
    with Namespace() as ns:
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
        ns.ip("addr", "add", "10.244.1.5/24", "dev", "eth0")
        ns.ip("link", "set", "eth0p", "up")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", GATEWAY)
        yield ns


def make_tunnel(port: int, allowed: tuple[str, ...] = ("10.0.0.0/8",),
                vip: str = "10.200.0.1/32") -> Tunnel:
    return Tunnel(
        name="wg0",
        vip=ipaddress.ip_interface(vip),
        private_key=generate_private_key(),
        peer_public_key=public_key(generate_private_key()),
        peer_endpoint=("127.0.0.1", port),
        listen_port=51820,
        allowed_ips=tuple(ipaddress.ip_network(a) for a in allowed),
    )


class Endpoint:
    """The VPN node's UDP port: counts what arrives (in a thread)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.received: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sock.recv(2048)
            except OSError:
                continue
            self.received.append(time.monotonic())

    def close(self) -> None:
        self._stop.set()
        self._t.join(2)
        self.sock.close()


def in_pod(pod: Namespace, fn: Callable[[], Any]) -> Any:
    return run_in_netns(pod.name, fn)


def oif(dst: str, src: str | None = None) -> int:
    kw: dict[str, Any] = {"dst": dst}
    if src:
        kw["src"] = src
    with IPRoute() as ipr:
        return int(next(iter(ipr.route("get", **kw))).get_attr("RTA_OIF"))


# -- point 4: source-based routing -------------------------------------------------------------


@pytest.mark.parametrize("allowed", [("10.0.0.0/8",), ("0.0.0.0/0",)])
def test_allowed_ips_carry_only_traffic_from_the_vip(
    pod: Namespace, allowed: tuple[str, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's 10.0.0.0/8 (and a VPN provider's 0.0.0.0/0) must not capture the pod's API
    server, gateway or resolver: only what the VIP sends goes into the tunnel."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", API)

    def body() -> None:
        ep = Endpoint()
        t = make_tunnel(ep.port, allowed)
        rt = TunnelRuntime(t)
        try:
            rt.start()
            wg = netlink.link_index(t.name)
            eth0 = netlink.link_index("eth0")
            for dst in (API, GATEWAY, "10.44.0.7"):
                assert oif(dst) == eth0, dst                     # the pod's own traffic
                assert oif(dst, src=str(t.vip.ip)) == wg, dst    # the VIP's replies
            assert oif("192.0.2.1") == eth0
            expect_vip = wg if allowed == ("0.0.0.0/0",) else eth0
            assert oif("192.0.2.1", src=str(t.vip.ip)) == expect_vip
        finally:
            rt.stop()
            ep.close()
        assert not netlink.link_exists(t.name)
        assert srcroute.del_rules(t.vip.ip) == 0                 # the rule went with it

    in_pod(pod, body)


def test_a_vip_prefix_covering_the_api_server_is_refused(
    pod: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CIDR check, derived from what the pod sees (no flag): a VIP whose prefix routes
    the API server into the tunnel fails the bring-up, naming the address."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", API)

    def body() -> None:
        ep = Endpoint()
        t = make_tunnel(ep.port, vip="10.96.0.200/12")
        rt = TunnelRuntime(t)
        try:
            with pytest.raises(TunnelError, match=r"10\.96\.0\.1 \(the API server"):
                rt.start()
            assert not netlink.link_exists(t.name)
            assert ep.received == []
        finally:
            rt.stop()
            ep.close()

    in_pod(pod, body)


# -- point 3: bring-up bounded by the lease, leadership checked before anything leaves ---------


def test_a_hanging_endpoint_lookup_is_bounded_by_the_lease(
    pod: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    lookups: list[threading.Thread] = []

    def slow_resolve(host: str, port: int) -> tuple[str, int]:
        lookups.append(threading.current_thread())
        release.wait(30)  # hangs until the test lets it go
        return host, port

    monkeypatch.setattr(tunnel, "resolve_endpoint", slow_resolve)

    def body() -> None:
        ep = Endpoint()
        t = make_tunnel(ep.port)
        deadline = time.monotonic() + 0.4
        rt = TunnelRuntime(t, lease_left=lambda: deadline - time.monotonic())
        t0 = time.monotonic()
        try:
            with pytest.raises(TunnelError, match="left on the lease"):
                rt.start()
            assert time.monotonic() - t0 < 10  # bounded by the 0.4 s lease, not the 30 s lookup
            release.set()  # the lookup ends now: nothing may follow from it
            assert len(lookups) == 1
            lookups[0].join(10)
            assert not lookups[0].is_alive()
            assert not netlink.link_exists(t.name) and ep.received == []
        finally:
            release.set()
            rt.stop()
            ep.close()

    in_pod(pod, body)


def test_leadership_lost_during_bring_up_sends_no_handshake(
    pod: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost = threading.Event()
    real_up = netlink.set_link_up

    def up_then_lose(name: str, **kw: Any) -> None:
        real_up(name, **kw)
        lost.set()                 # the API went away while the link was being set up

    monkeypatch.setattr(tunnel.netlink, "set_link_up", up_then_lose)

    def body() -> None:
        ep = Endpoint()
        t = make_tunnel(ep.port)
        rt = TunnelRuntime(t, lease_left=lambda: 0.0 if lost.is_set() else 10.0)
        try:
            with pytest.raises(TunnelError, match="leadership ended"):
                rt.start()
            with pytest.raises(WaitTimeout):  # nothing arrives for a second
                wait_for(lambda: bool(ep.received), 1.0)
            assert not netlink.link_exists(t.name)
        finally:
            rt.stop()
            ep.close()

    in_pod(pod, body)


def test_a_leader_past_its_deadline_sends_nothing_more(pod: Namespace) -> None:
    """The send fence: after leadership's time is up (a SIGSTOP past the renew deadline, say)
    the device's next datagram (the handshake retry, 5 s on) is held back and counted."""
    left = [10.0]

    def body() -> None:
        ep = Endpoint()
        t = make_tunnel(ep.port)
        rt = TunnelRuntime(t, lease_left=lambda: left[0])
        try:
            rt.start()
            wait_for(lambda: len(ep.received) == 1, 5, "a first initiation")
            left[0] = 0.0
            assert rt.runner is not None
            runner = rt.runner
            wait_for(lambda: runner.io_counters().get("fenced", 0) >= 1, 15,
                     "the retry to be held back (fenced)")
            assert len(ep.received) == 1
        finally:
            rt.stop()
            ep.close()

    in_pod(pod, body)
