"""Network-namespace testbed: namespaces, veth pairs and WireGuard instances, cleaned up always.

Used by the interop tests, ``wgpy demo`` and the benchmarks. Everything lives inside network
namespaces created here (unique names), so traffic never leaves them and host routes and
interfaces are never touched. The recipe is the protocol doc's §11.2:

* each userspace implementation runs as ``ip netns exec NS sh -c 'mount -t tmpfs ... && exec
  IMPL -f IFACE'``: ``ip netns exec`` gives it a private mount namespace, the tmpfs on
  ``/run/wireguard`` makes its UAPI socket private (two ``wg0`` instances do not clash), and both
  ``ip`` and ``sh`` *exec*, so the PID we hold is the implementation's own;
* ``wg`` reaches it with ``nsenter -t PID -m -n``; the socket is visible from the host as
  ``/proc/PID/root/run/wireguard/IFACE.sock``.

Every namespace and process is registered; context managers remove them on exit (also on
error), ``atexit`` catches what is left, and :func:`install_signal_handlers` turns SIGTERM/SIGHUP
into ``SystemExit`` so ``with`` blocks unwind. Children get ``PR_SET_PDEATHSIG`` (via
``setpriv``) so they do not outlive a killed parent; :func:`sweep_stale` removes namespaces
whose creating process died.

Needs root, ``ip``, ``nsenter``, ``wg`` and the implementation binaries.
"""

from __future__ import annotations

from wgpy.core.keys import redact
from wgpy.testbed.netns import (
    Namespace,
    Veth,
    sweep_stale,
    veth,
)
from wgpy.testbed.pair import (
    TUN_A,
    TUN_B,
    TUN_IP_A,
    TUN_IP_B,
    VETH_A,
    VETH_B,
    Pair,
    make_pair,
)
from wgpy.testbed.proc import (
    DEFAULT_IMPL,
    NS_PREFIX,
    POLL_LIMIT,
    SOCKET_DIR,
    TestbedError,
    WaitTimeout,
    cleanup_all,
    cpu_seconds,
    install_signal_handlers,
    list_netns,
    pid_alive,
    rss_kib,
    run,
    wait_for,
    wait_until,
)
from wgpy.testbed.uml.guest import UmlGuest
from wgpy.testbed.wg import (
    KERNEL,
    KERNEL_UML,
    ImplSpec,
    InterfaceDump,
    KernelImpl,
    KernelUmlImpl,
    KernelWg,
    PeerConf,
    PeerDump,
    WgInstance,
    build_conf,
    genkey,
    genpsk,
    kernel_wireguard_available,
    parse_dump,
    pubkey,
)

__all__ = [
    "DEFAULT_IMPL",
    "ImplSpec",
    "InterfaceDump",
    "KERNEL",
    "KERNEL_UML",
    "KernelImpl",
    "KernelUmlImpl",
    "KernelWg",
    "NS_PREFIX",
    "Namespace",
    "Pair",
    "PeerConf",
    "PeerDump",
    "SOCKET_DIR",
    "TUN_A",
    "TUN_B",
    "TUN_IP_A",
    "TUN_IP_B",
    "TestbedError",
    "UmlGuest",
    "VETH_A",
    "VETH_B",
    "Veth",
    "WgInstance",
    "build_conf",
    "cleanup_all",
    "cpu_seconds",
    "genkey",
    "genpsk",
    "install_signal_handlers",
    "kernel_wireguard_available",
    "list_netns",
    "make_pair",
    "parse_dump",
    "pid_alive",
    "pubkey",
    "redact",
    "rss_kib",
    "run",
    "sweep_stale",
    "veth",
    "wait_for",
    "wait_until",
    "WaitTimeout",
    "POLL_LIMIT",
]
