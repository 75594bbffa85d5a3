"""Key log files: the secrets that let Wireshark and ``wgpy decode`` decrypt a capture.

Opt-in and for debugging only: whoever reads the file can decrypt every session it covers.
``wgpy-userspace`` writes one when ``WGPY_KEYLOG=PATH`` is set, ``wgpy supervisor --keylog
TUNNEL=PATH`` for one tunnel, and the harness's scripted peer when asked. Two kinds of line:

* Wireshark's WireGuard key log (the format of wireguard-tools' ``contrib/extract-handshakes``),
  four lines per handshake, in this order, ``NAME = BASE64``: ``LOCAL_STATIC_PRIVATE_KEY``,
  ``REMOTE_STATIC_PUBLIC_KEY``, ``LOCAL_EPHEMERAL_PRIVATE_KEY``, ``PRESHARED_KEY`` (Wireshark
  ties a preshared key to the ephemeral key before it). With them a decoder re-runs the
  handshake it sees in the capture.
* ``TRANSPORT_KEY 0xINDEX BASE64`` (ours; Wireshark ignores it): the ChaCha20-Poly1305 key of
  transport messages whose receiver index (the little-endian u32 field, printed in hex) is
  ``INDEX``. Enough to decrypt a capture that starts after the handshake.

The file is refused unless it is safe to put secrets in: never through a symbolic link, only a
regular file, owned by us and accessible to nobody else (mode ``0600``; a new file is created
so). The check runs when the writer is made and again at every append, which reopens the file
(so a rotated-away log is recreated, and a swapped-in symlink is refused). Nothing here logs or
prints a key.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from collections.abc import Callable

from wgpy.core.keypair import SessionSecrets

log = logging.getLogger(__name__)

KEYLOG_ENV = "WGPY_KEYLOG"
WIRESHARK_NAMES = (
    "LOCAL_STATIC_PRIVATE_KEY",
    "REMOTE_STATIC_PUBLIC_KEY",
    "LOCAL_EPHEMERAL_PRIVATE_KEY",
    "PRESHARED_KEY",
)
TRANSPORT_NAME = "TRANSPORT_KEY"


class KeyLogRefused(OSError):
    """The key log path is not safe to write secrets to (the message says why)."""


def warning_text(path: str) -> str:
    """The one warning a device logs at start when it writes a key log."""
    return (
        f"writing secret session keys to the key log {path}: anyone who can read it can "
        "decrypt this interface's traffic; use it for debugging only"
    )


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def handshake_lines(
    *,
    local_static_private: bytes,
    remote_static_public: bytes,
    local_ephemeral_private: bytes,
    preshared_key: bytes | None,
) -> list[str]:
    """One handshake in Wireshark's format (no ``PRESHARED_KEY`` line when ``None``)."""
    lines = [
        f"LOCAL_STATIC_PRIVATE_KEY = {_b64(local_static_private)}",
        f"REMOTE_STATIC_PUBLIC_KEY = {_b64(remote_static_public)}",
        f"LOCAL_EPHEMERAL_PRIVATE_KEY = {_b64(local_ephemeral_private)}",
    ]
    if preshared_key is not None:
        lines.append(f"PRESHARED_KEY = {_b64(preshared_key)}")
    return lines


def transport_line(receiver_index: int, key: bytes) -> str:
    """The key that decrypts transport messages addressed to ``receiver_index``."""
    return f"{TRANSPORT_NAME} 0x{receiver_index:08x} {_b64(key)}"


def session_lines(s: SessionSecrets) -> list[str]:
    """Everything logged for one session a device derived: the handshake (with its preshared
    key, all zeros when none is set, as ``extract-handshakes`` writes it) and both directions'
    transport keys."""
    return [
        *handshake_lines(
            local_static_private=s.local_static_private,
            remote_static_public=s.remote_static_public,
            local_ephemeral_private=s.local_ephemeral_private,
            preshared_key=s.preshared_key,
        ),
        transport_line(s.local_index, s.receive_key),
        transport_line(s.remote_index, s.send_key),
    ]


def _open_safely(path: str) -> int:
    """Open ``path`` for appending (created 0600) or raise :class:`KeyLogRefused`."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK, 0o600)
    except OSError as e:
        if os.path.islink(path):
            raise KeyLogRefused(f"key log {path}: refusing a symbolic link") from None
        raise KeyLogRefused(f"key log {path}: cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyLogRefused(f"key log {path}: not a regular file")
        if st.st_uid != os.geteuid():
            raise KeyLogRefused(f"key log {path}: owned by uid {st.st_uid}, not by us")
        if st.st_mode & 0o077:
            raise KeyLogRefused(
                f"key log {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read or "
                "write it; it holds secret keys (chmod 600 it, or use a new file)"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


class KeyLogWriter:
    """Appends key log records to ``path``; each record is one ``write`` of whole lines.

    Raises :class:`KeyLogRefused` at once if the path is unsafe (see the module docstring).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.close(_open_safely(path))

    def append(self, lines: list[str]) -> None:
        data = "".join(line + "\n" for line in lines).encode("ascii")
        fd = _open_safely(self.path)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def handshake(
        self,
        *,
        local_static_private: bytes,
        remote_static_public: bytes,
        local_ephemeral_private: bytes,
        preshared_key: bytes | None,
    ) -> None:
        """One handshake's keys in Wireshark's format."""
        self.append(
            handshake_lines(
                local_static_private=local_static_private,
                remote_static_public=remote_static_public,
                local_ephemeral_private=local_ephemeral_private,
                preshared_key=preshared_key,
            )
        )

    def transport(self, receiver_index: int, key: bytes) -> None:
        """The key that decrypts transport messages addressed to ``receiver_index``."""
        self.append([transport_line(receiver_index, key)])

    def session(self, secrets: SessionSecrets) -> None:
        """Everything :func:`session_lines` gives for one session of a device."""
        self.append(session_lines(secrets))


def device_sink(writer: KeyLogWriter, name: str) -> Callable[[SessionSecrets], None]:
    """A ``Device.key_log_sink`` writing to ``writer``. It never raises (the device is in the
    middle of a handshake): a failed write is logged, once until a write succeeds again."""
    failing = False

    def sink(secrets: SessionSecrets) -> None:
        nonlocal failing
        try:
            writer.session(secrets)
        except OSError as e:  # KeyLogRefused included
            if not failing:
                log.error("%s: key log not written: %s", name, e)
            failing = True
        else:
            failing = False

    return sink
