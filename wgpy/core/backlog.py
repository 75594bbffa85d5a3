"""The handshake backlog: a bounded queue of handshake messages and a budget for working on it.

Everything runs in one thread, so every microsecond spent on a handshake message is one the
data path does not get. wireguard-go keeps handshakes off its data path with a bounded queue
(1024) served by its own goroutines, drops what does not fit before any crypto, and calls the
device "under load" once the queue holds 1/8 of its capacity (``device/receive.go``); the
kernel does the same with 4096. This is that queue for a single thread:

* :meth:`HandshakeBacklog.push` costs a few length checks and an append. Messages of a known
  handshake type and exact size wait here; when the backlog is full they are dropped before
  mac1 is even looked at (the caller counts the drop).
* :meth:`HandshakeBacklog.take` hands out at most ``limit`` messages per call (per wake-up of
  the event loop) and at most ``per_second`` on average (a token bucket with a burst of
  ``burst``), so that a flood costs a bounded share of the thread however fast it comes.
  Transport data never waits here: the data read in the same wake-up is handled first.
* :attr:`HandshakeBacklog.depth` is what "under load" follows, as in wireguard-go: a backlog
  of ``under_load_depth`` or more means the thread cannot keep up, so cookies are demanded.

Within the backlog, sources take turns: each source address has a short queue of its own
(``per_source``) and :meth:`HandshakeBacklog.take` serves the sources round robin. A flood from
a few hundred addresses then fills only their own queues, and a legitimate initiator from
another address waits one round (milliseconds), not behind a thousand messages; drops hit the
sources that send too much. Messages whose mac2 field is not all zeros wait in a second such
queue that is served first, for up to half of each batch: an initiator that holds our cookie
comes back with mac2, and that retry must not queue behind a flood of first contacts (which
carry zeros there); a flood with random bytes there must not starve first contacts either, so
they always get the other half. Such messages are checked for mac2 and answered with a cookie
reply at best, within the same budget. Sources are keyed by address without the port
(an attacker picks ports freely); an IPv6 attacker with a /64 has many addresses, and then this
degrades to a shared FIFO, still bounded. Sans-IO: time comes in as ``now``.
"""

from __future__ import annotations

from collections import deque

from wgpy.core.constants import UNDER_LOAD_STICKY
from wgpy.core.peer import Endpoint

__all__ = ["HandshakeBacklog", "LoadMeter"]

_ZERO_MAC = bytes(16)


class _FairQueue:
    """Per-source FIFOs served round robin; at most ``capacity`` items, ``per_source`` each."""

    __slots__ = ("by_source", "capacity", "order", "per_source", "size")

    def __init__(self, capacity: int, per_source: int) -> None:
        self.capacity = capacity
        self.per_source = per_source
        self.by_source: dict[str, deque[tuple[bytes, Endpoint]]] = {}
        self.order: deque[str] = deque()  # sources with messages waiting, next first
        self.size = 0

    def push(self, data: bytes | memoryview, addr: Endpoint) -> bool:
        """Queue a copy of ``data`` (the caller's buffer may be reused) unless full."""
        if self.size >= self.capacity:
            return False
        source = addr[0]
        q = self.by_source.get(source)
        if q is None:
            q = self.by_source[source] = deque()
            self.order.append(source)
        elif len(q) >= self.per_source:
            return False
        q.append((bytes(data), addr))
        self.size += 1
        return True

    def pop(self) -> tuple[bytes, Endpoint]:
        source = self.order.popleft()
        q = self.by_source[source]
        item = q.popleft()
        self.size -= 1
        if q:
            self.order.append(source)
        else:
            del self.by_source[source]
        return item

    def clear(self) -> None:
        self.by_source.clear()
        self.order.clear()
        self.size = 0


class HandshakeBacklog:
    """Bounded queues of ``(message, source)`` pairs with a per-call and per-second budget.

    ``capacity`` bounds each of the two queues (first contacts, and messages with a mac2).
    """

    __slots__ = (
        "_first",
        "_last",
        "_retries",
        "_tokens",
        "burst",
        "capacity",
        "limit",
        "per_second",
        "under_load_depth",
    )

    def __init__(
        self,
        *,
        capacity: int,
        limit: int,
        per_second: float,
        burst: float | None = None,
        under_load_depth: int | None = None,
        per_source: int = 8,
    ) -> None:
        if capacity < 1 or limit < 1 or per_second <= 0 or per_source < 1:
            raise ValueError("capacity, limit, per_second and per_source must be positive")
        self.capacity = capacity
        self.limit = limit
        self.per_second = per_second
        self.burst = float(burst if burst is not None else max(limit, per_second / 10))
        self.under_load_depth = under_load_depth or max(1, capacity // 8)
        self._first = _FairQueue(capacity, per_source)  # mac2 field all zeros
        self._retries = _FairQueue(capacity, per_source)  # a mac2 is there: served first
        self._tokens = self.burst
        self._last: float | None = None

    @property
    def depth(self) -> int:
        """Messages waiting."""
        return self._first.size + self._retries.size

    def __len__(self) -> int:
        return self.depth

    def push(self, data: bytes | memoryview, addr: Endpoint, *, first: bool, now: float) -> bool:
        """Queue a copy of one message; False (the caller drops and counts it) when its
        queue, or its source's share of it, is full: then nothing is copied.

        ``first``: a first contact (an initiation or response whose mac2 field is all zeros),
        served after the others.
        """
        if self._last is None:
            self._last = now
        return (self._first if first else self._retries).push(data, addr)

    def _refill(self, now: float) -> float:
        last = self._last
        if last is None or now < last:  # first use, or a clock that stepped back
            self._last = now
            return self._tokens
        self._tokens = min(self.burst, self._tokens + (now - last) * self.per_second)
        self._last = now
        return self._tokens

    def take(self, *, now: float) -> list[tuple[bytes, Endpoint]]:
        """The messages to work on now: at most ``limit`` and what the per-second budget
        allows, sources in turn; retries (a mac2 present) first, but for at most half of
        them while first contacts wait."""
        if not self._first.size and not self._retries.size:
            return []
        n = min(self.limit, int(self._refill(now)), self.depth)
        if n <= 0:
            return []
        self._tokens -= n
        out: list[tuple[bytes, Endpoint]] = []
        # retries first, but at most half while first contacts wait: a flood of messages
        # with a (random) mac2 must not starve first contacts
        retries, first = self._retries, self._first
        half = n - n // 2 if first.size else n
        while retries.size and len(out) < half:
            out.append(retries.pop())
        while first.size and len(out) < n:
            out.append(first.pop())
        while retries.size and len(out) < n:
            out.append(retries.pop())
        return out

    def ready_at(self) -> float | None:
        """When :meth:`take` will return something (a time already past if it can at once),
        None when nothing waits."""
        if (not self._first.size and not self._retries.size) or self._last is None:
            return None
        return self._last + max(0.0, 1.0 - self._tokens) / self.per_second

    def clear(self) -> None:
        self._first.clear()
        self._retries.clear()


def is_first_contact(data: bytes | memoryview) -> bool:
    """An initiation or response whose mac2 (its last 16 bytes) is all zeros."""
    return data[0] != 3 and data[-16:] == _ZERO_MAC


class LoadMeter:
    """Whether the device is under load: more than ``rate`` handshake messages arrived within
    one second, or the backlog grew deep (:meth:`mark`); sticky for ``UNDER_LOAD_STICKY``.

    Arrivals count, not messages worked on: a flood the backlog drops cheaply (one source
    over its share) still means load.
    """

    __slots__ = ("_count", "_window_start", "rate", "until")

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._window_start = 0.0
        self._count = 0
        self.until = float("-inf")

    def arrival(self, *, now: float) -> None:
        """Count one arriving handshake message (queued or not)."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        self._count += 1
        if self._count > self.rate:
            self.until = now + UNDER_LOAD_STICKY

    def mark(self, *, now: float) -> None:
        """Under load from now on, for ``UNDER_LOAD_STICKY`` seconds."""
        self.until = now + UNDER_LOAD_STICKY

    def active(self, now: float) -> bool:
        return now < self.until
