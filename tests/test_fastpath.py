"""The batched in-place fast path (wgpy.io.fastpath) against the sans-IO Device it shortcuts.

Two devices on real UDP sockets on 127.0.0.1 with in-memory TUNs: whatever the fast path
sends must open with the ordinary Device path and the other way round, with the same drops,
counters and timers as the per-packet path. Every test runs four times: the per-packet work
in Python or in the compiled ``wgpy.io._batch`` (where it is built), on TUNs without or with
``IFF_VNET_HDR`` (GSO writes of coalesced TCP segments, cut back by the in-memory TUN).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from noise import crypto
from tests.simlink import A_TUN, B_TUN, ipv4
from tun.memory import MemoryTun
from wgpy.core import messages
from wgpy.core.device import Device
from wgpy.core.peer import Peer
from wgpy.io import accel
from wgpy.io.fastpath import BATCH, FastPath, enable_gro
from wgpy.io.udp import UdpBind, set_buffers

LOCAL = "127.0.0.1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Side:
    dev: Device
    tun: MemoryTun
    bind: UdpBind
    fast: FastPath
    peer: Peer  # the other side, as this side's peer

    def drain(self, sock: socket.socket | None = None) -> None:
        """Let the fast path take everything queued on the UDP socket; after each read, work
        on the handshake backlog as the event loop does (its timer step)."""
        s = sock or self.bind.v4
        assert s is not None
        while select.select([s], [], [], 0.05)[0]:
            self.fast.on_udp(s)
            self.loop_step()

    def loop_step(self) -> None:
        """What DeviceRunner.run does after the events of a wake-up: the due timers (the
        handshake backlog among them), then the Device's output."""
        now = self.fast.clock()
        deadline = self.dev.get_timer()
        if deadline is not None and now >= deadline:
            self.dev.handle_timer(now=now)
        for p in self.dev.tun_packets_to_write():
            self.tun.write(p)
        self.fast.send_device_output()


@pytest.fixture(params=["python", "compiled", "python-vnet", "compiled-vnet"])
def sides(request: pytest.FixtureRequest) -> Iterator[tuple[Side, Side, Clock]]:
    """Two devices; per-packet work in Python or compiled; TUNs with or without
    ``IFF_VNET_HDR`` (then received TCP segments are coalesced into GSO writes)."""
    compiled = request.param.startswith("compiled")
    vnet = request.param.endswith("vnet")
    if compiled and accel.batch is None:
        pytest.skip(f"wgpy.io._batch: {accel.reason}")
    clock = Clock()
    keys = [crypto.generate_private_key() for _ in range(2)]
    made: list[Side] = []
    for i in range(2):
        dev = Device(wall_time_ns=lambda: 1_700_000_000 * 10**9 + int(clock.now * 1e9))
        dev.set_private_key(keys[i], now=clock.now)
        bind = UdpBind()
        bind.open(0)
        assert bind.v4 is not None
        enable_gro(bind.v4)
        tun = MemoryTun(f"fp{i}", vnet_hdr=vnet)
        made.append(
            Side(dev, tun, bind, FastPath(dev, tun, bind, clock=clock, use_compiled=compiled), None)
        )  # type: ignore[arg-type]
    a, b = made
    for me, other, own_ip, other_ip, key in (
        (a, b, A_TUN, B_TUN, keys[1]),
        (b, a, B_TUN, A_TUN, keys[0]),
    ):
        del own_ip
        me.peer = me.dev.add_peer(crypto.public_key(key), now=clock.now)
        me.dev.set_allowed_ips(me.peer, [f"{other_ip}/32"])
        me.dev.set_endpoint(me.peer, (LOCAL, other.bind.port))
    try:
        yield a, b, clock
    finally:
        for s in made:
            s.bind.close()
            s.tun.close()


def handshake(a: Side, b: Side) -> None:
    """A sends one packet: initiation, response, then the staged packet confirms the session."""
    a.tun.inject(ipv4(A_TUN, B_TUN, b"hello"))
    assert a.fast.on_tun() is None
    b.drain()  # initiation -> response
    a.drain()  # response -> staged packet
    b.drain()  # the packet confirms B's `next` session
    assert b.tun.take() == [ipv4(A_TUN, B_TUN, b"hello")]
    assert a.peer.current is not None and b.peer.current is not None


def raw_receiver() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    set_buffers(s)  # room for a whole batch at once
    s.bind((LOCAL, 0))
    return s


def recv_all(s: socket.socket) -> list[bytes]:
    out = []
    while select.select([s], [], [], 0.05)[0]:
        out.append(s.recv(65535))
    return out


def test_end_to_end_handshake_and_data_both_ways(sides: tuple[Side, Side, Clock]) -> None:
    a, b, _ = sides
    handshake(a, b)
    to_b = [ipv4(A_TUN, B_TUN, bytes([i]) * (1 + i * 11), ident=i) for i in range(100)]
    a.tun.inject_many(to_b)
    assert a.fast.on_tun() is None
    b.drain()
    assert b.tun.take() == to_b  # in order, trimmed of padding
    to_a = [ipv4(B_TUN, A_TUN, b"r" * 1392, ident=i) for i in range(50)]
    b.tun.inject_many(to_a)
    b.fast.on_tun()
    a.drain()
    assert a.tun.take() == to_a
    assert a.dev.drops == {} and b.dev.drops == {}
    # byte counters as the ordinary path keeps them: datagram sizes, both ends agree
    assert a.peer.tx_bytes == b.peer.rx_bytes > 0
    assert b.peer.tx_bytes == a.peer.rx_bytes > 0


def test_sealed_datagrams_open_with_the_ordinary_path(sides: tuple[Side, Side, Clock]) -> None:
    a, b, clock = sides
    handshake(a, b)
    kp = a.peer.current
    assert kp is not None
    first = kp.send_counter
    sink = raw_receiver()
    try:
        a.dev.set_endpoint(a.peer, (LOCAL, sink.getsockname()[1]))
        packets = [ipv4(A_TUN, B_TUN, bytes(1400 - 20)) for _ in range(BATCH)]
        packets += [ipv4(A_TUN, B_TUN, b"x" * 7), ipv4(A_TUN, B_TUN, bytes(1400 - 20))]
        a.tun.inject_many(packets)
        a.fast.on_tun()
        a.fast.on_tun()
        got = recv_all(sink)
    finally:
        sink.close()
    # a plain receiver sees separate datagrams even where GSO sent runs in one sendmsg
    assert len(got) == len(packets)
    counters = [messages.parse_transport_header(d) for d in got]
    assert counters == [(kp.remote_index, first + i) for i in range(len(packets))]
    for d in got:
        # padded to 16 bytes as wireguard-go: 27-byte packet -> 32-byte plaintext
        assert (len(d) - 32) % 16 == 0 or len(d) - 32 == a.dev.mtu
        b.dev.receive_datagram(d, (LOCAL, a.bind.port), now=clock.now)
    assert b.dev.tun_packets_to_write() == packets
    assert b.dev.drops == {}


def test_replays_forgeries_and_spoofed_sources_are_dropped(
    sides: tuple[Side, Side, Clock],
) -> None:
    a, b, clock = sides
    handshake(a, b)
    a.dev.receive_tun_packet(ipv4(A_TUN, B_TUN, b"one"), now=clock.now)
    a.dev.receive_tun_packet(ipv4(A_TUN, "10.99.0.77", b"x"), now=clock.now)  # no route
    ((d1, _),) = a.dev.datagrams_to_send()
    tampered = bytearray(d1)
    tampered[-1] ^= 1
    # a packet from an address B does not route to A: sealed by A's real session
    kp = a.peer.current
    assert kp is not None
    spoof_plain = ipv4("10.99.0.99", B_TUN, b"spoof")
    spoof = messages.TRANSPORT_HEADER.pack(4, kp.remote_index, kp.send_counter) + kp.send.seal(
        kp.send_counter, spoof_plain + bytes(-len(spoof_plain) % 16)
    )
    kp.send_counter += 1
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for d in (bytes(tampered), d1, d1, spoof):
            tx.sendto(d, (LOCAL, b.bind.port))
        b.drain()
    finally:
        tx.close()
    assert b.tun.take() == [ipv4(A_TUN, B_TUN, b"one")]
    assert b.dev.drops["decryption_failed"] == 1
    assert b.dev.drops["replayed"] == 1
    assert b.dev.drops["disallowed_source"] == 1


def test_per_batch_timers_and_roaming(sides: tuple[Side, Side, Clock]) -> None:
    a, b, clock = sides
    handshake(a, b)
    clock.now += 1.0
    b.peer.send_keepalive_at = None
    b.peer.need_another_keepalive = False
    a.peer.new_handshake_at = None
    a.tun.inject_many([ipv4(A_TUN, B_TUN, b"t%d" % i) for i in range(3)])
    a.fast.on_tun()
    # data sent: expect a reply within KEEPALIVE + REKEY_TIMEOUT (+ jitter < 0.334)
    assert a.peer.new_handshake_at is not None
    assert clock.now + 15.0 <= a.peer.new_handshake_at < clock.now + 15.334
    other = UdpBind()
    other.open(0)
    try:
        assert other.v4 is not None
        # A roams: its data now leaves from another port; B must follow it
        a.bind.v4, other.v4 = other.v4, a.bind.v4
        a.tun.inject(ipv4(A_TUN, B_TUN, b"moved"))
        a.fast.on_tun()
        b.drain()
        roamed_port = a.bind.v4.getsockname()[1]
        a.bind.v4, other.v4 = other.v4, a.bind.v4
    finally:
        other.close()
    assert len(b.tun.take()) == 4
    assert b.peer.endpoint == (LOCAL, roamed_port)
    # data received: a keepalive is due in KEEPALIVE_TIMEOUT, and another one after that
    assert b.peer.send_keepalive_at == clock.now + 10.0
    assert b.peer.need_another_keepalive
    assert b.peer.new_handshake_at is None


def test_no_session_and_aged_session_take_the_ordinary_path(
    sides: tuple[Side, Side, Clock],
) -> None:
    a, b, clock = sides
    handshake(a, b)
    kp = a.peer.current
    assert kp is not None and kp.is_initiator
    assert a.dev.sendable_keypair(a.peer, now=clock.now, count=BATCH) is kp
    clock.now += 121.0  # past REKEY_AFTER_TIME: sending must start a new handshake
    assert a.dev.sendable_keypair(a.peer, now=clock.now, count=BATCH) is None
    sent_before = a.peer.last_sent_handshake
    a.tun.inject(ipv4(A_TUN, B_TUN, b"old"))
    a.fast.on_tun()
    assert a.peer.last_sent_handshake == clock.now > sent_before
    b.drain()
    a.drain()
    b.drain()
    assert ipv4(A_TUN, B_TUN, b"old") in b.tun.take()
    assert a.peer.current is not kp  # rekeyed
    assert a.dev.handshakes_completed == 2


def test_gro_buffers_are_split_into_datagrams(sides: tuple[Side, Side, Clock]) -> None:
    """Several same-size datagrams sent with one GSO sendmsg arrive and open one by one."""
    a, b, _ = sides
    handshake(a, b)
    packets = [ipv4(A_TUN, B_TUN, struct.pack("!I", i) * 300) for i in range(60)]
    a.tun.inject_many(packets)
    a.fast.on_tun()
    assert a.fast.gso  # the kernel took the UDP_SEGMENT sends
    b.drain()
    assert b.tun.take() == packets


class RefusingSocket:
    """A UDP socket whose GSO sends (``sendmsg``) fail with ``code``; the rest goes through."""

    def __init__(self, inner: socket.socket, code: int) -> None:
        self.inner, self.code, self.refused = inner, code, 0

    def sendmsg(self, *_args: Any) -> int:
        self.refused += 1
        raise OSError(self.code, os.strerror(self.code))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    ("code", "gso_after"), [(errno.EINVAL, True), (errno.EOPNOTSUPP, True), (errno.EIO, False)]
)
def test_only_eio_turns_gso_off_for_good(
    sides: tuple[Side, Side, Clock], code: int, gso_after: bool
) -> None:
    """A refused GSO send goes out datagram by datagram; only EIO (no checksum offload)
    turns GSO off for the process, as in wireguard-go (issue 16)."""
    a, b, _ = sides
    handshake(a, b)
    real = a.bind.v4
    assert real is not None
    refusing = RefusingSocket(real, code)
    a.bind.v4 = refusing  # type: ignore[assignment]
    try:
        for round_ in range(2):
            packets = [ipv4(A_TUN, B_TUN, struct.pack("!II", round_, i) * 150) for i in range(20)]
            a.tun.inject_many(packets)
            a.fast.on_tun()
            b.drain()
            assert b.tun.take() == packets  # nothing lost to the refusal
    finally:
        a.bind.v4 = real
    assert a.fast.gso is gso_after
    assert a.fast.gso_refused == refusing.refused == (2 if gso_after else 1)
    assert a.fast.send_errors == 0


class AnsweringTun(MemoryTun):
    """A TUN whose stack answers each packet inside the write() that delivers it, as the
    kernel queues an ICMP echo reply (or a TCP ACK) before the write returns."""

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        n = super().write(packet)
        data = bytes(packet)
        src = ".".join(str(x) for x in data[12:16])
        dst = ".".join(str(x) for x in data[16:20])
        self.inject(ipv4(dst, src, b"re:" + data[20:]))
        return n


def test_the_answer_goes_out_within_the_receive_call(sides: tuple[Side, Side, Clock]) -> None:
    """on_udp reads the TUN right after its first write: the answer is sealed and sent before
    on_udp returns, with the receive bookkeeping before the send bookkeeping."""
    a, b, clock = sides
    b.tun.close()
    b.tun = AnsweringTun("fpans")
    b.fast = FastPath(b.dev, b.tun, b.bind, clock=clock)
    handshake(a, b)  # the slow path wrote "hello": its answer waits in B's TUN
    a.drain()
    a.tun.take()
    clock.now += 1.0
    b.peer.send_keepalive_at = None
    b.peer.new_handshake_at = None
    a.tun.inject(ipv4(A_TUN, B_TUN, b"ping"))
    a.fast.on_tun()
    assert b.bind.v4 is not None
    assert select.select([b.bind.v4], [], [], 1.0)[0]
    b.fast.on_udp(b.bind.v4)  # one call, and no on_tun on B's side
    assert b.tun.take() == [ipv4(A_TUN, B_TUN, b"ping")]
    a.drain()
    answers = a.tun.take()
    assert ipv4(B_TUN, A_TUN, b"re:ping") in answers
    # received, then sent (the ordinary path's order): data sent arms the new-handshake timer
    # and cancels the keepalive the received data armed; the other order would do neither
    assert b.peer.new_handshake_at is not None
    assert b.peer.send_keepalive_at is None
    assert b.peer.rx_bytes > 0 and b.peer.tx_bytes > 0
    assert a.dev.drops == {} and b.dev.drops == {}


def test_a_failing_tun_read_after_a_write_is_reported(sides: tuple[Side, Side, Clock]) -> None:
    """The TUN read on_udp makes after writing must not be lost when the TUN fails there."""
    a, b, _ = sides
    handshake(a, b)

    def broken(_buf: bytearray | memoryview) -> int:
        raise OSError(errno.EBADFD, "File descriptor in bad state")

    b.fast._read_into = broken  # type: ignore[assignment]
    a.tun.inject(ipv4(A_TUN, B_TUN, b"x"))
    a.fast.on_tun()
    b.drain()
    assert b.tun.take() == [ipv4(A_TUN, B_TUN, b"x")]
    assert b.fast.tun_error is not None and "TUN read failed" in b.fast.tun_error


def test_the_cpu_is_handed_over_once_the_first_datagram_is_out(
    sides: tuple[Side, Side, Clock],
) -> None:
    """on_tun yields right after its first sendto, before reading on and before bookkeeping:
    the receiver the kernel queued on this CPU runs first. Once per wake-up, not per packet."""
    a, b, clock = sides
    handshake(a, b)
    b.drain()
    assert b.bind.v4 is not None
    seen: list[tuple[bool, int, int]] = []  # (datagram waiting at B, tx_bytes, TUN queue)

    def hand_over() -> None:
        waiting = bool(select.select([b.bind.v4], [], [], 0)[0])
        seen.append((waiting, a.peer.tx_bytes, a.tun.pending()))

    a.fast.hand_over = hand_over
    clock.now += 1.0
    before = a.peer.tx_bytes
    a.tun.inject_many(ipv4(A_TUN, B_TUN, bytes([i])) for i in range(3))
    assert a.fast.on_tun() is None
    assert seen == [(True, before, 2)]  # sent, not yet counted, the rest not yet read
    assert a.peer.tx_bytes > before
    b.drain()
    assert len(b.tun.take()) == 3


def test_the_cpu_is_handed_over_after_the_first_tun_write(
    sides: tuple[Side, Side, Clock],
) -> None:
    """on_udp yields right after its first TUN write (the write may have woken a local reader,
    as a ping reply wakes ping), before reading the TUN for an answer; the answer's sendto
    yields again."""
    a, b, clock = sides
    b.tun.close()
    b.tun = AnsweringTun("fpho")
    b.fast = FastPath(b.dev, b.tun, b.bind, clock=clock)
    handshake(a, b)
    b.fast.on_tun()  # the answer to "hello" the slow path left in B's TUN
    a.drain()
    assert a.tun.take() == [ipv4(B_TUN, A_TUN, b"re:hello")]
    calls: dict[str, list[int]] = {"a": [], "b": []}
    a.fast.hand_over = lambda: calls["a"].append(len(a.tun.written()))
    b.fast.hand_over = lambda: calls["b"].append(b.tun.pending())
    clock.now += 1.0
    a.tun.inject(ipv4(A_TUN, B_TUN, b"ping"))
    a.fast.on_tun()
    assert calls["a"] == [0]
    b.drain()
    assert calls["b"] == [1, 0]  # after the write (answer not yet read), after it left
    a.drain()
    assert a.tun.take() == [ipv4(B_TUN, A_TUN, b"re:ping")]
    assert calls["a"] == [0, 1]  # after the write of the answer


class StrictAead:
    """Wraps an AEAD method as cryptography 51 behaves, whatever version is installed:
    input and output must not share a buffer. Records every call's buffers."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __call__(self, nonce: bytes, data: Any, aad: Any, out: Any) -> None:
        self.calls += 1
        if _base(data) is _base(out):
            raise ValueError("data and buf must not overlap")
        self.inner(nonce, data, aad, out)


def _base(buf: Any) -> object:
    return buf.obj if isinstance(buf, memoryview) else buf


def make_strict(side: Side) -> tuple[StrictAead, StrictAead]:
    kp = side.peer.current
    assert kp is not None
    seal, opener = StrictAead(kp.send.encrypt_into), StrictAead(kp.receive.decrypt_into)
    kp.send.encrypt_into, kp.receive.decrypt_into = seal, opener  # type: ignore[method-assign]
    return seal, opener


def test_the_aead_never_works_in_place(sides: tuple[Side, Side, Clock]) -> None:
    """Sealing and opening write into another buffer than they read (cryptography 51 refuses
    overlapping buffers; with 47-50 in-place worked by accident)."""
    a, b, _ = sides
    handshake(a, b)
    a_seal, a_open = make_strict(a)
    b_seal, b_open = make_strict(b)
    to_b = [ipv4(A_TUN, B_TUN, bytes([i]) * (40 + i), ident=i) for i in range(40)]
    a.tun.inject_many(to_b)
    assert a.fast.on_tun() is None
    b.drain()
    assert b.tun.take() == to_b
    to_a = [ipv4(B_TUN, A_TUN, b"z" * 1392, ident=i) for i in range(40)]
    b.tun.inject_many(to_a)
    assert b.fast.on_tun() is None
    a.drain()
    assert a.tun.take() == to_a
    if a.fast.compiled is None:
        assert a_seal.calls == b_seal.calls == b_open.calls == a_open.calls == 40
    else:  # it copies, never in place; a GRO read's datagrams are opened at once, in C
        assert a_seal.calls == b_seal.calls == 0 and b_open.calls < 40 and a_open.calls < 40
    assert a.fast.faults.count == b.fast.faults.count == 0


def test_the_installed_cryptography_runs_the_fast_path() -> None:
    """Whatever release is installed (the lock's, or the newest in the canary), the fast
    path's AEAD calls work: a seal and an open into separate buffers round-trip."""
    import cryptography

    c = crypto.TransportCipher(bytes(range(32)))
    plain = bytearray(b"p" * 1420)
    sealed = bytearray(1436)
    c.encrypt_into(crypto.pack_nonce(5), memoryview(plain), None, memoryview(sealed))
    opened = bytearray(1420)
    c.decrypt_into(crypto.pack_nonce(5), memoryview(sealed), None, memoryview(opened))
    assert opened == plain, cryptography.__version__


class Raising:
    """An AEAD method that raises ``times`` times (as a broken dependency would), then works."""

    def __init__(self, inner: Any, times: int) -> None:
        self.inner, self.left = inner, times

    def __call__(self, *args: Any) -> Any:
        if self.left:
            self.left -= 1
            raise RuntimeError("injected fault")
        return self.inner(*args)


class RaisingSealer:
    """A compiled sealer whose ``seal`` raises ``times`` times, then works."""

    def __init__(self, inner: Any, times: int) -> None:
        self.seal = Raising(inner.seal, times)


class RaisingOpener:
    """A compiled opener whose calls (``open`` or ``receive``) raise ``times`` times in all,
    then work."""

    def __init__(self, inner: Any, times: int) -> None:
        self.inner, self.left = inner, times

    def _call(self, method: str, *args: Any) -> Any:
        if self.left:
            self.left -= 1
            raise RuntimeError("injected fault")
        return getattr(self.inner, method)(*args)

    def open(self, *args: Any) -> Any:
        return self._call("open", *args)

    def receive(self, *args: Any) -> Any:
        return self._call("receive", *args)


def break_opening(side: Side, times: int) -> None:
    """Make the next ``times`` opens of ``side``'s current session raise, on either path (for
    the compiled path: ``times`` GRO reads, or datagrams read one by one)."""
    kp = side.peer.current
    assert kp is not None
    kp.receive.decrypt_into = Raising(kp.receive.decrypt_into, times)  # type: ignore[method-assign]
    if side.fast.compiled is not None:
        kp.receive.compiled = RaisingOpener(side.fast.compiled.Opener(kp.receive.key), times)


def break_sealing(side: Side, times: int) -> None:
    """Make the next ``times`` seals of ``side``'s current session raise, on either path."""
    kp = side.peer.current
    assert kp is not None
    if side.fast.compiled is not None:
        kp.send.compiled = RaisingSealer(side.fast.compiled.Sealer(kp.send.key), times)
    else:
        kp.send.encrypt_into = Raising(kp.send.encrypt_into, times)  # type: ignore[method-assign]


def test_a_fault_when_sealing_sends_the_packet_the_ordinary_way(
    sides: tuple[Side, Side, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    a, b, _ = sides
    handshake(a, b)
    break_sealing(a, 5)
    packets = [ipv4(A_TUN, B_TUN, bytes([i]) * 100, ident=i) for i in range(8)]
    with caplog.at_level("ERROR", logger="wgpy.io.fastpath"):
        a.tun.inject_many(packets)
        assert a.fast.on_tun() is None
        b.drain()
    assert b.tun.take() == packets  # every packet, in order: 5 the ordinary way, 3 fast
    assert a.fast.faults.count == 5
    assert "RuntimeError: injected fault" in a.fast.faults.last
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # the first of its kind; the rest only counted


def test_a_fault_when_opening_delivers_the_datagram_the_ordinary_way(
    sides: tuple[Side, Side, Clock],
) -> None:
    a, b, _ = sides
    handshake(a, b)
    break_opening(b, 3)
    packets = [ipv4(A_TUN, B_TUN, bytes([i]) * 300, ident=i) for i in range(6)]
    a.tun.inject_many(packets)
    assert a.fast.on_tun() is None
    b.drain()
    assert b.tun.take() == packets
    if b.fast.compiled is None:
        assert b.fast.faults.count == 3
    else:  # 3 in C (a call per datagram until it works), and up to 3 in Python (datagrams
        # read alone, or that C leaves to Python: the first of a new source)
        assert 3 <= b.fast.faults.count <= 6
    assert b.dev.drops["decryption_failed"] == 0 and b.dev.drops["replayed"] == 0


def test_dense_faults_ask_for_the_fast_path_to_be_switched_off(
    sides: tuple[Side, Side, Clock],
) -> None:
    a, b, clock = sides
    handshake(a, b)
    reasons: list[str] = []
    a.fast.on_broken = reasons.append
    break_sealing(a, 10**6)
    limit = a.fast.faults.limit
    for i in range(limit - 1):  # spread out over more than one window: never `limit` in one
        clock.now += a.fast.faults.window / (limit - 4)
        a.tun.inject(ipv4(A_TUN, B_TUN, b"s", ident=i))
        a.fast.on_tun()
    assert reasons == []
    a.tun.inject_many(ipv4(A_TUN, B_TUN, b"d", ident=i) for i in range(limit))
    a.fast.on_tun()
    assert reasons and "faults, the latest: RuntimeError: injected fault" in reasons[0]
    b.drain()
    assert len(b.tun.take()) == 2 * limit - 1  # all delivered the ordinary way meanwhile


def test_fast_path_drops_packets_not_for_an_accepted_destination(
    sides: tuple[Side, Side, Clock],
) -> None:
    """Issue 15 point 5 on the fast path: only the VIP may come out of the tunnel."""
    a, b, clock = sides
    handshake(a, b)
    b.dev.accept_destinations = frozenset({bytes(int(x) for x in B_TUN.split("."))})
    a.dev.allowed_ips.insert("10.96.0.0/12", a.peer)
    inject = ipv4(A_TUN, "10.96.0.1", b"into the cluster")
    ok = ipv4(A_TUN, B_TUN, b"for the VIP")
    a.dev.receive_tun_packet(inject, now=clock.now)
    a.dev.receive_tun_packet(ok, now=clock.now)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for d, _ in a.dev.datagrams_to_send():
            tx.sendto(d, (LOCAL, b.bind.port))
        b.drain()
    finally:
        tx.close()
    assert b.tun.take() == [ok]
    assert b.dev.drops["disallowed_destination"] == 1


def count_hand_overs(a: Side, b: Side) -> dict[str, int]:
    """Replace both sides' hand-over with a counter; the counts, by side ("a", "b")."""
    calls = {"a": 0, "b": 0}

    def count(side: str) -> Callable[[], None]:
        def hand_over() -> None:
            calls[side] += 1

        return hand_over

    a.fast.hand_over, b.fast.hand_over = count("a"), count("b")
    return calls


def test_no_hand_over_in_a_bulk_flow(sides: tuple[Side, Side, Clock]) -> None:
    """After a wake-up that sealed (opened) more than one packet, the next one does not
    yield: in a bulk flow each yield only costs. A lone packet yields again."""
    a, b, clock = sides
    handshake(a, b)
    b.drain()
    calls = count_hand_overs(a, b)
    clock.now += 1.0
    for expected in (1, 1, 1):  # the first of a burst yields, the two after it do not
        a.tun.inject_many(ipv4(A_TUN, B_TUN, bytes([i])) for i in range(4))
        assert a.fast.on_tun() is None
        assert calls["a"] == expected
    a.tun.inject(ipv4(A_TUN, B_TUN, b"lone"))
    a.fast.on_tun()  # after a burst: no yield; it sealed one packet
    a.tun.inject(ipv4(A_TUN, B_TUN, b"lone again"))
    a.fast.on_tun()
    assert calls["a"] == 2
    b.drain()
    assert len(b.tun.take()) == 14


def test_tcp_segments_arrive_whole_and_in_order(sides: tuple[Side, Side, Clock]) -> None:
    """A TCP flow's segments, sealed in bulk and received in GRO reads: on a TUN with
    IFF_VNET_HDR coalesced into GSO writes (Python or C), which the stack cuts back into the
    very segments sent; interleaved with another flow and a UDP packet, in order."""
    from tests.test_gro import segments, tcp_segment

    a, b, _ = sides
    handshake(a, b)
    flow = segments(30, last=500)
    other = tcp_segment(7, b"o" * 1368, sport=1234)
    sent = [*flow[:10], other, *flow[10:20], ipv4(A_TUN, B_TUN, b"u" * 1000), *flow[20:]]
    a.dev.set_allowed_ips(a.peer, [f"{B_TUN}/32", "0.0.0.0/0"])
    b.dev.set_allowed_ips(b.peer, [f"{A_TUN}/32", "0.0.0.0/0"])
    a.tun.inject_many(sent)
    while a.tun.pending():
        assert a.fast.on_tun() is None
    b.drain()
    assert b.tun.take() == sent
    if b.tun.vnet_hdr:
        assert b.tun.gso_writes >= 2  # the flow's runs were coalesced
        assert b.fast.gro is not None and b.fast.gro.segments >= 20
        assert (b.fast.compiled_runs > 0) == (b.fast.compiled is not None)
    assert b.dev.drops == {}


def test_no_hand_over_for_the_answers_to_a_bulk_flow(sides: tuple[Side, Side, Clock]) -> None:
    """The receiver of a bulk flow sends its answers (TCP ACKs) one per wake-up: those do not
    yield either, nor does the sender when an answer comes back."""
    a, b, clock = sides
    handshake(a, b)
    b.drain()
    calls = count_hand_overs(a, b)
    clock.now += 1.0
    a.tun.inject_many(ipv4(A_TUN, B_TUN, bytes([i]) * 500) for i in range(8))
    assert a.fast.on_tun() is None  # the first of a burst yields
    a.tun.inject_many(ipv4(A_TUN, B_TUN, bytes([i]) * 500) for i in range(8))
    assert a.fast.on_tun() is None
    b.drain()
    assert len(b.tun.take()) == 16
    before = dict(calls)
    b.tun.inject(ipv4(B_TUN, A_TUN, b"ack"))
    assert b.fast.on_tun() is None
    a.drain()
    assert a.tun.take() == [ipv4(B_TUN, A_TUN, b"ack")]
    assert calls == before
