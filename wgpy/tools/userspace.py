"""``wgpy-userspace [-f|--foreground] IFACE``: a drop-in for wireguard-go's command line.

It creates the TUN ``IFACE`` and the UAPI socket ``/var/run/wireguard/IFACE.sock``, then runs in
the background (or in the foreground with ``-f`` or ``WG_PROCESS_FOREGROUND=1``). The parent
returns only once both exist, so ``wg-quick`` can configure it right away:

    WG_QUICK_USERSPACE_IMPLEMENTATION=wgpy-userspace wg-quick up ./wg0.conf

``LOG_LEVEL`` is ``verbose``/``debug``, ``error`` or ``silent`` (default ``error``) as for
wireguard-go; in the background, logs go to ``WGPY_LOG_FILE`` if set, else nowhere.
``WGPY_TUN_DEVICE`` names the TUN clone device (default ``/dev/net/tun``).

``WGPY_KEYLOG=PATH`` (debugging only) appends every session's secrets to PATH in Wireshark's
key log format plus ``TRANSPORT_KEY`` lines (:mod:`wgpy.io.keylog`), so that a capture of this
interface can be decrypted by ``tshark -o wg.keylog_file:PATH`` or ``wgpy decode --keylog
PATH``. The file is created 0600; a symlink, or a file that others can read, is refused and the
interface is not created. One warning goes to stderr at start, whatever ``LOG_LEVEL`` says.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import time
from typing import TextIO

SOCKET_DIR = "/var/run/wireguard"

log = logging.getLogger("wgpy")

_LEVELS = {
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "error": logging.ERROR,
    "silent": logging.CRITICAL + 1,
}


def _setup_logging(stream: TextIO | None, ifname: str) -> None:
    level = _LEVELS.get(os.environ.get("LOG_LEVEL", "error").lower(), logging.ERROR)
    root = logging.getLogger()
    root.handlers.clear()
    handler: logging.Handler
    log_file = os.environ.get("WGPY_LOG_FILE")
    if log_file:
        handler = logging.FileHandler(log_file)
    elif stream is not None:
        handler = logging.StreamHandler(stream)
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter(f"%(levelname)s: ({ifname}) %(asctime)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def _daemonize() -> None:
    """Fork: the parent exits 0 (everything already exists); the child carries on detached."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wgpy-userspace",
        description="Userspace WireGuard interface (a drop-in for wireguard-go's command line).",
    )
    p.add_argument(
        "-f", "--foreground", action="store_true", help="do not fork into the background"
    )
    p.add_argument("interface", help="interface name (at most 15 characters)")
    p.add_argument("--socket-dir", default=SOCKET_DIR, help=argparse.SUPPRESS)
    return p


def run(ifname: str, *, foreground: bool, socket_dir: str = SOCKET_DIR) -> int:
    if os.geteuid() != 0:
        print("wgpy-userspace: must be run as root (it creates a TUN device)", file=sys.stderr)
        return 1
    # imported after the root check: an unprivileged user may not even read site-packages
    from tun.base import TunError
    from tun.linux import LinuxTun
    from wgpy.core.constants import DEFAULT_MTU
    from wgpy.core.device import Device
    from wgpy.core.errors import WgpyError
    from wgpy.io import gro
    from wgpy.io.keylog import KEYLOG_ENV, KeyLogRefused, KeyLogWriter, device_sink, warning_text
    from wgpy.io.loop import DeviceRunner, interface_exists
    from wgpy.io.uapi_server import UapiServer, listen, socket_path

    keylog: KeyLogWriter | None = None
    if os.environ.get(KEYLOG_ENV):
        try:
            keylog = KeyLogWriter(os.environ[KEYLOG_ENV])
        except KeyLogRefused as e:
            print(f"wgpy-userspace: {KEYLOG_ENV}: {e}", file=sys.stderr)
            return 1
        print(f"wgpy-userspace: warning: {ifname}: {warning_text(keylog.path)}", file=sys.stderr)
    try:
        tun = LinuxTun(
            ifname,
            create_only=True,
            mtu=DEFAULT_MTU,
            dev_path=os.environ.get("WGPY_TUN_DEVICE", "/dev/net/tun"),
            vnet_hdr=gro.wanted(),
            offload=gro.tso_wanted(),
        )
    except TunError as e:
        print(f"wgpy-userspace: {e}", file=sys.stderr)
        return 1
    path = socket_path(ifname, socket_dir)
    try:
        listener = listen(path)
    except (WgpyError, OSError) as e:
        tun.close()
        print(f"wgpy-userspace: {e}", file=sys.stderr)
        return 1
    device = Device(
        wall_time_ns=time.time_ns,
        key_log_sink=device_sink(keylog, ifname) if keylog is not None else None,
    )

    def factory(r: DeviceRunner) -> UapiServer:
        def forget(sock: socket.socket) -> None:
            with contextlib.suppress(KeyError, ValueError):
                r.sel.unregister(sock)

        def stats() -> dict[str, int]:
            counters = {f"drop_{reason}": n for reason, n in device.drops.items()}
            counters["handshakes_completed"] = device.handshakes_completed
            counters["peers"] = len(device.peers)
            counters.update(r.io_counters())
            return counters

        return UapiServer(listener, get=r.uapi_get, set_=r.uapi_set, on_close=forget, stats=stats)

    runner = DeviceRunner(
        device, tun, uapi_server_factory=factory, link_alive=lambda: interface_exists(ifname)
    )
    if not foreground:
        _daemonize()
        _setup_logging(None, ifname)
    else:
        _setup_logging(sys.stderr, ifname)
    runner.install_signal_handlers()
    log.info("interface %s up (UAPI %s)", ifname, path)
    reason = runner.run()
    log.info("interface %s shutting down: %s", ifname, reason)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    foreground = args.foreground or os.environ.get("WG_PROCESS_FOREGROUND") == "1"
    return run(args.interface, foreground=foreground, socket_dir=args.socket_dir)


if __name__ == "__main__":
    sys.exit(main())
