"""The device loop's Poller: the selectors-like registration the loop reads directly."""

from __future__ import annotations

import socket

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
    from wgpy.device import Device
    from wgpy.io.loop import DeviceRunner

    runner = DeviceRunner(Device(wall_time_ns=lambda: 0), MemoryTun("ctr0"), fast_path=True)
    try:
        assert runner.fast is not None
        assert runner.io_counters() == {
            "send_errors": 0,
            "tun_write_errors": 0,
            "internal_errors": 0,
        }
        runner.fast._send_one(b"x", ("::1", 9))  # no socket is open: refused, counted
        runner.send_errors += 2  # as the ordinary path counts its own
        assert runner.io_counters()["send_errors"] == 3
    finally:
        runner.close()
