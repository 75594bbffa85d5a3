"""The pair testbed: two namespaces, a veth and one WireGuard instance each."""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from wgpy.testbed.netns import Namespace, Veth, veth
from wgpy.testbed.proc import DEFAULT_IMPL, NS_PREFIX, TestbedError, WaitTimeout, wait_for
from wgpy.testbed.uml.guest import UmlGuest
from wgpy.testbed.wg import (
    ImplSpec,
    KernelImpl,
    KernelUmlImpl,
    KernelWg,
    PeerConf,
    WgInstance,
    genkey,
    genpsk,
    pubkey,
)

# ---------------------------------------------------------------------------------------------
# The pair testbed

VETH_A, VETH_B = "192.168.241.1/24", "192.168.241.2/24"
TUN_IP_A, TUN_IP_B = "10.99.0.1", "10.99.0.2"
TUN_A, TUN_B = f"{TUN_IP_A}/24", f"{TUN_IP_B}/24"


@dataclass
class Pair:
    """Two namespaces joined by a veth, one WireGuard instance each, configured as peers.

    Tunnel addresses ``10.99.0.1`` (A) and ``10.99.0.2`` (B); the veth carries the UDP. A
    :data:`~wgpy.testbed.KERNEL_UML` side is a guest bridged onto the veth: its tunnel address
    lives in the guest, so commands for that side go through :meth:`runner`.
    """

    ns_a: Namespace
    ns_b: Namespace
    veth: Veth
    wg_a: WgInstance | KernelWg | UmlGuest
    wg_b: WgInstance | KernelWg | UmlGuest
    pub_a: str
    pub_b: str
    port: int
    mtu: int
    tun_ip_a: str = TUN_IP_A
    tun_ip_b: str = TUN_IP_B

    def ping(
        self,
        *,
        from_a: bool = True,
        count: int = 1,
        size: int | None = None,
        dont_fragment: bool = False,
        timeout: float = 2.0,
        interval: float = 0.2,
    ) -> subprocess.CompletedProcess[str]:
        """Ping the other side's tunnel address (unchecked: look at ``returncode``)."""
        ns, dst = (
            (self.runner(True), self.tun_ip_b) if from_a else (self.runner(False), self.tun_ip_a)
        )
        argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(timeout)]
        if size is not None:
            argv += ["-s", str(size)]
        if dont_fragment:
            argv += ["-M", "do"]
        return ns.run([*argv, dst], check=False, timeout=count * (interval + timeout) + 10)

    def runner(self, side_a: bool) -> Namespace | UmlGuest:
        """Where a command for side A (or B) runs: its namespace, or the UML guest."""
        ns, w = (self.ns_a, self.wg_a) if side_a else (self.ns_b, self.wg_b)
        return w if isinstance(w, UmlGuest) else ns

    def wait_handshake(self, timeout: float = 10.0) -> None:
        """Ping A→B until one reply arrives (the first packets trigger the handshake)."""
        try:
            wait_for(lambda: self.ping(timeout=1.0).returncode == 0, timeout, interval=0.0)
        except WaitTimeout:
            raise TestbedError(f"no ping through the tunnel within {timeout}s") from None

    @property
    def pids(self) -> list[int]:
        """PIDs of both userspace implementations (for CPU/memory figures)."""
        return [*self.wg_a.pids, *self.wg_b.pids]

    def close(self) -> None:
        """Stop both instances, then remove both namespaces. Idempotent."""
        for obj in (self.wg_b, self.wg_a, self.ns_b, self.ns_a):
            with contextlib.suppress(Exception):
                obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _start_impl(
    ns: Namespace,
    impl: ImplSpec,
    env: dict[str, str] | None,
    start_timeout: float,
    link: tuple[str, str],
) -> WgInstance | KernelWg | UmlGuest:
    if isinstance(impl, KernelUmlImpl):  # the guest takes the veth end's place and address
        return UmlGuest(ns, link[1], bridge=[link[0]]).start()
    if isinstance(impl, KernelImpl):
        return KernelWg(ns, "wg0").start()
    return WgInstance(ns, impl, "wg0", env=env, start_timeout=start_timeout).start()


def make_pair(
    impl_a: ImplSpec = DEFAULT_IMPL,
    impl_b: ImplSpec = DEFAULT_IMPL,
    *,
    psk: bool = False,
    mtu: int = 1420,
    port: int = 51820,
    env: dict[str, str] | None = None,
    prefix: str = NS_PREFIX,
    start_timeout: float = 10.0,
) -> Pair:
    """Build the pair testbed (use as a context manager; everything is removed on exit).

    `impl_a`/`impl_b` are argv prefixes, :data:`KERNEL` or :data:`KERNEL_UML`. Keys come
    from ``wg genkey``; with `psk` both sides share a ``wg genpsk`` key. No handshake is
    forced: call :meth:`Pair.wait_handshake`.
    """
    ns_a = Namespace(prefix).create()
    ns_b: Namespace | None = None
    wgs: list[WgInstance | KernelWg | UmlGuest] = []
    try:
        ns_b = Namespace(prefix).create()
        link = veth(ns_a, ns_b, VETH_A, VETH_B)
        wgs.append(_start_impl(ns_a, impl_a, env, start_timeout, (link.name_a, VETH_A)))
        wgs.append(_start_impl(ns_b, impl_b, env, start_timeout, (link.name_b, VETH_B)))
        priv_a, priv_b = genkey(), genkey()
        pub_a, pub_b = pubkey(priv_a), pubkey(priv_b)
        shared = genpsk() if psk else None
        wgs[0].set_conf(
            priv_a,
            listen_port=port,
            peers=[PeerConf(pub_b, f"{link.ip_b}:{port}", [f"{TUN_IP_B}/32"], shared)],
        )
        wgs[1].set_conf(
            priv_b,
            listen_port=port,
            peers=[PeerConf(pub_a, f"{link.ip_a}:{port}", [f"{TUN_IP_A}/32"], shared)],
        )
        for w, addr in zip(wgs, (TUN_A, TUN_B), strict=True):
            w.address(addr)
            w.up(mtu)
        return Pair(ns_a, ns_b, link, wgs[0], wgs[1], pub_a, pub_b, port, mtu)
    except BaseException:
        for obj in [*reversed(wgs), ns_b, ns_a]:
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        raise
