"""Data shared by the supervisor's parts: forwarding rules and the status snapshot.

The manager (tunnels, forwarders, leadership) consumes ``ForwardRule`` lists from whatever
source computes them (the tunnels file in embedded mode; Services and EndpointSlices in
Kubernetes mode) and publishes a ``SupervisorStatus`` that the HTTP server renders as
``/healthz``, ``/readyz`` and Prometheus ``/metrics`` at scrape time (pull model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Protocol = Literal["TCP", "UDP"]


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ForwardRule:
    """Traffic for ``VIP:port/protocol`` goes to one of ``targets`` (chosen per connection
    for TCP, per client address for UDP). ``source`` names where the rule came from, e.g.
    ``controlplane``, ``service/default/web`` or ``file``."""

    port: int
    protocol: Protocol
    targets: tuple[Target, ...]
    source: str = "file"


@dataclass(slots=True)
class ForwardStats:
    connections: int = 0  # TCP connections accepted (UDP: client flows created)
    datagrams: int = 0  # UDP datagrams forwarded (both directions)
    bytes: int = 0
    errors: int = 0
    active: int = 0


@dataclass(slots=True)
class TunnelStatus:
    name: str
    vip: str
    up: bool = False
    last_handshake_unix: float = 0.0  # 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0
    handshakes: int = 0
    handshake_failures: int = 0
    # keyed by (port, protocol)
    forwards: dict[tuple[int, str], ForwardStats] = field(default_factory=dict)


@dataclass(slots=True)
class SupervisorStatus:
    identity: str
    leader: bool = False
    leader_identity: str = ""
    failovers: int = 0  # times this process became leader after someone else held the lease
    config_rejections: int = 0
    last_config_error: str = ""
    config_loaded: bool = False
    tunnels: dict[str, TunnelStatus] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Ready: a follower with a valid config, or a leader whose tunnels are all up."""
        if not self.config_loaded:
            return False
        if not self.leader:
            return True
        return all(t.up for t in self.tunnels.values())
