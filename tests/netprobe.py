"""Tiny traffic endpoints run inside test namespaces: ``python netprobe.py MODE ...``.

Modes print one JSON line with what they saw, so tests compare both ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time


def tcp_sink(host: str, port: int) -> None:
    srv = socket.create_server((host, port))
    print(json.dumps({"listening": port}), flush=True)
    srv.settimeout(60)
    conn, _ = srv.accept()
    h = hashlib.sha256()
    n = 0
    while True:
        data = conn.recv(1 << 20)
        if not data:
            break
        h.update(data)
        n += len(data)
    print(json.dumps({"bytes": n, "sha256": h.hexdigest()}), flush=True)


def tcp_source(host: str, port: int, nbytes: int) -> None:
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    sock = socket.create_connection((host, port), timeout=60)
    sent = 0
    t0 = time.monotonic()
    i = 0
    while sent < nbytes:
        chunk = (i.to_bytes(8, "big") + block)[: min(len(block) + 8, nbytes - sent)]
        sock.sendall(chunk)
        h.update(chunk)
        sent += len(chunk)
        i += 1
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)  # wait for the sink to close: everything was received
    dt = time.monotonic() - t0
    print(json.dumps({"bytes": sent, "sha256": h.hexdigest(), "seconds": dt}), flush=True)


def udp_echo(host: str, port: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    sock.settimeout(20)
    print(json.dumps({"listening": port}), flush=True)
    seen = 0
    while seen < count:
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            break
        seen += 1
        sock.sendto(b"echo:" + data, addr)
    print(json.dumps({"received": seen}), flush=True)


def udp_client(host: str, port: int, count: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    got: set[int] = set()

    def take(data: bytes) -> None:
        if data.startswith(b"echo:datagram "):
            i = int(data.split()[1])
            if data == b"echo:datagram %d " % i + bytes(i % 700):
                got.add(i)

    sock.setblocking(False)
    for i in range(count):
        sock.sendto(b"datagram %d " % i + bytes(i % 700), (host, port))
        time.sleep(0.002)
        while True:  # read echoes as they come, so they never pile up in the buffer
            try:
                take(sock.recv(65535))
            except BlockingIOError:
                break
    sock.settimeout(0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(got) < count:
        try:
            take(sock.recv(65535))
        except TimeoutError:
            continue
    print(json.dumps({"echoed": len(got)}), flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "tcp-sink":
        tcp_sink(args[0], int(args[1]))
    elif mode == "tcp-source":
        tcp_source(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-echo":
        udp_echo(args[0], int(args[1]), int(args[2]))
    elif mode == "udp-client":
        udp_client(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")
