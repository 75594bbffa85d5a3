"""Randomized split-brain checks (issue 15 "Must show"): API latency and SIGSTOP/SIGCONT of the
leader, on the seed's Secret (:mod:`tests.test_seed_e2e`), lease 3/2/0.5 s.

Each round applies one random fault to whoever leads, then waits until exactly one node serves
VIP:6443 again. A sampler records, every 20 ms, which nodes have wg0 and where the VPN node
sends wg0's traffic. Checks per round:

* never two nodes with wg0 while both are running. A SIGSTOPped process cannot delete its link,
  so a frozen node (and the instant after its SIGCONT, until it has stepped down) is judged by
  what it *sends*: the VPN node's endpoint must never come back to it (the send fence);
* the resumed node tears its tunnel down within ``RESUME_LIMIT`` s.

Rounds: ``ROUNDS`` (3 in CI), 24 with ``WGPY_SLOW=1`` (the issue asks for at least 20; run by
hand). The random seed is printed, and ``WGPY_SPLIT_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import pytest

from tests.supervisor_support import TunnelWatch
from tests.test_seed_e2e import Seed, seed_cluster
from wgpy.testbed import wait_for

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

SLOW = os.environ.get("WGPY_SLOW") == "1"
ROUNDS = 24 if SLOW else 3
RESUME_LIMIT = 3.0


def node_of(sc: Seed, holder: str) -> str:
    return holder.removeprefix("node-")


def settle(sc: Seed) -> str:
    """Wait until VIP:6443 is answered by the Lease holder; return that node."""
    def served() -> str | None:
        holder = sc.lease()[0]
        ans = sc.answer()
        return node_of(sc, holder) if holder and ans == holder else None

    node: str = wait_for(served, 60, "one leader serving VIP:6443")
    return node


def one_round(sc: Seed, rng: random.Random, log: list[str]) -> None:
    leader = settle(sc)
    pid = sc.procs[leader].pid
    fault = rng.choice(["sigstop", "latency", "both"])
    frozen: tuple[float, float] | None = None
    with TunnelWatch(sc.topo, interval=0.02) as watch:
        if fault in ("latency", "both"):
            # the server commits at once, the reply comes late (a slow etcd)
            delay = rng.uniform(0.3, 1.9)
            sc.srv.inject("PUT", r"/leases/", None, times=rng.randint(1, 3),
                          delay=rng.uniform(0.0, 0.4), delay_after=delay)
        if fault in ("sigstop", "both"):
            pause = rng.uniform(0.3, 6.0)
            time.sleep(rng.uniform(0.0, 1.0))
            t0 = time.monotonic()
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(pause)  # the fault itself: how long the leader stays frozen
            finally:
                os.kill(pid, signal.SIGCONT)
            frozen = (t0, time.monotonic())
        new = settle(sc)
        if frozen is not None and new != leader:
            # the resumed node must let go of its link (judged below against RESUME_LIMIT)
            wait_for(lambda: watch.first(lambda up: leader not in up, after=frozen[1]), 30,
                     f"{leader}'s wg0 to go")
        time.sleep(0.3)  # a few more samples after settling (not a wait for a condition)
    sc.srv.clear_injections()
    # judge
    resumed_at = frozen[1] if frozen else None
    # the frozen node's link is excused from its SIGSTOP until RESUME_LIMIT after SIGCONT
    excused = (frozen[0], frozen[1] + RESUME_LIMIT) if frozen else None
    both = [t for t, up, _ in watch.samples if len(up) > 1
            and not (excused and excused[0] <= t <= excused[1])]
    assert not both, f"round {fault}: two nodes had wg0 at {both[:3]} ({log})"
    seq = watch.endpoint_nodes()
    assert len(seq) == len(set(seq)), f"round {fault}: endpoint flapped {seq} ({log})"
    if resumed_at is not None and new != leader:
        down = watch.first(lambda up: leader not in up, after=resumed_at)
        assert down is not None and down - resumed_at <= RESUME_LIMIT, (down, resumed_at)
    log.append(f"{fault}:{leader}->{new}")


@pytest.mark.parametrize("rounds", [ROUNDS])
def test_no_split_brain_under_latency_and_sigstop(tmp_path: Path, rounds: int) -> None:
    seed = int(os.environ.get("WGPY_SPLIT_SEED", str(random.SystemRandom().randrange(10**6))))
    rng = random.Random(seed)
    log: list[str] = []
    with seed_cluster(tmp_path) as sc:
        sc.start("a")
        wait_for(lambda: sc.lease()[0] == "node-a", 30, "node-a to lead")
        sc.start("b")
        wait_for(lambda: "new leader node-a" in sc.all_logs(), 30, "node-b to follow")
        try:
            for _ in range(rounds):
                one_round(sc, rng, log)
        except AssertionError:
            print(f"\nsplit-brain seed {seed}: {log}\n{sc.all_logs()}")
            raise
    print(f"\nsplit-brain: {rounds} rounds, seed {seed}, no overlap: {' '.join(log)}")
