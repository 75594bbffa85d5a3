"""Handshakes per second one responder completes (the ``handshakes`` workload).

The responder is side B of the pair. :func:`measure` gives it ``PEERS`` extra peers (fresh
keys, no allowed IPs), adds ``SOURCES`` extra addresses to A's veth, and runs this module as
a child in A's namespace (``--initiate PARAMS``). The child precomputes initiations (round
``r`` of peer ``k`` carries a TAI64N timestamp ``20·r`` ms later — timestamps are whitened to
~16 ms — so each is newer than the last that peer sent; one peer is reused only after > 20 ms,
the responder's flood limit), then keeps
``WINDOW`` of them in flight from the source addresses round robin: every response answering
one of ours counts as a completed handshake and releases the next initiation. A cookie reply
(the responder is under load) is decrypted with that initiation's mac1 and the initiation is
resent with mac2 from the same source, as a real initiator would; per-source rate limits then
apply, which is why there are many sources. Prints ``{"per_s": ..., "cookie_replies": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import select
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.workloads import EXTRA_WORKLOADS, Target
from noise import crypto, tai64n
from noise.cookie import cookie_key, mac1_key
from noise.handshake import Handshake, StaticKeys
from wgpy import testbed as tb
from wgpy.core import messages
from wgpy.core.keys import parse_base64_key, to_base64

NOT_MEASURED = "not measured: no userspace responder (veth, kernel)"
PEERS = 256  # 256 peers at 10k/s: each peer every 25.6 ms > the 20 ms flood limit
SOURCES = 200  # per-source limit under load is 20/s (kernel/wireguard-go rate limiter)
WINDOW = 64
SECONDS = 3.0
PRECOMPUTE_SECONDS = 4.0  # at most this long building initiations (≈ 0.15 ms each)


# --- the initiator (child process in ns_a) ---------------------------------------------------


def build_initiations(
    privates: list[bytes], responder: bytes, budget_s: float, max_count: int
) -> list[tuple[int, bytes, bytes]]:
    """``(sender_index, message, mac1)`` in send order: round-robin over peers, rounds
    with increasing timestamps; as many as ``budget_s`` allows (whole rounds)."""
    statics = [StaticKeys(p) for p in privates]
    shakes = [Handshake(responder) for _ in privates]
    for hs, st in zip(shakes, statics, strict=True):
        hs.precompute(st)
    key1 = mac1_key(responder)
    base = time.time_ns()
    out: list[tuple[int, bytes, bytes]] = []
    deadline = time.monotonic() + budget_s
    index = 1
    r = 0
    while len(out) < max_count and time.monotonic() < deadline:
        for hs, st in zip(shakes, statics, strict=True):
            f = hs.create_initiation(
                st,
                ephemeral_private=crypto.generate_private_key(),
                timestamp=tai64n.stamp(base + r * 20_000_000),
                sender_index=index,
            )
            msg = messages.build_initiation(
                index, f.ephemeral, f.encrypted_static, f.encrypted_timestamp
            )
            mac1 = crypto.mac(key1, memoryview(msg)[:116])
            msg[116:132] = mac1
            out.append((index, bytes(msg), mac1))
            index += 1
        r += 1
    return out


def bound_sockets(sources: list[str]) -> list[socket.socket]:
    """One non-blocking UDP socket bound to each of ``sources`` (IPv4 addresses)."""
    socks = []
    for src in sources:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    return socks


def initiate(params: dict[str, Any]) -> dict[str, float]:
    """Run the closed loop; returns the completed rate and counters."""
    responder = bytes.fromhex(params["responder"])
    target = (params["host"], int(params["port"]))
    privates = [bytes.fromhex(k) for k in params["keys"]]
    seconds = float(params["seconds"])
    todo = build_initiations(privates, responder, min(PRECOMPUTE_SECONDS, seconds + 1), 20_000)
    ckey = cookie_key(responder)
    socks = bound_sockets(params["sources"])
    cookies: dict[int, bytes] = {}  # source number -> cookie
    pending: dict[int, tuple[int, bytes, bytes]] = {}  # sender index -> (source, msg, mac1)
    done = cookie_replies = sent = 0
    nxt = 0

    def send(src: int, msg: bytes) -> None:
        nonlocal sent
        cookie = cookies.get(src)
        if cookie is not None:
            msg = msg[:132] + crypto.mac(cookie, msg[:132])
        with contextlib.suppress(OSError):
            socks[src].sendto(msg, target)
            sent += 1

    def top_up() -> None:
        nonlocal nxt
        while len(pending) < WINDOW and nxt < len(todo):
            index, msg, mac1 = todo[nxt]
            src = nxt % len(socks)
            pending[index] = (src, msg, mac1)
            send(src, msg)
            nxt += 1

    t0 = time.monotonic()
    end = t0 + seconds
    top_up()
    while time.monotonic() < end and (pending or nxt < len(todo)):
        ready, _, _ = select.select(socks, [], [], 0.05)
        if not ready:
            pending.clear()  # lost (dropped by a full queue): move on to fresh initiations
        for s in ready:
            while True:
                try:
                    data = s.recv(256)
                except BlockingIOError:
                    break
                t = messages.message_type(data)
                if t == messages.MESSAGE_RESPONSE:
                    r = messages.parse_response(data)
                    if r is not None and pending.pop(r.receiver_index, None) is not None:
                        done += 1
                elif t == messages.MESSAGE_COOKIE_REPLY:
                    c = messages.parse_cookie_reply(data)
                    entry = pending.get(c.receiver_index) if c is not None else None
                    if c is None or entry is None:
                        continue
                    src, msg, mac1 = entry
                    with contextlib.suppress(Exception):
                        cookies[src] = crypto.xaead_open(ckey, c.nonce, c.encrypted_cookie, mac1)
                        cookie_replies += 1
                        send(src, msg)
        top_up()
    elapsed = time.monotonic() - t0
    for s in socks:
        s.close()
    return {
        "per_s": done / elapsed,
        "cookie_replies": float(cookie_replies),
        "sent": float(sent),
        "precomputed": float(len(todo)),
    }


# --- the harness side -------------------------------------------------------------------------


def _wg_b(target: Target) -> list[str]:
    return ["nsenter", "-t", str(target.pids_b[0]), "-m", "-n", "wg"]


def _veth_dev(ns: tb.Namespace, addr: str) -> str:
    for line in ns.run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].split("/")[0] == addr:
            return fields[1]
    raise tb.TestbedError(f"no interface with {addr} in {ns.name}")


def measure(target: Target, *, seconds: float = SECONDS) -> dict[str, float] | None:
    """Return ``{"per_s": ...}`` for the responder in ``target.ns_b``, or None if unavailable.

    At most ``SECONDS`` of sending (less when the harness runs shorter tests).
    """
    seconds = min(seconds, SECONDS)
    if not target.pids_b or not target.pids_a:
        return None
    wg = _wg_b(target)
    responder = tb.run([*wg, "show", "wg0", "public-key"]).stdout.strip()
    port = tb.run([*wg, "show", "wg0", "listen-port"]).stdout.strip()
    host_a = tb.VETH_A.split("/")[0]
    host_b = tb.VETH_B.split("/")[0]
    net = ipaddress.ip_network(tb.VETH_A, strict=False)
    dev = _veth_dev(target.ns_a, host_a)
    sources = [str(net.network_address + 10 + i) for i in range(SOURCES)]
    keys = [crypto.generate_private_key() for _ in range(PEERS)]
    with tempfile.TemporaryDirectory(prefix="wgpyhs-") as d:
        conf = Path(d) / "peers.conf"
        conf.write_text(
            "".join(f"[Peer]\nPublicKey = {to_base64(crypto.public_key(k))}\n\n" for k in keys)
        )
        tb.run([*wg, "addconf", "wg0", str(conf)])
        batch = Path(d) / "addrs"
        batch.write_text("".join(f"addr add {a}/{net.prefixlen} dev {dev}\n" for a in sources))
        target.ns_a.ip("-batch", str(batch))
        params = Path(d) / "params.json"
        fd = os.open(params, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # holds keys
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "responder": parse_base64_key(responder).hex(),
                    "host": host_b,
                    "port": port,
                    "keys": [k.hex() for k in keys],
                    "sources": sources,
                    "seconds": seconds,
                },
                f,
            )
        res = target.ns_a.run(
            [sys.executable, "-m", "benchmarks.handshakes", "--initiate", str(params)],
            timeout=seconds + PRECOMPUTE_SECONDS + 30,
        )
    figs: dict[str, float] = json.loads(res.stdout)
    return {"per_s": figs["per_s"], "cookie_replies": figs["cookie_replies"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m benchmarks.handshakes")
    ap.add_argument("--initiate", type=Path, required=True, help="params file (internal)")
    args = ap.parse_args(argv)
    print(json.dumps(initiate(json.loads(args.initiate.read_text()))))
    return 0


EXTRA_WORKLOADS["handshakes"] = measure

if __name__ == "__main__":
    sys.exit(main())
