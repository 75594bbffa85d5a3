"""The UAPI socket file's life: whose it is, and what its removal does to the device.

The file can be deleted at any moment after it appears: ``wg-quick down`` removes it (right
after ``up``, in a script), and the testbed's tests delete it as soon as it exists. A device
whose file goes away exits cleanly (``UAPI socket file removed``), whenever that happens, even
before its loop runs.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

from tun.memory import MemoryTun
from wgpy.core.device import Device
from wgpy.io.loop import DeviceRunner
from wgpy.io.membind import MemoryNetwork
from wgpy.io.uapi_server import UapiServer, listen


def _server(path: Path) -> UapiServer:
    return UapiServer(listen(str(path)), get=str, set_=lambda _req: None)


def test_own_socket_is_ours_and_removed_at_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "wg0.sock"
    server = _server(path)
    assert server.inode == path.stat().st_ino and server.still_ours()
    server.shutdown()
    assert not path.exists()


def test_a_replacement_socket_is_not_ours_and_survives_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "wg0.sock"
    server = _server(path)
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(str(path))  # another device took the name
        assert not server.still_ours()
        server.shutdown()
        assert path.exists()  # its file stays
    finally:
        other.close()


def test_socket_removed_before_the_loop_runs_ends_the_device_cleanly(tmp_path: Path) -> None:
    """The file can go between ``listen`` and the server (seen under load: the device died
    with a FileNotFoundError traceback and exit status 1). The loop must end as for a later
    removal, with its reason."""
    path = tmp_path / "wg0.sock"
    listener = listen(str(path))
    os.unlink(path)
    clock = itertools.count(0.0, 1.0).__next__  # each read a second on: poll never waits
    runner = DeviceRunner(
        Device(wall_time_ns=lambda: 0),
        MemoryTun(f"ux{os.getpid()}"),
        clock=clock,
        bind=MemoryNetwork().bind(),
        uapi_server_factory=lambda _r: UapiServer(listener, get=str, set_=lambda _req: None),
    )
    assert runner.uapi is not None and not runner.uapi.still_ours()
    assert runner.run() == "UAPI socket file removed"
    assert listener.sock.fileno() == -1  # the loop closed what it owned
