"""``wgpy show`` and the UAPI client, compared with the real ``wg show`` on the same sockets.

A thread serves canned ``get`` replies on unix sockets in a temporary directory. ``wg`` only
looks in ``/var/run/wireguard``, so it runs under ``unshare -m`` with that directory
bind-mounted there: the host's ``/run`` is never touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from wgpy.core import uapi
from wgpy.core.errors import UapiError
from wgpy.core.keys import generate_preshared_key, generate_private_key, to_base64
from wgpy.io import uapi_client
from wgpy.tools import show

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
ENV.pop("WGPY_SOCKET_DIR", None)
can_unshare = shutil.which("wg") is not None and os.geteuid() == 0
needs_wg = pytest.mark.skipif(not can_unshare, reason="needs root and the wg tool")


class CannedUapi:
    """Unix sockets ``DIR/NAME.sock`` answering ``get`` with fixed text; records ``set``s."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.replies: dict[str, str] = {}
        self.set_reply = "errno=0\n\n"
        self.requests: list[bytes] = []
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def add(self, name: str, reply: str) -> None:
        self.replies[name] = reply
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(self.dir / f"{name}.sock"))
        s.listen(8)
        s.settimeout(0.1)
        self._socks.append(s)
        t = threading.Thread(target=self._serve, args=(s, name), daemon=True)
        t.start()
        self._threads.append(t)

    def _serve(self, s: socket.socket, name: str) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                buf = b""
                with contextlib.suppress(OSError):
                    while not buf.endswith(b"\n\n"):
                        chunk = conn.recv(65536)
                        if not chunk:  # wg's probe: connect, then close
                            break
                        buf += chunk
                    if buf:
                        self.requests.append(buf)
                        reply = self.replies[name] if buf == b"get=1\n\n" else self.set_reply
                        conn.sendall(reply.encode())

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        for s in self._socks:
            s.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CannedUapi]:
    srv = CannedUapi(tmp_path)
    try:
        yield srv
    finally:
        srv.close()


def in_private_run(directory: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a private mount namespace where /var/run/wireguard is ``directory``."""
    script = (
        "mount -t tmpfs tmpfs /run && mkdir /run/wireguard"
        ' && mount --bind "$0" /run/wireguard && exec "$@"'
    )
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(directory), *argv],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=20,
        check=False,
    )


def wgpy_show(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgpy", "show", *args],
        capture_output=True,
        text=True,
        env={**ENV, "WGPY_SOCKET_DIR": str(directory)},
        cwd=ROOT,
        timeout=20,
        check=False,
    )


def key() -> bytes:
    return generate_private_key()


def rich_device(now: int) -> tuple[uapi.DeviceSnapshot, bytes, list[bytes]]:
    """A device using every field; peers listed so that wg's sorting has work to do."""
    priv = key()
    psks = [generate_preshared_key(), generate_preshared_key()]
    net = uapi.parse_prefix
    peers = [
        uapi.PeerSnapshot(public_key=key()),  # never handshaked, nothing set
        uapi.PeerSnapshot(
            public_key=key(),
            preshared_key=psks[0],
            endpoint="192.0.2.7:51820",
            last_handshake_time_sec=now - 65,
            last_handshake_time_nsec=5,
            rx_bytes=1260,
            tx_bytes=4669,
            persistent_keepalive_interval=25,
            allowed_ips=[net("10.0.0.2/32"), net("fd00::/64"), net("::ffff:10.0.0.0/104")],
        ),
        uapi.PeerSnapshot(
            public_key=key(),
            endpoint="[2001:db8::1]:443",
            last_handshake_time_sec=now - (366 * 86400 + 3 * 3600 + 1),
            rx_bytes=3 * 1024**3 + 17,
            tx_bytes=5 * 1024**4,
            persistent_keepalive_interval=3661,
            allowed_ips=[net("0.0.0.0/0")],
        ),
        uapi.PeerSnapshot(
            public_key=key(),
            preshared_key=psks[1],
            endpoint="[::ffff:198.51.100.1]:9",
            last_handshake_time_sec=now - 2 * 86400,
            rx_bytes=1023,
            allowed_ips=[net("10.9.0.0/16")],
        ),
        uapi.PeerSnapshot(public_key=key(), tx_bytes=5 * 1024**2),  # second never-handshaked
    ]
    snap = uapi.DeviceSnapshot(private_key=priv, listen_port=51820, fwmark=0x1234, peers=peers)
    return snap, priv, psks


def hide_secrets(text: str, secrets_: Sequence[bytes]) -> str:
    for s in secrets_:
        text = text.replace(to_base64(s), "(hidden)")
    return text


def same_as_wg(directory: Path, *args: str, secrets_: Sequence[bytes] = ()) -> str:
    """Run wg, wgpy, wg; wgpy must equal one of the wg runs (a second may tick in between)."""
    before = in_private_run(directory, "wg", "show", *args)
    ours = wgpy_show(directory, *args)
    after = in_private_run(directory, "wg", "show", *args)
    assert before.returncode == ours.returncode == 0, (before.stderr, ours.stderr)
    expected = {hide_secrets(before.stdout, secrets_), hide_secrets(after.stdout, secrets_)}
    assert ours.stdout in expected, (ours.stdout, before.stdout)
    for s in secrets_:
        assert to_base64(s) not in ours.stdout and s.hex() not in ours.stdout
    return ours.stdout


@needs_wg
def test_pretty_output_matches_wg(server: CannedUapi) -> None:
    now = int(time.time())
    snap, priv, psks = rich_device(now)
    server.add("wgs0", uapi.format_get(snap))
    out = same_as_wg(server.dir, "wgs0", secrets_=[priv, *psks])
    # The handshake was 65 s before `now`; the clock may cross a second or more before wg runs.
    elapsed = int(time.time()) - now
    ages = {f"latest handshake: 1 minute, {s} seconds ago" for s in range(5, 6 + elapsed)}
    assert any(age in out for age in ages), (ages, out)
    # The comparison is only as good as the device: make sure the interesting lines are there.
    for text in (
        "private key: (hidden)",
        "preshared key: (hidden)",
        "transfer: 1.23 KiB received, 4.56 KiB sent",
        "persistent keepalive: every 1 hour, 1 minute, 1 second",
        "endpoint: [2001:db8::1]:443",
        "fwmark: 0x1234",
    ):
        assert text in out


@needs_wg
@pytest.mark.parametrize("what", show.FIELDS)
def test_fields_and_dump_match_wg(server: CannedUapi, what: str) -> None:
    snap, priv, psks = rich_device(int(time.time()))
    server.add("wgs1", uapi.format_get(snap))
    out = same_as_wg(server.dir, "wgs1", what, secrets_=[priv, *psks])
    assert out  # every field prints at least one line for this device


@needs_wg
@pytest.mark.parametrize("args", [(), ("dump",), ("private-key",), ("peers",)])
def test_empty_device_is_byte_identical(server: CannedUapi, args: tuple[str, ...]) -> None:
    server.add("wgs2", uapi.format_get(uapi.DeviceSnapshot()))
    same_as_wg(server.dir, "wgs2", *args)


@needs_wg
@pytest.mark.parametrize(
    "args", [(), ("all",), ("all", "dump"), ("all", "endpoints"), ("interfaces",)]
)
def test_all_and_interfaces_match_wg(server: CannedUapi, args: tuple[str, ...]) -> None:
    snap, priv, psks = rich_device(int(time.time()))
    server.add("wgsa", uapi.format_get(snap))
    server.add("wgsb", uapi.format_get(uapi.DeviceSnapshot(listen_port=1)))
    (server.dir / "notasocket.sock").write_text("")  # both skip a file that is not a socket
    out = same_as_wg(server.dir, *args, secrets_=[priv, *psks])
    assert "wgsa" in out and "wgsb" in out and "notasocket" not in out


def test_default_socket_dir_is_var_run_wireguard(server: CannedUapi) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare")
    server.add("wgsd", uapi.format_get(uapi.DeviceSnapshot(listen_port=4242)))
    env_free = in_private_run(server.dir, sys.executable, "-m", "wgpy", "show", "interfaces")
    assert env_free.returncode == 0 and env_free.stdout == "wgsd\n"
    assert uapi_client.socket_dir() in {"/var/run/wireguard", os.environ.get("WGPY_SOCKET_DIR")}


def test_no_interfaces_prints_nothing(tmp_path: Path) -> None:
    r = wgpy_show(tmp_path / "missing")
    assert r.returncode == 0 and r.stdout == "" and r.stderr == ""


def test_errors(server: CannedUapi) -> None:
    r = wgpy_show(server.dir, "wgnope")
    assert r.returncode == 1
    assert r.stderr == "Unable to access interface: No such file or directory\n"
    server.add("wgse", "errno=-22\n\n")
    r = wgpy_show(server.dir, "wgse")
    assert r.returncode == 1 and r.stderr == "Unable to access interface: Invalid argument\n"
    server.add("wgsf", uapi.format_get(uapi.DeviceSnapshot(listen_port=7)))
    r = wgpy_show(server.dir, "wgsf", "bogus")
    assert r.returncode == 1 and "Invalid parameter: `bogus'" in r.stderr and r.stdout == ""
    r = wgpy_show(server.dir, "dump")
    assert r.returncode == 1 and r.stderr.startswith("Usage: wgpy show")


# --- the client library -------------------------------------------------------------------------


def test_client_get_roundtrip_and_set(server: CannedUapi) -> None:
    snap, _, _ = rich_device(1_700_000_000)
    server.add("wgc0", uapi.format_get(snap))
    got = uapi_client.get("wgc0", directory=str(server.dir))
    assert got == snap
    req = uapi.SetRequest(private_key=key(), listen_port=1234, replace_peers=True)
    uapi_client.set_device("wgc0", req, directory=str(server.dir))
    assert server.requests[-1] == uapi.format_set(req).encode()
    uapi_client.set_device("wgc0", ["listen_port=9"], directory=str(server.dir))
    assert server.requests[-1] == b"set=1\nlisten_port=9\n\n"
    assert uapi_client.list_interfaces(str(server.dir)) == ["wgc0"]


def test_client_set_error_carries_errno_not_keys(server: CannedUapi) -> None:
    server.add("wgc1", "errno=0\n\n")
    server.set_reply = "errno=-98\n\n"
    secret = key()
    with pytest.raises(UapiError) as info:
        uapi_client.set_device(
            "wgc1", uapi.SetRequest(private_key=secret), directory=str(server.dir)
        )
    assert info.value.errno == 98 and str(info.value) == os.strerror(98)
    assert secret.hex() not in str(info.value)
    with pytest.raises(ValueError, match="newline"):
        uapi_client.set_device("wgc1", ["a=1\nb=2"], directory=str(server.dir))


def test_client_reads_reply_in_pieces_without_eof(tmp_path: Path) -> None:
    """The server keeps the connection open and dribbles the reply byte by byte."""
    path = tmp_path / "wgc2.sock"
    reply = uapi.format_get(uapi.DeviceSnapshot(listen_port=5, fwmark=3)).encode()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(path))
    lsock.listen(1)
    done = threading.Event()

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            conn.recv(100)
            for i in range(len(reply)):
                conn.sendall(reply[i : i + 1])
            done.wait(5)  # hold the connection open until the client is done

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        got = uapi_client.get("wgc2", directory=str(tmp_path), timeout=5)
        assert got.listen_port == 5 and got.fwmark == 3
    finally:
        done.set()
        t.join(5)
        lsock.close()


def test_client_connection_closed_early(server: CannedUapi) -> None:
    server.add("wgc3", "listen_port=1\n")  # no errno trailer, then close
    with pytest.raises(UapiError, match="closed before"):
        uapi_client.get("wgc3", directory=str(server.dir))


# --- formatting units (values from show.c rules) ----------------------------------------------


def test_pretty_time_and_bytes() -> None:
    assert show.pretty_time(65) == "1 minute, 5 seconds"
    assert show.pretty_time(365 * 86400 + 86400 + 3600 + 1) == "1 year, 1 day, 1 hour, 1 second"
    assert show.pretty_time(2 * 60) == "2 minutes"
    assert show.ago(100, now=100) == "Now"
    assert show.ago(101, now=100).startswith("(System clock wound backward")
    assert show.human_bytes(1023) == "1023 B"
    assert show.human_bytes(1024) == "1.00 KiB"
    assert show.human_bytes(1024**2 * 3 // 2) == "1.50 MiB"
    assert show.human_bytes(1024**4) == "1.00 TiB"


def test_random_devices_match_wg_dump(server: CannedUapi) -> None:
    """Random small devices: dump (no time-dependent text) must equal wg's exactly."""
    if not can_unshare:
        pytest.skip("needs root and the wg tool")
    names = []
    for i in range(3):
        peers = [
            uapi.PeerSnapshot(
                public_key=key(),
                endpoint=f"127.0.0.{secrets.randbelow(250) + 1}:{secrets.randbelow(65535) + 1}",
                last_handshake_time_sec=secrets.randbelow(2**31),
                rx_bytes=secrets.randbelow(2**40),
                tx_bytes=secrets.randbelow(2**40),
                persistent_keepalive_interval=secrets.randbelow(3),
                allowed_ips=[uapi.parse_prefix(f"10.{i}.{j}.0/24") for j in range(i + 1)],
            )
            for _ in range(i + 1)
        ]
        name = f"wgr{i}"
        server.add(name, uapi.format_get(uapi.DeviceSnapshot(listen_port=i, peers=peers)))
        names.append(name)
    for name in names:
        assert in_private_run(server.dir, "wg", "show", name, "dump").stdout == (
            wgpy_show(server.dir, name, "dump").stdout
        )
