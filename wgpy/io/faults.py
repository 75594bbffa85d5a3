"""Unexpected exceptions of the data plane: counted, shown, and logged without flooding.

A bug or an incompatible dependency release can make every packet raise (cryptography 51
refused the fast path's in-place AEAD, issue 13). Logging each one writes the same traceback
thousands of times a second and hides everything else. :class:`FaultLog` logs the first
exception of each kind (type and raising line) with its traceback, and after that one summary
line per ``interval`` seconds; the count and the last error stay readable for ``stats=1``,
``/metrics`` and ``/healthz``. It also says when faults come so densely (``limit`` within
``window`` seconds) that the component raising them should be switched off.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable


def describe(exc: BaseException) -> str:
    """``Type: message (file.py:line)``, the innermost frame of the traceback; the message
    cut at 200 characters."""
    where = ""
    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else None
    if tb:
        frame = tb[-1]
        where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})"
    text = str(exc)[:200]
    return f"{type(exc).__name__}{': ' + text if text else ''}{where}"


class FaultLog:
    """Counts the unexpected exceptions of one component (``what``) and logs them sparingly."""

    def __init__(
        self,
        what: str,
        *,
        clock: Callable[[], float],
        logger: logging.Logger,
        interval: float = 60.0,
        limit: int = 64,
        window: float = 10.0,
    ) -> None:
        self.what = what
        self.clock = clock
        self.logger = logger
        self.interval = interval
        self.limit = limit
        self.window = window
        self.count = 0
        self.last = ""  # describe() of the latest one
        self._kinds: set[str] = set()
        self._unlogged = 0
        self._next_summary = 0.0
        self._window_start = 0.0
        self._in_window = 0

    def record(self, exc: BaseException) -> bool:
        """Count ``exc`` and log it if it is new or a summary is due. True when ``limit``
        faults came within ``window`` seconds: the caller should stop using what raised."""
        now = self.clock()
        self.count += 1
        self.last = text = describe(exc)
        kind = text.split(": ", 1)[0] + text[text.rfind(" (") :]
        if kind not in self._kinds:
            self._kinds.add(kind)
            self.logger.error("%s: unexpected %s", self.what, text, exc_info=exc)
            self._next_summary = now + self.interval
        else:
            self._unlogged += 1
            if now >= self._next_summary:
                self.logger.error(
                    "%s: %d more unexpected errors (%d in all), the latest: %s",
                    self.what, self._unlogged, self.count, text,
                )
                self._unlogged = 0
                self._next_summary = now + self.interval
        if now - self._window_start > self.window:
            self._window_start, self._in_window = now, 0
        self._in_window += 1
        return self._in_window >= self.limit
