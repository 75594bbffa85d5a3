"""The supervisor core with a fake elector and fake tunnel runtimes, real forwarders on 127.0.0.x.

The VIPs are loopback addresses, so the forwarders the manager starts are reachable from the
test: "traffic through VIP:port" is checked for real, only the WireGuard device is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
from collections.abc import AsyncIterator, Callable, Sequence
from functools import partial
from typing import Any

import pytest

from noise import tai64n
from tests.vtime import advance, run_virtual
from wgpy.supervisor.config import Forward, Tunnel
from wgpy.supervisor.forward import Forwarder, TcpForwarder, UdpForwarder
from wgpy.supervisor.manager import (
    Supervisor,
    floor_key,
    needs_renewal,
    next_bound,
    parse_floor,
)
from wgpy.supervisor.model import ForwardRule, Target, TunnelStatus
from wgpy.testbed import wait_until

NS = 1_000_000_000
T0 = 1_700_000_000 * NS


run = partial(run_virtual, timeout=60)


def tunnel(
    name: str,
    vip: str,
    *,
    port: int = 51820,
    allowed: Sequence[str] = ("10.1.0.0/24",),
    forward: Sequence[Forward] = (),
) -> Tunnel:
    return Tunnel(
        name=name,
        vip=ipaddress.ip_interface(vip),
        private_key=bytes(range(32)),
        peer_public_key=bytes(range(1, 33)),
        peer_endpoint=("127.0.0.1", 51000),
        listen_port=port,
        allowed_ips=tuple(ipaddress.ip_network(a) for a in allowed),
        forward=tuple(forward),
    )


# --- fakes -----------------------------------------------------------------------------------


class FakeElector:
    """Leadership granted and revoked by the test; same callback contract as the real ones."""

    def __init__(
        self,
        log: list[str],
        *,
        on_started_leading: Callable[[], Any],
        on_stopped_leading: Callable[[], Any],
        on_new_leader: Callable[[str], Any],
    ) -> None:
        self.log = log
        self.on_started = on_started_leading
        self.on_stopped = on_stopped_leading
        self.on_new_leader = on_new_leader
        self.annotations: dict[str, str] = {}
        self.runs = 0
        self.leading = False
        self.holder = ""
        self._grant = asyncio.Event()
        self._revoke = asyncio.Event()
        self._stop = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.leading

    @property
    def leader(self) -> str:
        return self.holder

    def annotation(self, key: str) -> str | None:
        return self.annotations.get(key)

    def set_annotation(self, key: str, value: str | None) -> None:
        if value is None:
            self.annotations.pop(key, None)
        else:
            self.annotations[key] = value

    async def flush_annotations(self) -> bool:
        return self.leading

    def grant(self) -> None:
        self._grant.set()

    def revoke(self) -> None:
        self._revoke.set()

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()

    async def _either(self, ev: asyncio.Event) -> bool:
        a = asyncio.ensure_future(ev.wait())
        b = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
        a.cancel()
        b.cancel()
        return ev.is_set()

    async def run(self) -> None:
        self.runs += 1
        if not await self._either(self._grant):
            return
        self._grant.clear()
        self.holder = "me"
        self.on_new_leader("me")
        self.leading = True
        result = self.on_started()
        task = asyncio.ensure_future(result) if inspect.isawaitable(result) else None
        await self._either(self._revoke)
        self._revoke.clear()
        self.leading = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        result = self.on_stopped()
        if inspect.isawaitable(result):
            await result
        self.log.append("released")


class FakeRuntime:
    def __init__(self, t: Tunnel, log: list[str], fail: set[str]) -> None:
        self.tunnel = t
        self.log = log
        self.fail = fail
        self.alive = False
        self.last_timestamp_sent = tai64n.ZERO
        self.floor: bytes | None = None
        self.handshakes = 0
        self.attempts = 0

    def start(self, timestamp_floor: bytes) -> None:
        if self.tunnel.name in self.fail:
            self.log.append(f"start-failed {self.tunnel.name}")
            raise RuntimeError("no TUN for you")
        self.floor = timestamp_floor
        self.alive = True
        self.log.append(f"start {self.tunnel.name}")

    def stop(self) -> None:
        self.alive = False
        self.log.append(f"stop {self.tunnel.name}")

    def status(self) -> TunnelStatus:
        return TunnelStatus(
            name=self.tunnel.name,
            vip=str(self.tunnel.vip),
            up=self.alive,
            handshakes=self.handshakes,
            handshake_failures=self.attempts,
        )


class Harness:
    def __init__(self, *, wall_ns: int = T0, floor_check: float = 0.05) -> None:
        self.log: list[str] = []
        self.fail: set[str] = set()
        self.runtimes: dict[str, list[FakeRuntime]] = {}
        self.wall = [wall_ns]
        self.elector: FakeElector | None = None

        def elector_factory(**cb: Any) -> FakeElector:
            self.elector = FakeElector(self.log, **cb)
            return self.elector

        def runtime_factory(t: Tunnel) -> FakeRuntime:
            rt = FakeRuntime(t, self.log, self.fail)
            self.runtimes.setdefault(t.name, []).append(rt)
            return rt

        log = self.log

        class LoggedTcp(TcpForwarder):
            async def close(self) -> None:
                log.append(f"close {self.host}:{self.port}/TCP")
                await super().close()

        class LoggedUdp(UdpForwarder):
            async def close(self) -> None:
                log.append(f"close {self.host}:{self.port}/UDP")
                await super().close()

        def forwarder_factory(
            host: str, port: int, proto: str, targets: Sequence[Target]
        ) -> Forwarder:
            cls = LoggedTcp if proto == "TCP" else LoggedUdp
            return cls(host, port, targets)

        self.sup = Supervisor(
            "me",
            elector_factory=elector_factory,
            runtime_factory=runtime_factory,
            forwarder_factory=forwarder_factory,
            wall_time_ns=lambda: self.wall[0],
            floor_check=floor_check,
            retry_failed=0.2,
            restart_delay=0.01,
        )
        assert self.elector is not None
        self.el: FakeElector = self.elector

    def started(self, name: str) -> int:
        return sum(1 for e in self.log if e == f"start {name}")

    async def lead(self) -> None:
        self.el.grant()
        await wait_until(lambda: self.sup.is_leader and self.el.leading)

    async def lose(self) -> None:
        n = self.log.count("released")
        self.el.revoke()
        await wait_until(lambda: self.log.count("released") > n)


@contextlib.asynccontextmanager
async def running(h: Harness) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(h.sup.run())
    try:
        yield task
    finally:
        h.sup.stop()
        await asyncio.wait_for(task, 5)


@contextlib.asynccontextmanager
async def named_server(name: str) -> AsyncIterator[Target]:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(name.encode())
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield Target("127.0.0.1", srv.sockets[0].getsockname()[1])
    finally:
        srv.close()


async def ask(host: str, port: int) -> str:
    r, w = await asyncio.open_connection(host, port)
    try:
        return (await asyncio.wait_for(r.read(), 3)).decode()
    finally:
        w.close()


async def refused(host: str, port: int) -> bool:
    try:
        _r, w = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    w.close()
    return False


# --- floor helpers ---------------------------------------------------------------------------


def test_floor_helpers() -> None:
    assert parse_floor(None) == tai64n.ZERO
    assert parse_floor("zz") == tai64n.ZERO
    assert parse_floor("00ff") == tai64n.ZERO  # wrong length
    stamp = tai64n.stamp(T0)
    assert parse_floor(stamp.hex()) == stamp
    # the bound runs `ahead` past the newest of clock, floor and last sent
    b = next_bound(floor=tai64n.ZERO, last_sent=tai64n.ZERO, wall_ns=T0, ahead=10)
    assert tai64n.to_unix_ns(b) == tai64n.to_unix_ns(stamp) + 10 * NS
    far = tai64n.stamp(T0 + 30 * NS)
    b = next_bound(floor=far, last_sent=tai64n.ZERO, wall_ns=T0, ahead=10)
    assert tai64n.to_unix_ns(b) == T0 + 40 * NS
    b = next_bound(floor=tai64n.ZERO, last_sent=far, wall_ns=T0, ahead=10)
    assert tai64n.to_unix_ns(b) == T0 + 40 * NS
    bound = tai64n.stamp(T0 + 10 * NS)
    assert not needs_renewal(bound=bound, last_sent=tai64n.ZERO, wall_ns=T0 + 4 * NS, ahead=10)
    assert needs_renewal(bound=bound, last_sent=tai64n.ZERO, wall_ns=T0 + 6 * NS, ahead=10)
    late = tai64n.stamp(T0 + 6 * NS)
    assert needs_renewal(bound=bound, last_sent=late, wall_ns=T0, ahead=10)


# --- leadership ------------------------------------------------------------------------------


def test_follower_starts_nothing_and_is_ready() -> None:
    async def main() -> None:
        h = Harness()
        async with running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await advance(0.05)
            assert h.log == []
            st = h.sup.status()
            assert st.config_loaded and not st.leader and st.ready
            assert st.tunnels["wg0"].up is False

    run(main)


def test_no_election_before_a_configuration() -> None:
    async def main() -> None:
        h = Harness()
        async with running(h):
            await advance(0.05)
            assert h.el.runs == 0
            assert not h.sup.status().ready
            h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await wait_until(lambda: h.el.runs == 1)

    run(main)


def test_leading_brings_up_tunnels_then_forwarders_and_losing_tears_down_in_order() -> None:
    async def main() -> None:
        h = Harness()
        async with named_server("api") as api, running(h):
            fwd = Forward(6443, "TCP", (api.host, api.port))
            await h.sup.apply_tunnels(
                {
                    "wg0": tunnel("wg0", "127.0.0.5/32", forward=[fwd]),
                    "wg1": tunnel("wg1", "127.0.0.6/32", port=51821, allowed=["10.2.0.0/24"]),
                }
            )
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0", "wg1"])
            assert await ask("127.0.0.5", 6443) == "api"
            st = h.sup.status()
            assert st.leader and st.ready
            assert st.tunnels["wg0"].forwards[(6443, "TCP")].connections == 1

            await h.lose()
            # every forwarder closed before any tunnel stops; all done before the release
            assert h.log[-4:] == [
                "close 127.0.0.5:6443/TCP",
                "stop wg0",
                "stop wg1",
                "released",
            ] or h.log[-4:] == ["close 127.0.0.5:6443/TCP", "stop wg1", "stop wg0", "released"]
            assert await refused("127.0.0.5", 6443)
            assert h.sup.running == []
            assert not h.sup.status().leader
            # still a candidate: the elector runs again and leadership comes back
            await wait_until(lambda: h.el.runs == 2)
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0", "wg1"])
            assert h.started("wg0") == 2
            assert await ask("127.0.0.5", 6443) == "api"

    run(main)


def test_stop_tears_everything_down() -> None:
    async def main() -> None:
        h = Harness()
        task = asyncio.create_task(h.sup.run())
        h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
        await h.lead()
        await wait_until(lambda: h.sup.running == ["wg0"])
        h.sup.stop()
        await asyncio.wait_for(task, 5)
        assert h.log == ["start wg0", "stop wg0", "released"]
        assert h.sup.running == []

    run(main)


def test_failover_counted_after_another_leader() -> None:
    async def main() -> None:
        h = Harness()
        async with running(h):
            h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await wait_until(lambda: h.el.runs == 1)
            h.el.on_new_leader("other")
            assert h.sup.status().leader_identity == "other"
            await h.lead()
            assert h.sup.status().failovers == 1
            assert h.sup.status().leader_identity == "me"

    run(main)


# --- live reconcile --------------------------------------------------------------------------


def test_config_changes_touch_only_what_changed() -> None:
    async def main() -> None:
        h = Harness()
        async with named_server("a") as ta, named_server("b") as tb, running(h):
            fa = Forward(6443, "TCP", (ta.host, ta.port))
            fb = Forward(6443, "TCP", (tb.host, tb.port))
            wg0 = tunnel("wg0", "127.0.0.5/32", forward=[fa])
            wg1 = tunnel("wg1", "127.0.0.6/32", port=51821, allowed=["10.2.0.0/24"])
            await h.sup.apply_tunnels({"wg0": wg0})
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0"])

            # add wg1: wg0 untouched
            await h.sup.apply_tunnels({"wg0": wg0, "wg1": wg1})
            assert h.sup.running == ["wg0", "wg1"]
            assert h.started("wg0") == 1 and h.started("wg1") == 1

            # change wg1's allowedIPs: wg1 restarted with the new config, wg0 untouched
            wg1b = tunnel("wg1", "127.0.0.6/32", port=51821, allowed=["10.3.0.0/24"])
            await h.sup.apply_tunnels({"wg0": wg0, "wg1": wg1b})
            assert h.started("wg1") == 2 and h.started("wg0") == 1
            assert h.runtimes["wg1"][-1].tunnel == wg1b
            assert "stop wg1" in h.log and "stop wg0" not in h.log

            # change only wg0's forward target: no restart, traffic follows at once
            assert await ask("127.0.0.5", 6443) == "a"
            wg0b = tunnel("wg0", "127.0.0.5/32", forward=[fb])
            await h.sup.apply_tunnels({"wg0": wg0b, "wg1": wg1b})
            assert h.started("wg0") == 1
            assert await ask("127.0.0.5", 6443) == "b"

            # an invalid update is rejected: counted, nothing touched
            before = list(h.log)
            h.sup.reject_config("tunnel wg9: vip 'x' must be in CIDR form")
            await advance(0.05)
            assert h.log == before
            st = h.sup.status()
            assert st.config_rejections == 1 and "wg9" in st.last_config_error
            assert await ask("127.0.0.5", 6443) == "b"

            # delete wg1 (and wg0's forward list): wg1 stopped, wg0's forwarder closed
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            assert h.sup.running == ["wg0"]
            assert h.log[-2:] == ["stop wg1", "close 127.0.0.5:6443/TCP"]
            assert await refused("127.0.0.5", 6443)
            assert h.started("wg0") == 1
            assert h.sup.status().last_config_error == ""  # a good config clears it

    run(main)


def test_forward_rules_by_vip_or_name_live_and_per_source() -> None:
    async def main() -> None:
        h = Harness()
        async with named_server("cp1") as c1, named_server("cp2") as c2, running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            # rules set before leading are applied when leading starts
            h.sup.set_forward_rules(
                "127.0.0.5/32", [ForwardRule(6443, "TCP", (c1,), "controlplane")]
            )
            await h.lead()
            await wait_until(lambda: bool(h.sup.status().tunnels["wg0"].forwards))
            assert await ask("127.0.0.5", 6443) == "cp1"
            # live target change (EndpointSlice update): same forwarder, new target
            await h.sup.set_forward_rules(
                "127.0.0.5", [ForwardRule(6443, "TCP", (c2,), "controlplane")]
            )
            assert await ask("127.0.0.5", 6443) == "cp2"
            assert "close 127.0.0.5:6443/TCP" not in h.log
            # per-source: a Service's rules come and go without touching the control plane
            await h.sup.set_forward_rules(
                "wg0",
                [ForwardRule(8080, "TCP", (c1,), "service/default/web")],
                source="service/default/web",
            )
            assert await ask("127.0.0.5", 8080) == "cp1"
            assert await ask("127.0.0.5", 6443) == "cp2"
            await h.sup.set_forward_rules("wg0", [], source="service/default/web")
            assert await refused("127.0.0.5", 8080)
            assert await ask("127.0.0.5", 6443) == "cp2"

    run(main)


# --- failures and repair ---------------------------------------------------------------------


def test_failed_bring_up_is_reported_and_retried() -> None:
    async def main() -> None:
        h = Harness()
        h.fail.add("wg0")
        async with running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await h.lead()
            await wait_until(lambda: "start-failed wg0" in h.log)
            await wait_until(lambda: "wg0" in h.sup.failed())  # the thread's error came back
            assert h.sup.running == []
            assert "no TUN" in h.sup.failed()["wg0"]
            st = h.sup.status()
            assert st.leader and not st.ready
            h.fail.clear()
            # running is recorded before start() returns: wait for the tunnel itself
            await wait_until(lambda: h.sup.status().ready, timeout=3)
            assert h.sup.running == ["wg0"]
            assert h.sup.failed() == {}

    run(main)


def test_a_dead_device_loop_is_restarted() -> None:
    async def main() -> None:
        h = Harness()
        async with running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0"])
            h.runtimes["wg0"][0].alive = False  # e.g. someone deleted the link
            await wait_until(lambda: h.started("wg0") == 2)
            assert h.runtimes["wg0"][1].alive

    run(main)


# --- TAI64N floor ----------------------------------------------------------------------------


def test_new_leader_starts_above_the_stored_floor_and_persists_a_bound() -> None:
    async def main() -> None:
        # the old leader's clock was 30 s ahead of ours; it left a bound 10 s beyond that
        h = Harness(wall_ns=T0)
        old_bound = tai64n.stamp(T0 + 40 * NS)
        h.el.annotations[floor_key("wg0")] = old_bound.hex()
        async with running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0"])
            rt = h.runtimes["wg0"][0]
            assert rt.floor == old_bound  # the device never sends at or below it
            bound = bytes.fromhex(h.el.annotations[floor_key("wg0")])
            assert tai64n.to_unix_ns(bound) == T0 + 50 * NS  # floor + ahead

    run(main)


def test_bound_is_renewed_before_the_device_can_reach_it() -> None:
    async def main() -> None:
        h = Harness(wall_ns=T0)
        async with running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0"])
            rt = h.runtimes["wg0"][0]

            def bound() -> int:
                return tai64n.to_unix_ns(bytes.fromhex(h.el.annotations[floor_key("wg0")]))

            first = bound()
            assert first == tai64n.to_unix_ns(tai64n.stamp(T0)) + 10 * NS
            # time passes, the device sends: each time we get near, the bound moves ahead
            for step in range(1, 30):
                h.wall[0] = T0 + step * NS
                rt.last_timestamp_sent = tai64n.stamp(h.wall[0])
                await advance(0.08)  # > floor_check
                assert bound() - tai64n.to_unix_ns(rt.last_timestamp_sent) >= 5 * NS - 2**24
            assert bound() > first + 20 * NS
            # a device whose clock is behind the floor only steps 2**24 ns per initiation:
            # the bound does not need to move for that
            before = bound()
            rt.last_timestamp_sent = tai64n.increment(rt.last_timestamp_sent)
            await advance(0.08)
            assert bound() == before

    run(main)


def test_a_returning_leader_reuses_its_own_bound() -> None:
    async def main() -> None:
        h = Harness(wall_ns=T0)
        async with running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0"])
            b1 = bytes.fromhex(h.el.annotations[floor_key("wg0")])
            await h.lose()
            h.wall[0] = T0 - 60 * NS  # our clock jumped back
            await wait_until(lambda: h.el.runs == 2)
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0"])
            assert h.runtimes["wg0"][1].floor == b1
            b2 = bytes.fromhex(h.el.annotations[floor_key("wg0")])
            assert tai64n.after(b2, b1)

    run(main)


@pytest.mark.parametrize("key", ["127.0.0.7", "nope"])
def test_rules_for_unknown_tunnel_are_kept_for_later(key: str) -> None:
    async def main() -> None:
        h = Harness()
        async with named_server("x") as tx, running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await h.lead()
            await h.sup.set_forward_rules(key, [ForwardRule(7000, "TCP", (tx,), "svc")])
            assert h.sup.status().tunnels["wg0"].forwards == {}
            if key == "127.0.0.7":  # the tunnel with that VIP appears: its rules apply
                await h.sup.apply_tunnels(
                    {
                        "wg0": tunnel("wg0", "127.0.0.5/32"),
                        "wg1": tunnel("wg1", "127.0.0.7/32", port=51821, allowed=["10.9.0.0/24"]),
                    }
                )
                assert await ask("127.0.0.7", 7000) == "x"

    run(main)


def test_a_stalled_handshake_is_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        h = Harness()
        async with running(h):
            await h.sup.apply_tunnels({"wg0": tunnel("wg0", "127.0.0.5/32")})
            await h.lead()
            await wait_until(lambda: h.sup.running == ["wg0"])
            rt = h.runtimes["wg0"][0]
            rt.attempts = 2
            await advance(0.15)
            assert "handshake stalled" not in caplog.text
            rt.attempts = 3
            await wait_until(lambda: "handshake stalled" in caplog.text)
            await advance(0.15)
            assert caplog.text.count("handshake stalled") == 1
            rt.handshakes, rt.attempts = 1, 0
            await wait_until(lambda: "handshake completed" in caplog.text)

    with caplog.at_level("INFO", logger="wgpy.supervisor.manager"):
        run(main)
