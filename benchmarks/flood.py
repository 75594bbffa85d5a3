"""Under a handshake flood, does data keep flowing? ``python3 -m benchmarks.flood``.

For each implementation (``--impl NAME=ARGV``, both ends of the tunnel) and run, one testbed:
the pair (A and B, :func:`wgpy.testbed.make_pair`) and a third namespace F, the flooder's, with
a veth of its own to B and ``--sources`` addresses on it. Then, in that testbed:

1. single-stream TCP A→B through the tunnel (iperf3, ``--seconds``), no flood: the baseline;
2. for every rate of ``--rates``: F sends initiations with a **valid mac1** for B's public key
   (random contents otherwise, so each costs B its mac1 check and whatever comes after), from
   its source addresses round robin, paced to the rate, for a bounded time; after one second
   of flood, iperf3 runs again, and a new legitimate peer (a fresh key added to B before the
   flood; the prober in F, from its own address) starts its handshake. The prober answers a
   cookie reply at once with mac2 and re-sends an initiation after ``PROBE_RETRY`` s of
   silence; its figure is the time from its first initiation to B's response.
   B's CPU (share of one core over the iperf3 window) and peak RSS are sampled meanwhile.

``rcvbuf_drops`` counts what B's kernel dropped because the device's socket was full (junk
and data alike: what a device cannot read in time costs the tunnel its data too).
Every figure of a rate is paired with the baseline of the same testbed (``tcp_ratio``), and
the implementations take turns within a run, so ratios between them pair figures taken
minutes apart at most. Writes ``flood-STAMP.json`` and ``.md`` to ``benchmarks/results/``.
Needs root, iperf3, ip, wg and the implementations. Every process and namespace it makes is
removed on exit; floods stop by themselves after ``seconds + FLOOD_EXTRA`` s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.handshakes import bound_sockets
from benchmarks.run import RESULTS_DIR, parse_impl, tool_version
from benchmarks.workloads import RssSampler, Target, WorkloadError, iperf, iperf_server
from noise import crypto, tai64n
from noise.cookie import cookie_key, mac1_key
from noise.handshake import Handshake, StaticKeys
from wgpy import testbed as tb
from wgpy.core import messages
from wgpy.core.keys import parse_base64_key, to_base64

NS_PREFIX = "wgpyflood"
VETH_F, VETH_FB = "192.168.242.1/24", "192.168.242.2/24"
PROBE_ADDR = "192.168.242.9"
SOURCE_BASE = 10  # flood sources: 192.168.242.10 ...
POOL = 4096  # distinct junk initiations, sent in turn
WARMUP = 1.0  # seconds of flood before measuring
FLOOD_EXTRA = 4.0  # the flood lasts the measurement plus this
PROBE_RETRY = 0.5
PROBE_TIMEOUT = 10.0
TICK = 0.001


# --- the flooder and the prober (children in F) -------------------------------------------------


def junk_pool(responder: bytes, n: int) -> list[bytes]:
    key = mac1_key(responder)
    out = []
    for _ in range(n):
        msg = bytearray(messages.MESSAGE_INITIATION.to_bytes(4, "little") + os.urandom(144))
        msg[116:132] = crypto.mac(key, bytes(msg[:116]))
        msg[132:148] = bytes(16)
        out.append(bytes(msg))
    return out


def flood(params: dict[str, Any]) -> dict[str, float]:
    """Send junk initiations at ``rate``/s for ``seconds``; returns what was sent."""
    target = (params["host"], int(params["port"]))
    rate = float(params["rate"])
    seconds = float(params["seconds"])
    pool = junk_pool(bytes.fromhex(params["responder"]), POOL)
    socks = bound_sockets(params["sources"])
    sent = refused = 0
    n_socks, n_pool = len(socks), len(pool)
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate) - sent - refused
        for _ in range(min(due, int(rate * 0.01) + 1)):  # catch up at most 10 ms at once
            try:
                socks[i % n_socks].sendto(pool[i % n_pool], target)
                sent += 1
            except OSError:
                refused += 1
            i += 1
        if due <= 0:
            time.sleep(TICK)
    elapsed = time.monotonic() - t0
    for s in socks:
        s.close()
    return {"sent": float(sent), "refused": float(refused), "seconds": elapsed}


def probe(params: dict[str, Any]) -> dict[str, float]:
    """One legitimate handshake under the flood: seconds until B's response (or -1)."""
    responder = bytes.fromhex(params["responder"])
    target = (params["host"], int(params["port"]))
    static = StaticKeys(bytes.fromhex(params["key"]))
    hs = Handshake(responder)
    hs.precompute(static)
    key1, ckey = mac1_key(responder), cookie_key(responder)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((params["source"], 0))
    cookie: bytes | None = None
    index = 0x1000
    cookies = 0

    def new_initiation() -> tuple[bytes, bytes]:
        nonlocal index
        index += 1
        f = hs.create_initiation(
            static,
            ephemeral_private=crypto.generate_private_key(),
            timestamp=tai64n.stamp(time.time_ns()),
            sender_index=index,
        )
        msg = messages.build_initiation(
            index, f.ephemeral, f.encrypted_static, f.encrypted_timestamp
        )
        mac1 = crypto.mac(key1, memoryview(msg)[:116])
        msg[116:132] = mac1
        return bytes(msg), mac1

    def stamp(msg: bytes) -> bytes:
        return msg[:132] + (crypto.mac(cookie, msg[:132]) if cookie else bytes(16))

    t0 = time.monotonic()
    msg, mac1 = new_initiation()
    s.sendto(stamp(msg), target)
    last = t0
    result = -1.0
    while time.monotonic() - t0 < PROBE_TIMEOUT:
        if not select.select([s], [], [], 0.05)[0]:
            if time.monotonic() - last >= PROBE_RETRY:
                msg, mac1 = new_initiation()
                s.sendto(stamp(msg), target)
                last = time.monotonic()
            continue
        data = s.recv(512)
        t = messages.message_type(data)
        if t == messages.MESSAGE_RESPONSE:
            r = messages.parse_response(data)
            if r is not None and r.receiver_index == index:
                result = time.monotonic() - t0
                break
        elif t == messages.MESSAGE_COOKIE_REPLY:
            c = messages.parse_cookie_reply(data)
            if c is not None and c.receiver_index == index:
                with contextlib.suppress(Exception):
                    cookie = crypto.xaead_open(ckey, c.nonce, c.encrypted_cookie, mac1)
                    cookies += 1
                    s.sendto(stamp(msg), target)  # at once, with mac2
                    last = time.monotonic()
    s.close()
    return {"seconds": result, "cookie_replies": float(cookies)}


# --- the harness ----------------------------------------------------------------------------------


def _write_params(d: str, name: str, params: dict[str, Any]) -> Path:
    path = Path(d) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # may hold a key
    with os.fdopen(fd, "w") as f:
        json.dump(params, f)
    return path


def _child(ns: tb.Namespace, mode: str, params: Path) -> Any:
    import subprocess

    return ns.popen(
        [sys.executable, "-m", "benchmarks.flood", f"--{mode}", str(params)],
        stdout=subprocess.PIPE,
    )


def _result(proc: Any, timeout: float) -> dict[str, float]:
    out, _ = proc.communicate(timeout=timeout)
    text = (out or b"").decode().strip().splitlines()
    if proc.returncode != 0 or not text:
        raise WorkloadError(f"child exited {proc.returncode}")
    res: dict[str, float] = json.loads(text[-1])
    return res


def udp_rcvbuf_errors(ns: tb.Namespace) -> int:
    """Datagrams the kernel dropped in ``ns`` because a socket's receive buffer was full
    (``/proc/net/snmp`` Udp RcvbufErrors): data lost before the device could read it."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()]
    udp = [ln for ln in lines if ln and ln[0] == "Udp:"]
    if len(udp) < 2 or "RcvbufErrors" not in udp[0]:
        return 0
    return int(udp[1][udp[0].index("RcvbufErrors")])


def measure_impl(
    argv: list[str], rates: list[float], seconds: float, sources: int
) -> dict[str, float]:
    """All figures of one implementation in one fresh testbed."""
    out: dict[str, float] = {}
    with tb.make_pair(argv, argv, prefix=NS_PREFIX) as p, tb.Namespace(NS_PREFIX) as f:
        p.wait_handshake(timeout=20.0)
        link = tb.veth(f, p.ns_b, VETH_F, VETH_FB)
        addrs = [f"192.168.242.{SOURCE_BASE + i}" for i in range(sources)]
        with tempfile.TemporaryDirectory(prefix="wgpyflood-") as d:
            batch = Path(d) / "addrs"
            batch.write_text(
                "".join(f"addr add {a}/24 dev {link.name_a}\n" for a in [PROBE_ADDR, *addrs])
            )
            f.ip("-batch", str(batch))
            t = Target("flood", p.ns_a, p.ns_b, p.tun_ip_a, p.tun_ip_b, p.wg_a.pids, p.wg_b.pids)
            pids_b = p.wg_b.pids
            responder = parse_base64_key(p.pub_b).hex()
            common = {"responder": responder, "host": link.ip_b, "port": p.port}
            with iperf_server(t):
                cpu0, t0 = sum(tb.cpu_seconds(x) for x in pids_b), time.monotonic()
                base = iperf(t, seconds=seconds)
                out["tcp_mbps_0"] = base["mbps"]
                out["cpu_pct_0"] = 100 * (
                    sum(tb.cpu_seconds(x) for x in pids_b) - cpu0
                ) / (time.monotonic() - t0)
                out["rss_kib_0"] = sum(tb.rss_kib(x) for x in pids_b)
                for rate in rates:
                    tag = f"{rate / 1000:g}k"
                    key = crypto.generate_private_key()
                    pub = to_base64(crypto.public_key(key))
                    p.wg_b.wg("set", "wg0", "peer", pub, "allowed-ips", "10.98.0.1/32")
                    fl = _write_params(d, f"flood-{tag}", {
                        **common, "rate": rate, "seconds": WARMUP + seconds + FLOOD_EXTRA,
                        "sources": addrs,
                    })  # fmt: skip
                    pr = _write_params(
                        d, f"probe-{tag}", {**common, "key": key.hex(), "source": PROBE_ADDR}
                    )
                    lost0 = udp_rcvbuf_errors(p.ns_b)
                    with RssSampler(pids_b) as rss:
                        flooder = _child(f, "flood", fl)
                        try:
                            time.sleep(WARMUP)  # a benchmark: the flood must be on first
                            prober = _child(f, "probe", pr)
                            cpu0, t0 = sum(tb.cpu_seconds(x) for x in pids_b), time.monotonic()
                            try:
                                r = iperf(t, seconds=seconds)
                                out[f"tcp_mbps_{tag}"] = r["mbps"]
                            except WorkloadError:
                                out[f"tcp_mbps_{tag}"] = 0.0  # nothing got through
                            out[f"cpu_pct_{tag}"] = 100 * (
                                sum(tb.cpu_seconds(x) for x in pids_b) - cpu0
                            ) / (time.monotonic() - t0)
                            hs = _result(prober, PROBE_TIMEOUT + 30)
                            out[f"handshake_s_{tag}"] = hs["seconds"]
                        finally:
                            fres = _result(flooder, WARMUP + seconds + FLOOD_EXTRA + 60)
                    out[f"rcvbuf_drops_{tag}"] = udp_rcvbuf_errors(p.ns_b) - lost0
                    out[f"flood_rate_{tag}"] = fres["sent"] / fres["seconds"]
                    out[f"rss_kib_{tag}"] = sum(rss.peak.values())
                    out[f"tcp_ratio_{tag}"] = out[f"tcp_mbps_{tag}"] / max(base["mbps"], 1e-9)
                    p.wg_b.wg("set", "wg0", "peer", pub, "remove")
    return out


def table(results: dict[str, list[dict[str, float]]], rates: list[float]) -> str:
    """Markdown: one row per implementation, medians (min–max) over runs."""

    def cell(name: str, key: str, fmt: str = "{:.0f}") -> str:
        vals = [r[key] for r in results[name] if key in r]
        if not vals:
            return "—"
        med = statistics.median(vals)
        return f"{fmt.format(med)} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"

    tags = [f"{r / 1000:g}k" for r in rates]
    head = ["implementation", "TCP no flood Mbit/s", "CPU % no flood"]
    for tag in tags:
        head += [
            f"{tag}/s: sent/s",
            f"{tag}/s: TCP kept",
            f"{tag}/s: new peer handshake s",
            f"{tag}/s: CPU %",
            f"{tag}/s: RSS MiB",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in results:
        row = [name, cell(name, "tcp_mbps_0"), cell(name, "cpu_pct_0")]
        for tag in tags:
            row += [
                cell(name, f"flood_rate_{tag}"),
                cell(name, f"tcp_ratio_{tag}", "{:.2f}"),
                cell(name, f"handshake_s_{tag}", "{:.2f}"),
                cell(name, f"cpu_pct_{tag}"),
                _mib(results, name, f"rss_kib_{tag}"),
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _mib(results: dict[str, list[dict[str, float]]], name: str, key: str) -> str:
    vals = [r[key] / 1024 for r in results[name] if key in r]
    return f"{statistics.median(vals):.1f} (max {max(vals):.1f})" if vals else "—"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.flood", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--flood", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--impl", action="append", type=parse_impl, default=[], metavar="NAME=ARGV")
    ap.add_argument("--rates", default="10000,50000,100000", help="initiations/s, comma list")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run")
    ap.add_argument("--sources", type=int, default=64, help="flood source addresses")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.flood is not None:
        print(json.dumps(flood(json.loads(args.flood.read_text()))))
        return 0
    if args.probe is not None:
        print(json.dumps(probe(json.loads(args.probe.read_text()))))
        return 0
    if os.geteuid() != 0:
        print("the flood benchmark needs root", file=sys.stderr)
        return 2
    impls = args.impl or [("wireguard-go", ["wireguard-go"])]
    rates = [float(r) for r in args.rates.split(",")]
    tb.install_signal_handlers()
    tb.sweep_stale(NS_PREFIX)
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv[1:] if argv is None else argv,
        "linux": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "impls": {n: a for n, a in impls},
        "versions": {n: tool_version([*a, "--version"]) for n, a in impls if "-m" not in a},
        "rates": rates,
        "seconds": args.seconds,
        "sources": args.sources,
    }
    results: dict[str, list[dict[str, float]]] = {n: [] for n, _ in impls}
    errors: list[str] = []
    try:
        for run in range(args.runs):
            order = impls[run % len(impls) :] + impls[: run % len(impls)]
            for name, cmd in order:
                try:
                    figs = measure_impl(cmd, rates, args.seconds, args.sources)
                except (WorkloadError, tb.TestbedError, OSError, ValueError) as e:
                    errors.append(f"run {run + 1} {name}: {e}")
                    print(f"run {run + 1} {name}: FAILED {e}", file=sys.stderr, flush=True)
                    continue
                results[name].append(figs)
                shown = ", ".join(f"{k}={v:.3g}" for k, v in figs.items())
                print(f"run {run + 1} {name}: {shown}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        meta["interrupted"] = True
    meta["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"flood-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    doc = {"meta": meta, "errors": errors, "runs": results}
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    md = f"{json.dumps(meta)}\n\n{table(results, rates)}"
    stem.with_suffix(".md").write_text(md)
    print(table(results, rates))
    print(stem.with_suffix(".json"))
    return 130 if meta.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
