"""Profile wgpy under iperf3 load: ``python3 -m benchmarks.profile [--slow] [--seconds S]``.

Builds the wgpy↔wgpy pair testbed, runs one iperf3 TCP stream A→B and records both devices
with py-spy (``pip install py-spy``), then prints each side's top functions by own time
(``self``) and including callees (``total``), in % of samples. ``--slow`` runs the devices with
``WGPY_FASTPATH=0`` (the per-packet loop) for before/after comparisons.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.workloads import Target, iperf, iperf_server
from wgpy import testbed as tb

WGPY = [sys.executable, "-m", "wgpy.tools.userspace"]


def summarize(raw: str, top: int) -> list[str]:
    """Top functions of py-spy ``--format raw`` output (``frame;frame;... count`` lines)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return ["no samples"]
    out = [f"{total} samples; self% total% function"]
    for f, n in own.most_common(top):
        out.append(f"{100 * n / total:5.1f} {100 * incl[f] / total:5.1f}  {f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.profile", description=__doc__)
    ap.add_argument("--slow", action="store_true", help="WGPY_FASTPATH=0 (per-packet loop)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    if os.geteuid() != 0 or shutil.which("py-spy") is None:
        print("needs root and py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    env = {**os.environ, "WGPY_FASTPATH": "0" if args.slow else "1"}
    tb.install_signal_handlers()
    pair = tb.make_pair(WGPY, WGPY, env=env, prefix="wgpyprof")
    with pair as p, tempfile.TemporaryDirectory() as d:
        p.wait_handshake()
        t = Target("wgpy", p.ns_a, p.ns_b, p.tun_ip_a, p.tun_ip_b, p.wg_a.pids, p.wg_b.pids)
        with iperf_server(t):
            spies = []
            for side, pid in (("A (sender)", p.wg_a.pids[0]), ("B (receiver)", p.wg_b.pids[0])):
                out = Path(d) / f"{pid}.raw"
                argv = ["py-spy", "record", "--format", "raw", "--function", "--nonblocking"]
                argv += ["-d", str(int(args.seconds)), "-p", str(pid), "-o", str(out)]
                spies.append((side, out, subprocess.Popen(argv, stdout=subprocess.DEVNULL)))
            figs = iperf(t, seconds=args.seconds, streams=args.streams)
            for _side, _out, proc in spies:
                proc.wait(args.seconds + 30)
        print(f"iperf3 {args.streams} stream(s): {figs}")
        for side, out, _proc in spies:
            print(f"\n== {side} ==")
            print("\n".join(summarize(out.read_text() if out.exists() else "", args.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
