"""Benchmark harness: ``python3 -m benchmarks.run [--quick] [--runs N] [--upstream PATH]
[--impl NAME=ARGV ...]``.

For each case it builds the pair testbed (:mod:`wgpy.testbed`) and measures, run after run:
ping RTT p50/p99 at idle, iperf3 TCP with 1 and 4 streams in both directions, iperf3 UDP at
fixed rates (throughput and loss) in both directions, CPU seconds per GB of the WireGuard
processes (/proc/PID/stat) and their resident memory idle and under load (VmRSS).

After the cases of a run come its interleaved ping rounds (``ping_interleaved_*``): every
case's testbed is up at once and each round pings them one after the other, so a ratio pairs
round trips taken seconds apart. The idle round trip of one implementation drifts by ×2 within
minutes on a shared machine, more than the ``ping_*`` figures taken a minute apart can pair
away (docs/benchmarks.md, section 5). Those figures are kept, for comparison.

Cases: ``veth`` (bare veth, the physical limit), ``wireguard-go`` (the baseline), ``kernel``
(when ``ip link add X type wireguard`` works; never the User-Mode Linux guest of the interop
tests, whose 35-65 MB/s measure UML, not kernel WireGuard) and, for every
``--impl NAME=ARGV``: ``NAME`` (both sides), ``NAME->wireguard-go`` and ``wireguard-go->NAME``
(A is the handshake initiator). ``--upstream PATH`` adds ``upstream``: a current wireguard-go
build (with the GSO/GRO and TUN offloads that the packaged 2022 one lacks) on both sides, the
reference the targets are set against. The cases of one run execute back to back, so ratios
pair figures of the same run. The report says which binary and version each case ran
(``versions``).

Writes ``bench-STAMP.json``, ``.md`` and (with matplotlib) ``.png`` to ``benchmarks/results/``.
Needs root, iperf3, ping, ip, nsenter, wg and wireguard-go.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import benchmarks.handshakes
from benchmarks import report
from benchmarks.workloads import (
    EXTRA_WORKLOADS,
    RssSampler,
    Target,
    WorkloadError,
    iperf,
    iperf_server,
    ping_rtt,
)
from wgpy import testbed as tb

RESULTS_DIR = Path(__file__).resolve().parent / "results"
NS_PREFIX = "wgpybench"
TOOLS = ("ip", "nsenter", "setpriv", "wg", "ping", "iperf3", "ss", "wireguard-go")


@dataclass(frozen=True)
class Case:
    """One topology: `impl_a`/`impl_b` are argv prefixes or KERNEL; None for bare veth."""

    name: str
    impl_a: tb.ImplSpec | None
    impl_b: tb.ImplSpec | None

    def describe(self) -> dict[str, Any]:
        def show(i: tb.ImplSpec | None) -> Any:
            if isinstance(i, tb.KernelUmlImpl):  # never to be read as kernel WireGuard's speed
                return "kernel-uml (User-Mode Linux guest)"
            return "veth" if i is None else "kernel" if isinstance(i, tb.KernelImpl) else list(i)

        return {"impl_a": show(self.impl_a), "impl_b": show(self.impl_b)}


UPSTREAM = "upstream"


def plan_cases(extra: list[tuple[str, list[str]]], upstream: str | None = None) -> list[Case]:
    """The cases in run order; ``upstream`` (a wireguard-go binary) gets one, each extra
    implementation three."""
    go = list(tb.DEFAULT_IMPL)
    cases = [
        Case("veth", None, None),
        Case(report.BASELINE, go, go),
        Case("kernel", tb.KERNEL, tb.KERNEL),
    ]
    if upstream is not None:
        cases.append(Case(UPSTREAM, [upstream], [upstream]))
    for name, argv in extra:
        cases += [
            Case(name, argv, argv),
            Case(f"{name}->wireguard-go", argv, go),
            Case(f"wireguard-go->{name}", go, argv),
        ]
    return cases


@dataclass(frozen=True)
class Settings:
    runs: int
    seconds: float
    udp_rates: list[str]
    ping_count: int
    ping_interval: float
    ping_rounds: int  # interleaved ping rounds per run


@contextmanager
def build(case: Case) -> Iterator[Target]:
    """The testbed of one case, torn down on exit."""
    if case.impl_a is None or case.impl_b is None:
        with tb.Namespace(NS_PREFIX) as a, tb.Namespace(NS_PREFIX) as b:
            v = tb.veth(a, b, tb.VETH_A, tb.VETH_B)
            yield Target(case.name, a, b, v.ip_a, v.ip_b)
        return
    with tb.make_pair(case.impl_a, case.impl_b, prefix=NS_PREFIX) as p:
        p.wait_handshake()
        yield Target(case.name, p.ns_a, p.ns_b, p.tun_ip_a, p.tun_ip_b, p.wg_a.pids, p.wg_b.pids)


Step = tuple[str, Callable[[Target], dict[str, float] | None]]


def steps(s: Settings) -> list[Step]:
    """The measurements of one run, in order; metric names are ``LABEL_FIGURE``."""
    out: list[Step] = [("ping", partial(ping_rtt, count=s.ping_count, interval=s.ping_interval))]
    for streams in (1, 4):
        for rev in (False, True):
            out.append(
                (
                    f"tcp{streams}_{'rev' if rev else 'fwd'}",
                    partial(iperf, seconds=s.seconds, streams=streams, reverse=rev),
                )
            )
    for rate in s.udp_rates:
        for rev in (False, True):
            out.append(
                (
                    f"udp{rate}_{'rev' if rev else 'fwd'}",
                    partial(iperf, seconds=s.seconds, udp_rate=rate, reverse=rev),
                )
            )
    out += [(name, partial(fn, seconds=s.seconds)) for name, fn in EXTRA_WORKLOADS.items()]
    return out


class Progress:
    """One line per step on stderr: ``[k/total] mm:ss message``."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def __call__(self, msg: str, *, advance: bool = True) -> None:
        self.done += advance
        el = int(time.monotonic() - self.t0)
        print(
            f"[{self.done:>3}/{self.total}] {el // 60:02d}:{el % 60:02d} {msg}",
            file=sys.stderr,
            flush=True,
        )


def run_case(
    case: Case,
    s: Settings,
    run_no: int,
    *,
    figures: dict[str, list[float | None]],
    errors: list[str],
    progress: Progress,
) -> None:
    """One run of one case: fill ``figures[metric][run_no]``."""

    def put(metric: str, value: float) -> None:
        figures.setdefault(metric, [None] * s.runs)[run_no] = value

    with build(case) as t:
        for side, pids in (("a", t.pids_a), ("b", t.pids_b)):
            if pids:
                put(f"rss_idle_{side}_kib", sum(tb.rss_kib(p) for p in pids))
        with RssSampler(t.pids) as sampler, iperf_server(t):
            for label, fn in steps(s):
                try:
                    figs = fn(t)
                except (WorkloadError, tb.TestbedError) as e:
                    errors.append(f"run {run_no + 1} {label}: {e}")
                    progress(f"{case.name} run {run_no + 1}: {label} FAILED: {e}")
                    continue
                if figs is None:
                    progress(f"{case.name} run {run_no + 1}: {label} not available")
                    continue
                for k, v in figs.items():
                    put(f"{label}_{k}", v)
                shown = ", ".join(f"{k}={report.fmt(v)}" for k, v in figs.items())
                progress(f"{case.name} run {run_no + 1}: {label}: {shown}")
        for side, pids in (("a", t.pids_a), ("b", t.pids_b)):
            if pids:
                put(f"rss_load_{side}_kib", sum(sampler.peak[p] for p in pids))


def ping_rounds(
    cases: list[Case],
    s: Settings,
    run_no: int,
    *,
    runs: dict[str, dict[str, list[float | None]]],
    info: dict[str, dict[str, Any]],
    progress: Progress,
) -> None:
    """The interleaved ping rounds of one run: ``runs[case]["ping_interleaved_*"][i]`` for
    round i of all runs. Each round starts one case further on, so no case always follows
    the same one."""
    total = s.runs * s.ping_rounds
    with ExitStack() as stack:
        up: list[tuple[Case, Target]] = []
        for case in cases:
            try:
                up.append((case, stack.enter_context(build(case))))
            except tb.TestbedError as e:
                info[case.name]["errors"].append(f"run {run_no + 1} ping rounds: testbed: {e}")
                progress(f"{case.name}: ping rounds testbed FAILED: {e}", advance=False)
        for r in range(s.ping_rounds):
            i = run_no * s.ping_rounds + r
            shift = i % len(up) if up else 0
            for case, t in up[shift:] + up[:shift]:
                label = f"{case.name} run {run_no + 1}: ping round {r + 1}/{s.ping_rounds}"
                try:
                    figs = ping_rtt(t, count=s.ping_count, interval=s.ping_interval)
                except (WorkloadError, tb.TestbedError) as e:
                    info[case.name]["errors"].append(f"run {run_no + 1} ping round {r + 1}: {e}")
                    progress(f"{label} FAILED: {e}")
                    continue
                for k, v in figs.items():
                    runs[case.name].setdefault(f"ping_interleaved_{k}", [None] * total)[i] = v
                progress(f"{label}: p50={report.fmt(figs['p50_ms'])} ms")


def tool_version(argv: list[str]) -> str:
    try:
        res = tb.run(argv, check=False, timeout=10)
    except tb.TestbedError:
        return "unknown"
    return (
        (res.stdout or res.stderr).strip().splitlines()[0]
        if (res.stdout or res.stderr)
        else "unknown"
    )


def _git(root: str, *args: str) -> str:
    """``git -C root ARGS``'s output, "" when it fails (not a checkout, no git)."""
    try:
        res = tb.run(["git", "-C", root, *args], check=False, timeout=10)
    except tb.TestbedError:
        return ""
    return (res.stdout or "").strip() if res.returncode == 0 else ""


def impl_version(argv: list[str]) -> str:
    """What a case's argv runs: ``wgpy COMMIT`` for wgpy (``+`` when the tree has changes),
    else the binary's path and the first line of its ``--version``."""
    words = [w for w in argv if w != "env" and "=" not in w]
    if any("wgpy" in w for w in words[:3]):
        root = str(Path(__file__).resolve().parent.parent)
        commit = _git(root, "rev-parse", "--short", "HEAD") or "(not a git checkout)"
        dirty = "+" if _git(root, "status", "--porcelain", "--", "wgpy", "tun") else ""
        pythonpath = [w for w in argv if w.startswith("PYTHONPATH=")]
        where = f" ({pythonpath[0]})" if pythonpath else ""
        return f"wgpy {commit}{dirty}{where}"
    exe = words[0] if words else "?"
    return f"{shutil.which(exe) or exe}: {tool_version([exe, '--version'])}"


def parse_impl(text: str) -> tuple[str, list[str]]:
    """``NAME=ARGV`` → (NAME, shlex-split ARGV)."""
    name, sep, argv = text.partition("=")
    if not sep or not name or not argv.strip() or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=ARGV, got {text!r}")
    return name, shlex.split(argv)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python3 -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="a few seconds per case (CI smoke)")
    ap.add_argument("--runs", type=int, help="runs per case (default 3, quick 1)")
    ap.add_argument("--seconds", type=float, help="per throughput test (default 5, quick 1)")
    ap.add_argument("--udp-rates", help="comma list, iperf3 syntax (default 100M,500M)")
    ap.add_argument(
        "--impl",
        action="append",
        type=parse_impl,
        default=[],
        metavar="NAME=ARGV",
        help="extra implementation, e.g. wgpy=wgpy-userspace",
    )
    ap.add_argument(
        "--upstream",
        metavar="PATH",
        help="a current wireguard-go binary: adds the case `upstream` (the reference)",
    )
    ap.add_argument(
        "--ping-rounds", type=int, help="interleaved ping rounds per run (default 4, quick 1)"
    )
    ap.add_argument("--only", help="comma list of case names to run (default: all)")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="output directory")
    args = ap.parse_args(argv)
    if (args.runs is not None and args.runs < 1) or (
        args.ping_rounds is not None and args.ping_rounds < 0
    ):
        ap.error("--runs must be at least 1 and --ping-rounds at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"benchmarks need root and {', '.join(TOOLS)}; missing: {missing}", file=sys.stderr)
        return 2
    s = Settings(
        runs=args.runs or (1 if args.quick else 3),
        seconds=args.seconds or (1.0 if args.quick else 5.0),
        udp_rates=(args.udp_rates or ("100M" if args.quick else "100M,500M")).split(","),
        ping_count=30 if args.quick else 200,
        ping_interval=0.01,
        ping_rounds=(1 if args.quick else 4) if args.ping_rounds is None else args.ping_rounds,
    )
    tb.install_signal_handlers()
    tb.sweep_stale(NS_PREFIX)  # leftovers of a benchmark that was SIGKILLed
    if args.upstream is not None and shutil.which(args.upstream) is None:
        print(f"--upstream {args.upstream}: not an executable", file=sys.stderr)
        return 2
    cases = plan_cases(args.impl, args.upstream)
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {c.name for c in cases}
        if unknown:
            print(f"unknown case(s): {sorted(unknown)}", file=sys.stderr)
            return 2
        cases = [c for c in cases if c.name in wanted]
    info: dict[str, dict[str, Any]] = {
        c.name: {"status": "ok", **c.describe(), "errors": []} for c in cases
    }
    if any(c.name == "kernel" for c in cases) and not tb.kernel_wireguard_available():
        info["kernel"] = {"status": "skipped", "reason": "no kernel module"}
        cases = [c for c in cases if c.name != "kernel"]
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv[1:] if argv is None else argv,
        "quick": args.quick,
        "runs": s.runs,
        "seconds": s.seconds,
        "udp_rates": s.udp_rates,
        "ping_rounds": s.ping_rounds,
        "linux": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "wireguard_go": tool_version(["wireguard-go", "--version"]),
        "iperf3": tool_version(["iperf3", "--version"]),
        "python": platform.python_version(),
        "versions": {
            c.name: " / ".join(dict.fromkeys(impl_version(list(i)) for i in (c.impl_a, c.impl_b)))
            for c in cases
            if isinstance(c.impl_a, list) and isinstance(c.impl_b, list)
        },
    }
    runs: dict[str, dict[str, list[float | None]]] = {c.name: {} for c in cases}
    progress = Progress(s.runs * len(cases) * (len(steps(s)) + s.ping_rounds))
    try:
        for run_no in range(s.runs):
            for case in cases:
                try:
                    run_case(
                        case,
                        s,
                        run_no,
                        figures=runs[case.name],
                        errors=info[case.name]["errors"],
                        progress=progress,
                    )
                except tb.TestbedError as e:  # the testbed itself failed: note it, go on
                    info[case.name]["errors"].append(f"run {run_no + 1}: testbed: {e}")
                    progress(f"{case.name} run {run_no + 1}: testbed FAILED: {e}", advance=False)
            ping_rounds(cases, s, run_no, runs=runs, info=info, progress=progress)
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("interrupted: writing partial results", file=sys.stderr)
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    hooks = (
        {"handshakes": benchmarks.handshakes.NOT_MEASURED}
        if not any(k.startswith("handshakes_") for r in runs.values() for k in r)
        else {}
    )
    results = report.build_results(runs, meta, info, hooks)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    paths = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    paths[0].write_text(json.dumps(results, indent=2) + "\n")
    paths[1].write_text(report.markdown(results))
    note = report.chart(results, stem.with_suffix(".png"))
    if note is None:
        paths.append(stem.with_suffix(".png"))
    else:
        print(note, file=sys.stderr)
    for p in paths:
        print(p)
    return 130 if meta.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
