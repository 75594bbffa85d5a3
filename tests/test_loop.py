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
