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


def flood(
    target: str, port: int, pub_b64: str, seconds: float, sources: str, *, rate: float = 0.0
) -> None:
    """Initiations with a valid mac1 (computable from the public key alone) from many sources.

    ``sources`` is a comma list of local addresses to send from. Counts cookie replies.
    """
    import base64
    import selectors

    pub = base64.b64decode(pub_b64)
    mac1_key = hashlib.blake2s(b"mac1----" + pub).digest()
    socks = []
    for src in sources.split(","):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.setblocking(False)
        socks.append(s)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    sent = cookies = other = 0
    body = bytearray(os.urandom(148))
    body[0:4] = b"\x01\x00\x00\x00"
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    while (now := time.monotonic()) < end:
        if rate and sent > rate * (now - t0):
            time.sleep(0.001)  # hold the requested rate
        for s in socks:
            body[4:8] = i.to_bytes(4, "little")
            body[8:40] = os.urandom(32)
            body[116:132] = hashlib.blake2s(
                bytes(body[:116]), key=mac1_key, digest_size=16
            ).digest()
            try:
                s.sendto(body, (target, port))
                sent += 1
            except BlockingIOError:
                pass
            i += 1
        for key, _ in sel.select(0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                if data[:4] == b"\x03\x00\x00\x00" and len(data) == 64:
                    cookies += 1
                else:
                    other += 1
    dt = time.monotonic() - t0
    print(json.dumps({"sent": sent, "seconds": dt, "cookie_replies": cookies, "other": other}))


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
    elif mode == "flood":
        flood(args[0], int(args[1]), args[2], float(args[3]), args[4], rate=float(args[5]))
    else:
        raise SystemExit(f"unknown mode {mode}")
