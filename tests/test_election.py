"""LeaderElector against the strict fake API server (same loop, kubernetes.aio clients).

The loop runs on virtual time (:mod:`tests.vtime`): the windows below are exact, whatever
the load on the machine.

Timings are short (lease 2 s, renew deadline 1 s, retry 0.3 s). A shared monitor fails the
test if two nodes ever lead at once (checked at every start callback and by a sampler).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.aio import client as _aclient

from tests.fakeapi import CLIENT_HEADER, FakeApiServer
from tests.vtime import advance, run_virtual
from wgpy.supervisor.election import LeaderElector
from wgpy.supervisor.lease import ElectionConfig, LeaseRecord, format_microtime
from wgpy.testbed import wait_until

aclient: Any = _aclient
NS, NAME = "kube-system", "plndr-cp-lock"
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
DURATION, RENEW, RETRY = 2.0, 1.0, 0.3


class Monitor:
    """Who leads, when; records any moment with two leaders."""

    def __init__(self) -> None:
        self.leading: set[str] = set()
        self.violations: list[str] = []
        self.log: list[tuple[float, str, str]] = []

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def started(self, who: str) -> None:
        if self.leading:
            self.violations.append(f"{who} started while {self.leading} lead")
        self.leading.add(who)
        self.log.append((self.now(), "started", who))

    def stopped(self, who: str) -> None:
        self.leading.discard(who)
        self.log.append((self.now(), "stopped", who))

    def times(self, event: str, who: str) -> list[float]:
        return [t for t, e, w in self.log if e == event and w == who]


class Node:
    def __init__(self, url: str, identity: str, mon: Monitor, *,
                 timings: tuple[float, float, float] = (DURATION, RENEW, RETRY),
                 client: str | None = None, **kw: Any) -> None:
        self.identity = identity
        self.api = aclient.ApiClient(aclient.Configuration(host=url),
                                     header_name=CLIENT_HEADER, header_value=client or identity)
        self.new_leaders: list[str] = []
        self.elector = LeaderElector(
            ElectionConfig(NAME, NS, identity, *timings), self.api,
            on_started_leading=lambda: mon.started(identity),
            on_stopped_leading=lambda: mon.stopped(identity),
            on_new_leader=self.new_leaders.append, **kw)
        self.task = asyncio.ensure_future(self.elector.run())

    async def close(self, *, release: bool = True) -> None:
        self.elector.stop(release=release)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)
        await self.api.close()


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[tuple[FakeApiServer, Monitor, list[Node]]]:
    srv = FakeApiServer()
    await srv.start()
    mon = Monitor()
    nodes: list[Node] = []

    async def sample() -> None:
        while True:
            n = sum(1 for x in nodes if x.elector.is_leader)
            if n > 1:
                mon.violations.append(f"sampler saw {n} leaders")
            await advance(0.01)

    sampler = asyncio.ensure_future(sample())
    try:
        yield srv, mon, nodes
    finally:
        sampler.cancel()
        for n in nodes:
            await n.close()
        await srv.aclose()
    assert mon.violations == []
    bad = [r for r in srv.responses if "/leases" in r[1] and r[2] == 400]
    assert bad == []          # never a MicroTime the server refuses


def run(test: Callable[[], Awaitable[None]]) -> None:
    run_virtual(test, 60)


def stored(srv: FakeApiServer) -> LeaseRecord:
    obj = srv.get("leases", NS, NAME)
    assert obj is not None
    return LeaseRecord.from_lease(obj)


def test_one_leader_of_two_loser_gets_409_and_follows() -> None:
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            # both reads answer late and together, so both candidates decide on the same
            # (missing) Lease: exactly one POST wins, the other gets 409 and stays follower
            srv.inject("GET", r"/leases/", None, times=2, delay=0.2)
            nodes += [Node(srv.url, "a", mon), Node(srv.url, "b", mon)]
            await wait_until(lambda: bool(mon.leading), 3)
            leader = next(iter(mon.leading))
            follower = "b" if leader == "a" else "a"
            # the loser's POST may reach the server after the winner already leads
            await wait_until(lambda: ("POST", LEASE_PATH, 409) in srv.responses, 5)
            await advance(2 * DURATION)      # several renewals, no change of power
            assert mon.leading == {leader} and mon.times("started", follower) == []
            rec = stored(srv)
            assert (rec.holder, rec.transitions, rec.duration_s) == (leader, 0, 2)
            follower_node = next(n for n in nodes if n.identity == follower)
            assert follower_node.new_leaders == [leader]
            assert follower_node.elector.leader == leader
    run(main)


def test_crash_takeover_no_earlier_than_duration_after_last_change() -> None:
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            a = Node(srv.url, "a", mon)
            nodes.append(a)
            await wait_until(lambda: mon.leading == {"a"}, 3)
            b = Node(srv.url, "b", mon)
            nodes.append(b)
            await advance(1.0)
            await a.close(release=False)               # crash: no release
            last = a.elector.last_renew
            assert last is not None
            taken = await wait_until(lambda: mon.leading == {"b"}, DURATION + 3)
            assert taken >= last + DURATION
            assert taken <= last + DURATION + 2.2 * RETRY + 0.5
            rec = stored(srv)
            assert (rec.holder, rec.transitions) == ("b", 1)
    run(main)


def test_graceful_release_immediate_takeover_transitions_0_to_1() -> None:
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            a = Node(srv.url, "a", mon)
            nodes.append(a)
            await wait_until(lambda: mon.leading == {"a"}, 3)
            assert stored(srv).transitions == 0
            b = Node(srv.url, "b", mon)
            nodes.append(b)
            await advance(0.5)
            t0 = mon.now()
            await a.close()
            released = stored(srv)
            assert (released.holder, released.duration_s, released.transitions) == ("", 1, 0)
            taken = await wait_until(lambda: mon.leading == {"b"}, 3)
            assert taken - t0 < 2.2 * RETRY + 0.5 < DURATION   # no waiting for expiry
            assert mon.times("stopped", "a")[0] <= mon.times("started", "b")[0]
            rec = stored(srv)
            assert (rec.holder, rec.transitions) == ("b", 1)
            assert b.new_leaders == ["a", "b"]   # the free moment is taken in the same attempt
    run(main)


@pytest.mark.parametrize("fault", ["503", "hang"])
def test_api_outage_leader_steps_down_at_renew_deadline(fault: str) -> None:
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            a = Node(srv.url, "a", mon)
            nodes.append(a)
            await wait_until(lambda: mon.leading == {"a"}, 3)
            await advance(0.5)
            if fault == "503":
                srv.inject("*", r"/leases", 503, times=None)
            else:
                srv.inject("*", r"/leases", None, times=None, delay=10)
            await wait_until(lambda: not mon.leading, 3)
            last = a.elector.last_renew
            assert last is not None
            stopped = mon.times("stopped", "a")[0]
            # at the deadline: before anyone else could acquire (last + DURATION)
            assert last + RENEW - 0.05 <= stopped <= last + RENEW + 0.5 < last + DURATION
            assert a.elector.lost_leadership
            await asyncio.wait_for(a.task, 2 * RETRY + 1)       # run() returned
            srv.clear_injections()
    run(main)


def test_skewed_client_go_holder_is_respected() -> None:
    """A Go holder renewing every 0.3 s with its clock 3 h behind and a 2 s record."""
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            skew = timedelta(hours=-3)
            acquired = datetime.now(UTC) + skew
            renewing = True
            last_go_write = 0.0

            async def go_holder() -> None:
                nonlocal last_go_write
                while renewing:
                    srv.seed({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                              "metadata": {"name": NAME, "namespace": NS},
                              "spec": {"holderIdentity": "go-node", "leaseDurationSeconds": 2,
                                       "acquireTime": format_microtime(acquired),
                                       "renewTime": format_microtime(
                                           datetime.now(UTC) + skew),
                                       "leaseTransitions": 4}})
                    last_go_write = mon.now()
                    await advance(0.3)

            go = asyncio.ensure_future(go_holder())
            await advance(0.1)
            nodes.append(Node(srv.url, "py", mon))
            await advance(2.5)
            assert mon.times("started", "py") == []          # never stole it
            renewing = False
            await go
            taken = await wait_until(lambda: mon.leading == {"py"}, 4)
            assert taken >= last_go_write + 2.0
            rec = stored(srv)
            assert (rec.holder, rec.transitions) == ("py", 5)
            assert rec.renew_time is not None
            assert abs(rec.renew_time - datetime.now(UTC)) < timedelta(seconds=5)  # true UTC
    run(main)


def test_annotations_survive_and_are_shared() -> None:
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            srv.seed({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                      "metadata": {"name": NAME, "namespace": NS, "labels": {"team": "net"},
                                   "annotations": {"other": "x"}},
                      "spec": {"holderIdentity": ""}})
            a = Node(srv.url, "a", mon)
            b = Node(srv.url, "b", mon)
            nodes += [a, b]
            await wait_until(lambda: len(mon.leading) == 1, 3)
            leader, follower = (a, b) if mon.leading == {"a"} else (b, a)
            leader.elector.set_annotation("wgpy.io/tai64n-floor", "400000006a000000")

            def written() -> bool:
                obj = srv.get("leases", NS, NAME) or {}
                ann = obj.get("metadata", {}).get("annotations", {})
                return bool(ann.get("wgpy.io/tai64n-floor") == "400000006a000000")

            await wait_until(written, 2)
            obj = srv.get("leases", NS, NAME)
            assert obj is not None
            assert obj["metadata"]["labels"] == {"team": "net"}
            assert obj["metadata"]["annotations"]["other"] == "x"
            await wait_until(lambda: follower.elector.annotation("wgpy.io/tai64n-floor")
                           == "400000006a000000", 3)
    run(main)


def test_zero_microsecond_wall_clock_never_reaches_the_server() -> None:
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            def wall() -> datetime:
                return datetime.now(UTC).replace(microsecond=0)
            nodes.append(Node(srv.url, "a", mon, wall_clock=wall))
            await wait_until(lambda: mon.leading == {"a"}, 3)
            await advance(3 * RETRY)
            obj = srv.get("leases", NS, NAME)
            assert obj is not None
            assert obj["spec"]["renewTime"].endswith(".000001Z")
            puts = [r for r in srv.responses if r[0] == "PUT"]
            assert puts and all(r[2] == 200 for r in puts)
    run(main)


# -- issue 15 -------------------------------------------------------------------------------


def test_late_reply_does_not_stretch_the_term_past_the_next_leaders() -> None:
    """Point 2: the server commits a renewal at once but the reply takes 2 s (slow etcd, a
    SIGSTOP mid-request), then the leader is cut off. Timed from the reply, its renew deadline
    would end 2 s after the server's commit + the deadline, while the follower may acquire at
    commit + lease duration (3 s): both lead. Timed from the send, it steps down first."""
    timings = (3.0, 2.5, 0.3)

    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            a = Node(srv.url, "a", mon, timings=timings)
            nodes.append(a)
            await wait_until(lambda: mon.leading == {"a"}, 3)
            b = Node(srv.url, "b", mon, timings=timings)
            nodes.append(b)
            await wait_until(lambda: b.elector.leader == "a", 3)
            slow = srv.inject("PUT", r"/leases/", None, client="a", delay_after=2.0)
            await wait_until(lambda: slow.hits == 1, 3)
            sent = mon.now()
            srv.inject("*", r"/leases", None, client="a", times=None, delay=30)  # cut off
            await wait_until(lambda: mon.leading == {"b"}, 10)
            stopped = mon.times("stopped", "a")[0]
            started = mon.times("started", "b")[0]
            assert stopped < started
            assert stopped <= sent + timings[1] + 0.3       # the deadline, counted from the send
    run(main)


def test_kube_vip_holding_the_lock_under_our_name_is_not_us() -> None:
    """Point 1: kube-vip on node-1 holds plndr-cp-lock as "node-1"; wgpy on node-1 must follow
    it (no tunnel next to kube-vip's), and take over with a new term once kube-vip stops."""
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            renewing = True
            last_kv_write = 0.0
            acquired = datetime.now(UTC)

            async def kube_vip() -> None:
                nonlocal last_kv_write
                while renewing:
                    srv.seed({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                              "metadata": {"name": NAME, "namespace": NS},
                              "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 2,
                                       "acquireTime": format_microtime(acquired),
                                       "renewTime": format_microtime(datetime.now(UTC)),
                                       "leaseTransitions": 7}})
                    last_kv_write = mon.now()
                    await advance(0.3)

            kv = asyncio.ensure_future(kube_vip())
            await advance(0.1)
            node = Node(srv.url, "node-1", mon)
            nodes.append(node)
            await advance(2.5)
            assert mon.times("started", "node-1") == []      # never "resumed" kube-vip's term
            renewing = False
            await kv
            taken = await wait_until(lambda: mon.leading == {"node-1"}, 4)
            assert taken >= last_kv_write + 2.0
            rec = stored(srv)
            assert (rec.holder, rec.transitions) == ("node-1", 8)   # a new term, counted
            assert rec.acquire_time is not None and rec.acquire_time > acquired
    run(main)


def test_leader_steps_down_when_another_process_writes_under_its_name() -> None:
    """Point 1, the other order: wgpy leads, then kube-vip starts on the same node and takes
    the Lease under the same identity: wgpy must step down, not share it."""
    async def main() -> None:
        async with cluster() as (srv, mon, nodes):
            node = Node(srv.url, "node-1", mon)
            nodes.append(node)
            await wait_until(lambda: mon.leading == {"node-1"}, 3)
            stop = False

            async def kube_vip() -> None:
                while not stop:
                    obj = srv.get("leases", NS, NAME)
                    assert obj is not None
                    spec = dict(obj["spec"])
                    spec["renewTime"] = format_microtime(datetime.now(UTC))
                    spec["acquireTime"] = format_microtime(datetime.now(UTC) - timedelta(hours=1))
                    srv.seed({**obj, "spec": spec})
                    await advance(0.2)

            kv = asyncio.ensure_future(kube_vip())
            try:
                await wait_until(lambda: not mon.leading, 3)
                await advance(1.0)
                assert not mon.leading                      # and stays a follower
            finally:
                stop = True
                await kv
    run(main)
