"""Statistics and output of the benchmark harness: JSON, a Markdown table and a PNG chart.

Raw figures arrive as ``runs[case][metric] = [value of run 1, run 2, ...]`` (``None`` where a
run produced nothing). Each metric is summarised by its median and spread; ratios against the
baseline case (wireguard-go) are taken run by run — the cases of one run execute back to back,
so a ratio compares figures measured under the same machine load — and then the median ratio
is reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BASELINE = "wireguard-go"
Runs = Mapping[str, Mapping[str, Sequence[float | None]]]


def summarize(values: Sequence[float | None]) -> dict[str, Any] | None:
    """Median, min, max and spread (half the min-max range, in % of the median)."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    spread = 100.0 * (hi - lo) / 2 / abs(med) if med else 0.0
    return {
        "median": med,
        "min": lo,
        "max": hi,
        "spread_pct": spread,
        "n": len(vals),
        "runs": list(values),
    }


def run_ratio(values: Sequence[float | None], base: Sequence[float | None]) -> float | None:
    """Median over runs of value/baseline, pairing figures of the same run."""
    pairs = [
        v / b
        for v, b in zip(values, base, strict=False)
        if v is not None and b is not None and b != 0
    ]
    return statistics.median(pairs) if pairs else None


def build_results(
    runs: Runs, meta: dict[str, Any], cases: Mapping[str, dict[str, Any]], hooks: Mapping[str, str]
) -> dict[str, Any]:
    """The JSON document: meta, each case's summarised metrics with ratios, and hook notes.

    `cases` maps a case name to its description (``status``, ``reason``, ``impl_a``, …).
    """
    base = runs.get(BASELINE, {})
    out_cases: dict[str, Any] = {}
    for name, info in cases.items():
        entry = dict(info)
        metrics: dict[str, Any] = {}
        for metric, values in runs.get(name, {}).items():
            summary = summarize(values)
            if summary is None:
                continue
            if name != BASELINE and metric in base:
                summary["ratio_vs_wireguard_go"] = run_ratio(values, base[metric])
            metrics[metric] = summary
        if info.get("status") == "ok":
            entry["metrics"] = metrics
        out_cases[name] = entry
    return {"meta": meta, "cases": out_cases, "hooks": dict(hooks)}


def fmt(x: float) -> str:
    """Three significant figures, no exponent for everyday magnitudes."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


_GROUPS = (
    ("ping_", ""),
    ("rss_idle_", ""),
    ("tcp", "_mbps"),
    ("udp", "_mbps"),
    ("udp", "_loss_pct"),
    ("", "_cpu_s_per_gb"),
    ("rss_load_", ""),
)


def metric_order(metrics: Sequence[str]) -> list[str]:
    """Group metrics for reading (latency, memory, TCP, UDP, loss, CPU, memory under load);
    first-seen order inside a group, unknown metrics last."""

    def group(m: str) -> int:
        for i, (pre, suf) in enumerate(_GROUPS):
            if m.startswith(pre) and m.endswith(suf):
                return i
        return len(_GROUPS)

    return sorted(metrics, key=lambda m: (group(m), metrics.index(m)))


def markdown(results: dict[str, Any]) -> str:
    """A Markdown report: one row per metric, one column per case that ran."""
    meta = results["meta"]
    ok = [n for n, c in results["cases"].items() if c.get("status") == "ok"]
    lines = [f"# wgpy benchmarks — {meta.get('date', '')}", ""]
    lines.append(
        f"Runs per case: {meta.get('runs')}, {meta.get('seconds')} s per "
        f"throughput test{' (quick mode)' if meta.get('quick') else ''}. "
        "Cells: median (min–max over runs) ×ratio to wireguard-go "
        "(median of same-run ratios)."
    )
    if meta.get("ping_rounds"):
        lines.append(
            f"`ping_interleaved_*`: {meta['ping_rounds']} interleaved rounds per run, every "
            "case's testbed up at once and pinged in turn; min–max and ratios over rounds "
            "(same-round ratios)."
        )
    for key in ("linux", "cpus", "loadavg", "wireguard_go", "iperf3", "python"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    for name, version in meta.get("versions", {}).items():
        lines.append(f"- case `{name}` ran {version}")
    lines.append("")
    metrics: list[str] = []
    for n in ok:
        metrics += [m for m in results["cases"][n]["metrics"] if m not in metrics]
    metrics = metric_order(metrics)
    if ok:
        lines.append("| metric | " + " | ".join(ok) + " |")
        lines.append("|---|" + "---:|" * len(ok))
        for m in metrics:
            cells = []
            for n in ok:
                s = results["cases"][n]["metrics"].get(m)
                if s is None:
                    cells.append("—")
                    continue
                cell = fmt(s["median"])
                if fmt(s["min"]) != fmt(s["max"]):
                    cell += f" ({fmt(s['min'])}–{fmt(s['max'])})"
                ratio = s.get("ratio_vs_wireguard_go")
                if ratio is not None:
                    cell += f" ×{ratio:.2f}"
                cells.append(cell)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    for n, c in results["cases"].items():
        if c.get("status") != "ok":
            lines.append(f"- {n}: {c.get('status')}: {c.get('reason', '')}")
        for err in c.get("errors", []):
            lines.append(f"- {n}: error: {err}")
    for hook, note in results.get("hooks", {}).items():
        lines.append(f"- {hook}: {note}")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> str | None:
    """Write a PNG bar chart of the throughput metrics; returns a note if it cannot."""
    try:
        import matplotlib  # type: ignore[import-not-found]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found]
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install matplotlib)"
    ok = [n for n, c in results["cases"].items() if c.get("status") == "ok"]
    metrics: list[str] = []
    for n in ok:
        metrics += [
            m for m in results["cases"][n]["metrics"] if m.endswith("_mbps") and m not in metrics
        ]
    if not ok or not metrics:
        return "chart skipped: no throughput figures"
    fig, ax = plt.subplots(figsize=(max(8, len(metrics) * 1.2), 5))
    width = 0.8 / len(ok)
    for i, n in enumerate(ok):
        ms = results["cases"][n]["metrics"]
        xs = [j + i * width for j in range(len(metrics))]
        med = [ms[m]["median"] if m in ms else 0.0 for m in metrics]
        err = [
            [ms[m]["median"] - ms[m]["min"] if m in ms else 0.0 for m in metrics],
            [ms[m]["max"] - ms[m]["median"] if m in ms else 0.0 for m in metrics],
        ]
        ax.bar(xs, med, width, yerr=err, label=n, capsize=2)
    ax.set_xticks([j + width * (len(ok) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([m.removesuffix("_mbps") for m in metrics], rotation=30, ha="right")
    ax.set_ylabel("Mbit/s (median, min–max)")
    ax.set_yscale("log")
    ax.set_title(f"wgpy benchmarks {results['meta'].get('date', '')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
