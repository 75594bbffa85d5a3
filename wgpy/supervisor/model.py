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
    errors: int = 0  # all failures, refusals included
    active: int = 0
    refused: int = 0  # connections/flows refused: the forwarder's or the client's bound reached
    idle_closed: int = 0  # connections/flows closed after their idle timeout


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
    # the data plane's unexpected errors (wgpy.io.faults): it keeps moving data regardless
    fastpath_faults: int = 0
    fastpath_off: bool = False  # switched off after dense faults: the ordinary path runs
    internal_errors: int = 0
    last_fault: str = ""
    dropped_not_for_vip: int = 0  # decrypted packets for another address (issue 15 point 5)
    fenced: int = 0  # datagrams held back after the leadership's time was up
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
    config_note: str = ""  # e.g. why there are no tunnels ("secret ns/wireguard not found")
    tunnels: dict[str, TunnelStatus] = field(default_factory=dict)
    # configuration that loads but cannot be served as asked (e.g. a vip_address matching no
    # tunnel): not ready, with the reason in /readyz
    problems: dict[str, str] = field(default_factory=dict)

    def degraded(self) -> list[str]:
        """One line per tunnel whose data plane has failed unexpectedly (``/healthz``)."""
        out = []
        for name in sorted(self.tunnels):
            t = self.tunnels[name]
            if t.fastpath_faults or t.fastpath_off or t.internal_errors:
                off = "switched off, " if t.fastpath_off else ""
                out.append(
                    f"tunnel {name}: fast path {off}{t.fastpath_faults} fault(s), "
                    f"{t.internal_errors} internal error(s), the latest: {t.last_fault}"
                )
        return out

    @property
    def ready(self) -> bool:
        """Ready: a follower with a valid config, or a leader whose tunnels are all up.

        A valid configuration with no tunnels (an empty one, or the Secret absent) is ready:
        the pod does everything asked of it, and a not-ready DaemonSet pod only blocks
        rollouts (kubelet and the DaemonSet controller count it unavailable) without helping
        anyone. The reason is in the ``/readyz`` text and :attr:`config_note`. Not ready
        means: no configuration read yet, a configuration that cannot be served
        (:attr:`problems`), or a leader with a tunnel down.
        """
        if not self.config_loaded or self.problems:
            return False
        if not self.leader:
            return True
        return all(t.up for t in self.tunnels.values())
