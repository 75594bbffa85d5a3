"""Leader election among the supervisors of one host, on an ``flock`` (embedded mode).

The same shape as :class:`wgpy.supervisor.election.LeaderElector` (``run``, ``stop``,
``is_leader``, ``leader``, ``annotation``, ``set_annotation``, the three callbacks), so the
manager does not care which one it runs on.

* Leadership = holding ``flock(LOCK_EX)`` on ``lock_path``. The kernel drops the lock when the
  holder's last fd closes, so a leader killed with SIGKILL is replaced within one retry period
  (no lease to expire).
* The holder writes a JSON *sidecar* next to the lock (``<lock_path>.json``): holder identity,
  transitions and annotations. Only the holder writes it (atomically, by rename); candidates
  read it to learn the leader. Annotations outlive the holder, which is how a new leader finds
  the TAI64N floor the previous one left.
* Deleting or replacing the lock file would let a second process lock a new inode; the leader
  checks every retry period that the path still names its inode and steps down otherwise.
* As in our Lease elector, ``on_stopped_leading`` runs *before* the lock is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_LOCK_PATH = "/run/wgpy/supervisor.lock"

Callback = Callable[[], Awaitable[None] | None]


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


def sidecar_path(lock_path: str) -> str:
    return lock_path + ".json"


def read_sidecar(lock_path: str) -> dict[str, Any]:
    """The sidecar's content (``{}`` if missing or unreadable)."""
    try:
        with open(sidecar_path(lock_path)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class LocalLockElector:
    """Run for leadership of ``lock_path`` among processes on this host."""

    def __init__(
        self,
        lock_path: str,
        identity: str,
        *,
        retry_period: float = 2.0,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        on_new_leader: Callable[[str], Awaitable[None] | None] | None = None,
    ) -> None:
        if retry_period <= 0:
            raise ValueError("retry_period must be positive")
        self.lock_path = lock_path
        self.identity = identity
        self.retry_period = retry_period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_new_leader = on_new_leader
        self._fd: int | None = None
        self._leading = False
        self._stop = asyncio.Event()
        self._release_on_stop = True
        self._state: dict[str, Any] = {}  # sidecar as last read or written
        self._pending: dict[str, str | None] = {}  # annotations set while not leading
        self._reported = ""
        self.lost_leadership = False

    # -- public state ------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True between ``on_started_leading`` and ``on_stopped_leading``."""
        return self._leading

    @property
    def leader(self) -> str:
        """The holder last observed ("" if free or unknown)."""
        return str(self._state.get("holderIdentity") or "")

    def _annotations(self) -> dict[str, str]:
        ann = self._state.get("annotations")
        return dict(ann) if isinstance(ann, dict) else {}

    def annotation(self, key: str) -> str | None:
        """An annotation as last read from the sidecar (or as we wrote it)."""
        if key in self._pending:
            return self._pending[key]
        return self._annotations().get(key)

    def set_annotation(self, key: str, value: str | None) -> None:
        """Store ``key`` (``None`` removes it). Written at once while leading, else on acquire."""
        if not self._leading:
            self._pending[key] = value
            return
        ann = self._annotations()
        if value is None:
            ann.pop(key, None)
        else:
            ann[key] = value
        self._state["annotations"] = ann
        self._write_sidecar()

    async def flush_annotations(self) -> bool:
        """True if annotations are stored: while leading, :meth:`set_annotation` writes the
        sidecar at once, so there is nothing left to do (the Lease elector's counterpart
        renews immediately)."""
        return self._leading

    def stop(self, *, release: bool = True) -> None:
        """Ask :meth:`run` to end. ``release=False`` leaves the sidecar naming us (as a crash
        would); the flock itself is always dropped when the fd closes."""
        self._release_on_stop = release
        self._stop.set()

    # -- lock file ---------------------------------------------------------------------------

    def _try_lock(self) -> bool:
        directory = os.path.dirname(self.lock_path)
        if directory:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if not self._still_ours():  # unlinked between our open and flock: not a real lock
            self._unlock()
            return False
        return True

    def _still_ours(self) -> bool:
        if self._fd is None:
            return False
        try:
            st = os.stat(self.lock_path)
        except FileNotFoundError:
            return False
        mine = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def _unlock(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _write_sidecar(self) -> None:
        path = sidecar_path(self.lock_path)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._state, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    # -- loop --------------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(0.0, seconds))
        return self._stop.is_set()

    async def _report(self) -> None:
        holder = self.leader
        if holder and holder != self._reported:
            self._reported = holder
            if self._on_new_leader is not None:
                try:
                    await _maybe_await(self._on_new_leader(holder))
                except Exception:
                    log.exception("on_new_leader failed")

    async def _acquire(self) -> bool:
        while not self._stop.is_set():
            if self._try_lock():
                previous = read_sidecar(self.lock_path)
                transitions = int(previous.get("leaseTransitions") or 0)
                if previous.get("holderIdentity") not in (None, "", self.identity):
                    transitions += 1
                ann = previous.get("annotations")
                annotations = dict(ann) if isinstance(ann, dict) else {}
                for k, v in self._pending.items():
                    if v is None:
                        annotations.pop(k, None)
                    else:
                        annotations[k] = v
                self._pending.clear()
                self._state = {
                    "holderIdentity": self.identity,
                    "leaseTransitions": transitions,
                    "acquireTime": time.time(),
                    "pid": os.getpid(),
                    "annotations": annotations,
                }
                try:
                    self._write_sidecar()
                except OSError:
                    self._unlock()
                    raise
                await self._report()
                return True
            self._state = read_sidecar(self.lock_path)
            await self._report()
            # jitter (as client-go's 1.2 factor) so candidates started together spread out
            jitter = 1.0 + 0.2 * secrets.randbelow(1000) / 1000
            if await self._sleep(self.retry_period * jitter):
                return False
        return False

    async def run(self) -> None:
        """Acquire, lead until the lock is lost or :meth:`stop` is called, then return."""
        self.lost_leadership = False
        if not await self._acquire():
            return
        self._leading = True
        log.info("lock %s: acquired as %s", self.lock_path, self.identity)
        task: asyncio.Future[Any] | None = None
        try:
            if self._on_started is not None:
                result = self._on_started()
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
            while not await self._sleep(self.retry_period):
                if not self._still_ours():
                    self.lost_leadership = True
                    log.error("lock %s: lock file replaced, stepping down", self.lock_path)
                    break
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
            if self._still_ours() and (self._release_on_stop or not self._stop.is_set()):
                self._state["holderIdentity"] = ""
                with contextlib.suppress(OSError):
                    self._write_sidecar()
            self._unlock()
            log.info("lock %s: released", self.lock_path)
