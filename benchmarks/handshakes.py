"""Hook: handshakes per second that a responder sustains (not measured yet).

Measuring it needs wgpy's own harness: a Python initiator that fires many handshake
initiations (fresh ephemerals, valid MAC1, optionally under-load MAC2) at the responder in
``ns_b`` and counts the responses per second, with the responder's CPU from /proc. When that
harness exists, implement :func:`measure`; it is already registered in
:data:`benchmarks.workloads.EXTRA_WORKLOADS`, so ``benchmarks.run`` will run it for every case
and report ``handshakes_per_s`` (plus anything else it returns) with medians and ratios.
"""

from __future__ import annotations

from benchmarks.workloads import EXTRA_WORKLOADS, Target

NOT_MEASURED = "not measured yet: needs wgpy's initiator harness (benchmarks/handshakes.py)"


def measure(target: Target) -> dict[str, float] | None:
    """Return ``{"per_s": ...}`` for the responder in ``target.ns_b``, or None if unavailable."""
    del target
    return None


EXTRA_WORKLOADS["handshakes"] = measure
