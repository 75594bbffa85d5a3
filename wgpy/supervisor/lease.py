"""Sans-IO Lease leader-election decisions, following client-go's ``leaderelection`` package.

Theory of operation (client-go ``tryAcquireOrRenew``, see docs kubernetes.md §5):

* The Lease's own timestamps are never trusted. A candidate remembers the last *observed*
  record and the local monotonic time at which it last saw that record change
  (``observed_time``). The lease is valid while ``observed_time + record.duration_s > now``,
  using the **record's** ``leaseDurationSeconds`` (client-go >= v0.27). That is what makes
  election tolerant of clock skew between nodes.
* An empty holder means "free": anyone may take it at once (a graceful release writes that).
* Taking over from someone else bumps ``leaseTransitions``; renewing keeps ``acquireTime`` and
  ``leaseTransitions``.
* A leader that cannot renew before its *renew deadline* steps down; the deadline is shorter
  than the lease duration, so it is gone before anybody else may acquire. The deadline is
  counted from when the renewing request was *sent* (the server commits it no earlier, and
  others time the lease from when they see the commit), never from when the reply arrived:
  a reply that comes back late must not stretch our term past theirs.
* A record naming our identity is ours only if this process wrote it. kube-vip uses the same
  identity (the node name) on the same Lease, and a restarted pod's old term is not ours
  either: such a record is treated as held by someone else (followed while valid, taken over
  with a new term once expired), so we never "resume" a term we did not hold.

This module reads no clock: ``now`` is monotonic seconds, wall time arrives as an aware
``datetime`` (only written into the Lease for humans and tools).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from wgpy.core.errors import ConfigError

JITTER_FACTOR = 1.2  # client-go leaderelection.JitterFactor
MICROTIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class RandomSource(Protocol):
    def random(self) -> float: ...


# -- MicroTime ------------------------------------------------------------------------------


def microtime(wall: datetime) -> datetime:
    """``wall`` in UTC, with a non-zero microsecond.

    The generated ``kubernetes`` serialiser writes ``datetime.isoformat()``, which drops the
    fraction when ``microsecond == 0``; the API server then answers 400 (MicroTime needs six
    digits). Bumping to 1 µs is harmless and removes that failure mode.
    """
    if wall.tzinfo is None:
        raise ValueError("wall time must be timezone-aware")
    t = wall.astimezone(UTC)
    return t.replace(microsecond=1) if t.microsecond == 0 else t


def format_microtime(t: datetime) -> str:
    """Go's ``2006-01-02T15:04:05.000000Z07:00`` in UTC: always six digits and ``Z``."""
    if t.tzinfo is None:
        raise ValueError("MicroTime must be timezone-aware")
    return t.astimezone(UTC).strftime(MICROTIME_FORMAT)


def parse_microtime(text: str) -> datetime:
    """Tolerant reader: ``…Z``, ``…+hh:mm``, any number of fractional digits."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# -- configuration and record ---------------------------------------------------------------


@dataclass(frozen=True)
class ElectionConfig:
    """Lease identity and client-go timings (seconds); validated as client-go does."""

    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.name or not self.namespace:
            raise ConfigError("lease: name and namespace must not be empty")
        if not self.identity:
            raise ConfigError("lease: identity must not be empty")
        for what, v in (
            ("lease duration", self.lease_duration),
            ("renew deadline", self.renew_deadline),
            ("retry period", self.retry_period),
        ):
            if not math.isfinite(v) or v <= 0:
                raise ConfigError(f"lease: {what} must be positive, got {v}")
        if self.lease_duration <= self.renew_deadline:
            raise ConfigError("lease: lease duration must be greater than renew deadline")
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ConfigError(
                f"lease: renew deadline must be greater than retry period*{JITTER_FACTOR}"
            )
        if self.lease_duration < 1:
            # leaseDurationSeconds is int(LeaseDuration / 1 s) and must be > 0 on the server.
            raise ConfigError("lease: lease duration must be at least 1 s")

    @property
    def duration_seconds(self) -> int:
        """``leaseDurationSeconds`` as client-go writes it (truncated)."""
        return int(self.lease_duration)


@dataclass(frozen=True)
class LeaseRecord:
    """The election fields of a Lease (client-go ``LeaderElectionRecord``) plus annotations.

    Equality compares the election fields only, as client-go compares records; annotations
    ride along (the leader may store data there) but a change of annotations alone is not a
    sign of life.
    """

    holder: str = ""
    duration_s: int = 0
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    transitions: int = 0
    annotations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_lease(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        """From a Lease in JSON form (camelCase, as the API sends it)."""
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}

        def t(key: str) -> datetime | None:
            v = spec.get(key)
            if v is None:
                return None
            return v if isinstance(v, datetime) else parse_microtime(str(v))

        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=t("acquireTime"),
            renew_time=t("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            annotations=dict(meta.get("annotations") or {}),
        )

    def to_spec(self) -> dict[str, Any]:
        """The Lease ``spec`` client-go would write (``strategy``/``preferredHolder`` dropped)."""
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_s,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = format_microtime(self.acquire_time)
        if self.renew_time is not None:
            spec["renewTime"] = format_microtime(self.renew_time)
        return spec

    def __repr__(self) -> str:
        return (
            f"LeaseRecord(holder={self.holder!r}, duration_s={self.duration_s}, "
            f"transitions={self.transitions}, renew_time={self.renew_time})"
        )


class Action(enum.Enum):
    CREATE = "create"  # the Lease does not exist: POST the record
    UPDATE = "update"  # PUT the record with the resourceVersion just read
    FOLLOW = "follow"  # someone else holds a valid lease: nothing to write


@dataclass(frozen=True)
class Decision:
    action: Action
    record: LeaseRecord | None = None


# -- the elector state ----------------------------------------------------------------------


class Elector:
    """One candidate's election state. Feed it what was read; it says what to write.

    Typical attempt (the driver does the I/O)::

        rec = el.fast_path(now=now, wall=wall)        # leader still valid: PUT cached lease
        ...on failure or None: GET the lease...
        d = el.decide(record_or_None, now=now, wall=wall)
        ...CREATE/UPDATE d.record; on success: el.succeeded(d.record, now=now)
    """

    def __init__(self, config: ElectionConfig) -> None:
        self.config = config
        self.observed: LeaseRecord | None = None
        self.observed_time: float | None = None
        self._reported_leader: str | None = None
        self._pending: dict[str, str | None] = {}
        self.renewed_at: float | None = None
        # records this process wrote or is writing (the last success, and attempts since)
        self._mine: list[LeaseRecord] = []

    # ownership
    def attempting(self, record: LeaseRecord) -> None:
        """We are about to write ``record``: if the reply is lost, a read of it is still ours."""
        if record.holder == self.config.identity:
            self._mine = [*self._mine[-7:], record]

    def ours(self, record: LeaseRecord | None) -> bool:
        """True if ``record`` names us *and* this process wrote it (not kube-vip, not a previous
        incarnation of this node)."""
        return (
            record is not None
            and record.holder == self.config.identity
            and any(record == r for r in self._mine)
        )

    def held_by_other(self, *, now: float) -> bool:
        """A valid lease that is not ours (another node, or another writer using our name)."""
        obs = self.observed
        return obs is not None and obs.holder != "" and not self.ours(obs) and self.lease_valid(
            now=now
        )

    # observation
    def is_leader(self) -> bool:
        """True if the last observed record is ours (client-go ``IsLeader``, but a record
        naming us that another process wrote does not count: see :meth:`ours`)."""
        return self.ours(self.observed)

    def lease_valid(self, *, now: float) -> bool:
        """``observedTime + record.leaseDurationSeconds > now`` (local monotonic clock)."""
        if self.observed is None or self.observed_time is None:
            return False
        return self.observed_time + self.observed.duration_s > now

    def observe(self, record: LeaseRecord, *, now: float) -> bool:
        """Take a freshly read record; restart the expiry clock only if it changed."""
        changed = record != self.observed
        if changed:
            self.observed_time = now
        self.observed = record  # always: annotations may differ even if the record is equal
        return changed

    def new_leader(self) -> str | None:
        """The observed holder if it changed since the last call (client-go OnNewLeader)."""
        if self.observed is None or self.observed.holder == self._reported_leader:
            return None
        self._reported_leader = self.observed.holder
        return self.observed.holder

    def annotation(self, key: str) -> str | None:
        """An annotation of the observed Lease (with our own pending change, if any)."""
        if key in self._pending:
            return self._pending[key]
        return None if self.observed is None else self.observed.annotations.get(key)

    # decisions
    def _record(self, *, acquire: datetime, wall: datetime, transitions: int) -> LeaseRecord:
        base = dict(self.observed.annotations) if self.observed is not None else {}
        for k, v in self._pending.items():
            if v is None:
                base.pop(k, None)
            else:
                base[k] = v
        return LeaseRecord(
            holder=self.config.identity,
            duration_s=self.config.duration_seconds,
            acquire_time=microtime(acquire),  # a carried-over ".000000" would be refused
            renew_time=microtime(wall),
            transitions=transitions,
            annotations=base,
        )

    def fast_path(self, *, now: float, wall: datetime) -> LeaseRecord | None:
        """client-go >= v0.30: a valid leader renews its cached Lease without a GET first."""
        if not (self.is_leader() and self.lease_valid(now=now)):
            return None
        assert self.observed is not None
        return self._record(
            acquire=self.observed.acquire_time or microtime(wall),
            wall=wall,
            transitions=self.observed.transitions,
        )

    def decide(self, record: LeaseRecord | None, *, now: float, wall: datetime) -> Decision:
        """Decide from the record just read (``None``: the Lease does not exist)."""
        if record is None:
            w = microtime(wall)
            return Decision(Action.CREATE, self._record(acquire=w, wall=wall, transitions=0))
        self.observe(record, now=now)
        if record.holder and self.lease_valid(now=now) and not self.is_leader():
            return Decision(Action.FOLLOW)
        if self.is_leader():
            acquire = record.acquire_time or microtime(wall)
            transitions = record.transitions
        else:  # takeover (expired or released): a new term
            acquire, transitions = microtime(wall), record.transitions + 1
        return Decision(
            Action.UPDATE, self._record(acquire=acquire, wall=wall, transitions=transitions)
        )

    def succeeded(self, record: LeaseRecord, *, now: float) -> None:
        """Our write of ``record`` was accepted; ``now`` is when the request was **sent**."""
        self.observed, self.observed_time = record, now
        self.renewed_at = now if record.holder == self.config.identity else None
        self._mine = [record] if record.holder == self.config.identity else []
        for k, v in list(self._pending.items()):
            if record.annotations.get(k) == v:
                del self._pending[k]

    def release_record(self, *, wall: datetime) -> LeaseRecord | None:
        """The record a graceful release writes, or ``None`` if we do not hold the lease."""
        if not self.is_leader():
            return None
        assert self.observed is not None
        w = microtime(wall)
        return LeaseRecord(
            holder="",
            duration_s=1,
            acquire_time=w,
            renew_time=w,
            transitions=self.observed.transitions,
            annotations=dict(self.observed.annotations),
        )

    def set_annotation(self, key: str, value: str | None) -> None:
        """Write ``key`` (``None``: remove it) with our next successful write."""
        self._pending[key] = value

    def has_pending(self) -> bool:
        """True while an annotation set with :meth:`set_annotation` is not yet written."""
        return bool(self._pending)

    # renew deadline
    def renew_time_left(self, *, now: float) -> float:
        """Seconds until the renew deadline, measured from when our last successful write was
        sent (client-go measures it from the start of each renew cycle, which is later; the
        send time of the last success is the latest instant the server can have committed
        our previous term from, so this is strictly safer)."""
        if self.renewed_at is None:
            return 0.0
        return self.renewed_at + self.config.renew_deadline - now

    def must_step_down(self, *, now: float) -> bool:
        """The renew deadline has passed without a successful renewal."""
        return self.renew_time_left(now=now) <= 0


def retry_interval(period: float, rng: RandomSource, factor: float = JITTER_FACTOR) -> float:
    """client-go ``wait.Jitter``: ``period * (1 + rng.random() * factor)``."""
    return period * (1.0 + rng.random() * factor)
