"""The wgpy exception tree.

Remote input never raises out of the receive path (it is dropped and counted); local misuse
and bad configuration raise these.
"""

from __future__ import annotations

import errno as _errno


class WgpyError(Exception):
    """Base class of every wgpy error."""


class ConfigError(WgpyError, ValueError):
    """A configuration value is invalid (bad key, bad CIDR, bad port, ...)."""


class UapiError(ConfigError):
    """A UAPI request failed; ``errno`` is the positive errno, sent back negated."""

    errno: int = _errno.EINVAL

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        if errno is not None:
            self.errno = errno


class CapacityError(WgpyError):
    """A bounded table (peers, allowed IPs, indices) is full."""
