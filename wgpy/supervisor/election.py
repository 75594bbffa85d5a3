"""asyncio Lease leader election on ``kubernetes.aio``, client-go compatible.

The decisions live in :mod:`wgpy.supervisor.lease` (sans-IO); this module only does the
GET/POST/PUT calls, the timing (jittered acquire loop, renew every retry period, step-down at
the renew deadline) and the callbacks.

Why our own elector: the packaged ones are not client-go compatible (no ``leaseTransitions``,
no release, expiry judged by the candidate's own duration; the aio one crashes when the Lease
does not exist). See docs kubernetes.md §2.1.

Two deliberate deviations from client-go, both on the safe side for a shared WireGuard key:

* ``on_stopped_leading`` runs *before* the graceful release, so the tunnel is down before
  another node can take over (client-go releases first).
* If a renewal reads a valid Lease held by someone else (we were paused past the lease
  duration), we step down at once instead of waiting for the renew deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio import client as k8s

from wgpy.supervisor.lease import (
    Action,
    ElectionConfig,
    Elector,
    LeaseRecord,
    RandomSource,
    retry_interval,
)

__all__ = ["ElectionConfig", "LeaderElector"]

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None] | None]


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


class LeaderElector:
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
        on_new_leader: Callable[[str], Awaitable[None] | None] | None = None,
        rng: RandomSource | None = None,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self._coord = k8s.CoordinationV1Api(api)
        self._api = api
        self._elector = Elector(config)
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._rng: RandomSource = rng or secrets.SystemRandom()
        self._clock = clock
        self._wall = wall_clock
        self._stop = asyncio.Event()
        self._lease: dict[str, Any] | None = None  # last Lease read or written (JSON form)
        self._leading = False
        self._release_on_stop = True
        self._io_lock = asyncio.Lock()
        self.lost_leadership = False

    # -- public state ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True between ``on_started_leading`` and ``on_stopped_leading``."""
        return self._leading

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
        tunnels' send fence calls it): reads two numbers and the monotonic clock."""
        if not self._leading:
            return 0.0
        now = self._clock() if self._clock is not None else time.monotonic()
        return max(0.0, self._elector.renew_time_left(now=now))

    @property
    def last_renew(self) -> float | None:
        """Clock time of our last successful write as holder (``None`` if not holding)."""
        return self._elector.renewed_at

    def stop(self, *, release: bool = True) -> None:
        """Ask :meth:`run` to end; it releases the Lease if we hold it and ``release``.

        ``release=False`` leaves the Lease to expire (as a crash would).
        """
        self._release_on_stop = release
        self._stop.set()

    # -- loop --------------------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True if stop was requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))
        return self._stop.is_set()

    async def run(self) -> None:
        """Acquire, lead until the lease is lost or :meth:`stop` is called, then return."""
        self.lost_leadership = False
        if not await self._acquire():
            return
        self._leading = True
        log.info(
            "lease %s/%s: acquired as %s",
            self.config.namespace,
            self.config.name,
            self.config.identity,
        )
        task: asyncio.Task[None] | None = None
        try:
            if self._on_started is not None:
                result = self._on_started()
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
            await self._renew_loop()
        finally:
            self._leading = False
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._on_stopped is not None:
                try:
                    await _maybe_await(self._on_stopped())
                except Exception:
                    log.exception("on_stopped_leading failed")
            if self._release_on_stop or not self._stop.is_set():
                await self._release()

    async def _acquire(self) -> bool:
        """Try until we hold the Lease (True) or stop is requested (False).

        Retries are jittered (client-go ``JitterUntil`` with factor 1.2) so candidates that
        started together do not keep colliding.
        """
        while not self._stop.is_set():
            ok = await self._attempt(timeout=self.config.renew_deadline)
            await self._report_new_leader()
            if ok:
                return True
            if await self._sleep(retry_interval(self.config.retry_period, self._rng)):
                return False
        return False

    async def _renew_loop(self) -> None:
        el = self._elector
        while True:
            if await self._sleep(self.config.retry_period):
                return
            while True:
                left = el.renew_time_left(now=self._now())
                ok = left > 0 and await self._attempt(timeout=left)
                await self._report_new_leader()
                if ok:
                    break
                now = self._now()
                if el.must_step_down(now=now) or el.held_by_other(now=now):
                    self.lost_leadership = True
                    log.error(
                        "lease %s/%s: failed to renew, stepping down",
                        self.config.namespace,
                        self.config.name,
                    )
                    return
                wait = min(self.config.retry_period, el.renew_time_left(now=now))
                if await self._sleep(wait):
                    return

    async def _report_new_leader(self) -> None:
        holder = self._elector.new_leader()
        if holder is not None and self._on_new_leader is not None:
            try:
                await _maybe_await(self._on_new_leader(holder))
            except Exception:
                log.exception("on_new_leader failed")

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

    async def _release(self) -> None:
        """Graceful release: GET, and if we still hold it, PUT an empty holder (duration 1)."""
        if not self._elector.is_leader():
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
