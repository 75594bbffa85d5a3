"""asyncio Lease leader election on ``kubernetes.aio``, client-go compatible.

The decisions live in :mod:`wgpy.supervisor.lease` (sans-IO) and the acquire/lead/step-down
loop in :mod:`wgpy.supervisor.elector`; this module is the Lease backend of that loop: the
GET/POST/PUT calls, the renewal round (retries until the renew deadline) and the release.

Why our own elector: the packaged ones are not client-go compatible (no ``leaseTransitions``,
no release, expiry judged by the candidate's own duration; the aio one crashes when the Lease
does not exist). See docs kubernetes.md §2.1.

Two deliberate deviations from client-go, both on the safe side for a shared WireGuard key:

* ``on_stopped_leading`` runs *before* the graceful release (the shared loop does that).
* If a renewal reads a valid Lease held by someone else (we were paused past the lease
  duration), we step down at once instead of waiting for the renew deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio import client as k8s

from wgpy.supervisor.elector import Callback, ElectorLoop, LeaderCallback, Renewal
from wgpy.supervisor.lease import (
    Action,
    ElectionConfig,
    Elector,
    LeaseRecord,
    RandomSource,
)

__all__ = ["ElectionConfig", "LeaderElector"]

log = logging.getLogger(__name__)

def _utcnow() -> datetime:
    return datetime.now(UTC)


class LeaderElector(ElectorLoop):
    """Run for leadership of one Lease.

    ``await run()`` acquires (retrying with jitter), calls ``on_started_leading`` (a coroutine
    returned by it runs as a task, cancelled when leadership ends), renews every retry period
    and returns after leadership ended: lost (:attr:`lost_leadership` is true) or
    :meth:`stop` (graceful: the Lease is released so another node takes over at once).
    """

    def __init__(
        self,
        config: ElectionConfig,
        api: Any,
        *,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        on_new_leader: LeaderCallback | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        super().__init__(
            retry_period=config.retry_period,
            on_started_leading=on_started_leading,
            on_stopped_leading=on_stopped_leading,
            on_new_leader=on_new_leader,
            rng=rng,
        )
        self.config = config
        self._coord = k8s.CoordinationV1Api(api)
        self._api = api
        self._elector = Elector(config)
        self._clock = clock  # None: the running loop's (monotonic) clock, bound by run()
        self._wall = wall_clock
        self._lease: dict[str, Any] | None = None  # last Lease read or written (JSON form)
        self._io_lock = asyncio.Lock()

    # -- public state ------------------------------------------------------------------------

    @property
    def lock_name(self) -> str:
        return f"lease {self.config.namespace}/{self.config.name}"

    @property
    def identity_name(self) -> str:
        return self.config.identity

    @property
    def leader(self) -> str:
        """The holder last observed ("" if free or unknown)."""
        obs = self._elector.observed
        return obs.holder if obs is not None else ""

    @property
    def observed(self) -> LeaseRecord | None:
        return self._elector.observed

    def annotation(self, key: str) -> str | None:
        """An annotation of the Lease as last observed (or as we are about to write it)."""
        return self._elector.annotation(key)

    def set_annotation(self, key: str, value: str | None) -> None:
        """Store ``key`` on the Lease with the next renewal (``None`` removes it); call
        :meth:`flush_annotations` when it must be stored before something else happens."""
        self._elector.set_annotation(key, value)

    async def flush_annotations(self) -> bool:
        """Write pending annotations now (an immediate renewal); True once they are stored.

        The manager persists the TAI64N bound this way *before* a device may send an
        initiation carrying a timestamp up to it (waiting for the next renewal would leave up
        to one retry period in which a crash loses the bound). False if we do not lead or the
        write failed before the renew deadline (the caller must not rely on the value).
        """
        if not self._leading:
            return False
        left = self._elector.renew_time_left(now=self._now())
        if left <= 0:
            return False
        ok = await self._attempt(timeout=left)
        return ok and self._leading and not self._elector.has_pending()

    def time_left(self) -> float:
        """Seconds until the renew deadline, 0 when not leading. Safe from any thread (the
        tunnels' send fence calls it): reads two numbers and the clock (the loop's ``time``,
        i.e. the monotonic clock, bound when :meth:`run` started)."""
        if not self._leading:
            return 0.0
        return max(0.0, self._elector.renew_time_left(now=self._now()))

    @property
    def last_renew(self) -> float | None:
        """Clock time of our last successful write as holder (``None`` if not holding)."""
        return self._elector.renewed_at

    # -- the backend of the shared loop ------------------------------------------------------

    def _now(self) -> float:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().time
        return self._clock()

    async def run(self) -> None:
        """Acquire, lead until the lease is lost or :meth:`stop` is called, then return.

        Graceful stop (the default) releases the Lease so another node takes over at once;
        ``stop(release=False)`` leaves it to expire (as a crash would).
        """
        self._now()  # bind the loop's clock here, where the loop runs (time_left is threaded)
        await super().run()

    async def _try_acquire(self) -> bool:
        return await self._attempt(timeout=self.config.renew_deadline)

    def _new_leader(self) -> str | None:
        return self._elector.new_leader()

    async def _renew(self) -> Renewal:
        """Renew; on failure retry every retry period until the renew deadline.

        Steps down at the deadline, or at once when the Lease is validly held by someone else
        (we were paused past the lease duration).
        """
        el = self._elector
        while True:
            left = el.renew_time_left(now=self._now())
            ok = left > 0 and await self._attempt(timeout=left)
            await self._report_new_leader()
            if ok:
                return Renewal.RENEWED
            now = self._now()
            if el.must_step_down(now=now) or el.held_by_other(now=now):
                log.error(
                    "lease %s/%s: failed to renew, stepping down",
                    self.config.namespace,
                    self.config.name,
                )
                return Renewal.LOST
            wait = min(self.config.retry_period, el.renew_time_left(now=now))
            if await self._sleep(wait):
                return Renewal.STOPPED

    # -- one attempt (client-go tryAcquireOrRenew) --------------------------------------------

    async def _attempt(self, *, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self._try_acquire_or_renew(), timeout)
        except TimeoutError:
            log.warning("lease %s/%s: request timed out", self.config.namespace, self.config.name)
            return False

    async def _try_acquire_or_renew(self) -> bool:
        # One attempt at a time: the renew loop and flush_annotations share the cached Lease.
        async with self._io_lock:
            return await self._try_acquire_or_renew_locked()

    async def _try_acquire_or_renew_locked(self) -> bool:
        el = self._elector
        rec = el.fast_path(now=self._now(), wall=self._wall())
        if rec is not None and self._lease is not None:
            if await self._write(rec, create=False):
                return True
            log.info(
                "lease %s/%s: optimistic renew failed, falling back to a read",
                self.config.namespace,
                self.config.name,
            )
        try:
            lease = await self._coord.read_namespaced_lease(self.config.name, self.config.namespace)
            self._lease = self._api.sanitize_for_serialization(lease)
        except k8s.ApiException as e:
            if e.status != 404:
                log.warning(
                    "lease %s/%s: read failed: %s",
                    self.config.namespace,
                    self.config.name,
                    e.status,
                )
                return False
            self._lease = None
        except Exception as e:  # connection refused, reset, ...
            log.warning("lease %s/%s: read failed: %s", self.config.namespace, self.config.name, e)
            return False
        record = LeaseRecord.from_lease(self._lease) if self._lease is not None else None
        d = el.decide(record, now=self._now(), wall=self._wall())
        if d.action is Action.FOLLOW or d.record is None:
            return False
        return await self._write(d.record, create=d.action is Action.CREATE)

    async def _write(self, record: LeaseRecord, *, create: bool) -> bool:
        """POST or PUT ``record`` (PUT: onto the Lease last read, with its resourceVersion)."""
        if create or self._lease is None:
            body: dict[str, Any] = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            }
        else:
            body = dict(self._lease)
            body["metadata"] = dict(body.get("metadata") or {})
        if record.annotations:
            body["metadata"]["annotations"] = dict(record.annotations)
        else:
            body["metadata"].pop("annotations", None)
        # The whole object goes back: labels and other metadata survive, as with client-go.
        body["spec"] = record.to_spec()
        model = k8s.V1Lease.from_dict(body)
        assert model is not None
        self._elector.attempting(record)
        # The term is timed from here, not from the reply: the server commits the write at
        # some moment after this, and a reply delayed past leaseDuration - renewDeadline
        # (slow etcd, SIGSTOP) must not let us lead after another node may have acquired.
        sent = self._now()
        try:
            if create:
                out = await self._coord.create_namespaced_lease(self.config.namespace, model)
            else:
                out = await self._coord.replace_namespaced_lease(
                    self.config.name, self.config.namespace, model
                )
        except k8s.ApiException as e:
            log.info(
                "lease %s/%s: write failed: %s %s",
                self.config.namespace,
                self.config.name,
                e.status,
                e.reason,
            )
            return False
        except Exception as e:
            log.warning("lease %s/%s: write failed: %s", self.config.namespace, self.config.name, e)
            return False
        self._lease = self._api.sanitize_for_serialization(out)
        self._elector.succeeded(record, now=sent)
        return True

    async def _release(self, *, graceful: bool) -> None:
        """Graceful release: GET, and if we still hold it, PUT an empty holder (duration 1)."""
        if not graceful or not self._elector.is_leader():
            return
        for _ in range(3):  # retry on 409 (we raced our own renewal or another writer)
            try:
                lease = await asyncio.wait_for(
                    self._coord.read_namespaced_lease(self.config.name, self.config.namespace),
                    self.config.retry_period,
                )
                self._lease = self._api.sanitize_for_serialization(lease)
                assert self._lease is not None
                if not self._elector.ours(LeaseRecord.from_lease(self._lease)):
                    return  # someone else's now (or kube-vip's, under our name)
                rec = self._elector.release_record(wall=self._wall())
                if rec is None:
                    return
                if await asyncio.wait_for(self._write(rec, create=False), self.config.retry_period):
                    log.info("lease %s/%s: released", self.config.namespace, self.config.name)
                    return
            except Exception as e:
                log.warning(
                    "lease %s/%s: release failed: %s", self.config.namespace, self.config.name, e
                )
                return
