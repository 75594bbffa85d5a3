"""Reflector (LIST + WATCH with resume, 410 relist, bookmarks, backoff) against the strict fake."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from kubernetes.aio import client as _aclient

from tests.fakeapi import FakeApiServer
from tests.support import refused_port
from tests.vtime import advance, run_virtual
from wgpy.supervisor.watch import Backoff, Change, Reflector
from wgpy.testbed import wait_until

aclient: Any = _aclient
NS = "kube-system"
PATH = f"/api/v1/namespaces/{NS}/secrets"


def secret(name: str, value: str, ns: str = NS) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns}, "stringData": {"tunnels": value}}


def run(test: Callable[[], Awaitable[None]]) -> None:
    run_virtual(test, 60)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []   # (type, name, rv)
        self.synced = 0

    def __call__(self, c: Change) -> None:
        meta = c.obj["metadata"]
        self.changes.append((c.type, meta["name"], meta["resourceVersion"]))

    def on_synced(self) -> None:
        self.synced += 1


@contextlib.asynccontextmanager
async def reflect(srv: FakeApiServer, rec: Recorder, *, url: str | None = None,
                  field_selector: str | None = "metadata.name=wireguard",
                  backoff: Backoff | None = None) -> AsyncIterator[Reflector]:
    api = aclient.ApiClient(aclient.Configuration(host=url or srv.url))
    core = aclient.CoreV1Api(api)
    r = Reflector("secrets", core.list_namespaced_secret_without_preload_content, NS,
                  on_change=rec, on_synced=rec.on_synced, field_selector=field_selector,
                  backoff=backoff or Backoff(0.05, 0.2))
    task = asyncio.ensure_future(r.run())
    try:
        yield r
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


def watches(srv: FakeApiServer) -> list[dict[str, str]]:
    return [r.query for r in srv.requests if r.path == PATH and r.query.get("watch") == "true"]


def lists(srv: FakeApiServer) -> list[dict[str, str]]:
    return [r.query for r in srv.requests if r.path == PATH and "watch" not in r.query]


def test_list_then_watch_from_list_rv_modified_deleted_unrelated_ignored() -> None:
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=5) as srv:
            first = srv.seed(secret("wireguard", "a"))
            srv.seed(secret("other", "x"))
            rec = Recorder()
            async with reflect(srv, rec) as r:
                await wait_until(lambda: len(watches(srv)) == 1)
                list_rv = r.resource_version
                assert list_rv == str(srv.rv)
                assert lists(srv)[0].get("fieldSelector") == "metadata.name=wireguard"
                assert watches(srv)[0]["resourceVersion"] == list_rv
                assert watches(srv)[0]["allowWatchBookmarks"] == "true"
                assert rec.changes == [("ADDED", "wireguard", first["metadata"]["resourceVersion"])]
                mod = srv.seed(secret("wireguard", "b"))
                srv.seed(secret("other", "y"))          # filtered out by the server
                await wait_until(lambda: len(rec.changes) == 2)
                assert rec.changes[1] == ("MODIFIED", "wireguard",
                                          mod["metadata"]["resourceVersion"])
                srv.delete("secrets", NS, "wireguard")
                await wait_until(lambda: len(rec.changes) == 3)
                assert rec.changes[2][:2] == ("DELETED", "wireguard")
                assert r.cache == {}
                await advance(0.2)
                assert len(rec.changes) == 3 and len(lists(srv)) == 1
                assert ("other" not in {n for _, n, _ in rec.changes})
    run(main)


def test_dropped_stream_resumes_from_last_rv_without_duplicates() -> None:
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=5) as srv:
            srv.seed(secret("wireguard", "a"))
            rec = Recorder()
            async with reflect(srv, rec) as r:
                await wait_until(lambda: len(watches(srv)) == 1)
                mod = srv.seed(secret("wireguard", "b"))
                await wait_until(lambda: len(rec.changes) == 2)
                srv.drop_watches()
                await wait_until(lambda: len(watches(srv)) == 2)
                # resumed from the rv of the last event, not relisted, nothing replayed
                assert watches(srv)[1]["resourceVersion"] == mod["metadata"]["resourceVersion"]
                assert len(lists(srv)) == 1 and r.lists == 1
                srv.drop_watches()
                mod2 = srv.seed(secret("wireguard", "c"))  # while no stream is open
                await wait_until(lambda: len(rec.changes) == 3)
                await advance(0.2)
                assert [c[0] for c in rec.changes] == ["ADDED", "MODIFIED", "MODIFIED"]
                assert rec.changes[2][2] == mod2["metadata"]["resourceVersion"]
                assert len(lists(srv)) == 1
    run(main)


def test_410_after_compaction_relists_and_reconciles_gap_deletions() -> None:
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=5) as srv:
            wg = srv.seed(secret("wireguard", "a"))
            srv.seed(secret("keep", "k"))
            rec = Recorder()
            async with reflect(srv, rec, field_selector=None) as r:
                await wait_until(lambda: len(watches(srv)) == 1)
                old_rv = r.resource_version
                # While the stream is down: one deleted, one added, one unchanged; compacted.
                srv.drop_watches()
                srv.delete("secrets", NS, "wireguard")
                added = srv.seed(secret("new", "n"))
                point = srv.compact()
                await wait_until(lambda: r.lists == 2)
                await wait_until(lambda: len(watches(srv)) == 3)
                ws = watches(srv)
                assert ws[1]["resourceVersion"] == old_rv     # resume tried first: 410
                assert ws[2]["resourceVersion"] == str(point)  # then watch from the relist
                assert sorted(rec.changes[2:]) == sorted([
                    ("DELETED", "wireguard", wg["metadata"]["resourceVersion"]),
                    ("ADDED", "new", added["metadata"]["resourceVersion"])])
                assert set(r.cache) == {(NS, "keep"), (NS, "new")}
                assert rec.synced == 2
    run(main)


def test_bookmarks_advance_the_resume_rv() -> None:
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=0.1) as srv:
            srv.seed(secret("wireguard", "a"))
            rec = Recorder()
            async with reflect(srv, rec) as r:
                await wait_until(lambda: len(watches(srv)) == 1)
                list_rv = r.resource_version
                for i in range(3):
                    srv.seed(secret(f"noise{i}", "x"))   # bumps the global rv only
                await wait_until(lambda: r.resource_version == str(srv.rv))
                assert r.resource_version != list_rv and len(rec.changes) == 1
                srv.compact()   # resuming from the list rv would now be 410; from the bookmark not
                srv.drop_watches()
                await wait_until(lambda: len(watches(srv)) == 2)
                assert watches(srv)[1]["resourceVersion"] == str(srv.rv)
                await advance(0.3)
                assert r.lists == 1 and len(rec.changes) == 1
    run(main)


def test_api_outage_503_backs_off_and_recovers_once() -> None:
    async def main() -> None:
        async with FakeApiServer(bookmark_interval=5) as srv:
            srv.seed(secret("wireguard", "a"))
            rec = Recorder()
            async with reflect(srv, rec, backoff=Backoff(0.1, 0.4)) as r:
                await wait_until(lambda: len(watches(srv)) == 1)
                srv.inject("GET", PATH, 503, times=None)
                srv.drop_watches()
                mod = srv.seed(secret("wireguard", "b"))
                await advance(1.5)
                refused = [x for x in srv.responses if x[1] == PATH and x[2] == 503]
                # backoff: a handful of retries in 1.5 s, not a tight loop
                assert 3 <= len(refused) <= 15, refused
                assert r.errors == len(refused)
                srv.clear_injections()
                await wait_until(lambda: len(rec.changes) == 2)
                assert rec.changes[1] == ("MODIFIED", "wireguard",
                                          mod["metadata"]["resourceVersion"])
                await advance(0.3)
                assert len(rec.changes) == 2 and r.lists == 1
    run(main)


def test_connection_refused_keeps_retrying_without_raising() -> None:
    async def main() -> None:
        with refused_port() as port:   # bound, nothing listens: every connect gets RST
            async with FakeApiServer() as srv:
                rec = Recorder()
                async with reflect(srv, rec, url=f"http://127.0.0.1:{port}") as r:
                    await wait_until(lambda: r.errors >= 3, what=lambda: (
                        f"3 errors; {r.errors} errors, {r.lists} lists, synced "
                        f"{r.synced.is_set()}, fake API at {srv.url}, refused port {port}"))
                    assert not r.synced.is_set() and rec.changes == []
    run(main)


def test_backoff_doubles_with_jitter_and_caps() -> None:
    b = Backoff(1.0, 8.0)
    delays = [b.next() for _ in range(6)]
    for d, cap in zip(delays, (1, 2, 4, 8, 8, 8), strict=True):
        assert cap / 2 <= d <= cap
    b.reset()
    assert b.next() <= 1.0
    spread = {round(Backoff(1.0, 1.0).next(), 6) for _ in range(20)}
    assert len(spread) > 1      # jittered


# -- issue 15 point 9: the LIST is paginated and bounded in time -----------------------------


def test_list_is_paginated() -> None:
    async def main() -> None:
        async with FakeApiServer() as srv:
            for i in range(7):
                srv.seed(secret(f"s{i}", "x"))
            rec = Recorder()
            api = aclient.ApiClient(aclient.Configuration(host=srv.url))
            core = aclient.CoreV1Api(api)
            r = Reflector("secrets", core.list_namespaced_secret_without_preload_content, NS,
                          on_change=rec, on_synced=rec.on_synced, page_size=3)
            task = asyncio.ensure_future(r.run())
            try:
                await wait_until(r.synced.is_set)
                assert sorted(k[1] for k in r.cache) == [f"s{i}" for i in range(7)]
                pages = lists(srv)
                assert [q.get("limit") for q in pages] == ["3", "3", "3"]
                assert [q.get("continue") for q in pages] == [None, "3", "6"]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await api.close()
    run(main)


def test_a_stalled_list_is_retried() -> None:
    async def main() -> None:
        async with FakeApiServer() as srv:
            srv.seed(secret("wireguard", "x"))
            srv.inject("GET", PATH + "$", None, times=1, delay=20)   # the first LIST hangs
            rec = Recorder()
            api = aclient.ApiClient(aclient.Configuration(host=srv.url))
            core = aclient.CoreV1Api(api)
            r = Reflector("secrets", core.list_namespaced_secret_without_preload_content, NS,
                          on_change=rec, on_synced=rec.on_synced, list_timeout=0.5,
                          backoff=Backoff(0.05, 0.2))
            task = asyncio.ensure_future(r.run())
            try:
                await wait_until(r.synced.is_set, 5)
                assert r.errors >= 1 and len(lists(srv)) >= 2
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await api.close()
    run(main)
