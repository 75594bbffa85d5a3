"""Interleaved ping series: idle round trips of several implementations, taken in rotation.

    sudo python3 -m benchmarks.pingseries --rounds 12 \\
        'wireguard-go=wireguard-go' \\
        'wgpy=python3 -m wgpy.tools.userspace' \\
        'wgpy-no-hand-over=env WGPY_HAND_OVER=0 python3 -m wgpy.tools.userspace'

Each round builds the pair testbed for every variant in turn (both ends the same
implementation), waits for the handshake and pings B from A (default 300 pings 10 ms apart).
The first variant is the reference: every ratio pairs a variant's p50 with the reference's p50
of the same round, and the table gives the median of those ratios. On a shared machine the idle
round trip drifts by ×2 within minutes, so rounds that alternate quickly compare variants far
better than runs a minute apart (docs/benchmarks.md, sections 3 and 4). CPU per ping is what
the device processes spent (``/proc/PID/task/*/schedstat``) while ping ran.

This is the tool behind the A/B latency figures; ``benchmarks.run`` stays the full benchmark.
To compare another checkout, give its variant ``env PYTHONPATH=/path/to/checkout python3 -m
wgpy.tools.userspace`` and run this from outside any checkout: ``python -m`` puts the current
directory ahead of PYTHONPATH, so from the repository both variants would run the same code.
Needs root, ip, ping, wg and the implementations named.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.run import parse_impl
from benchmarks.workloads import Target, ping_rtt
from wgpy import testbed as tb


@dataclass(frozen=True)
class Sample:
    """One variant's figures in one round."""

    p50_ms: float
    cpu_us_per_ping: float


def cpu_ns(pids: Iterable[int]) -> int:
    """CPU time (ns) the processes' threads have run so far."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    return total


def measure(impl: list[str], *, count: int, interval: float) -> Sample:
    """Build a pair of `impl`, ping `count` times and return the p50 and CPU per ping."""
    with tb.make_pair(impl, impl, prefix="wgpyps") as pair:
        pair.wait_handshake()
        t = Target("pair", pair.ns_a, pair.ns_b, pair.tun_ip_a, pair.tun_ip_b)
        pids = pair.wg_a.pids + pair.wg_b.pids
        before = cpu_ns(pids)
        p50 = ping_rtt(t, count=count, interval=interval)["p50_ms"]
        spent = cpu_ns(pids) - before
    return Sample(p50, spent / 1000 / count)


def summarize(
    rounds: Sequence[Mapping[str, Sample]], reference: str
) -> dict[str, dict[str, float]]:
    """Per variant: median p50, min p50, median CPU per ping and the median same-round ratio
    of its p50 to the reference's."""
    out: dict[str, dict[str, float]] = {}
    for name in rounds[0]:
        p50s = [r[name].p50_ms for r in rounds]
        out[name] = {
            "p50_ms": statistics.median(p50s),
            "min_p50_ms": min(p50s),
            "cpu_us_per_ping": statistics.median(r[name].cpu_us_per_ping for r in rounds),
            "ratio": statistics.median(r[name].p50_ms / r[reference].p50_ms for r in rounds),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m benchmarks.pingseries",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("variants", nargs="+", type=parse_impl, metavar="NAME=ARGV")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--count", type=int, default=300, help="pings per variant and round")
    ap.add_argument("--interval", type=float, default=0.01, help="seconds between pings")
    ap.add_argument("--json", type=Path, help="also write the rounds and summary here")
    args = ap.parse_args(argv)
    names = [n for n, _ in args.variants]
    if len(set(names)) != len(names):
        ap.error("variant names must differ")
    if args.rounds < 1 or args.count < 1 or args.interval <= 0:
        ap.error("--rounds and --count must be at least 1 and --interval positive")
    rounds: list[dict[str, Sample]] = []
    for i in range(args.rounds):
        got = {
            n: measure(impl, count=args.count, interval=args.interval) for n, impl in args.variants
        }
        rounds.append(got)
        line = " ".join(f"{n}={s.p50_ms:.3f}ms/{s.cpu_us_per_ping:.0f}us" for n, s in got.items())
        print(f"round {i + 1}/{args.rounds}: {line}", file=sys.stderr, flush=True)
    summary = summarize(rounds, names[0])
    print(f"| variant | p50 ms (median) | min | ×{names[0]} | CPU µs per ping |")
    print("|---|---:|---:|---:|---:|")
    for n, s in summary.items():
        print(
            f"| {n} | {s['p50_ms']:.3f} | {s['min_p50_ms']:.3f} | ×{s['ratio']:.2f} "
            f"| {s['cpu_us_per_ping']:.0f} |"
        )
    if args.json is not None:
        doc = {
            "rounds": [{n: vars(s) for n, s in r.items()} for r in rounds],
            "summary": summary,
            "count": args.count,
            "interval": args.interval,
        }
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
