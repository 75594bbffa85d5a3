"""A UAPI client: talk to ``/var/run/wireguard/IFACE.sock`` as ``wg`` does (protocol doc §8).

``get`` returns a parsed :class:`~wgpy.core.uapi.DeviceSnapshot`; ``set`` sends a request and
raises :class:`~wgpy.core.errors.UapiError` (with the positive errno and ``strerror`` text) when
the reply's errno is not 0. The socket directory is ``/var/run/wireguard`` unless
``WGPY_SOCKET_DIR`` says otherwise (tests point it at a temporary directory) or a ``directory``
argument is given.

The connection is kept open by the server after a reply (it loops over requests), so replies are
read up to their ``errno=N`` line and blank line, never up to EOF.
"""

from __future__ import annotations

import errno as _errno
import os
import re
import socket
import stat

from wgpy.core import uapi
from wgpy.core.errors import UapiError

DEFAULT_SOCKET_DIR = "/var/run/wireguard"
SOCKET_DIR_ENV = "WGPY_SOCKET_DIR"
SOCKET_SUFFIX = ".sock"
DEFAULT_TIMEOUT = 5.0
MAX_REPLY = 64 << 20  # a get with 65536 peers is large, but not this large

# The status trailer at the very end of a reply: "errno=N\n\n" (at the start or after a line).
_TRAILER = re.compile(rb"(?:^|\n)errno=(-?[0-9]{1,20})\n\n\Z")
_TAIL = 40  # longer than any trailer, so "^" can only match at the true start


def socket_dir(directory: str | None = None) -> str:
    """The UAPI socket directory: ``directory``, ``$WGPY_SOCKET_DIR`` or the default."""
    return directory or os.environ.get(SOCKET_DIR_ENV) or DEFAULT_SOCKET_DIR


def socket_path(ifname: str, directory: str | None = None) -> str:
    return os.path.join(socket_dir(directory), ifname + SOCKET_SUFFIX)


def has_interface(ifname: str, directory: str | None = None) -> bool:
    """Whether ``IFACE.sock`` is a socket that accepts a connection (``wg``'s probe).

    Unlike ``wg`` we do not unlink a socket that refuses connections: a read-only command
    should not change anything.
    """
    path = socket_path(ifname, directory)
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(DEFAULT_TIMEOUT)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def list_interfaces(directory: str | None = None) -> list[str]:
    """Names of the live userspace interfaces, in directory order (as ``wg show interfaces``)."""
    try:
        entries = os.listdir(socket_dir(directory))
    except FileNotFoundError:
        return []
    names = [
        e[: -len(SOCKET_SUFFIX)]
        for e in entries
        if len(e) > len(SOCKET_SUFFIX) and e.endswith(SOCKET_SUFFIX)
    ]
    return [n for n in names if has_interface(n, directory)]


def _strerror(code: int) -> str:
    return os.strerror(code) if code > 0 else f"error {code}"


def transact(path: str, request: str, *, timeout: float = DEFAULT_TIMEOUT) -> tuple[str, int]:
    """Send one request on a fresh connection; return ``(reply body, errno)``.

    The body is everything before the ``errno=`` line; errno is positive on failure.
    Raises :class:`UapiError` (``EPROTO``) if the server closes early or the reply is too long,
    and ``OSError`` if the socket cannot be reached.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(request.encode("latin-1"))
        buf = bytearray()
        while True:
            # The trailer is short: look only at the tail, so a big reply stays linear.
            tail = len(buf) - _TAIL if len(buf) > _TAIL else 0
            m = _TRAILER.search(buf, tail) if buf.endswith(b"\n\n") else None
            if m is not None:
                body = bytes(buf[: m.start()] + (b"\n" if m.start() else b""))
                return body.decode("latin-1"), abs(int(m.group(1)))
            if len(buf) > MAX_REPLY:
                raise UapiError(f"{path}: reply too large", _errno.EPROTO)
            chunk = s.recv(65536)
            if not chunk:
                raise UapiError(f"{path}: connection closed before the reply ended", _errno.EPROTO)
            buf += chunk


def get(
    ifname: str, *, directory: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> uapi.DeviceSnapshot:
    """``get=1`` on ``IFACE.sock``. Raises ``OSError`` (no such socket) or :class:`UapiError`."""
    body, code = transact(socket_path(ifname, directory), "get=1\n\n", timeout=timeout)
    if code:
        raise UapiError(_strerror(code), code)
    return uapi.parse_get(body + "errno=0\n\n")


def stats_at(path: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, int]:
    """wgpy's ``stats=1`` extension on the socket at ``path``: drop counters by reason etc."""
    body, code = transact(path, "stats=1\n\n", timeout=timeout)
    if code:
        raise UapiError(_strerror(code), code)
    return uapi.parse_stats(body + "errno=0\n\n")


def set_device(
    ifname: str,
    request: uapi.SetRequest | list[str],
    *,
    directory: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    """``set=1`` with a :class:`~wgpy.core.uapi.SetRequest` or raw ``key=value`` lines.

    Raises :class:`UapiError` whose message is ``strerror(errno)`` (as ``wg`` prints it) when
    the server answers a non-zero errno; the request itself (keys!) is never in the message.
    """
    if isinstance(request, uapi.SetRequest):
        text = uapi.format_set(request)
    else:
        if any("\n" in line or not line for line in request):
            raise ValueError("UAPI lines must be non-empty and contain no newline")
        text = "set=1\n" + "".join(line + "\n" for line in request) + "\n"
    _, code = transact(socket_path(ifname, directory), text, timeout=timeout)
    if code:
        raise UapiError(_strerror(code), code)
