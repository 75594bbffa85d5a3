"""One HTTP port: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

kube-vip's ``/healthz`` answers OK whatever happens. Ours asks the supervisor's event loop for
a status snapshot and fails if that does not work:

* the server runs on **its own thread and event loop**, and each request submits ``status()``
  to the supervisor's loop with a deadline. A stuck loop (a blocking call, a busy handler)
  therefore yields a prompt ``503 event loop unresponsive`` instead of a probe that hangs
  until the kubelet's timeout, and a crashing ``status()`` yields ``503``;
* ``/readyz`` is ``SupervisorStatus.ready`` (a follower with a valid config, or a leader whose
  tunnels are all up; a valid configuration with no tunnels is ready and says so);
* ``/healthz`` stays 200 when a tunnel's data plane has failed unexpectedly (fast-path faults,
  internal errors) but says so, one line per tunnel, after ``ok, degraded:``: the device keeps
  moving data the ordinary way, and a restart would not mend a bug or a dependency's change;
  the same counts are in ``/metrics``;
* ``/metrics`` renders the same snapshot (:mod:`wgpy.supervisor.metrics`).

Bodies are short fixed texts or the exposition; no configuration value other than tunnel
names and VIPs is ever written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from aiohttp import web

from wgpy.supervisor import metrics
from wgpy.supervisor.model import SupervisorStatus

log = logging.getLogger(__name__)

StatusFn = Callable[[], SupervisorStatus]


class HttpServer:
    """Serve the probes and metrics of ``status`` (called on ``loop``) on ``host:port``."""

    def __init__(self, status: StatusFn, *, loop: asyncio.AbstractEventLoop,
                 host: str = "0.0.0.0", port: int = 8080,  # noqa: S104 (pod IP, for kubelet)
                 deadline: float = 2.0,
                 loop_factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
                 ) -> None:
        self._status = status
        self._loop_factory = loop_factory  # the server thread's own loop (tests: virtual time)
        self._loop = loop
        self.host, self.port = host, port
        self.deadline = deadline
        self._thread: threading.Thread | None = None
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> int:
        """Start the server thread; returns the bound port (useful with ``port=0``)."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            # The Runner's close cancels whatever is still pending and lets it finish before
            # the loop closes: stopping with a probe in flight (its handler waiting on a stuck
            # supervisor loop) outlasts aiohttp's shutdown, which only asks it to cancel.
            with asyncio.Runner(loop_factory=self._loop_factory) as runner:
                loop = self._server_loop = runner.get_loop()
                try:
                    runner.run(self._serve())
                except BaseException as e:  # reported to start()
                    errors.append(e)
                    ready.set()
                    return
                ready.set()
                loop.run_forever()
                if self._runner is not None:
                    runner.run(self._runner.cleanup())

        self._thread = threading.Thread(target=run, name="wgpy-http", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self.port

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/livez", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])  # the port bound when asked for 0
        log.info("http: /healthz /readyz /metrics on %s:%d", self.host, self.port)

    def stop(self) -> None:
        loop, thread = self._server_loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._thread = None

    # -- handlers ---------------------------------------------------------------------------

    async def _snapshot(self) -> SupervisorStatus:
        """``status()`` run on the supervisor loop, within the deadline (raises otherwise)."""

        async def call() -> SupervisorStatus:
            return self._status()

        fut = asyncio.run_coroutine_threadsafe(call(), self._loop)
        try:
            return await asyncio.wrap_future(fut)  # bounded by the caller's wait_for
        finally:
            fut.cancel()

    async def _get(self) -> tuple[SupervisorStatus | None, str]:
        try:
            return await asyncio.wait_for(self._snapshot(), self.deadline), ""
        except (TimeoutError, concurrent.futures.TimeoutError):
            return None, f"event loop unresponsive for {self.deadline:g}s"
        except Exception as e:
            log.warning("http: status failed: %s", type(e).__name__)
            return None, f"status failed: {type(e).__name__}"

    async def _healthz(self, request: web.Request) -> web.Response:
        del request
        st, err = await self._get()
        if st is None:
            return web.Response(status=503, text=err + "\n")
        degraded = st.degraded()
        if degraded:  # still moving data (the ordinary path): a restart would not help
            return web.Response(text="ok, degraded:\n" + "".join(f"{d}\n" for d in degraded))
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        del request
        st, err = await self._get()
        if st is None:
            return web.Response(status=503, text=err + "\n")
        if st.ready:
            if not st.tunnels:
                note = f": {st.config_note}" if st.config_note else ""
                return web.Response(text=f"ready (no tunnels configured{note})\n")
            return web.Response(text="ready\n")
        if not st.config_loaded:
            why = "no valid tunnels configuration yet"
        elif st.problems:
            why = "; ".join(st.problems[k] for k in sorted(st.problems))
        else:
            down = sorted(n for n, t in st.tunnels.items() if not t.up)
            why = f"leader with tunnels down: {', '.join(down)}"
        return web.Response(status=503, text=f"not ready: {why}\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        del request
        st, err = await self._get()
        if st is None:
            return web.Response(status=503, text=err + "\n")
        body = metrics.render(st, now_unix=time.time())
        resp = web.Response(body=body.encode())
        resp.headers["Content-Type"] = metrics.CONTENT_TYPE
        return resp
