"""An asyncio event loop on virtual time, for the supervisor's unit tests.

``loop.time()`` is a virtual clock. When the loop has nothing ready (no callback due, no
socket readable), it does not block for the next timer: it moves the clock to it. Sleeps,
``wait_for`` timeouts, retry periods and lease durations therefore cost no real time, and a
busy machine cannot make a 50 ms window late: the code sees exactly the delays it asked for.

Real sockets still work (the fake API server and its ``kubernetes.aio`` clients share the
loop on 127.0.0.1): before each jump the selector polls them, with a short real grace so a
loopback segment still in the kernel lands before time moves. While an executor job runs
(``asyncio.to_thread``) the clock stands still. A subprocess, or a thread the loop does not
know of, runs on the real clock: a test must wait for its effect by condition (e.g. the
process has exited) before it measures virtual time.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

GRACE = 0.0005  # real seconds the selector waits for in-flight I/O before time jumps
THREAD_POLL = 0.05  # real seconds per wait while an executor job (asyncio.to_thread) runs


class _JumpingSelector(selectors.BaseSelector):
    """Wraps the real selector; an idle wait advances the loop's virtual clock instead."""

    def __init__(self, loop: VirtualTimeLoop, real: selectors.BaseSelector) -> None:
        self._loop = loop
        self._real = real

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = self._real.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:  # no timer at all: only I/O or another thread can wake us
            return self._real.select(None)
        if self._loop.threads_busy:  # time stands still while a worker thread runs
            return self._real.select(min(timeout, THREAD_POLL))
        events = self._real.select(min(timeout, GRACE))
        if not events:
            self._loop.advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` only moves when the loop would otherwise wait."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        self.threads_busy = 0
        real = selectors.DefaultSelector()
        super().__init__(_JumpingSelector(self, real))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += max(0.0, seconds)

    def run_in_executor(self, executor: Any, func: Callable[..., T], *args: Any) -> Any:
        """As usual, but the clock does not move until the job is done (a blocking call in a
        thread takes no virtual time, however slow the machine)."""
        fut = super().run_in_executor(executor, func, *args)
        self.threads_busy += 1

        def done(_: object) -> None:
            self.threads_busy -= 1

        fut.add_done_callback(done)
        return fut


def run_virtual(main: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
    """Run ``main()`` on a fresh :class:`VirtualTimeLoop`; fail after ``timeout`` virtual s."""

    async def bounded() -> T:
        return await asyncio.wait_for(main(), timeout)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(bounded())


async def advance(seconds: float) -> None:
    """Let ``seconds`` of virtual time pass (everything due meanwhile runs, in order).

    Refuses a real loop, so a test cannot silently turn back into a wall-clock sleep.
    """
    if not isinstance(asyncio.get_running_loop(), VirtualTimeLoop):
        raise RuntimeError("advance() needs a VirtualTimeLoop (use run_virtual)")
    await asyncio.sleep(seconds)
