"""The conformance target ``kernel-uml``: the kernel's WireGuard in a User-Mode Linux guest.

The guest boots in the namespace the harness creates; its test link is a tap there (see
:mod:`wgpy.testbed.uml.guest`). The checks' own addresses are loopback ones (``127.0.0.1``-
``127.0.0.3``), which a guest cannot reach, so this target puts stand-ins for them on the tap
and binds the harness sockets there::

    namespace wgpyh-PID-xxxxxx
      tapd 192.168.77.1, .3, .4 (for 127.0.0.1, .2, .3)  <- harness UDP sockets
      guest eth0 192.168.77.2, wg0 10.77.0.1/24, port 51820  <- the target (kernel WireGuard)

Traffic the checks make the target send into its tunnel is sent from inside the guest.
"""

from __future__ import annotations

import socket

from wgpy import testbed as tb
from wgpy.harness.target import TARGET_PORT, NamespaceTarget, Target, TargetError, WgToolTarget
from wgpy.testbed.uml.guest import DATA_TAP

LINK_PREFIX = "192.168.77."
GUEST_IP = LINK_PREFIX + "2"
# the checks' loopback addresses -> the last octet of their stand-ins on the tap
STAND_INS = {"127.0.0.1": 1, "127.0.0.2": 3, "127.0.0.3": 4}


def start_guest(ns: tb.Namespace) -> tb.UmlGuest:
    """Boot the guest in `ns` and address the host side of its link (the stand-ins)."""
    guest = tb.UmlGuest(ns, f"{GUEST_IP}/24").start()
    try:
        for octet in STAND_INS.values():
            ns.ip("addr", "add", f"{LINK_PREFIX}{octet}/24", "dev", DATA_TAP)
    except BaseException:
        guest.stop()
        raise
    return guest


class UmlTarget(WgToolTarget):
    """The guest's ``wg0``, configured with ``wg`` through the guest's command channel."""

    def __init__(self, guest: tb.UmlGuest) -> None:
        super().__init__(guest)
        self.guest = guest
        self.address = (GUEST_IP, TARGET_PORT)

    def socket(self, host: str = "127.0.0.1") -> socket.socket:
        if host in STAND_INS:
            host = f"{LINK_PREFIX}{STAND_INS[host]}"
        return super().socket(host)

    def send_into_tunnel(self, dst: str, payload: bytes, port: int = 9) -> None:
        """Send from inside the guest (its kernel routes ``dst`` into wg0)."""
        octal = "".join(f"\\{b:03o}" for b in payload)
        try:
            self.guest.sh(f"printf '{octal}' | nc -u -w1 -q0 {dst} {port}", timeout=10)
        except tb.TestbedError as e:
            raise TargetError(str(e)) from None


class UmlNamespaceTarget(NamespaceTarget):
    """:class:`NamespaceTarget` for ``kernel-uml``: the guest boots in the harness's namespace."""

    def __init__(self, *, name: str = "kernel-uml") -> None:
        super().__init__(tb.KERNEL_UML, name=name)

    def _make(self, ns: tb.Namespace) -> Target:
        guest = start_guest(ns)
        self.instance = guest
        return UmlTarget(guest)
