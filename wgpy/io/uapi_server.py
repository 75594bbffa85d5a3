"""The UAPI unix socket ``/var/run/wireguard/IFACE.sock`` (wireguard.com/xplatform).

``wg`` connects twice per command (a probe that sends nothing, then the request), so empty
connections are normal. Each connection may carry several requests. Connections are bounded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import NamedTuple

from wgpy.core import uapi
from wgpy.core.errors import UapiError, WgpyError

log = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/wireguard"
MAX_CONNECTIONS = 64


class SocketInUse(WgpyError):
    pass


def socket_path(ifname: str, directory: str = SOCKET_DIR) -> str:
    return os.path.join(directory, f"{ifname}.sock")


class Listener(NamedTuple):
    """A bound, listening UAPI socket and the inode of its file, taken right after ``bind``
    (``None``: the file was already gone). The server compares the file with this inode to
    see when it is deleted or replaced (then the device exits, as wireguard-go does)."""

    sock: socket.socket
    path: str
    inode: int | None


def listen(path: str) -> Listener:
    """Create the listening socket, root-only (umask 077), replacing a stale one.

    Raises ``SocketInUse`` when a live process already answers on ``path``.
    """
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.stat(directory)
    if st.st_uid == 0 and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(directory, 0o700)  # sockets of keys: root only (a fresh tmpfs is 1777)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise SocketInUse(f"unix socket in use: {path} (is the interface already running?)")
        finally:
            probe.close()
    old = os.umask(0o077)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
    finally:
        os.umask(old)
    # At once: whoever waits for the file (a script, the testbed) may remove it any time now
    try:
        inode: int | None = os.stat(path).st_ino
    except FileNotFoundError:
        inode = None  # removed already: the device's first check ends it, like a later removal
    sock.listen(16)
    sock.setblocking(False)
    return Listener(sock, path, inode)


class Connection:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = uapi.RequestReader()


class UapiServer:
    """Accepts connections and answers requests with the two handlers given."""

    def __init__(
        self,
        listener: Listener,
        *,
        get: Callable[[], str],
        set_: Callable[[uapi.SetRequest], None],
        on_close: Callable[[socket.socket], None] | None = None,
        stats: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.listener = listener.sock
        self.path = listener.path
        self.inode = listener.inode
        self._get = get
        self._set = set_
        self.connections: dict[int, Connection] = {}
        self.evicted = 0
        self._on_close = on_close
        self._stats = stats

    def still_ours(self) -> bool:
        """False once the socket file was deleted or replaced (then the device exits)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return self.inode is not None and st.st_ino == self.inode and stat.S_ISSOCK(st.st_mode)

    def accept(self) -> list[socket.socket]:
        """Accept pending connections; returns the new sockets to watch for reading."""
        new: list[socket.socket] = []
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            if len(self.connections) >= MAX_CONNECTIONS:
                # full: the oldest connection goes, so a real client always gets in
                self.evicted += 1
                self.close(next(iter(self.connections)))
            conn.settimeout(2.0)  # replies are written blocking, bounded by this
            self.connections[conn.fileno()] = Connection(conn)
            new.append(conn)
        # an eviction may have closed a connection accepted earlier in this same batch
        return [c for c in new if c.fileno() != -1]

    def readable(self, fd: int) -> bool:
        """Handle input on a connection; returns False when it was closed."""
        c = self.connections.get(fd)
        if c is None:
            return False
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return True
        except OSError:
            data = b""
        if not data:
            self.close(fd)
            return False
        for item in c.reader.feed(data):
            if isinstance(item, uapi.RequestFailed):
                if item.reply:
                    self._reply(c, uapi.format_errno(item.errno))
                self.close(fd)
                return False
            self._reply(c, self._answer(item))
        return True

    def _answer(self, req: uapi.RawRequest) -> str:
        if req.op == "get":
            return self._get()
        if req.op == "stats":
            if self._stats is None:
                return uapi.format_errno(uapi.EINVAL)
            counters = self._stats()
            counters["uapi_connections_evicted"] = self.evicted
            return uapi.format_stats(counters)
        try:
            self._set(uapi.parse_set(req.lines))
        except UapiError as e:
            log.info("uapi set rejected: %s", e)
            return uapi.format_errno(e.errno)
        except WgpyError as e:
            log.info("uapi set failed: %s", e)
            return uapi.format_errno(uapi.EUNKNOWN)
        return uapi.format_errno(0)

    def _reply(self, c: Connection, text: str) -> None:
        with contextlib.suppress(OSError):
            c.sock.sendall(text.encode("latin-1"))

    def close(self, fd: int) -> None:
        c = self.connections.pop(fd, None)
        if c is not None:
            if self._on_close is not None:
                self._on_close(c.sock)
            c.sock.close()

    def shutdown(self) -> None:
        for fd in list(self.connections):
            self.close(fd)
        self.listener.close()
        if self.still_ours():
            with contextlib.suppress(OSError):
                os.unlink(self.path)
