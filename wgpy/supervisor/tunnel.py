"""One tunnel of the ``wireguard`` Secret brought up on the userspace device (issue 8 point 3).

kube-vip creates a kernel WireGuard link; we create a TUN named after the tunnel and run
:class:`wgpy.core.device.Device` on it in a :class:`wgpy.io.loop.DeviceRunner` thread. What the
leader sets up, in order (kube-vip-wireguard.md §5.2, minus what userspace makes unnecessary):

1. the peer endpoint is resolved (once per bring-up, as kube-vip does), bounded by the time
   left on the lease (``lease_left``): a lookup that hangs cannot bring a tunnel up after the
   leadership it was started for has ended;
2. TUN ``<name>``, MTU 1420;
3. device: private key, listen port, one peer (public key, endpoint, AllowedIPs), with the
   TAI64N floor the manager hands over (see :mod:`wgpy.supervisor.manager`);
4. the VIP (with its prefix) on the TUN, link up;
5. a route per AllowedIPs CIDR via the TUN in the tunnel's own table, and one rule sending only
   traffic *from the VIP* to that table (:mod:`wgpy.supervisor.srcroute`): allowedIPs such as
   the seed's ``10.0.0.0/8`` or ``0.0.0.0/0`` then carry the VIP's replies and connections
   without capturing the pod's API, DNS or forward-target traffic; that is checked
   (:func:`~wgpy.supervisor.srcroute.leaks`) before the tunnel counts as up. If the VIP's
   prefix covers the peer endpoint, its current route is pinned first as a host route
   (:mod:`wgpy.supervisor.pinroute`), removed again on teardown;
6. leadership is checked once more (``lease_left``), then persistent keepalive 5 s: turning it
   on sends the first packet (an initiation) at once, so the VPN node learns the new endpoint
   without waiting for traffic. From then on every datagram the device sends passes the same
   fence (``DeviceRunner(may_send=...)``): a leader paused past its renew deadline (SIGSTOP,
   a stalled node) sends nothing when it resumes, even before the step-down has run;
7. decrypted packets are accepted only for the VIP (``Device.accept_destinations``): the VPN
   node cannot reach the rest of the cluster through the pod's forwarding.

With a key log path (``wgpy supervisor --keylog NAME=PATH``), the device appends every session's
secrets to it (:mod:`wgpy.io.keylog`; debugging only); an unsafe path fails the bring-up.

Teardown reverses it: the runner stops (its thread is joined), which closes the TUN fd; the
kernel then deletes the link, and with it the address and the routes. We wait for the link to
be gone, so a caller that returns from :meth:`TunnelRuntime.stop` knows the tunnel is down.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterable

from noise import tai64n
from tun import netlink
from tun.base import TunError
from tun.linux import LinuxTun
from wgpy.core.device import Device
from wgpy.core.drops import Drop
from wgpy.core.errors import WgpyError
from wgpy.core.peer import Peer
from wgpy.io import gro
from wgpy.io.keylog import KeyLogRefused, KeyLogWriter, device_sink
from wgpy.io.loop import DeviceRunner, interface_exists
from wgpy.supervisor import srcroute
from wgpy.supervisor.config import Tunnel
from wgpy.supervisor.model import TunnelStatus
from wgpy.supervisor.pinroute import Pin, PinError, covers, pin, unpin

log = logging.getLogger(__name__)

MTU = 1420
PERSISTENT_KEEPALIVE = 5
# A VPN node that restarted has no session and no endpoint for us, and WireGuard never
# re-initiates for an idle tunnel: without this, its clients could wait up to two minutes.
SILENCE_HANDSHAKE = 25.0
STOP_TIMEOUT = 5.0


class TunnelError(WgpyError):
    """Bringing a tunnel up failed (after cleaning up whatever was made)."""


def _unbounded() -> float:
    return math.inf


def resolve_endpoint_within(host: str, port: int, timeout: float) -> tuple[str, int]:
    """:func:`resolve_endpoint`, giving up after ``timeout`` seconds (``getaddrinfo`` has no
    timeout of its own; the lookup is left to finish in a daemon thread)."""
    if timeout <= 0:
        raise TunnelError(f"cannot resolve peer endpoint {host}:{port}: no time left")
    if math.isinf(timeout):
        return resolve_endpoint(host, port)
    box: list[tuple[str, int] | BaseException] = []

    def lookup() -> None:
        try:
            box.append(resolve_endpoint(host, port))
        except BaseException as e:
            box.append(e)

    t = threading.Thread(target=lookup, name=f"resolve-{host}", daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        raise TunnelError(
            f"cannot resolve peer endpoint {host}:{port}: no answer within the {timeout:.1f} s "
            "left on the lease"
        )
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


def resolve_endpoint(host: str, port: int) -> tuple[str, int]:
    """``host:port`` → ``(ip, port)``, IPv4 preferred (one DNS lookup per bring-up)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as e:
        raise TunnelError(f"cannot resolve peer endpoint {host}:{port}: {e.strerror}") from None
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])


class TunnelRuntime:
    """The live device of one :class:`~wgpy.supervisor.config.Tunnel`."""

    def __init__(
        self,
        tunnel: Tunnel,
        *,
        wall_time_ns: Callable[[], int] = time.time_ns,
        clock: Callable[[], float] = time.monotonic,
        lease_left: Callable[[], float] = _unbounded,
        targets: Callable[[], Iterable[str]] = tuple,
        keylog: str | None = None,
    ) -> None:
        """``lease_left()``: seconds of leadership left (thread-safe; <= 0 once it is lost);
        ``targets()``: the forward targets, which (with the rest of
        :func:`srcroute.pod_view`) the pod must reach without the tunnel."""
        self.tunnel = tunnel
        self.keylog = keylog
        self.wall_time_ns = wall_time_ns
        self.clock = clock
        self.lease_left = lease_left
        self.targets = targets
        self.table: int | None = None
        self._rule = False
        self.device: Device | None = None
        self.peer: Peer | None = None
        self.runner: DeviceRunner | None = None
        self.endpoint: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._pin: Pin | None = None

    @property
    def name(self) -> str:
        return self.tunnel.name

    @property
    def alive(self) -> bool:
        """True while the device loop runs (False after stop or if the link vanished)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def last_timestamp_sent(self) -> bytes:
        """The newest TAI64N this device put in an initiation (ZERO if none yet)."""
        return self.device.last_timestamp_sent if self.device is not None else tai64n.ZERO

    def start(self, timestamp_floor: bytes = tai64n.ZERO) -> None:
        """Bring the tunnel up; its first initiation is newer than ``timestamp_floor``.

        On failure, whatever was created is removed and :class:`TunnelError` is raised.
        """
        if self._thread is not None:
            raise TunnelError(f"tunnel {self.name} already started")
        t = self.tunnel
        tun: LinuxTun | None = None
        runner: DeviceRunner | None = None
        try:
            sink = None
            if self.keylog is not None:
                try:
                    sink = device_sink(KeyLogWriter(self.keylog), t.name)
                except KeyLogRefused as e:
                    raise TunnelError(f"tunnel {t.name}: {e}") from None
            self.endpoint = resolve_endpoint_within(*t.peer_endpoint, self.lease_left())
            try:
                tun = LinuxTun(
                    t.name,
                    create_only=True,
                    mtu=MTU,
                    vnet_hdr=gro.wanted(),
                    offload=gro.tso_wanted(),
                )
            except TunError as e:
                raise TunnelError(f"tunnel {t.name}: {e}") from None
            now = self.clock()
            device = Device(wall_time_ns=self.wall_time_ns, mtu=MTU, key_log_sink=sink)
            device.timestamp_floor = timestamp_floor
            device.set_private_key(t.private_key, now=now)
            peer = device.add_peer(t.peer_public_key, now=now)
            device.set_endpoint(peer, self.endpoint)
            device.set_allowed_ips(peer, [str(n) for n in t.allowed_ips])
            name = t.name
            device.accept_destinations = frozenset({t.vip.ip.packed})
            runner = DeviceRunner(device, tun, link_alive=lambda: interface_exists(name),
                                  may_send=self._may_send)
            try:
                device.listen_port = runner.bind_port(t.listen_port)
            except OSError as e:
                raise TunnelError(
                    f"tunnel {t.name}: cannot bind UDP port {t.listen_port}: {e.strerror}"
                ) from None
            try:
                self._pin_endpoint()  # before any route that could capture it exists
                netlink.add_address(t.name, t.vip)
                netlink.set_link_up(t.name)
                self.table = srcroute.table_for(netlink.link_index(t.name))
                for net in t.allowed_ips:
                    netlink.add_route(net, dev=t.name, table=self.table)
                self._rule = True
                srcroute.add_rule(t.vip.ip, self.table)
                self._check_pod_paths()
            except (TunError, PinError, srcroute.RouteError) as e:
                raise TunnelError(f"tunnel {t.name}: {e}") from None
            # The last moment before anything leaves: are we still the leader?
            if not self._may_send():
                raise TunnelError(f"tunnel {t.name}: leadership ended during bring-up")
            # Turning the keepalive on stages an initiation (no session yet): send it now,
            # before the loop's first wake-up, so the VPN node sees us at once.
            device.set_persistent_keepalive(peer, PERSISTENT_KEEPALIVE, now=self.clock())
            device.set_silence_handshake(peer, SILENCE_HANDSHAKE, now=self.clock())
            for data, addr in device.datagrams_to_send():
                with contextlib.suppress(OSError):
                    runner.bind.sendto(data, addr)
            self.device, self.peer, self.runner = device, peer, runner
            thread = threading.Thread(target=self._run, name=f"wg-{t.name}", daemon=True)
            self._thread = thread
            thread.start()
        except BaseException:
            self.device = self.peer = self.runner = None
            self._thread = None
            self._unpin_endpoint()
            self._del_rule()
            if runner is not None:
                runner.close()  # closes the TUN too: the link, its address and routes go
            elif tun is not None:
                tun.close()
            self._wait_link_gone()
            raise
        log.info(
            "brought up WireGuard tunnel %s (vip %s, peer endpoint %s:%d)",
            t.name,
            t.vip,
            *self.endpoint,
        )

    def _may_send(self) -> bool:
        return self.lease_left() > 0

    def _check_pod_paths(self) -> None:
        """The CIDR check, derived from what the pod sees: none of the addresses it must
        reach directly may be routed into a tunnel."""
        idx = netlink.link_index(self.tunnel.name)
        wanted = srcroute.pod_view(targets=self.targets(), exclude_ifindexes=[idx])
        bad = srcroute.leaks(wanted, [idx])
        if bad:
            raise TunnelError(
                f"tunnel {self.tunnel.name}: would capture pod traffic to {', '.join(bad)} "
                "(the VIP's prefix covers it)"
            )

    def _del_rule(self) -> None:
        if self._rule:
            self._rule = False
            with contextlib.suppress(Exception):
                srcroute.del_rules(self.tunnel.vip.ip)

    def _pin_endpoint(self) -> None:
        """If the VIP's prefix (a route in the main table) covers the endpoint, pin the
        endpoint's current route so the encrypted UDP does not loop into the tunnel (see
        :mod:`.pinroute`); allowedIPs routes only carry traffic from the VIP."""
        assert self.endpoint is not None
        t = self.tunnel
        if covers([t.vip.network], self.endpoint[0]):
            self._pin = pin(self.endpoint[0])

    def _unpin_endpoint(self) -> None:
        p, self._pin = self._pin, None
        if p is not None:
            unpin(p)

    def _run(self) -> None:
        assert self.runner is not None
        try:
            reason = self.runner.run()
        except Exception:
            log.exception("tunnel %s: device loop failed", self.name)
            return
        if reason != "tunnel stopped":
            # Not asked to stop: the link was deleted under us (``ip link del``: reads fail
            # with EBADFD, or the housekeeping sees it gone) or the device failed. The
            # manager notices (``alive`` is False) and brings the tunnel up again.
            gone = " (interface deleted)" if not interface_exists(self.name) else ""
            log.error("tunnel %s: device loop ended: %s%s; the tunnel is down until the "
                      "supervisor brings it up again", self.name, reason, gone)

    def _wait_link_gone(self) -> None:
        with contextlib.suppress(Exception):
            if not netlink.wait_for_deletion(self.tunnel.name, timeout=1.0):
                netlink.delete_link(self.tunnel.name)

    def stop(self) -> None:
        """Tear down: stop the loop and join it, then make sure the link (and so its address
        and routes) is gone. Idempotent."""
        runner, thread = self.runner, self._thread
        if runner is not None:
            runner.stop("tunnel stopped")
        if thread is not None:
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                log.error("tunnel %s: device loop did not stop in %.0fs", self.name, STOP_TIMEOUT)
        if runner is not None or thread is not None:
            self._wait_link_gone()
            self._del_rule()
            self._unpin_endpoint()  # after the link: its allowedIPs routes are gone by now
            log.info("tore down WireGuard tunnel %s", self.name)
        self._thread = None
        self.runner = None

    def status(self) -> TunnelStatus:
        """A snapshot for ``/readyz`` and ``/metrics`` (the manager adds forwarder stats)."""
        st = TunnelStatus(name=self.name, vip=str(self.tunnel.vip), up=self.alive)
        peer, device = self.peer, self.device
        if peer is not None and device is not None:
            st.last_handshake_unix = peer.last_handshake_ns / 1e9
            st.rx_bytes = peer.rx_bytes
            st.tx_bytes = peer.tx_bytes
            st.handshakes = device.handshakes_completed
            st.handshake_failures = peer.timer_handshake_attempts
            st.dropped_not_for_vip = device.drops[Drop.DISALLOWED_DESTINATION]
        runner = self.runner
        if runner is not None:
            io = runner.io_counters()
            st.fastpath_faults = io["fastpath_faults"]
            st.fastpath_off = bool(io["fastpath_off"])
            st.internal_errors = io["internal_errors"]
            st.last_fault = runner.last_fault()
            st.fenced = io.get("fenced", 0)
        return st
