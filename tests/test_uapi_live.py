"""Malformed, partial and hostile UAPI requests at a live wgpy-userspace change nothing."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from collections.abc import Iterator

import pytest

from tests.support import WGPY, interop
from wgpy import testbed as tb

pytestmark = interop


@pytest.fixture
def dev() -> Iterator[tb.WgInstance]:
    with tb.Namespace() as ns, tb.WgInstance(ns, WGPY) as w:
        w.wg("set", "wg0", "listen-port", "51820", "private-key", "/dev/stdin",
             input=tb.genkey() + "\n")  # fmt: skip
        w.wg("set", "wg0", "peer", tb.pubkey(tb.genkey()), "allowed-ips", "10.0.0.0/8")
        yield w


def _ask(path: str, data: bytes, *, close_early: bool = False) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)  # the server may answer and close before reading everything
        if close_early:
            return b""
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_WR)
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        return out


def _state(dev: tb.WgInstance) -> str:
    return dev.wg("show", "wg0", "dump").stdout


PEER_HEX = bytes(range(32)).hex()


@pytest.mark.parametrize(
    ("request_bytes", "errno"),
    [
        (b"set=1\nlisten_port=51900\nbogus_key=1\n\n", -22),  # unknown key
        (b"set=1\nlisten_port=51900\nno equals sign\n\n", -71),  # EPROTO
        (b"set=1\nlisten_port=99999\n\n", -22),  # out of range
        (b"set=1\nprivate_key=zz\n\n", -22),  # bad hex
        (f"set=1\npublic_key={PEER_HEX}\nallowed_ip=10.0.0.0/33\n\n".encode(), -22),
        (f"set=1\npublic_key={PEER_HEX}\nendpoint=nohost\n\n".encode(), -22),
        (f"set=1\npublic_key={PEER_HEX}\nprotocol_version=2\n\n".encode(), -22),
        (b"get=1\nextra\n\n", -22),
    ],
)
def test_malformed_request_gets_errno_and_changes_nothing(
    dev: tb.WgInstance, request_bytes: bytes, errno: int
) -> None:
    before = _state(dev)
    reply = _ask(dev.socket_path, request_bytes)
    assert reply.endswith(f"errno={errno}\n\n".encode()), reply
    assert _state(dev) == before


def test_partial_request_then_close_changes_nothing(dev: tb.WgInstance) -> None:
    before = _state(dev)
    # a whole valid peer section, but the connection closes before the blank line
    _ask(
        dev.socket_path,
        f"set=1\nlisten_port=51999\npublic_key={PEER_HEX}\nallowed_ip=10.9.0.0/16\n".encode(),
        close_early=True,
    )
    assert _state(dev) == before


def test_unknown_operation_and_garbage_leave_the_device_serving(dev: tb.WgInstance) -> None:
    before = _state(dev)
    for junk in (b"\x00\xff" * 100, b"fetch=1\n\n", b"\n\n\n", os.urandom(4096)):
        _ask(dev.socket_path, junk)
    assert _state(dev) == before


def test_oversized_request_refused(dev: tb.WgInstance) -> None:
    before = _state(dev)
    big = b"set=1\n" + b"".join(b"replace_peers=true\n" for _ in range(70_000)) + b"\n"
    reply = _ask(dev.socket_path, big)
    # an errno reply, or a reset when the device closes on the unread rest of the request
    assert reply == b"" or (reply.startswith(b"errno=-") and reply != b"errno=0\n\n"), reply

    assert _state(dev) == before


def test_many_idle_connections_are_bounded(dev: tb.WgInstance) -> None:
    conns = []
    try:
        for _ in range(200):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(dev.socket_path)  # blocking: waits for the device to accept
            conns.append(s)
        # at most 64 stay open: the oldest were closed by the device
        time.sleep(0.3)  # let the device accept (and evict) everything
        closed = 0
        for s in conns:
            s.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                closed += s.recv(1) == b""
        assert closed >= 200 - 64
        # and a real client still gets in while 64 idle connections are held
        assert "10.0.0.0/8" in _state(dev)
    finally:
        for s in conns:
            s.close()
    assert dev.wg("show", "wg0", "listen-port").stdout.strip() == "51820"


def test_socket_and_directory_are_root_only(dev: tb.WgInstance) -> None:
    st = os.stat(dev.socket_path)
    assert stat.S_ISSOCK(st.st_mode) and st.st_mode & 0o077 == 0 and st.st_uid == 0
    d = os.stat(os.path.dirname(dev.socket_path))  # a fresh tmpfs starts as 1777
    assert stat.S_IMODE(d.st_mode) == 0o700 and d.st_uid == 0
