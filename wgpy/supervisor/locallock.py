"""Leader election among the supervisors of one host, on an ``flock`` (embedded mode).

The flock backend of the shared election loop (:mod:`wgpy.supervisor.elector`), beside the
Lease backend :class:`wgpy.supervisor.election.LeaderElector`: the same ``run``, ``stop``,
``is_leader``, ``leader``, ``annotation``, ``set_annotation`` and callbacks, so the manager
does not care which one it runs on.

* Leadership = holding ``flock(LOCK_EX)`` on ``lock_path``. The kernel drops the lock when the
  holder's last fd closes, so a leader killed with SIGKILL is replaced within one retry period
  (no lease to expire).
* The holder writes a JSON *sidecar* next to the lock (``<lock_path>.json``): holder identity,
  transitions and annotations. Only the holder writes it (atomically, by rename); candidates
  read it to learn the leader. Annotations outlive the holder, which is how a new leader finds
  the TAI64N floor the previous one left.
* Deleting or replacing the lock file would let a second process lock a new inode; the leader
  checks every retry period that the path still names its inode and steps down otherwise.
* As with the Lease, ``on_stopped_leading`` runs *before* the lock is released (the loop).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
from typing import Any

from wgpy.supervisor.elector import Callback, ElectorLoop, LeaderCallback, Renewal
from wgpy.supervisor.lease import RandomSource

log = logging.getLogger(__name__)

DEFAULT_LOCK_PATH = "/run/wgpy/supervisor.lock"


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


class LocalLockElector(ElectorLoop):
    """Run for leadership of ``lock_path`` among processes on this host."""

    # A lock frees at once when its holder dies (no lease to expire): candidates retry within
    # 1.2 retry periods rather than client-go's 2.2.
    jitter_factor = 0.2

    def __init__(
        self,
        lock_path: str,
        identity: str,
        *,
        retry_period: float = 2.0,
        on_started_leading: Callback | None = None,
        on_stopped_leading: Callback | None = None,
        on_new_leader: LeaderCallback | None = None,
        rng: RandomSource | None = None,
    ) -> None:
        if retry_period <= 0:
            raise ValueError("retry_period must be positive")
        super().__init__(
            retry_period=retry_period,
            on_started_leading=on_started_leading,
            on_stopped_leading=on_stopped_leading,
            on_new_leader=on_new_leader,
            rng=rng,
        )
        self.lock_path = lock_path
        self.identity = identity
        self._fd: int | None = None
        self._state: dict[str, Any] = {}  # sidecar as last read or written
        self._pending: dict[str, str | None] = {}  # annotations set while not leading
        self._reported = ""

    # -- public state ------------------------------------------------------------------------

    @property
    def lock_name(self) -> str:
        return f"lock {self.lock_path}"

    @property
    def identity_name(self) -> str:
        return self.identity

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

    # -- the backend of the shared loop ------------------------------------------------------

    def _new_leader(self) -> str | None:
        holder = self.leader
        if holder and holder != self._reported:
            self._reported = holder
            return holder
        return None

    async def _try_acquire(self) -> bool:
        if not self._try_lock():
            self._state = read_sidecar(self.lock_path)
            return False
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
        return True

    async def _renew(self) -> Renewal:
        if self._still_ours():
            return Renewal.RENEWED
        log.error("lock %s: lock file replaced, stepping down", self.lock_path)
        return Renewal.LOST

    async def _release(self, *, graceful: bool) -> None:
        """Clear the sidecar's holder (``graceful``; else it names us, as after a crash), then
        drop the flock (always: the kernel would at exit anyway)."""
        if self._still_ours() and graceful:
            self._state["holderIdentity"] = ""
            with contextlib.suppress(OSError):
                self._write_sidecar()
        self._unlock()
        log.info("lock %s: released", self.lock_path)
