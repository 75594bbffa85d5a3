"""A protocol test harness: script a WireGuard peer, run a conformance suite, decode captures.

* :class:`ScriptedPeer` — one peer driven message by message (:mod:`wgpy.harness.peer`);
* :mod:`wgpy.harness.packets` — inner IPv4/IPv6 ICMP echo and UDP packets;
* :mod:`wgpy.harness.conformance` — ``wgpy conformance`` (checks against any implementation);
* :mod:`wgpy.harness.decode` — ``wgpy decode`` (pcap reader, handshake and transport decryption).

See docs/harness.md.
"""

from __future__ import annotations

from wgpy.harness.peer import (
    HarnessError,
    HarnessTimeout,
    Received,
    ScriptedPeer,
    Session,
)
from wgpy.harness.transport import Transport, UdpTransport, udp_socket

__all__ = [
    "HarnessError",
    "HarnessTimeout",
    "Received",
    "ScriptedPeer",
    "Session",
    "Transport",
    "UdpTransport",
    "udp_socket",
]
