"""The one leader-election loop; the lock it runs on is a backend.

Two backends: :class:`wgpy.supervisor.election.LeaderElector` (a Kubernetes Lease, client-go
compatible) and :class:`wgpy.supervisor.locallock.LocalLockElector` (an ``flock`` among the
supervisors of one host). Both run this loop, as client-go's ``LeaderElector.Run``:

* **acquire**: try, report a new leader, and retry every retry period with jitter
  (``wait.Jitter``) so candidates that started together spread out;
* **lead**: ``on_started_leading`` (a coroutine it returns runs as a task, cancelled when
  leadership ends), then renew every retry period until the backend reports the lock lost
  (:attr:`lost_leadership`) or :meth:`stop` is called;
* **step down**: ``on_stopped_leading`` runs *before* the lock is released, so the tunnel is
  down before another node can take over (client-go releases first: we deviate on the safe
  side for a shared WireGuard key). The backend then releases gracefully, unless
  ``stop(release=False)`` asked to leave the lock to expire as a crash would.

Time comes from the running loop (``loop.time()``, monotonic), so tests can run the whole
loop on virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import secrets
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from wgpy.supervisor.lease import JITTER_FACTOR, RandomSource, retry_interval

log = logging.getLogger(__name__)

Callback = Callable[[], Awaitable[None] | None]
LeaderCallback = Callable[[str], Awaitable[None] | None]


class Renewal(enum.Enum):
    """What one renewal round of a backend ended with."""

    RENEWED = "renewed"
    LOST = "lost"  # the backend logged why; the loop steps down
    STOPPED = "stopped"  # stop() was called while the backend waited


async def maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


class ElectorLoop(ABC):
    """Acquire, lead, renew, step down; subclasses provide the lock (see the module doc)."""

    jitter_factor: float = JITTER_FACTOR

    def __init__(
        self,
        *,
        retry_period: float,
        on_started_leading: Callback | None,
        on_stopped_leading: Callback | None,
        on_new_leader: LeaderCallback | None,
        rng: RandomSource | None,
    ) -> None:
        self.retry_period = retry_period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._rng: RandomSource = rng or secrets.SystemRandom()
        self._stop = asyncio.Event()
        self._leading = False
        self._release_on_stop = True
        self.lost_leadership = False

    # -- the backend -------------------------------------------------------------------------

    @property
    @abstractmethod
    def lock_name(self) -> str:
        """How log lines name the lock (``lease NS/NAME``, ``lock PATH``)."""

    @property
    @abstractmethod
    def identity_name(self) -> str:
        """Our identity as candidate."""

    @abstractmethod
    async def _try_acquire(self) -> bool:
        """One attempt to take (or keep) the lock; True if we hold it."""

    @abstractmethod
    async def _renew(self) -> Renewal:
        """One renewal round while leading (may retry inside, using :meth:`_sleep`)."""

    @abstractmethod
    async def _release(self, *, graceful: bool) -> None:
        """After leading: give the lock up (``graceful``: so another node takes over at once)."""

    @abstractmethod
    def _new_leader(self) -> str | None:
        """A holder not reported yet, or None."""

    # -- public state ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True between ``on_started_leading`` and ``on_stopped_leading``."""
        return self._leading

    def stop(self, *, release: bool = True) -> None:
        """Ask :meth:`run` to end; ``release=False`` leaves the lock to expire (as a crash)."""
        self._release_on_stop = release
        self._stop.set()

    # -- the loop ----------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; True if stop was requested."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))
        return self._stop.is_set()

    async def run(self) -> None:
        """Acquire, lead until the lock is lost or :meth:`stop` is called, then return."""
        self.lost_leadership = False
        if not await self._acquire():
            return
        self._leading = True
        log.info("%s: acquired as %s", self.lock_name, self.identity_name)
        task: asyncio.Future[None] | None = None
        try:
            if self._on_started is not None:
                result = self._on_started()
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
            await self._lead()
        finally:
            self._leading = False
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self._on_stopped is not None:
                try:
                    await maybe_await(self._on_stopped())
                except Exception:
                    log.exception("on_stopped_leading failed")
            await self._release(graceful=self._release_on_stop or not self._stop.is_set())

    async def _acquire(self) -> bool:
        """Try until we hold the lock (True) or stop is requested (False)."""
        while not self._stop.is_set():
            ok = await self._try_acquire()
            await self._report_new_leader()
            if ok:
                return True
            wait = retry_interval(self.retry_period, self._rng, self.jitter_factor)
            if await self._sleep(wait):
                return False
        return False

    async def _lead(self) -> None:
        while not await self._sleep(self.retry_period):
            outcome = await self._renew()
            if outcome is Renewal.LOST:
                self.lost_leadership = True
                return
            if outcome is Renewal.STOPPED:
                return

    async def _report_new_leader(self) -> None:
        holder = self._new_leader()
        if holder is not None and self._on_new_leader is not None:
            try:
                await maybe_await(self._on_new_leader(holder))
            except Exception:
                log.exception("on_new_leader failed")
