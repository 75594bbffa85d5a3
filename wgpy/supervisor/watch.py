"""LIST + WATCH of one Kubernetes collection on ``kubernetes.aio``, kept in a local cache.

The packaged ``kubernetes.aio.watch.Watch`` retries a 410 once with the same stale
resourceVersion and then raises, and raises on 503 (docs kubernetes.md §2.1): a long-running
supervisor would lose its watch at the first etcd compaction or API-server restart. This
module is a small client-go style reflector instead:

* LIST (consistent read), remember the collection resourceVersion, then WATCH from it with
  bookmarks; a clean end of stream resumes from the last resourceVersion seen (events or
  bookmarks), so nothing is replayed or missed.
* A 410 Gone (in-stream ERROR event or HTTP status) means the history we would resume from is
  compacted: relist and *reconcile* the cache against the list, emitting DELETED for objects
  that disappeared during the gap and ADDED/MODIFIED only for objects whose resourceVersion
  changed. Handlers therefore see every change exactly once.
* Any other failure (503, connection refused, reset, malformed line) backs off with jitter and
  retries: the watch from the last resourceVersion, or the list if we never listed.

Objects are plain JSON dicts (``kind``/``apiVersion`` may be missing on list items, as from a
real server). Handlers are called in order, one at a time, from the reflector's task.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

log = logging.getLogger(__name__)

LIST_PAGE = 500  # objects per LIST page (client-go's pager default)
LIST_TIMEOUT = 60.0  # seconds one LIST page may take before it is retried

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
# A generated ``*_without_preload_content`` method: returns the raw aiohttp response.
ListCall = Callable[..., Awaitable[aiohttp.ClientResponse]]


@dataclass(frozen=True, slots=True)
class Change:
    """One change to the cache: ``old`` is the cached object before (None for ADDED)."""

    type: EventType
    obj: Obj
    old: Obj | None = None


Handler = Callable[[Change], Awaitable[None] | None]


class ApiStatusError(Exception):
    """A non-2xx answer (or an in-stream ERROR event) from the API server."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def rv_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Backoff:
    """Exponential backoff with jitter: delays in ``[d/2, d]``, ``d`` doubling up to ``cap``.

    Half-jitter keeps a floor (so a failing API server is not hammered) while spreading the
    retries of many supervisors that lost the API server at the same moment.
    """

    def __init__(self, initial: float = 0.5, cap: float = 30.0) -> None:
        self.initial, self.cap = initial, cap
        self._rng = secrets.SystemRandom()
        self._n = 0

    def next(self) -> float:
        d = min(self.cap, self.initial * (2.0**self._n))
        self._n = min(self._n + 1, 30)
        return d / 2 + self._rng.uniform(0.0, d / 2)

    def reset(self) -> None:
        self._n = 0


class _Gone(Exception):
    """The resourceVersion we resume from was compacted away: relist."""


async def _raise_for_status(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 300:
        return
    try:
        body = await resp.read()
        message = str(json.loads(body).get("message", "")) if body else resp.reason or ""
    except (ValueError, AttributeError, aiohttp.ClientError):
        message = resp.reason or ""
    finally:
        resp.release()
    if resp.status == 410:
        raise _Gone(message)
    raise ApiStatusError(resp.status, message)


class Reflector:
    """Keep :attr:`cache` equal to a collection on the API server and report each change.

    ``call`` is a generated list method without preload, e.g.
    ``CoreV1Api(api).list_namespaced_secret_without_preload_content`` with ``args`` the
    namespace; selectors go to the server (only those it supports: a real server refuses
    ``spec.type`` on Services, so such filters belong in the handler).
    """

    def __init__(
        self,
        name: str,
        call: ListCall,
        *args: Any,
        on_change: Handler | None = None,
        on_synced: Callable[[], Awaitable[None] | None] | None = None,
        field_selector: str | None = None,
        label_selector: str | None = None,
        watch_timeout: int = 290,
        backoff: Backoff | None = None,
        page_size: int = LIST_PAGE,
        list_timeout: float = LIST_TIMEOUT,
    ) -> None:
        self.name = name
        self._call = call
        self._args = args
        self._on_change = on_change
        self._on_synced = on_synced
        self._selectors: dict[str, str] = {}
        if field_selector:
            self._selectors["field_selector"] = field_selector
        if label_selector:
            self._selectors["label_selector"] = label_selector
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.list_timeout = list_timeout
        self.backoff = backoff or Backoff()
        self.cache: dict[Key, Obj] = {}
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.lists = 0  # LISTs done (initial + relists), for tests and logs
        self.errors = 0

    # -- loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """LIST/WATCH until cancelled; never raises for API or network failures."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                    self.backoff.reset()
                if await self._watch():
                    self.backoff.reset()
                    continue
                # the stream ended at once without any event: treat as a soft failure
                await asyncio.sleep(self.backoff.next())
            except _Gone as e:
                log.info("watch %s: %s; relisting", self.name, e or "resource version expired")
                need_list = True
            except asyncio.CancelledError:
                raise
            except (ApiStatusError, aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                self.errors += 1
                delay = self.backoff.next()
                log.warning(
                    "watch %s: %s; retrying in %.1fs", self.name, e or type(e).__name__, delay
                )
                # Never listed yet: list again. Otherwise resume the watch from the last
                # resourceVersion (cheaper than a relist; a 410 would tell us if it is gone).
                need_list = need_list or not self.resource_version
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        """The collection, in pages of ``page_size`` (client-go's pager), each request
        bounded by ``list_timeout``: a stalled LIST is retried, not waited on forever. An
        expired continue token (410) relists from the start."""
        items: list[Obj] = []
        token = ""
        rv = ""
        while True:
            kw: dict[str, Any] = dict(self._selectors, limit=self.page_size,
                                      _request_timeout=self.list_timeout)
            if token:
                kw["_continue"] = token
            resp = await self._call(*self._args, **kw)
            await _raise_for_status(resp)
            try:
                body = await resp.json(content_type=None)
            finally:
                resp.release()
            items += body.get("items") or []
            meta = body.get("metadata") or {}
            rv = str(meta.get("resourceVersion") or rv)
            token = str(meta.get("continue") or "")
            if not token:
                break
        fresh: dict[Key, Obj] = {key_of(o): o for o in items}
        changes: list[Change] = []
        for k, old in self.cache.items():
            if k not in fresh:
                changes.append(Change("DELETED", old, old))
        for k, new in fresh.items():
            old_obj = self.cache.get(k)
            if old_obj is None:
                changes.append(Change("ADDED", new))
            elif rv_of(old_obj) != rv_of(new):
                changes.append(Change("MODIFIED", new, old_obj))
        self.cache = fresh
        self.resource_version = rv
        self.lists += 1
        log.debug("watch %s: listed %d at rv %s", self.name, len(fresh), rv)
        for c in changes:
            await self._emit(c)
        first = not self.synced.is_set()
        self.synced.set()
        if self._on_synced is not None:
            await self._call_handler(self._on_synced)
        if first:
            log.info("watch %s: synced (%d objects)", self.name, len(fresh))

    async def _watch(self) -> bool:
        """One WATCH request; True if it delivered anything (events or bookmarks)."""
        resp = await self._call(
            *self._args,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
            _request_timeout=float(self.watch_timeout + 30),
            **self._selectors,
        )
        await _raise_for_status(resp)
        got = False
        try:
            while True:
                line = await resp.content.readline()
                if not line:
                    return got  # clean end: resume from self.resource_version
                if not line.strip():
                    continue
                got = True
                await self._event(json.loads(line))
        finally:
            resp.release()

    async def _event(self, ev: Obj) -> None:
        typ, obj = ev.get("type"), ev.get("object") or {}
        if typ == "ERROR":
            code = int(obj.get("code") or 0)
            message = str(obj.get("message") or "")
            if code == 410:
                raise _Gone(message)
            raise ApiStatusError(code, message)
        rv = rv_of(obj)
        if typ == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        if typ not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unknown watch event type {typ!r}")
        k = key_of(obj)
        old = self.cache.get(k)
        if rv:
            self.resource_version = rv
        if typ == "DELETED":
            if old is None:
                return  # already gone (seen by a relist): no second teardown
            del self.cache[k]
            await self._emit(Change("DELETED", obj, old))
            return
        if old is not None and rv_of(old) == rv:
            return  # the same version again (list/watch boundary): nothing changed
        self.cache[k] = obj
        await self._emit(Change("MODIFIED" if old is not None else "ADDED", obj, old))

    async def _emit(self, change: Change) -> None:
        if self._on_change is not None:
            await self._call_handler(self._on_change, change)

    async def _call_handler(self, fn: Callable[..., Any], *args: Any) -> None:
        # A failing handler must not kill the watch (it would silently freeze the config).
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watch %s: handler failed", self.name)
