"""Workloads for the benchmark harness: iperf3 TCP/UDP, ping RTT, CPU and memory sampling.

Each workload runs between two namespaces of a :class:`Target` (a bare veth or a WireGuard
pair) and returns flat ``{metric_name: value}`` figures. Parsers are pure functions so they can
be tested without a testbed.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from wgpy import testbed as tb

IPERF_PORT = 5201
UDP_PAYLOAD = 1350  # + 28 bytes of IP/UDP headers fits a 1420-byte tunnel MTU


@dataclass
class Target:
    """Where a workload runs: traffic goes from ``ns_a`` to ``dst_b`` (and back to ``dst_a``).

    `pids` are the WireGuard processes whose CPU and memory are measured (empty for veth or
    the kernel).
    """

    name: str
    ns_a: tb.Namespace
    ns_b: tb.Namespace
    dst_a: str
    dst_b: str
    pids_a: list[int] = field(default_factory=list)
    pids_b: list[int] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [*self.pids_a, *self.pids_b]


class WorkloadError(RuntimeError):
    """A workload ran but produced no usable figures."""


# --- pure parsers and statistics ------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (`q` in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


_RTT_RE = re.compile(r"icmp_seq=\d+ .*time=([0-9.]+) ms")


def parse_ping(text: str) -> list[float]:
    """Round-trip times in ms of each reply in ``ping -n`` output."""
    return [float(m.group(1)) for m in _RTT_RE.finditer(text)]


@dataclass(frozen=True)
class IperfResult:
    """Receiver-side figures of one iperf3 run."""

    mbps: float
    bytes: int
    lost_pct: float | None  # UDP only


def parse_iperf(text: str, *, udp: bool) -> IperfResult:
    """Parse ``iperf3 -J`` output; raises :class:`WorkloadError` on an iperf3 error."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkloadError(f"iperf3 printed no JSON: {text[:200]!r}") from e
    if "error" in doc:
        raise WorkloadError(f"iperf3: {doc['error']}")
    recv = doc["end"]["sum_received"]
    return IperfResult(
        mbps=recv["bits_per_second"] / 1e6,
        bytes=int(recv["bytes"]),
        lost_pct=float(recv.get("lost_percent", 0.0)) if udp else None,
    )


def parse_rate(rate: str) -> float:
    """``"100M"`` → 100e6 bit/s (K, M, G suffixes, as iperf3 takes them)."""
    mult = {"K": 1e3, "M": 1e6, "G": 1e9}
    r = rate.strip().upper()
    return float(r[:-1]) * mult[r[-1]] if r[-1:] in mult else float(r)


# --- sampling -------------------------------------------------------------------------------


class RssSampler:
    """Background thread recording the peak VmRSS (KiB) of each PID while active."""

    def __init__(self, pids: Sequence[int], interval: float = 0.1) -> None:
        self.peak: dict[int, int] = dict.fromkeys(pids, 0)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        for pid in self.peak:
            # A process that exited keeps the peak seen so far.
            with contextlib.suppress(OSError, tb.TestbedError):
                self.peak[pid] = max(self.peak[pid], tb.rss_kib(pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def cpu_total(pids: Sequence[int]) -> float:
    """Sum of user+system CPU seconds of `pids`."""
    return sum(tb.cpu_seconds(p) for p in pids)


# --- workloads ------------------------------------------------------------------------------


@contextmanager
def iperf_server(t: Target) -> Iterator[None]:
    """An iperf3 server in ``ns_b`` on ``dst_b``; stopped on exit."""
    proc = t.ns_b.popen(["iperf3", "-s", "-B", t.dst_b, "-p", str(IPERF_PORT)])
    try:
        try:
            _wait_iperf_listening(t)
        except tb.WaitTimeout:
            raise WorkloadError("iperf3 server did not start") from None
        yield
    finally:
        proc.terminate()
        proc.wait(5)


# iperf3's server takes one test at a time and re-listens after each: a client that comes
# too early (a loaded machine) is refused, told the server is busy, or reset on the control
# connection. Such a run measured nothing; it is run again (the tunnel carried the refusal).
IPERF_TRIES = 3
_IPERF_RACE = re.compile(
    r"server is busy|unable to connect to server: Connection refused|"
    r"unable to receive control message: Connection reset"
)


def _wait_iperf_listening(t: Target) -> None:
    tb.wait_for(lambda: f":{IPERF_PORT}" in t.ns_b.run(["ss", "-Hltn"]).stdout, 5.0,
                "iperf3 listening", interval=0.05)


def iperf(
    t: Target,
    *,
    seconds: float,
    streams: int = 1,
    reverse: bool = False,
    udp_rate: str | None = None,
) -> dict[str, float]:
    """One iperf3 client run from ``ns_a``; returns Mbit/s, loss % (UDP) and CPU s/GB."""
    argv = [
        "iperf3",
        "-c",
        t.dst_b,
        "-p",
        str(IPERF_PORT),
        "-J",
        "-t",
        f"{seconds:g}",
        "-P",
        str(streams),
        "--connect-timeout",
        "3000",
    ]
    if reverse:
        argv.append("-R")
    if udp_rate is not None:
        argv += ["-u", "-b", udp_rate, "-l", str(UDP_PAYLOAD)]
    for attempt in range(IPERF_TRIES):
        _wait_iperf_listening(t)
        cpu0 = cpu_total(t.pids)
        res = t.ns_a.run(argv, check=False, timeout=seconds + 20)
        cpu = cpu_total(t.pids) - cpu0
        if attempt + 1 == IPERF_TRIES or not _IPERF_RACE.search(res.stdout):
            break
        print(f"iperf3 retried: {res.stdout[-160:]!r}", file=sys.stderr)
    r = parse_iperf(res.stdout, udp=udp_rate is not None)
    out = {"mbps": r.mbps}
    if r.lost_pct is not None:
        out["loss_pct"] = r.lost_pct
    if t.pids and r.bytes > 0:
        out["cpu_s_per_gb"] = cpu / (r.bytes / 1e9)
    return out


def ping_rtt(t: Target, *, count: int, interval: float) -> dict[str, float]:
    """RTT p50/p99 (ms) of `count` pings A→B; loss % too."""
    res = t.ns_a.run(
        ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "2", t.dst_b],
        check=False,
        timeout=count * interval + 15,
    )
    rtts = parse_ping(res.stdout)
    if not rtts:
        raise WorkloadError(f"no ping replies: {res.stdout[-200:]!r}")
    return {
        "p50_ms": percentile(rtts, 50),
        "p99_ms": percentile(rtts, 99),
        "loss_pct": 100.0 * (count - len(rtts)) / count,
    }


class ExtraWorkload(Protocol):
    """A workload beyond iperf3/ping: figures for `target`, or None when it cannot run there.

    `seconds` is the harness's per-test duration (short in quick mode)."""

    def __call__(self, target: Target, *, seconds: float) -> dict[str, float] | None: ...


# The handshake-rate workload (benchmarks.handshakes) registers itself here.
EXTRA_WORKLOADS: dict[str, ExtraWorkload] = {}
