"""Prometheus text exposition (format 0.0.4) of a :class:`SupervisorStatus`, rendered at scrape
time from the manager's snapshot (pull model: nothing to keep in sync, nothing to leak).

Written by hand rather than with ``prometheus_client``: the format is small, we render a
snapshot (no long-lived metric objects, no global registry shared with other code), and the
project avoids a dependency for ~100 lines. The rules followed:

* one ``# HELP`` and one ``# TYPE`` line per family, before its samples; families not repeated;
* label values escape ``\\``, ``"`` and newline; HELP text escapes ``\\`` and newline;
* counters carry the ``_total`` suffix in the family name (0.0.4 style);
* values are integers or Go-style floats (``NaN``, ``+Inf``, ``-Inf``).

No key material is in a ``SupervisorStatus``; tunnel names and VIPs are the only strings from
the configuration that appear.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from wgpy.supervisor.model import SupervisorStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "wgpy_"

Labels = tuple[tuple[str, str], ...]


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(v: float) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


@dataclass
class Family:
    name: str
    type: str  # counter | gauge
    help: str
    samples: list[tuple[Labels, float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((tuple(labels.items()), value))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.type}"
        for labels, value in self.samples:
            lab = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels)
            yield f"{self.name}{{{lab}}} {format_value(value)}" if lab else \
                f"{self.name} {format_value(value)}"


def families(status: SupervisorStatus, *, now_unix: float) -> list[Family]:
    """The metric families for ``status``; ``now_unix`` is wall time (for handshake age)."""

    def fam(name: str, typ: str, text: str) -> Family:
        return Family(PREFIX + name, typ, text)

    leader = fam("leader", "gauge", "1 if this supervisor holds the lease and leads")
    leader.add(1 if status.leader else 0, identity=status.identity)
    ready = fam("ready", "gauge", "1 if /readyz answers OK")
    ready.add(1 if status.ready else 0)
    loaded = fam("config_loaded", "gauge", "1 once a valid tunnels configuration is in force")
    loaded.add(1 if status.config_loaded else 0)
    failovers = fam("failovers_total", "counter",
                    "Times this supervisor became leader after another holder")
    failovers.add(status.failovers)
    rejections = fam("config_rejections_total", "counter",
                     "Tunnel configurations rejected as invalid (the last good one stays)")
    rejections.add(status.config_rejections)

    up = fam("tunnel_up", "gauge", "1 if the tunnel's device is up on this node")
    age = fam("tunnel_last_handshake_seconds", "gauge",
              "Seconds since the latest completed handshake (absent if none yet)")
    rx = fam("tunnel_rx_bytes_total", "counter", "Bytes received from the tunnel peer")
    tx = fam("tunnel_tx_bytes_total", "counter", "Bytes sent to the tunnel peer")
    hs = fam("tunnel_handshakes_total", "counter", "Completed handshakes")
    hsf = fam("tunnel_handshake_failures_total", "counter",
              "Handshake attempts that got no answer")
    faults = fam("tunnel_fastpath_faults_total", "counter",
                 "Packets the fast path failed on unexpectedly (each went the ordinary way)")
    fp_off = fam("tunnel_fastpath_off", "gauge",
                 "1 if the fast path was switched off after dense faults")
    internal = fam("tunnel_internal_errors_total", "counter",
                   "Unexpected errors in the tunnel's event loop")
    foreign = fam("tunnel_dropped_not_for_vip_total", "counter",
                  "Decrypted packets dropped because they were not addressed to the VIP")
    fenced = fam("tunnel_fenced_datagrams_total", "counter",
                 "Datagrams held back because the leadership's time was up")
    conns = fam("forwarded_connections_total", "counter",
                "Forwarded TCP connections (UDP: client flows) by VIP port and protocol")
    dgrams = fam("forwarded_datagrams_total", "counter",
                 "Forwarded UDP datagrams (both directions) by VIP port and protocol")
    fbytes = fam("forwarded_bytes_total", "counter", "Forwarded payload bytes")
    ferrs = fam("forward_errors_total", "counter",
                "Forwarding failures (no target reachable, refused over the bound)")
    refused = fam("forward_refused_total", "counter",
                  "Connections or UDP flows refused because the forwarder's bound or the "
                  "client address's bound was reached (also counted in forward_errors_total)")
    idle = fam("forward_idle_closed_total", "counter",
               "Connections or UDP flows closed after their idle timeout")
    active = fam("forward_active", "gauge", "Open forwarded connections or UDP flows")
    for name in sorted(status.tunnels):
        t = status.tunnels[name]
        lab = {"tunnel": t.name, "vip": t.vip}
        up.add(1 if t.up else 0, **lab)
        if t.last_handshake_unix > 0:
            age.add(max(0.0, now_unix - t.last_handshake_unix), **lab)
        rx.add(t.rx_bytes, **lab)
        tx.add(t.tx_bytes, **lab)
        hs.add(t.handshakes, **lab)
        hsf.add(t.handshake_failures, **lab)
        faults.add(t.fastpath_faults, **lab)
        fp_off.add(1 if t.fastpath_off else 0, **lab)
        internal.add(t.internal_errors, **lab)
        foreign.add(t.dropped_not_for_vip, **lab)
        fenced.add(t.fenced, **lab)
        for (port, proto) in sorted(t.forwards):
            s = t.forwards[(port, proto)]
            flab = dict(lab, port=str(port), protocol=proto)
            conns.add(s.connections, **flab)
            dgrams.add(s.datagrams, **flab)
            fbytes.add(s.bytes, **flab)
            ferrs.add(s.errors, **flab)
            refused.add(s.refused, **flab)
            idle.add(s.idle_closed, **flab)
            active.add(s.active, **flab)
    return [leader, ready, loaded, failovers, rejections, up, age, rx, tx, hs, hsf,
            faults, fp_off, internal, foreign, fenced, conns, dgrams, fbytes, ferrs, refused,
            idle, active]


def render(status: SupervisorStatus, *, now_unix: float) -> str:
    """The whole exposition, newline-terminated."""
    lines: list[str] = []
    for f in families(status, now_unix=now_unix):
        lines.extend(f.render())
    return "\n".join(lines) + "\n"
