"""asyncio TCP and UDP forwarders: traffic for ``VIP:port`` goes to one of a list of targets.

kube-vip DNATs with nftables; wgpy forwards in userspace instead, inside the pod's own network
namespace (no hostNetwork, no nftables, no marks). The cost is a proxy hop; the gain is that
nothing outside the pod is touched and teardown is just closing sockets.

* TCP: one target per connection (round-robin or random); if the connect fails or times out,
  the next target is tried, so one dead endpoint costs a delay, not a failed connection.
* UDP: one "flow" per client address: a connected socket to the chosen target; replies arriving
  on it go back to the client from ``VIP:port``. A flow idle for ``idle_timeout`` is closed.
* Both are bounded (``max_connections`` / ``max_flows``) and so is each client address
  (``max_per_source``: one client cannot take every slot, e.g. with 1024 idle connections to
  VIP:6443); beyond a bound new connections or flows are refused and counted (``refused`` and
  ``stats.errors``).
* Both close what is idle: a UDP flow after ``idle_timeout`` (60 s), a TCP connection with no
  byte either way for ``idle_timeout`` (10 min; counted in ``stats.idle_closed``). That is far
  beyond what kube-apiserver clients leave idle: client-go pings its HTTP/2 connections every
  30 s, and watches get bookmarks, so their long-lived watch connections are never cut.
* ``update_targets`` is live: new connections and flows use the new list at once; UDP flows to
  a removed target are closed (the client's next datagram picks a current target); established
  TCP connections are left alone, as conntrack does for DNAT.

The listening socket sets ``IP_FREEBIND`` so a forwarder can bind the VIP before (or while) the
address is on the tunnel interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

from wgpy.supervisor.model import ForwardStats, Target

log = logging.getLogger(__name__)

Strategy = Literal["round-robin", "random"]

IP_FREEBIND = 15  # linux/in.h (not exported by the socket module)
IPV6_FREEBIND = 78  # linux/in6.h
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_FLOWS = 1024
DEFAULT_MAX_PER_SOURCE = 256  # a quarter of the bound per client address
UDP_IDLE_TIMEOUT = 60.0
TCP_IDLE_TIMEOUT = 600.0
CONNECT_TIMEOUT = 3.0
_COPY_CHUNK = 65536
_FLOW_QUEUE = 64  # datagrams held per flow while its socket is being set up


def listening_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A non-blocking socket bound to ``host:port`` with ``IP_FREEBIND`` (and listening for TCP)."""
    ip = ipaddress.ip_address(host)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ip.version == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Picker:
    """Chooses targets: round-robin (rotating start) or uniformly random, never ``random``."""

    def __init__(self, targets: Sequence[Target], strategy: Strategy) -> None:
        if strategy not in ("round-robin", "random"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.targets: tuple[Target, ...] = tuple(targets)
        self.strategy = strategy
        self._next = 0

    def order(self) -> list[Target]:
        """All targets, in the order to try them for one new connection or flow."""
        n = len(self.targets)
        if n == 0:
            return []
        if self.strategy == "random":
            start = secrets.randbelow(n)
        else:
            start = self._next % n
            self._next = (start + 1) % n
        return [self.targets[(start + i) % n] for i in range(n)]


class _Base:
    protocol: str = ""

    def __init__(
        self,
        host: str,
        port: int,
        targets: Sequence[Target],
        *,
        strategy: Strategy = "round-robin",
        stats: ForwardStats | None = None,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
    ) -> None:
        self.host = host
        self.port = port
        self.picker = _Picker(targets, strategy)
        self.stats = stats if stats is not None else ForwardStats()
        self.refused = 0
        self.bound_port = 0  # the port actually bound (differs when ``port`` is 0)
        self.max_per_source = max_per_source
        self.per_source: dict[str, int] = {}  # client address -> open connections/flows

    def _source_full(self, source: str) -> bool:
        return self.per_source.get(source, 0) >= self.max_per_source

    def _source_add(self, source: str, n: int) -> None:
        left = self.per_source.get(source, 0) + n
        if left > 0:
            self.per_source[source] = left
        else:
            self.per_source.pop(source, None)

    @property
    def targets(self) -> tuple[Target, ...]:
        return self.picker.targets

    def _refuse(self, why: str) -> None:
        self.refused += 1
        self.stats.refused += 1
        self.stats.errors += 1
        log.warning("%s %s:%d: refused: %s", self.protocol, self.host, self.bound_port, why)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.bound_port or self.port}>"


class TcpForwarder(_Base):
    """Accept on ``host:port``, connect each client to one target, copy both ways."""

    protocol = "TCP"

    def __init__(
        self,
        host: str,
        port: int,
        targets: Sequence[Target],
        *,
        strategy: Strategy = "round-robin",
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        connect_timeout: float = CONNECT_TIMEOUT,
        idle_timeout: float = TCP_IDLE_TIMEOUT,
        stats: ForwardStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host, port, targets, strategy=strategy, stats=stats,
                         max_per_source=max_per_source)
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # per open connection: [last activity, client writer, upstream writer or None]
        self._conns: dict[asyncio.Task[None], list[Any]] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind and start accepting (``OSError`` if the address cannot be bound)."""
        sock = listening_socket(self.host, self.port, socket.SOCK_STREAM)
        self.bound_port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accepted, sock=sock)
        self._sweeper = asyncio.create_task(self._sweep())

    def expire(self, *, now: float) -> int:
        """Abort connections with no traffic either way for ``idle_timeout`` at ``now``."""
        idle = [c for c in self._conns.values() if now - c[0] >= self.idle_timeout]
        for c in idle:
            self.stats.idle_closed += 1
            for w in c[1:]:
                if w is not None:
                    w.transport.abort()
        return len(idle)

    async def _sweep(self) -> None:
        period = max(0.05, min(5.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.expire(now=self.clock())

    def update_targets(self, targets: Sequence[Target]) -> None:
        """Use ``targets`` for new connections from now on."""
        self.picker = _Picker(targets, self.picker.strategy)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self.stats.active >= self.max_connections:
            self._refuse(f"connection limit {self.max_connections} reached")
            writer.transport.abort()
            return
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        if self._source_full(source):
            self._refuse(f"per-source limit {self.max_per_source} reached for {source}")
            writer.transport.abort()
            return
        self._tasks.add(task)
        self._conns[task] = [self.clock(), writer, None]
        self._source_add(source, 1)
        self.stats.connections += 1
        self.stats.active += 1
        try:
            await self._serve(reader, writer)
        finally:
            self.stats.active -= 1
            self._source_add(source, -1)
            self._conns.pop(task, None)
            self._tasks.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for target in self.picker.order():
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(target.host, target.port), self.connect_timeout
                )
            except (OSError, TimeoutError) as e:
                self.stats.errors += 1
                log.info(
                    "TCP %s:%d: target %s:%d failed: %s",
                    self.host,
                    self.bound_port,
                    target.host,
                    target.port,
                    e,
                )
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await self._connect() if self.picker.targets else None
        except asyncio.CancelledError:  # close() while connecting: the client must not hang
            writer.transport.abort()
            raise
        if upstream is None:
            if not self.picker.targets:
                self.stats.errors += 1
            writer.transport.abort()  # RST: the client learns at once that nobody is there
            return
        up_reader, up_writer = upstream
        conn = self._conns.get(asyncio.current_task())  # type: ignore[arg-type]
        if conn is not None:
            conn[2] = up_writer
        try:
            await asyncio.gather(self._copy(reader, up_writer, conn),
                                 self._copy(up_reader, writer, conn))
        finally:
            for w in (writer, up_writer):
                w.close()
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    await w.wait_closed()

    async def _copy(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    conn: list[Any] | None = None) -> None:
        try:
            while data := await src.read(_COPY_CHUNK):
                if conn is not None:
                    conn[0] = self.clock()
                self.stats.bytes += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            dst.transport.abort()
            return
        # Half-close: pass the EOF on so request/response protocols that wait for it work.
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()

    async def close(self) -> None:
        """Stop accepting and close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None


class _ListenProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpForwarder) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.owner.from_client(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.owner.stats.errors += 1


class _Flow(asyncio.DatagramProtocol):
    """One client address ↔ one target, over a connected UDP socket."""

    def __init__(self, owner: UdpForwarder, client: tuple[str | int, ...], target: Target) -> None:
        self.owner = owner
        self.client = client
        self.target = target
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: list[bytes] = []
        self.last_active = owner.clock()
        self.closed = False

    def send(self, data: bytes) -> None:
        self.last_active = self.owner.clock()
        if self.transport is None:
            if len(self.pending) < _FLOW_QUEUE:
                self.pending.append(data)
            else:
                self.owner.stats.errors += 1
            return
        self.owner.count(len(data))
        self.transport.sendto(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector datagram transport is not a DatagramTransport subclass)
        self.transport = transport = cast(asyncio.DatagramTransport, transport)
        pending, self.pending = self.pending, []
        for data in pending:
            self.owner.count(len(data))
            transport.sendto(data)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.last_active = self.owner.clock()
        self.owner.to_client(data, self.client)

    def error_received(self, exc: Exception) -> None:
        # ICMP port/host unreachable from the target: drop the flow so the client's next
        # datagram is sent to the next target.
        self.owner.stats.errors += 1
        self.owner.drop_flow(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


class UdpForwarder(_Base):
    """Receive on ``host:port``; each client address gets a flow to one target."""

    protocol = "UDP"

    def __init__(
        self,
        host: str,
        port: int,
        targets: Sequence[Target],
        *,
        strategy: Strategy = "round-robin",
        max_flows: int = DEFAULT_MAX_FLOWS,
        max_per_source: int = DEFAULT_MAX_PER_SOURCE,
        idle_timeout: float = UDP_IDLE_TIMEOUT,
        stats: ForwardStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(host, port, targets, strategy=strategy, stats=stats,
                         max_per_source=max_per_source)
        self.max_flows = max_flows
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.flows: dict[tuple[str | int, ...], _Flow] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._setup: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind and start receiving (``OSError`` if the address cannot be bound)."""
        sock = listening_socket(self.host, self.port, socket.SOCK_DGRAM)
        self.bound_port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _ListenProtocol(self), sock=sock)
        self._transport = transport
        self._sweeper = asyncio.create_task(self._sweep())

    def update_targets(self, targets: Sequence[Target]) -> None:
        """New flows use ``targets``; flows to a target no longer listed are closed."""
        self.picker = _Picker(targets, self.picker.strategy)
        keep = set(self.picker.targets)
        for flow in list(self.flows.values()):
            if flow.target not in keep:
                self.drop_flow(flow)

    def count(self, n: int) -> None:
        self.stats.datagrams += 1
        self.stats.bytes += n

    def from_client(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        flow = self.flows.get(addr)
        if flow is None:
            flow = self._new_flow(addr)
            if flow is None:
                return
        flow.send(data)

    def _new_flow(self, addr: tuple[str | int, ...]) -> _Flow | None:
        if len(self.flows) >= self.max_flows:
            self._refuse(f"flow limit {self.max_flows} reached")
            return None
        source = str(addr[0])
        if self._source_full(source):
            self._refuse(f"per-source limit {self.max_per_source} reached for {source}")
            return None
        order = self.picker.order()
        if not order:
            self.stats.errors += 1
            return None
        flow = _Flow(self, addr, order[0])
        self.flows[addr] = flow
        self._source_add(source, 1)
        self.stats.connections += 1
        self.stats.active = len(self.flows)
        task = asyncio.get_running_loop().create_task(self._open(flow))
        self._setup.add(task)
        task.add_done_callback(self._setup.discard)
        return flow

    async def _open(self, flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(
                lambda: flow, remote_addr=(flow.target.host, flow.target.port)
            )
        except OSError as e:
            log.info(
                "UDP %s:%d: target %s:%d failed: %s",
                self.host,
                self.bound_port,
                flow.target.host,
                flow.target.port,
                e,
            )
            self.stats.errors += 1
            self.drop_flow(flow)
            return
        if flow.closed:  # dropped while we were connecting
            flow.closed = False
            flow.close()

    def to_client(self, data: bytes, client: tuple[str | int, ...]) -> None:
        if self._transport is not None:
            self.count(len(data))
            self._transport.sendto(data, client)

    def drop_flow(self, flow: _Flow) -> None:
        if self.flows.get(flow.client) is flow:
            del self.flows[flow.client]
            self._source_add(str(flow.client[0]), -1)
        flow.close()
        self.stats.active = len(self.flows)

    def expire(self, *, now: float) -> int:
        """Close flows idle for ``idle_timeout`` at ``now``; returns how many were closed."""
        idle = [f for f in self.flows.values() if now - f.last_active >= self.idle_timeout]
        for f in idle:
            self.stats.idle_closed += 1
            self.drop_flow(f)
        return len(idle)

    async def _sweep(self) -> None:
        period = max(0.05, min(1.0, self.idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.expire(now=self.clock())

    async def close(self) -> None:
        """Stop receiving and close every flow."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for t in list(self._setup):
            t.cancel()
        for flow in list(self.flows.values()):
            self.drop_flow(flow)
        if self._transport is not None:
            self._transport.close()
            self._transport = None


Forwarder = TcpForwarder | UdpForwarder


def make_forwarder(
    host: str, port: int, protocol: str, targets: Sequence[Target], *, strategy: Strategy
) -> Forwarder:
    """A TCP or UDP forwarder (not started) for one rule."""
    if protocol == "TCP":
        return TcpForwarder(host, port, targets, strategy=strategy)
    if protocol == "UDP":
        return UdpForwarder(host, port, targets, strategy=strategy)
    raise ValueError(f"unsupported protocol {protocol!r}")
