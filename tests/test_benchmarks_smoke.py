"""The benchmark harness: pure parsers/statistics, and a quick run against wireguard-go."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from benchmarks import report
from benchmarks.handshakes import build_initiations
from benchmarks.profile import summarize
from benchmarks.run import impl_version, parse_impl, plan_cases
from benchmarks.workloads import WorkloadError, parse_iperf, parse_ping, parse_rate, percentile
from noise import crypto
from wgpy import testbed as tb
from wgpy.core import messages
from wgpy.core.device import Device

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("ip", "nsenter", "setpriv", "wg", "ping", "iperf3", "ss", "wireguard-go")
_without_testbed = pytest.mark.skipif(
    os.geteuid() != 0 or any(shutil.which(t) is None for t in TOOLS),
    reason=f"needs root and {', '.join(TOOLS)}",
)


def run_module(module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` from the repository, output captured."""
    return run_module_pid(module, *args, timeout=timeout)[0]


def run_module_pid(
    module: str, *args: str, timeout: float
) -> tuple[subprocess.CompletedProcess[str], int]:
    """:func:`run_module`, and the PID it ran as: the testbed names its namespaces
    ``PREFIX-PID-…``, so a test can tell its own from another suite's on a shared machine."""
    with subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def own_namespaces(prefix: str, pid: int) -> set[str]:
    return {n for n in tb.list_netns() if n.startswith(f"{prefix}-{pid}-")}


def needs_testbed(test: Callable[..., None]) -> Callable[..., None]:
    """An interop test: skipped without root and the testbed's tools."""
    return pytest.mark.interop(_without_testbed(test))  # type: ignore[no-any-return]


def test_percentile_and_rate() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == 99.0
    with pytest.raises(ValueError):
        percentile([], 50)
    assert parse_rate("100M") == 100e6 and parse_rate("1.5G") == 1.5e9
    assert parse_rate("2000") == 2000.0


def test_parse_ping_reads_each_reply() -> None:
    out = (
        "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.\n"
        "64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=0.318 ms\n"
        "64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=1.5 ms\n\n"
        "rtt min/avg/max/mdev = 0.318/0.909/1.500/0.591 ms\n"
    )
    assert parse_ping(out) == [0.318, 1.5]


def test_parse_iperf_receiver_side_and_errors() -> None:
    doc = {
        "end": {
            "sum_sent": {"bits_per_second": 9e8, "bytes": 10},
            "sum_received": {"bits_per_second": 4.5e8, "bytes": 5_000_000, "lost_percent": 0.7},
        }
    }
    tcp = parse_iperf(json.dumps(doc), udp=False)
    assert (tcp.mbps, tcp.bytes, tcp.lost_pct) == (450.0, 5_000_000, None)
    assert parse_iperf(json.dumps(doc), udp=True).lost_pct == 0.7
    with pytest.raises(WorkloadError, match="unable to connect"):
        parse_iperf(json.dumps({"error": "unable to connect to server"}), udp=False)
    with pytest.raises(WorkloadError):
        parse_iperf("iperf3: error", udp=False)


def test_summary_and_same_run_ratios() -> None:
    s = report.summarize([10.0, None, 14.0, 12.0])
    assert s is not None
    assert (s["median"], s["min"], s["max"], s["n"]) == (12.0, 10.0, 14.0, 3)
    assert s["spread_pct"] == pytest.approx(100 * 2 / 12)
    assert report.summarize([None]) is None
    # Ratios pair run i with run i: 2/1, 6/2, 4/4 -> median 2.0 (not 12/4 = 3 of medians).
    assert report.run_ratio([2.0, 6.0, 4.0], [1.0, 2.0, 4.0]) == 2.0
    assert report.run_ratio([2.0, None], [None, 1.0]) is None


def test_results_markdown_and_skips() -> None:
    runs = {
        "wireguard-go": {"tcp1_fwd_mbps": [100.0, 200.0], "ping_p50_ms": [0.3, 0.5]},
        "wgpy": {"tcp1_fwd_mbps": [50.0, 50.0], "ping_p50_ms": [0.6, 1.0]},
    }
    cases: dict[str, dict[str, Any]] = {
        "wireguard-go": {"status": "ok"},
        "wgpy": {"status": "ok", "errors": ["x"]},
        "kernel": {"status": "skipped", "reason": "no kernel module"},
    }
    res = report.build_results(runs, {"date": "d", "runs": 2}, cases, {"handshakes": "later"})
    wgpy = res["cases"]["wgpy"]["metrics"]
    assert wgpy["tcp1_fwd_mbps"]["ratio_vs_wireguard_go"] == pytest.approx(0.375)
    assert "ratio_vs_wireguard_go" not in res["cases"]["wireguard-go"]["metrics"]["ping_p50_ms"]
    md = report.markdown(res)
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0] == "| metric | wireguard-go | wgpy |"
    assert rows[1].startswith("| ping_p50_ms |")  # latency first, then throughput
    assert "| tcp1_fwd_mbps | 150 (100–200) | 50.0 ×0.38 |" in rows
    assert "- kernel: skipped: no kernel module" in md
    assert "- wgpy: error: x" in md and "- handshakes: later" in md


def test_profile_summary_counts_self_and_total() -> None:
    raw = "run (a.py:1);loop (a.py:5);write (t.py:9) 6\nrun (a.py:1);loop (a.py:5) 2\nbad\n"
    lines = summarize(raw, 5)
    assert lines[0].startswith("8 samples")
    assert lines[1].split() == ["75.0", "75.0", "write", "(t.py:9)"]
    assert lines[2].split() == ["25.0", "100.0", "loop", "(a.py:5)"]
    assert summarize("", 5) == ["no samples"]


def test_precomputed_initiations_are_accepted_by_a_responder() -> None:
    """Every precomputed initiation, in send order, completes a handshake on a Device."""
    responder = Device(wall_time_ns=lambda: 1_700_000_000 * 10**9)
    responder.set_private_key(crypto.generate_private_key(), now=0.0)
    assert responder.public_key is not None
    keys = [crypto.generate_private_key() for _ in range(3)]
    for k in keys:
        responder.add_peer(crypto.public_key(k), now=0.0)
    todo = build_initiations(keys, responder.public_key, budget_s=10.0, max_count=6)
    assert len(todo) == 6 and len({i for i, _m, _mac in todo}) == 6
    for n, (index, msg, _mac1) in enumerate(todo):
        # one round of all peers per 25 ms: slower than the 20 ms per-peer flood limit
        responder.receive_datagram(msg, ("192.0.2.9", 1000 + n), now=1.0 + n * 0.025 / 3)
        ((reply, _addr),) = responder.datagrams_to_send()
        parsed = messages.parse_response(reply)
        assert parsed is not None and parsed.receiver_index == index
    assert responder.drops == {}


def test_cli_parsing_and_case_plan() -> None:
    assert parse_impl("wgpy=python3 -m wgpy.tools.userspace") == (
        "wgpy",
        ["python3", "-m", "wgpy.tools.userspace"],
    )
    for bad in ("wgpy", "=x", "a/b=x", "wgpy="):
        with pytest.raises(Exception, match="NAME=ARGV"):
            parse_impl(bad)
    names = [c.name for c in plan_cases([("wgpy", ["wgpy-userspace"])])]
    assert names == [
        "veth",
        "wireguard-go",
        "kernel",
        "wgpy",
        "wgpy->wireguard-go",
        "wireguard-go->wgpy",
    ]


def test_kernel_case_is_the_module_and_uml_is_labelled_uml() -> None:
    from benchmarks.run import Case

    kernel = next(c for c in plan_cases([]) if c.name == "kernel")
    assert isinstance(kernel.impl_a, tb.KernelImpl) and isinstance(kernel.impl_b, tb.KernelImpl)
    uml = Case("wgpy->kernel-uml", ["wgpy-userspace"], tb.KERNEL_UML).describe()
    assert uml["impl_b"] == "kernel-uml (User-Mode Linux guest)"


def test_upstream_is_a_case_of_its_own_and_each_case_names_what_it_ran() -> None:
    cases = plan_cases([("wgpy", ["wgpy-userspace"])], "/opt/wg/wireguard-go-new")
    names = [c.name for c in cases]
    assert names[:4] == ["veth", "wireguard-go", "kernel", "upstream"]
    up = cases[3]
    assert up.impl_a == up.impl_b == ["/opt/wg/wireguard-go-new"]
    assert impl_version(["env", "X=1", sys.executable, "-m", "wgpy.userspace"]).startswith("wgpy ")
    shown = impl_version(["/no/such/wireguard-go"])
    assert shown.startswith("/no/such/wireguard-go: ")


@needs_testbed
def test_quick_benchmark_wireguard_go(tmp_path: Path) -> None:
    res, pid = run_module_pid(
        "benchmarks.run",
        "--quick",
        "--only",
        "wireguard-go,kernel,wgpy",
        "--impl",
        f"wgpy={sys.executable} -m wgpy.tools.userspace",
        "--out",
        str(tmp_path),
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    written = [Path(p) for p in res.stdout.split()]
    assert written and all(p.exists() and p.parent == tmp_path for p in written)
    (js,) = [p for p in written if p.suffix == ".json"]
    doc = json.loads(js.read_text())
    go = doc["cases"]["wireguard-go"]
    assert go["status"] == "ok" and go["errors"] == []
    m = go["metrics"]
    for k in (
        "tcp1_fwd_mbps",
        "tcp1_rev_mbps",
        "tcp4_fwd_mbps",
        "tcp4_rev_mbps",
        "udp100M_fwd_mbps",
        "udp100M_rev_mbps",
    ):
        assert m[k]["median"] > 0, k
    assert m["udp100M_fwd_mbps"]["median"] < 150  # a fixed rate, not a flood
    assert 0 < m["ping_p50_ms"]["median"] <= m["ping_p99_ms"]["median"] < 1000
    assert m["tcp1_fwd_cpu_s_per_gb"]["median"] > 0
    assert m["rss_load_a_kib"]["median"] >= m["rss_idle_a_kib"]["median"] > 1000
    assert doc["meta"]["wireguard_go"].startswith("wireguard-go")
    assert m["handshakes_per_s"]["median"] > 50  # a responder completes handshakes
    wgpy = doc["cases"]["wgpy"]
    assert wgpy["status"] == "ok" and wgpy["errors"] == [], wgpy.get("errors")
    w = wgpy["metrics"]
    for k in ("tcp1_fwd_mbps", "tcp4_rev_mbps", "udp100M_fwd_mbps", "handshakes_per_s"):
        assert w[k]["median"] > 0, k
        assert w[k]["ratio_vs_wireguard_go"] > 0, k  # paired with the same run's baseline
    assert w["rss_idle_a_kib"]["median"] > 1000
    # the interleaved ping round (one in quick mode) of every case that ran, paired by round
    for case in (m, w):
        p = case["ping_interleaved_p50_ms"]
        assert p["n"] == 1 and 0 < p["median"] <= case["ping_interleaved_p99_ms"]["median"]
    assert w["ping_interleaved_p50_ms"]["ratio_vs_wireguard_go"] == pytest.approx(
        w["ping_interleaved_p50_ms"]["median"] / m["ping_interleaved_p50_ms"]["median"]
    )
    assert doc["meta"]["ping_rounds"] == 1
    assert "handshakes" not in doc["hooks"]  # measured, so no "not measured" note
    kernel = doc["cases"]["kernel"]
    assert kernel["status"] in ("ok", "skipped")
    if kernel["status"] == "skipped":
        assert kernel["reason"] == "no kernel module"
    assert "| tcp1_fwd_mbps |" in js.with_suffix(".md").read_text()
    assert "[ 1/" in res.stderr or "[  1/" in res.stderr  # progress went to stderr
    assert own_namespaces("wgpybench", pid) == set()  # the harness removed its namespaces


def test_pingseries_ratios_pair_each_round_with_the_reference() -> None:
    from benchmarks.pingseries import Sample, summarize

    rounds = [
        {"go": Sample(0.30, 900.0), "py": Sample(0.45, 500.0)},
        {"go": Sample(0.20, 1000.0), "py": Sample(0.40, 400.0)},
        {"go": Sample(0.40, 800.0), "py": Sample(0.44, 600.0)},
    ]
    s = summarize(rounds, "go")
    assert s["go"]["ratio"] == 1.0
    # same-round ratios 1.5, 2.0, 1.1: their median, not a ratio of medians (0.44 / 0.30)
    assert s["py"]["ratio"] == pytest.approx(1.5)
    assert s["py"]["p50_ms"] == 0.44 and s["py"]["min_p50_ms"] == 0.40
    assert s["py"]["cpu_us_per_ping"] == 500.0


def test_harness_refuses_bad_round_counts() -> None:
    for args in (["--runs", "0"], ["--ping-rounds", "-1"]):
        res = run_module("benchmarks.run", *args, timeout=60)
        assert res.returncode == 2 and "at least" in res.stderr, (args, res.stderr)


def test_pingseries_refuses_bad_arguments() -> None:
    for args in (["a=x", "a=y"], ["noequals"], ["--rounds", "0", "a=x"]):
        res = run_module("benchmarks.pingseries", *args, timeout=60)
        assert res.returncode == 2 and "error" in res.stderr, (args, res.stderr)


@needs_testbed
def test_quick_ping_series_against_wireguard_go(tmp_path: Path) -> None:
    out = tmp_path / "series.json"
    res, pid = run_module_pid(
        "benchmarks.pingseries",
        "--rounds",
        "2",
        "--count",
        "5",
        "--json",
        str(out),
        "wireguard-go=wireguard-go",
        f"wgpy={sys.executable} -m wgpy.tools.userspace",
        timeout=180,
    )
    assert res.returncode == 0, res.stderr
    assert "| wgpy |" in res.stdout and "round 2/2" in res.stderr
    doc = json.loads(out.read_text())
    assert len(doc["rounds"]) == 2
    for name in ("wireguard-go", "wgpy"):
        s = doc["summary"][name]
        assert 0 < s["p50_ms"] < 100 and s["cpu_us_per_ping"] > 0
    assert doc["summary"]["wgpy"]["ratio"] > 0
    assert own_namespaces("wgpyps", pid) == set()  # every namespace it made is gone
