"""The device event loop: drives the sans-IO ``Device`` with a UDP bind, a TUN and the UAPI.

One thread, one epoll loop (:class:`Poller`): TUN readable → ``receive_tun_packet`` for every
packet queued; UDP readable → ``receive_datagram`` for every transport datagram queued and
``queue_handshake`` for every handshake message (the Device's bounded backlog, worked on in the
timer step within a budget, after the data); UAPI → get/set; then the outputs are flushed and
one timer is re-armed at ``device.get_timer()``. Unless
``fast_path=False`` (or ``WGPY_FASTPATH=0``), TUN and UDP reads go through
:class:`~wgpy.io.fastpath.FastPath`: batched, into preallocated buffers, UDP GSO/GRO, handing
the CPU over after the first send of a wake-up (``WGPY_HAND_OVER=0`` turns that off). Once a
second it checks that the TUN and the UAPI socket file still exist, and exits when either is
gone (``ip link del``, ``wg-quick down``), as wireguard-go does.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from tun.base import TunDevice, TunError
from wgpy.core import configure, uapi
from wgpy.core.device import Device
from wgpy.io.bind import Bind, DatagramSocket
from wgpy.io.fastpath import FastPath, disable_gro, enable_gro
from wgpy.io.faults import FaultLog, describe
from wgpy.io.uapi_server import UapiServer
from wgpy.io.udp import UdpBind

log = logging.getLogger(__name__)

BATCH = 256  # packets taken from one source per wake-up, so that no source starves others
HOUSEKEEPING = 1.0


class Poller:
    """Readable-fd registrations on one epoll, with a ``selectors``-like register/unregister.

    The loop reads ``epoll.poll`` and ``handlers`` (fd -> (fileobj, callback)) directly:
    ``selectors`` costs a SelectorKey lookup and list building per wake-up, which an idle
    device pays with cold caches on every first packet (docs/benchmarks.md, latency).
    """

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.handlers: dict[int, tuple[Any, Callable[[Any], object]]] = {}

    def register(self, fileobj: Any, callback: Callable[[Any], object]) -> None:
        """Call ``callback(fileobj)`` whenever ``fileobj`` (a socket or an fd) is readable."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self.epoll.register(fd, select.EPOLLIN)
        self.handlers[fd] = (fileobj, callback)

    def unregister(self, fileobj: Any) -> None:
        """Forget ``fileobj`` (KeyError if unknown). A closed socket (fileno -1) is found by
        identity; the kernel already dropped its fd from the epoll set."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd == -1:
            fd = next((k for k, (obj, _cb) in self.handlers.items() if obj is fileobj), -1)
        if self.handlers.pop(fd, None) is None:
            raise KeyError(fileobj)
        with contextlib.suppress(OSError, ValueError):
            self.epoll.unregister(fd)

    def close(self) -> None:
        self.handlers.clear()
        self.epoll.close()


class DeviceRunner:
    """Owns the fds of one interface and runs its loop until told to stop."""

    def __init__(
        self,
        device: Device,
        tun: TunDevice,
        *,
        uapi_server_factory: Callable[[DeviceRunner], UapiServer] | None = None,
        clock: Callable[[], float] = time.monotonic,
        link_alive: Callable[[], bool] | None = None,
        fast_path: bool | None = None,
        may_send: Callable[[], bool] | None = None,
        bind: Bind | None = None,
    ) -> None:
        """``may_send``: asked (thread-safe, cheap) before datagrams leave; when it says no
        they are dropped and counted in ``fenced`` (the supervisor's leadership fence).
        ``bind``: the UDP endpoints (:mod:`wgpy.io.bind`); the kernel's sockets by default,
        a :class:`~wgpy.io.membind.MemoryBind` in tests."""
        self.device = device
        self.tun = tun
        self.clock = clock
        self.bind: Bind = UdpBind() if bind is None else bind
        if fast_path is None:
            fast_path = os.environ.get("WGPY_FASTPATH", "1") != "0"
        hand_over = os.sched_yield if os.environ.get("WGPY_HAND_OVER", "1") != "0" else None
        self.fast = (
            FastPath(
                device,
                tun,
                self.bind,
                clock=clock,
                hand_over=hand_over,
                on_broken=self.fast_path_off,
                may_send=may_send,
            )
            if fast_path
            else None
        )
        self.fast_off_reason = ""  # why the fast path was switched off, if it was
        self._fast_retired: FastPath | None = None  # its counters stay readable
        self.sel = Poller()
        self.stopping = False
        self.exit_reason = ""
        self.send_errors = 0
        self.tun_write_errors = 0
        self.internal_errors = FaultLog("event loop", clock=clock, logger=log)
        self._link_alive = link_alive
        self._may_send = may_send
        self.fenced = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, self._on_wake)
        self.sel.register(tun.fileno(), self._on_tun)
        self.uapi = uapi_server_factory(self) if uapi_server_factory else None
        if self.uapi is not None:
            self.sel.register(self.uapi.listener, self._on_accept)

    # --- configuration handlers (UAPI) -------------------------------------------------------

    def bind_port(self, port: int) -> int:
        old = self.bind.sockets()
        for s in old:
            self.sel.unregister(s)
        try:
            bound = self.bind.open(port, self.device.fwmark)
            if self.fast is not None:  # GRO only where the reader splits coalesced buffers
                for s in self.bind.sockets():
                    enable_gro(s)
        finally:
            for s in self.bind.sockets():
                self.sel.register(s, self.fast.on_udp if self.fast else self._on_udp)
        return bound

    def uapi_get(self) -> str:
        return uapi.format_get(configure.snapshot(self.device))

    def uapi_set(self, req: uapi.SetRequest) -> None:
        now = self.clock()
        old_mark = self.device.fwmark
        configure.apply_set(self.device, req, now=now, bind_port=self.bind_port)
        if self.device.fwmark != old_mark:
            with contextlib.suppress(OSError):
                self.bind.set_fwmark(self.device.fwmark)
        self._flush()

    # --- event handlers ----------------------------------------------------------------------

    def _on_wake(self, _fd: object) -> None:
        with contextlib.suppress(OSError):
            self._wake_r.recv(4096)

    def _on_accept(self, _fd: object) -> None:
        assert self.uapi is not None
        for conn in self.uapi.accept():
            self.sel.register(conn, self._on_uapi_conn)

    def _on_uapi_conn(self, sock: object) -> None:
        assert self.uapi is not None and isinstance(sock, socket.socket)
        fd = sock.fileno()
        if not self.uapi.readable(fd):
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(sock)

    def _on_tun(self, _fd: object) -> None:
        if self.fast is not None:
            error = self.fast.on_tun()
            if error is not None:
                self.stop(error)
            return
        tun = self.tun
        read = tun.read
        receive = self.device.receive_tun_packet
        now = self.clock()
        budget = BATCH
        # a split super-packet's segments (LinuxTun with offloads) are all read in this call
        while budget > 0 or getattr(tun, "pending", None):
            budget -= 1
            try:
                packet = read()
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN):
                    break
                self.stop(f"TUN read failed: {e.strerror}")
                return
            receive(packet, now=now)

    def _on_udp(self, sock: DatagramSocket) -> None:
        recvfrom = sock.recvfrom
        receive = self.device.receive_datagram
        queue = self.device.queue_handshake  # worked on after the data, within a budget
        now = self.clock()
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # ICMP errors reported on the socket: nothing to do
            if data[:1] == b"\x04":
                receive(data, (addr[0], addr[1]), now=now)
            else:
                queue(data, (addr[0], addr[1]), now=now)

    # --- output ------------------------------------------------------------------------------

    def _flush(self) -> None:
        packets = self.device.tun_packets_to_write()
        if packets:
            write = self.tun.write
            for p in packets:
                try:
                    write(p)
                except OSError:
                    self.tun_write_errors += 1
        datagrams = self.device.datagrams_to_send()
        if datagrams and self._may_send is not None and not self._may_send():
            self.fenced += len(datagrams)
            return
        if datagrams:
            sendto = self.bind.sendto
            for data, addr in datagrams:
                try:
                    sendto(data, addr)
                except OSError:
                    self.send_errors += 1

    # --- loop --------------------------------------------------------------------------------

    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end (safe from a signal handler)."""
        if not self.stopping:
            self.exit_reason = reason
        self.stopping = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda s, _f: self.stop(f"signal {signal.Signals(s).name}"))

    def sync_mtu(self) -> None:
        """Pad to the TUN's live MTU, as wireguard-go does: ``ip link set mtu`` (wg-quick
        does it right after start) changes it under us. Read at start and once a second."""
        try:
            mtu = self.tun.mtu
        except (OSError, ValueError, TunError):
            return
        if 0 < mtu != self.device.mtu:
            self.device.mtu = mtu

    def _housekeeping(self) -> None:
        self.sync_mtu()
        if self.uapi is not None and not self.uapi.still_ours():
            self.stop("UAPI socket file removed")
        if self._link_alive is not None and not self._link_alive():
            self.stop("interface removed")

    def run(self) -> str:
        """Run until stopped; returns the reason. Closes everything it owns on the way out."""
        if not self.bind.sockets():
            self.bind_port(self.device.listen_port)
            self.device.listen_port = self.bind.port
        self.sync_mtu()
        next_check = self.clock() + HOUSEKEEPING
        get_timer = self.device.get_timer
        poll = self.sel.epoll.poll
        handlers = self.sel.handlers
        clock = self.clock
        has_output = self.device.has_output
        deadline = get_timer()
        try:
            while not self.stopping:
                now = clock()
                limit = next_check if deadline is None or deadline > next_check else deadline
                for fd, _ev in poll(limit - now if limit > now else 0.0):
                    entry = handlers.get(fd)  # None: unregistered by an earlier event
                    if entry is None:
                        continue
                    try:
                        entry[1](entry[0])
                    except Exception as e:  # a bug must cost one event, never the interface
                        self.internal_errors.record(e)
                        fast = self.fast  # the fast path's handlers: TUN and UDP reads
                        if fast is not None and (
                            entry[1] == self._on_tun or getattr(entry[1], "__self__", 0) is fast
                        ):
                            self.fast_path_off(f"it raised {describe(e)}")
                fast = self.fast
                if fast is not None and fast.tun_error is not None:
                    self.stop(fast.tun_error)
                now = clock()
                deadline = get_timer()  # once per wake-up: events may have moved timers
                if deadline is not None and now >= deadline:
                    self.device.handle_timer(now=max(deadline, now))
                    deadline = get_timer()
                if has_output():
                    self._flush()
                if now >= next_check:
                    next_check = now + HOUSEKEEPING
                    self._housekeeping()
        finally:
            self.close()
        return self.exit_reason

    def fast_path_off(self, reason: str) -> None:
        """Switch the fast path off for good: from now on the ordinary ``Device`` path
        carries every packet (plain reads of the UDP sockets, without UDP GRO). Called when
        the fast path fails densely or an exception escapes it; ``stats=1`` (fastpath_off),
        ``/metrics`` and ``/healthz`` show it."""
        fast = self.fast
        if fast is None:
            return
        self.fast, self._fast_retired, self.fast_off_reason = None, fast, reason
        log.error("fast path switched off (%s); the ordinary path carries the data", reason)
        with contextlib.suppress(Exception):
            if fast.gro is not None:
                fast.gro.flush()
        for s in self.bind.sockets():
            disable_gro(s)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(s)
            self.sel.register(s, self._on_udp)

    def last_fault(self) -> str:
        """The latest unexpected error of the fast path or the loop ("" if none)."""
        fast = self.fast or self._fast_retired
        return (fast.faults.last if fast else "") or self.internal_errors.last

    def io_counters(self) -> dict[str, int]:
        """What the OS refused (datagrams, TUN writes), internal errors, the fast path's
        faults and its GSO writes: the counters the UAPI ``stats`` request reports."""
        fast = self.fast or self._fast_retired
        gro = fast.gro if fast else None
        out = {
            "send_errors": self.send_errors + (fast.send_errors if fast else 0),
            "tun_write_errors": self.tun_write_errors + (fast.tun_write_errors if fast else 0),
            "internal_errors": self.internal_errors.count,
            "fastpath_faults": fast.faults.count if fast else 0,
            "fastpath_off": int(bool(self.fast_off_reason)),
        }
        fenced = self.fenced + (fast.fenced if fast else 0)
        if fenced:  # datagrams held back by the may_send fence (leadership lost)
            out["fenced"] = fenced
        if gro is not None:  # TCP segments coalesced into GSO writes (wgpy.io.gro)
            out["tun_write_errors"] += gro.errors
            out["tun_gso_writes"] = gro.coalesced
            out["tun_gso_segments"] = gro.segments
            out["tun_gso_refused"] = int(gro.refused)  # the kernel took none: turned off
        # super-packets read from the TUN and split (fast path, or tun.offload in LinuxTun.read)
        if self.fast is not None:
            counts = self.fast.tso_counts()
        else:
            tso = getattr(self.tun, "segmenter", None)
            counts = (tso.split_packets, tso.segments) if tso is not None else None
        if counts is not None:
            out["tun_tso_reads"], out["tun_tso_segments"] = counts
        return out

    def close(self) -> None:
        self.device.down()
        if self.uapi is not None:
            self.uapi.shutdown()
        self.bind.close()
        with contextlib.suppress(Exception):
            self.sel.close()
        self._wake_r.close()
        self._wake_w.close()
        with contextlib.suppress(OSError):
            self.tun.close()


def interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True
