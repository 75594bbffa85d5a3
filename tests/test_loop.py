"""The device loop's Poller: the selectors-like registration the loop reads directly."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from wgpy.io.loop import Poller


def test_poller_reports_readable_fds_with_their_callbacks() -> None:
    p = Poller()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        p.register(a, lambda s: ("a", s))
        p.register(c, lambda s: ("c", s))
        assert p.epoll.poll(0) == []
        b.send(b"x")
        events = p.epoll.poll(0.5)
        assert [fd for fd, _ in events] == [a.fileno()]
        obj, cb = p.handlers[a.fileno()]
        assert obj is a and cb(obj) == ("a", a)
    finally:
        p.close()
        for s in (a, b, c, d):
            s.close()


def test_poller_unregisters_open_closed_and_unknown_sockets() -> None:
    p = Poller()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        p.register(a, print)
        p.register(c, print)
        p.unregister(a)
        assert a.fileno() not in p.handlers
        with pytest.raises(KeyError):
            p.unregister(a)  # twice: unknown, as selectors says
        fd_c = c.fileno()
        c.close()  # closed first (fileno -1): found by identity
        p.unregister(c)
        assert fd_c not in p.handlers
        b.send(b"x")
        d.close()
        assert p.epoll.poll(0.05) == []
    finally:
        p.close()
        for s in (a, b, c, d):
            s.close()


def test_the_fast_paths_refusals_reach_the_stats_counters() -> None:
    """``stats`` reports what the OS refused on either path; the fast path counts its own."""
    from tun.memory import MemoryTun
    from wgpy.core.device import Device
    from wgpy.io.loop import DeviceRunner

    runner = DeviceRunner(Device(wall_time_ns=lambda: 0), MemoryTun("ctr0"), fast_path=True)
    try:
        assert runner.fast is not None
        assert runner.io_counters() == {
            "send_errors": 0,
            "tun_write_errors": 0,
            "internal_errors": 0,
            "fastpath_faults": 0,
            "fastpath_off": 0,
        }
        runner.fast._send_one(b"x", ("::1", 9))  # no socket is open: refused, counted
        runner.send_errors += 2  # as the ordinary path counts its own
        assert runner.io_counters()["send_errors"] == 3
    finally:
        runner.close()


def test_an_exception_escaping_the_fast_path_switches_it_off() -> None:
    """The loop survives it, counts it, and from then on the ordinary path reads the socket."""
    import threading

    from tun.memory import MemoryTun
    from wgpy.core.device import Device
    from wgpy.io.loop import DeviceRunner
    from wgpy.testbed import wait_for

    runner = DeviceRunner(Device(wall_time_ns=lambda: 0), MemoryTun("off0"), fast_path=True)
    fast = runner.fast
    assert fast is not None

    def broken(*_args: object) -> None:  # outside the per-packet guard: escapes on_udp
        raise RuntimeError("injected")

    fast._slow_datagram = broken  # type: ignore[method-assign]
    runner.bind_port(0)
    port = runner.bind.port
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:

        def nudged(cond: Callable[[], bool]) -> Callable[[], bool]:
            def check() -> bool:
                if cond():
                    return True
                sender.sendto(b"\x04\x00\x00\x00junk", ("127.0.0.1", port))  # too short
                return False

            return check

        def counters() -> str:
            return str(runner.io_counters())

        wait_for(nudged(lambda: runner.fast is None), 10, counters)
        counters = runner.io_counters()
        assert counters["fastpath_off"] == 1 and counters["internal_errors"] >= 1
        assert "RuntimeError: injected" in runner.fast_off_reason
        before = runner.device.drops["malformed"]
        # the ordinary path reads
        wait_for(nudged(lambda: runner.device.drops["malformed"] > before), 10, counters)
        assert thread.is_alive()
    finally:
        sender.close()
        runner.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_padding_follows_the_live_tun_mtu() -> None:
    """wireguard-go pads to the TUN's current MTU; ``ip link set mtu`` changes it at any time
    (issue 16). A 1290-byte packet pads to 1296 at MTU 1420 and to 1292 at MTU 1292."""
    from tests.simlink import A_TUN, B_TUN, Pair, ipv4
    from tun.memory import MemoryTun
    from wgpy.io.loop import DeviceRunner

    p = Pair()
    p.send_a(b"first")  # a session both ways
    p.pump()
    assert p.pb.current is not None
    tun = MemoryTun("mtu0")
    runner = DeviceRunner(p.a, tun, fast_path=False)
    try:
        packet = ipv4(A_TUN, B_TUN, bytes(1290 - 20))
        assert len(packet) == 1290
        sizes = []
        for mtu, sync in ((1420, runner.sync_mtu), (1292, runner._housekeeping)):
            tun.mtu = mtu
            sync()  # at start, then once a second in the loop
            p.a.receive_tun_packet(packet, now=p.clock.now)
            (datagram, _), = p.a.datagrams_to_send()
            sizes.append(len(datagram) - 32)  # header and tag
        assert sizes == [1296, 1292]
    finally:
        runner.close()
