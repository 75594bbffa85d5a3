"""A handshake flood at a live wgpy-userspace: cookies, bounded cost, the real peer gets in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from tests.support import IMPLS, interop
from wgpy import testbed as tb

pytestmark = interop
NETPROBE = str(Path(__file__).with_name("netprobe.py"))
FLOOD_SECONDS = 12.0  # the legitimate peer needs one 5 s retransmit to carry mac2
FLOOD_RATE = 20_000  # initiations per second: well above the under-load threshold (1000/s)
N_SOURCES = 40


def test_handshake_flood_cookies_and_legitimate_peer() -> None:
    # A = wireguard-go (the legitimate initiator), B = wgpy (the target); the flooder runs in
    # A's namespace from 40 other addresses
    with tb.make_pair(IMPLS["wireguard-go"], IMPLS["wgpy"]) as p:
        sources = [f"192.168.241.{100 + i}" for i in range(N_SOURCES)]
        for s in sources:
            p.ns_a.ip("addr", "add", f"{s}/24", "dev", p.veth.name_a)
        pid_b = p.wg_b.pid
        cpu0, rss0 = tb.cpu_seconds(pid_b), tb.rss_kib(pid_b)
        flooder = p.ns_a.popen(
            [sys.executable, NETPROBE, "flood", p.veth.ip_b, "51820", p.pub_b,
             str(FLOOD_SECONDS), ",".join(sources), str(FLOOD_RATE)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.5)  # the device is under load now
        t0 = time.monotonic()
        got_through = False
        while time.monotonic() - t0 < FLOOD_SECONDS - 1.0:
            if p.ping(count=1, timeout=0.5).returncode == 0:
                got_through = True
                break
        latency = time.monotonic() - t0
        out, _ = flooder.communicate(timeout=FLOOD_SECONDS + 30)
        res = json.loads(out.decode().strip().splitlines()[-1])
        cpu = tb.cpu_seconds(pid_b) - cpu0
        rss = tb.rss_kib(pid_b)
        rate = res["sent"] / res["seconds"]
        print(
            f"\nflood {rate:.0f} initiations/s from {N_SOURCES} sources for "
            f"{res['seconds']:.1f} s: {res['cookie_replies']} cookie replies, "
            f"{res['other']} other replies; wgpy CPU {cpu:.2f} s, RSS {rss0} -> {rss} KiB; "
            f"legitimate handshake + ping after {latency:.2f} s"
        )
        assert got_through, "the legitimate peer never got through the flood"
        assert res["cookie_replies"] > 0  # under load: cookie replies, not responses
        assert res["other"] == 0  # never a handshake response to junk
        assert rss - rss0 < 30 * 1024  # memory stays bounded
        assert p.wg_b.proc is not None and p.wg_b.proc.poll() is None  # still alive
        # after the flood the tunnel works normally
        assert p.ping(from_a=False, count=2, timeout=2.0).returncode == 0
