"""The in-memory bind (wgpy.io.membind): the wire itself, then two real event loops over it.

The ``DeviceRunner`` tests run the real loop (its thread, epoll, fast path or ordinary path)
with ``MemoryTun`` on both sides and a ``MemoryBind``: no socket, no root. The devices' clock
is injected and only moves when a test moves it; the tests poll for what the loop threads do.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from noise import crypto
from tests.supervisor_support import wait_for
from tun.memory import MemoryTun
from wgpy.core import messages
from wgpy.core.device import Device
from wgpy.core.errors import UapiError
from wgpy.core.peer import Peer
from wgpy.harness.packets import icmp_echo, summarize
from wgpy.io.bind import Bind
from wgpy.io.fastpath import SOL_UDP, UDP_GRO, UDP_SEGMENT
from wgpy.io.loop import DeviceRunner
from wgpy.io.membind import MemoryBind, MemoryNetwork

A_HOST, B_HOST = "127.0.0.1", "127.0.0.2"  # names on the memory wire; nothing is sent
A_TUN, B_TUN = "10.99.0.1", "10.99.0.2"
LIMIT = 20.0  # real seconds for a loop thread to do something (a generous limit)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


# --- the wire ----------------------------------------------------------------------------------


def test_a_datagram_reaches_the_listener_and_its_fd_is_readable_while_it_waits() -> None:
    net = MemoryNetwork()
    a, b = net.bind(A_HOST), net.bind(B_HOST)
    try:
        pa, pb = a.open(0), b.open(0)
        assert pa != pb and a.v4 is not None and b.v4 is not None
        assert not readable(b.v4.fileno())
        a.sendto(b"one", (B_HOST, pb))
        a.sendto(b"two", (B_HOST, pb))
        assert readable(b.v4.fileno())
        assert b.v4.recvfrom(65535) == (b"one", (A_HOST, pa))
        assert readable(b.v4.fileno())
        buf = bytearray(100)
        assert b.v4.recvmsg_into([buf], 64) == (3, [], 0, (A_HOST, pa))
        assert buf[:3] == b"two"
        assert not readable(b.v4.fileno())
        with pytest.raises(BlockingIOError):
            b.v4.recvfrom(65535)
        a.sendto(b"nobody", (B_HOST, pb + 1000))
        assert (net.delivered, net.unreachable) == (2, 1)
        with pytest.raises(OSError) as e:
            a.sendto(b"v6", ("::1", pb))  # no IPv6 endpoint on this bind
        assert e.value.errno == errno.EAFNOSUPPORT
    finally:
        a.close()
        b.close()


def test_gso_sends_segments_and_gro_hands_them_over_at_once() -> None:
    net = MemoryNetwork()
    a, b = net.bind(A_HOST), net.bind(B_HOST)
    try:
        a.open(0)
        port = b.open(0)
        assert a.v4 is not None and b.v4 is not None
        run = b"x" * 100 + b"y" * 100 + b"z" * 40
        seg = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", 100))]
        assert a.v4.sendmsg([run], seg, 0, (B_HOST, port)) == 240
        assert [d for d, _s, _d in net.log] == [b"x" * 100, b"y" * 100, b"z" * 40]
        b.v4.setsockopt(SOL_UDP, UDP_GRO, 1)
        a.sendto(b"w" * 100, (B_HOST, port))  # a longer run would not end at the short one
        buf = bytearray(65536)
        total, anc, _flags, src = b.v4.recvmsg_into([buf], 64)
        assert (total, bytes(buf[:total])) == (240, run)
        assert anc == [(SOL_UDP, UDP_GRO, (100).to_bytes(4, sys.byteorder))]
        assert src == (A_HOST, a.port)
        assert b.v4.recvmsg_into([buf], 64)[:2] == (100, [])
        with pytest.raises(OSError):
            b.v4.setsockopt(0, 12345, 1)  # not emulated: refused, as the kernel would
    finally:
        a.close()
        b.close()


def test_drop_hold_release_and_port_conflicts() -> None:
    net = MemoryNetwork()
    a, b = net.bind(A_HOST), net.bind(B_HOST)
    try:
        a.open(0)
        port = b.open(0)
        assert b.v4 is not None
        net.drop_next(1, message_type=1)
        for data in (b"\x04first", b"\x01init", b"\x01again"):
            a.sendto(data, (B_HOST, port))
        net.hold()
        for data in (b"\x04a", b"\x04b", b"\x04c"):
            a.sendto(data, (B_HOST, port))
        assert net.held() == 3 and net.dropped == 1
        assert net.release(reverse=True) == 3
        got = []
        while readable(b.v4.fileno()):
            got.append(b.v4.recvfrom(100)[0])
        assert got == [b"\x04first", b"\x01again", b"\x04c", b"\x04b", b"\x04a"]
        other = net.bind(B_HOST)
        with pytest.raises(UapiError) as e:
            other.open(port)
        assert e.value.errno == errno.EADDRINUSE
        assert b.open(port) == port  # its own port again: allowed, the old endpoint goes
        a.sendto(b"\x04moved", (B_HOST, port))
        assert b.v4.recvfrom(100)[0] == b"\x04moved"
    finally:
        a.close()
        b.close()


def test_the_memory_bind_is_a_bind() -> None:
    bind: Bind = MemoryNetwork().bind()  # mypy checks the protocol (wgpy.io.membind)
    assert bind.sockets() == [] and bind.open(0) > 0 and len(bind.sockets()) == 1
    fd = bind.sockets()[0].fileno()
    bind.close()
    with pytest.raises(OSError):
        os.fstat(fd)  # the eventfd is closed with it


# --- two DeviceRunners on the wire -------------------------------------------------------------


class Clock:
    """The devices' clock: stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall_ns(self) -> int:
        return 1_700_000_000 * 10**9 + int(self.now * 1e9)


@dataclass
class Side:
    runner: DeviceRunner
    tun: MemoryTun
    bind: MemoryBind
    peer: Peer  # the other side
    thread: threading.Thread | None = None

    @property
    def dev(self) -> Device:
        return self.runner.device


@dataclass
class Net:
    wire: MemoryNetwork
    clock: Clock
    a: Side
    b: Side

    def start(self) -> None:
        for s in (self.a, self.b):
            s.thread = threading.Thread(target=s.runner.run, daemon=True)
            s.thread.start()


@pytest.fixture(params=[True, False], ids=["fast-path", "ordinary-path"])
def net(request: pytest.FixtureRequest) -> Iterator[Net]:
    wire, clock = MemoryNetwork(), Clock()
    keys = [crypto.generate_private_key() for _ in range(2)]
    sides = []
    for i, host in enumerate((A_HOST, B_HOST)):
        dev = Device(wall_time_ns=clock.wall_ns)
        dev.set_private_key(keys[i], now=clock.now)
        tun = MemoryTun(f"mb{i}-{os.getpid()}")
        bind = wire.bind(host)
        runner = DeviceRunner(dev, tun, clock=clock, fast_path=request.param, bind=bind)
        runner.bind_port(0)
        sides.append(Side(runner, tun, bind, None))  # type: ignore[arg-type]
    a, b = sides
    for me, other, other_host, other_tun, key in (
        (a, b, B_HOST, B_TUN, keys[1]),
        (b, a, A_HOST, A_TUN, keys[0]),
    ):
        me.peer = me.dev.add_peer(crypto.public_key(key), now=clock.now)
        me.dev.set_allowed_ips(me.peer, [f"{other_tun}/32"])
        me.dev.set_endpoint(me.peer, (other_host, other.bind.port))
    n = Net(wire, clock, a, b)
    try:
        yield n
    finally:
        for s in sides:
            s.runner.stop()
        for s in sides:
            if s.thread is not None:
                s.thread.join(LIMIT)
                assert not s.thread.is_alive()
            else:
                s.runner.close()
        assert a.bind.sockets() == [] and b.bind.sockets() == []  # the loop closed its bind


def answer_pings(side: Side) -> list[int]:
    """Play the stack behind ``side``'s TUN: answer each echo request it wrote; their seqs."""
    seqs = []
    for packet in side.tun.take():
        s = summarize(packet)
        assert s is not None and s.is_echo_request, s
        assert s.echo_id is not None and s.echo_seq is not None
        ident, seq, data = s.echo_id, s.echo_seq, s.payload[8:]
        side.tun.inject(icmp_echo(s.dst, s.src, ident=ident, seq=seq, payload=data, reply=True))
        seqs.append(s.echo_seq)
    return seqs


def ping(n: Net, seq: int) -> None:
    """A's stack pings B's address; B's answers; the reply must come out of A's TUN."""
    n.a.tun.inject(icmp_echo(A_TUN, B_TUN, ident=7, seq=seq, payload=b"memory bind"))
    wait_for(n.b.tun.written, LIMIT, "the request at B")
    assert answer_pings(n.b) == [seq]
    reply = wait_for(n.a.tun.take, LIMIT, "the reply at A")
    s = summarize(reply[0])
    assert s is not None and s.is_echo_reply and (s.echo_seq, s.src) == (seq, B_TUN)


def test_ping_through_two_event_loops_handshake_included(net: Net) -> None:
    net.start()
    ping(net, 1)  # the first request waits for the handshake, then goes
    assert net.a.peer.current is not None and net.b.peer.current is not None
    kinds = [d[0] for d, _s, _d in net.wire.log]
    assert kinds[:2] == [messages.MESSAGE_INITIATION, messages.MESSAGE_RESPONSE]
    assert kinds[2:] == [messages.MESSAGE_TRANSPORT] * 2
    for seq in range(2, 12):
        ping(net, seq)
    assert net.wire.dropped == net.wire.unreachable == 0
    assert net.a.dev.drops == {} and net.b.dev.drops == {}
    assert net.a.runner.io_counters()["send_errors"] == 0


def test_roaming_the_reply_follows_the_new_address(net: Net) -> None:
    net.start()
    ping(net, 1)
    assert net.b.peer.endpoint == (A_HOST, net.a.bind.port)
    assert net.a.bind.v4 is not None
    net.wire.move(net.a.bind.v4, "127.0.0.9")  # A's address changes under its socket
    ping(net, 2)  # only arrives if B answered to where A's request came from
    assert net.b.peer.endpoint == ("127.0.0.9", net.a.bind.port)
    assert net.wire.unreachable == 0


def test_a_lost_initiation_is_sent_again_after_rekey_timeout(net: Net) -> None:
    net.wire.drop_next(1, message_type=messages.MESSAGE_INITIATION)
    net.start()
    net.a.tun.inject(icmp_echo(A_TUN, B_TUN, ident=7, seq=1))
    wait_for(lambda: net.wire.dropped == 1, LIMIT, "the first initiation, lost")
    assert net.b.tun.written() == []
    net.clock.now += 5.5  # REKEY_TIMEOUT (5 s) and its jitter (< 1/3 s) pass
    wait_for(net.b.tun.written, LIMIT, "the request at B, after a second initiation")
    answer_pings(net.b)
    wait_for(net.a.tun.take, LIMIT, "the reply at A")
    inits = [d for d, _s, _d in net.wire.log if d[0] == messages.MESSAGE_INITIATION]
    assert len(inits) == 2


def test_reordered_data_is_all_delivered_within_the_replay_window(net: Net) -> None:
    net.start()
    ping(net, 1)
    net.wire.hold()
    for seq in range(2, 10):
        net.a.tun.inject(icmp_echo(A_TUN, B_TUN, ident=7, seq=seq))
    wait_for(lambda: net.wire.held() == 8, LIMIT, "eight requests on the wire")
    assert net.wire.release(reverse=True) == 8
    wait_for(lambda: len(net.b.tun.written()) == 8, LIMIT, "eight requests at B")
    assert answer_pings(net.b) == list(range(9, 1, -1))
    assert net.b.dev.drops == {}
