"""Run inside the wgpy image by tests/test_image.py: ``python -c "$(cat smoke.py)" MODE ...``.

The script travels in argv (the image holds no tests), secrets on stdin. Modes:

- ``configure IFACE``: UAPI ``key=value`` lines on stdin are sent to ``IFACE``'s socket with
  wgpy's own client, as an operator's ``kubectl exec`` would.
- ``ping HOST TIMEOUT``: ping ``HOST`` over an ICMP datagram socket (the container holds no
  NET_RAW) until one reply or ``TIMEOUT`` seconds; one JSON line with the round trip.

The TCP part of the smoke is tests/netprobe.py's ``tcp-source``, run the same way.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0


def configure(iface: str) -> None:
    from wgpy.io import uapi_client

    lines = [ln for ln in sys.stdin.read().splitlines() if ln]
    uapi_client.set_device(iface, lines)


def ping_once(host: str, seq: int, timeout: float) -> float | None:
    """One echo over an ICMP datagram socket (the kernel fills in the identifier and the
    checksum); the round trip in seconds, or None without a reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP) as s:
        s.settimeout(timeout)
        payload = os.urandom(32)
        t0 = time.monotonic()
        s.sendto(bytes([ICMP_ECHO_REQUEST, 0, 0, 0, 0, 0]) + seq.to_bytes(2, "big") + payload,
                 (host, 0))
        try:
            while True:
                reply = s.recv(2048)
                if reply[0] == ICMP_ECHO_REPLY and reply[8:] == payload:
                    return time.monotonic() - t0
        except TimeoutError:
            return None


def ping(host: str, timeout: float) -> None:
    """Echo requests one second apart until one is answered or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    seq = 0
    rtt = None
    while rtt is None and time.monotonic() < deadline:
        seq += 1
        rtt = ping_once(host, seq, 1.0)  # the first echoes wait for the handshake
    print(json.dumps({"pings": seq, "rtt_ms": None if rtt is None else rtt * 1000}))


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "configure":
        configure(args[0])
    elif mode == "ping":
        ping(args[0], float(args[1]))
    else:
        raise SystemExit(f"unknown mode {mode}")
