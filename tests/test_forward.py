"""TCP and UDP forwarders on loopback addresses (127.0.0.x): no namespaces needed."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from functools import partial
from typing import cast

import pytest

from tests.support import refused_port, run_async
from wgpy.supervisor.forward import TcpForwarder, UdpForwarder, make_forwarder
from wgpy.supervisor.model import Target
from wgpy.testbed import wait_until

VIP = "127.0.0.2"


run = partial(run_async, timeout=10)


# --- helpers: named servers ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def tcp_server(name: str, host: str = "127.0.0.1") -> AsyncIterator[Target]:
    """Answers ``name:<request>`` to each request line, then closes."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line = await r.readline()
        w.write(f"{name}:{line.decode().strip()}\n".encode())
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, host, 0)
    try:
        yield Target(host, srv.sockets[0].getsockname()[1])
    finally:
        srv.close()
        await srv.wait_closed()


class _Echo(asyncio.DatagramProtocol):
    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.sources.append(addr)
        self.transport.sendto(self.name.encode() + b":" + data, addr)


@contextlib.asynccontextmanager
async def udp_server(name: str, host: str = "127.0.0.1") -> AsyncIterator[tuple[Target, _Echo]]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Echo(name), local_addr=(host, 0)
    )
    try:
        yield Target(host, transport.get_extra_info("sockname")[1]), proto
    finally:
        transport.close()


async def tcp_request(port: int, text: str = "hi", host: str = VIP) -> str:
    r, w = await asyncio.open_connection(host, port)
    w.write(text.encode() + b"\n")
    await w.drain()
    try:
        return (await asyncio.wait_for(r.read(), 3)).decode().strip()
    finally:
        w.close()


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait((data, addr))


async def udp_client(host: str = "127.0.0.1") -> tuple[asyncio.DatagramTransport, _Client]:
    loop = asyncio.get_running_loop()
    t, p = await loop.create_datagram_endpoint(_Client, local_addr=(host, 0))
    return t, p


async def udp_ask(t: asyncio.DatagramTransport, p: _Client, port: int, data: bytes) -> bytes:
    t.sendto(data, (VIP, port))
    reply, addr = await asyncio.wait_for(p.replies.get(), 3)
    # the reply comes back from the address the client sent to
    assert addr == (VIP, port)
    return reply


# --- TCP -------------------------------------------------------------------------------------


def test_tcp_round_robin_between_targets() -> None:
    async def main() -> None:
        async with tcp_server("a") as ta, tcp_server("b") as tb:
            fwd = TcpForwarder(VIP, 0, [ta, tb])
            await fwd.start()
            try:
                answers = [await tcp_request(fwd.bound_port, f"q{i}") for i in range(4)]
            finally:
                await fwd.close()
            assert answers == ["a:q0", "b:q1", "a:q2", "b:q3"]
            assert fwd.stats.connections == 4
            assert fwd.stats.active == 0
            # request and answer bytes both counted
            assert fwd.stats.bytes == sum(len(f"q{i}\n") + len(f"a:q{i}\n") for i in range(4))

    run(main)


def test_tcp_random_strategy_reaches_both_targets() -> None:
    async def main() -> None:
        async with tcp_server("a") as ta, tcp_server("b") as tb:
            fwd = make_forwarder(VIP, 0, "TCP", [ta, tb], strategy="random")
            await fwd.start()
            try:
                seen = {(await tcp_request(fwd.bound_port)).split(":")[0] for _ in range(30)}
            finally:
                await fwd.close()
            assert seen == {"a", "b"}  # P(miss one) = 2 * 2**-30

    run(main)


def test_tcp_tries_next_target_when_connect_fails() -> None:
    async def main() -> None:
        with refused_port() as port:
            async with tcp_server("b") as tb:
                dead = Target("127.0.0.1", port)
                fwd = TcpForwarder(VIP, 0, [dead, tb])
                await fwd.start()
                try:
                    answers = [await tcp_request(fwd.bound_port) for _ in range(2)]
                finally:
                    await fwd.close()
        assert answers == ["b:hi", "b:hi"]
        assert fwd.stats.errors == 1  # the first connection tried the dead target first

    run(main)


def test_tcp_without_reachable_target_resets_client() -> None:
    async def main() -> None:
        with refused_port() as port:
            for targets in ([], [Target("127.0.0.1", port)]):
                fwd = TcpForwarder(VIP, 0, targets)
                await fwd.start()
                try:
                    r, w = await asyncio.open_connection(VIP, fwd.bound_port)
                    with contextlib.suppress(ConnectionError):
                        assert await asyncio.wait_for(r.read(), 3) == b""
                    w.close()
                finally:
                    await fwd.close()
                assert fwd.stats.errors == 1

    run(main)


def test_tcp_update_targets_is_live() -> None:
    async def main() -> None:
        async with tcp_server("a") as ta, tcp_server("b") as tb:
            fwd = TcpForwarder(VIP, 0, [ta])
            await fwd.start()
            try:
                assert await tcp_request(fwd.bound_port) == "a:hi"
                fwd.update_targets([tb])
                assert await tcp_request(fwd.bound_port) == "b:hi"
                assert fwd.targets == (tb,)
            finally:
                await fwd.close()

    run(main)


def test_tcp_connection_limit_refuses_and_counts() -> None:
    async def main() -> None:
        hold = asyncio.Event()

        async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await hold.wait()
            w.close()

        srv = await asyncio.start_server(slow, "127.0.0.1", 0)
        target = Target("127.0.0.1", srv.sockets[0].getsockname()[1])
        fwd = TcpForwarder(VIP, 0, [target], max_connections=1)
        await fwd.start()
        try:
            _r1, w1 = await asyncio.open_connection(VIP, fwd.bound_port)
            await wait_until(lambda: fwd.stats.active == 1)  # the first one counted active
            r2, w2 = await asyncio.open_connection(VIP, fwd.bound_port)
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r2.read(), 3) == b""
            assert fwd.refused == fwd.stats.refused == 1
            assert fwd.stats.connections == 1
            w1.close()
            w2.close()
        finally:
            hold.set()
            await fwd.close()
            srv.close()

    run(main)


def test_tcp_close_ends_open_connections_and_frees_port() -> None:
    async def main() -> None:
        hold = asyncio.Event()

        async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await hold.wait()

        srv = await asyncio.start_server(slow, "127.0.0.1", 0)
        target = Target("127.0.0.1", srv.sockets[0].getsockname()[1])
        fwd = TcpForwarder(VIP, 0, [target])
        await fwd.start()
        port = fwd.bound_port
        r, w = await asyncio.open_connection(VIP, port)
        await wait_until(lambda: fwd.stats.active == 1)  # accepted and proxied
        await fwd.close()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(r.read(), 3) == b""  # closed by the forwarder
        w.close()
        with pytest.raises(OSError):
            await asyncio.open_connection(VIP, port)  # nobody listens any more
        again = TcpForwarder(VIP, port, [target])
        await again.start()  # the port can be bound again at once
        await again.close()
        hold.set()
        srv.close()

    run(main)


# --- UDP -------------------------------------------------------------------------------------


def test_udp_flow_per_client_round_robin() -> None:
    async def main() -> None:
        async with udp_server("a") as (ta, ea), udp_server("b") as (tb, eb):
            fwd = UdpForwarder(VIP, 0, [ta, tb])
            await fwd.start()
            c1, p1 = await udp_client()
            c2, p2 = await udp_client()
            try:
                assert await udp_ask(c1, p1, fwd.bound_port, b"x") == b"a:x"
                assert await udp_ask(c2, p2, fwd.bound_port, b"y") == b"b:y"
                # the same client stays on its flow (and target)
                assert await udp_ask(c1, p1, fwd.bound_port, b"z") == b"a:z"
            finally:
                c1.close()
                c2.close()
                await fwd.close()
            assert fwd.stats.connections == 2
            assert fwd.stats.datagrams == 6
            assert len(set(ea.sources)) == 1  # one flow socket per client
            assert len(eb.sources) == 1
            assert fwd.flows == {}

    run(main)


def test_udp_idle_flows_expire() -> None:
    async def main() -> None:
        now = [0.0]
        async with udp_server("a") as (ta, _ea):
            fwd = UdpForwarder(VIP, 0, [ta], idle_timeout=60.0, clock=lambda: now[0])
            await fwd.start()
            c, p = await udp_client()
            try:
                assert await udp_ask(c, p, fwd.bound_port, b"1") == b"a:1"
                assert len(fwd.flows) == 1
                assert fwd.expire(now=59.0) == 0
                now[0] = 30.0
                assert await udp_ask(c, p, fwd.bound_port, b"2") == b"a:2"  # refreshes
                assert fwd.expire(now=80.0) == 0
                assert fwd.expire(now=90.5) == 1
                assert fwd.flows == {}
                assert fwd.stats.active == 0
                assert await udp_ask(c, p, fwd.bound_port, b"3") == b"a:3"  # a new flow
                assert fwd.stats.connections == 2
            finally:
                c.close()
                await fwd.close()

    run(main)


def test_udp_flow_limit_refuses_and_counts() -> None:
    async def main() -> None:
        async with udp_server("a") as (ta, _ea):
            fwd = UdpForwarder(VIP, 0, [ta], max_flows=1)
            await fwd.start()
            c1, p1 = await udp_client()
            c2, p2 = await udp_client()
            try:
                assert await udp_ask(c1, p1, fwd.bound_port, b"x") == b"a:x"
                c2.sendto(b"y", (VIP, fwd.bound_port))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(p2.replies.get(), 0.3)
                assert fwd.refused == fwd.stats.refused == 1
                assert len(fwd.flows) == 1
            finally:
                c1.close()
                c2.close()
                await fwd.close()

    run(main)


def test_udp_update_targets_moves_flows_off_removed_target() -> None:
    async def main() -> None:
        async with udp_server("a") as (ta, _ea), udp_server("b") as (tb, _eb):
            fwd = UdpForwarder(VIP, 0, [ta])
            await fwd.start()
            c, p = await udp_client()
            try:
                assert await udp_ask(c, p, fwd.bound_port, b"1") == b"a:1"
                fwd.update_targets([ta, tb])  # ta still listed: the flow stays on it
                assert await udp_ask(c, p, fwd.bound_port, b"2") == b"a:2"
                fwd.update_targets([tb])
                assert await udp_ask(c, p, fwd.bound_port, b"3") == b"b:3"
            finally:
                c.close()
                await fwd.close()

    run(main)


def test_udp_unreachable_target_drops_flow_and_next_uses_other_target() -> None:
    async def main() -> None:
        with refused_port(kind=socket.SOCK_DGRAM) as port:
            async with udp_server("b") as (tb, _eb):
                dead = Target("127.0.0.1", port)
                fwd = UdpForwarder(VIP, 0, [dead, tb])
                await fwd.start()
                c, p = await udp_client()
                try:
                    c.sendto(b"1", (VIP, fwd.bound_port))  # goes to the dead target: ICMP
                    await wait_until(lambda: fwd.stats.errors > 0)
                    assert fwd.stats.errors == 1
                    assert fwd.flows == {}
                    assert await udp_ask(c, p, fwd.bound_port, b"2") == b"b:2"
                finally:
                    c.close()
                    await fwd.close()

    run(main)


def test_make_forwarder_rejects_unknown_protocol() -> None:
    with pytest.raises(ValueError, match="SCTP"):
        make_forwarder(VIP, 1, "SCTP", [], strategy="round-robin")


# --- issue 15 point 8: one client cannot exhaust a forwarder ----------------------------------


def test_tcp_per_source_limit_leaves_room_for_other_clients() -> None:
    async def main() -> None:
        hold = asyncio.Event()

        async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await hold.wait()
            w.close()

        srv = await asyncio.start_server(slow, "127.0.0.1", 0)
        target = Target("127.0.0.1", srv.sockets[0].getsockname()[1])
        fwd = TcpForwarder(VIP, 0, [target], max_connections=8, max_per_source=2)
        await fwd.start()
        writers: list[asyncio.StreamWriter] = []
        try:
            for _ in range(2):   # one client (127.0.0.1) takes its share...
                _r, w = await asyncio.open_connection(VIP, fwd.bound_port, local_addr=(
                    "127.0.0.1", 0))
                writers.append(w)
            await wait_until(lambda: fwd.stats.active == 2)
            r3, w3 = await asyncio.open_connection(VIP, fwd.bound_port,
                                                   local_addr=("127.0.0.1", 0))
            writers.append(w3)
            with contextlib.suppress(ConnectionError):   # ...and no more
                assert await asyncio.wait_for(r3.read(), 3) == b""
            assert fwd.refused == fwd.stats.refused == 1
            # another client is still served
            _r4, w4 = await asyncio.open_connection(VIP, fwd.bound_port,
                                                    local_addr=("127.0.0.3", 0))
            writers.append(w4)
            await wait_until(lambda: fwd.stats.active == 3)
            assert fwd.per_source == {"127.0.0.1": 2, "127.0.0.3": 1}
        finally:
            for w in writers:
                w.close()
            hold.set()
            await fwd.close()
            srv.close()

    run(main)


def test_tcp_idle_connections_are_closed_active_ones_kept() -> None:
    async def main() -> None:
        now = [0.0]

        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(100):
                w.write(data)
                await w.drain()
            w.close()

        srv = await asyncio.start_server(echo, "127.0.0.1", 0)
        target = Target("127.0.0.1", srv.sockets[0].getsockname()[1])
        fwd = TcpForwarder(VIP, 0, [target], idle_timeout=600.0, clock=lambda: now[0])
        await fwd.start()
        try:
            r1, w1 = await asyncio.open_connection(VIP, fwd.bound_port)
            r2, w2 = await asyncio.open_connection(VIP, fwd.bound_port)
            for r, w in ((r1, w1), (r2, w2)):
                w.write(b"x")
                await w.drain()
                assert await asyncio.wait_for(r.read(1), 3) == b"x"
            now[0] = 500.0
            w2.write(b"y")                  # the second one talks (a watch getting events)
            await w2.drain()
            assert await asyncio.wait_for(r2.read(1), 3) == b"y"
            assert fwd.expire(now=599.0) == 0
            assert fwd.expire(now=700.0) == 1   # only the first: idle since 0
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(r1.read(), 3) == b""
            await wait_until(lambda: fwd.stats.active == 1)
            assert fwd.stats.idle_closed == 1 and fwd.per_source == {"127.0.0.1": 1}
            w2.write(b"z")
            await w2.drain()
            assert await asyncio.wait_for(r2.read(1), 3) == b"z"
            w1.close()
            w2.close()
        finally:
            await fwd.close()
            srv.close()

    run(main)


def test_udp_per_source_limit_and_defaults_bound_each_client() -> None:
    async def main() -> None:
        async with udp_server("a") as (ta, _ea):
            fwd = UdpForwarder(VIP, 0, [ta], max_flows=8, max_per_source=1)
            await fwd.start()
            c1, p1 = await udp_client("127.0.0.1")
            c2, p2 = await udp_client("127.0.0.1")
            c3, p3 = await udp_client("127.0.0.3")
            try:
                assert await udp_ask(c1, p1, fwd.bound_port, b"x") == b"a:x"
                c2.sendto(b"y", (VIP, fwd.bound_port))
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(p2.replies.get(), 0.3)
                assert fwd.refused == 1
                assert await udp_ask(c3, p3, fwd.bound_port, b"z") == b"a:z"
            finally:
                for c in (c1, c2, c3):
                    c.close()
                await fwd.close()
        # the defaults: a client gets a quarter of a forwarder, and TCP connections time out
        t = TcpForwarder(VIP, 0, [])
        u = UdpForwarder(VIP, 0, [])
        assert t.max_per_source * 4 <= t.max_connections and t.idle_timeout >= 300
        assert u.max_per_source * 4 <= u.max_flows

    run(main)
