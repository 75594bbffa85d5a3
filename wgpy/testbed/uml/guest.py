"""The kernel's WireGuard as ``wg0`` inside a User-Mode Linux guest, booted in a namespace.

Layout inside the namespace ``ns`` the caller owns (nothing on the host)::

    ns:  tapc 169.254.77.1/30  <-tuntap->  guest eth1 169.254.77.2/30   command channel, TCP 7000
         tapd (test link)      <-tuntap->  guest eth0 DATA_ADDR           wg0 (kernel WireGuard)

With ``bridge=[LINK, ...]`` the test link ``tapd`` is bridged with those links (e.g. veth
ends): the guest then owns their addresses and stands where a namespace's ``wg0`` would stand, which
is how :func:`wgpy.testbed.make_pair` puts the kernel on either side. Without it, ``tapd`` is
left for the caller to address (the conformance target puts the harness's addresses there).

The guest's ``wg`` and any other command run through the command channel: a shell script sent
over TCP, whose output and exit status come back (:meth:`UmlGuest.sh`). Keys pass in the
script's text (a here-document), never on a command line and never in a log.

The UML process and every host process it forks form one process group of our own; ``stop``
kills that group by its ID, then removes both taps (and the bridge).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import IO, Any, Self

from wgpy.core.keys import redact
from wgpy.testbed.netns import Namespace
from wgpy.testbed.proc import (
    TestbedError,
    WaitTimeout,
    _register,
    _unregister,
    run,
    wait_for,
)
from wgpy.testbed.uml import build
from wgpy.testbed.wg import _WgBase

CTL_HOST, CTL_GUEST, CTL_PORT = "169.254.77.1", "169.254.77.2", 7000
DATA_TAP, CTL_TAP, BRIDGE = "tapd", "tapc", "umlbr"
RC_MARK = "__rc="
# The client half of the command channel, run inside the namespace: send the script, half-close,
# read until the guest closes.
_CLIENT = """
import socket, sys, time
for i in range(100):  # the listener may start a moment after the guest says it is ready
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
        break
    except ConnectionRefusedError:
        if i == 99:
            raise
        time.sleep(0.05)
s.settimeout(float(sys.argv[3]))
s.sendall(sys.stdin.buffer.read()); s.shutdown(socket.SHUT_WR)
while d := s.recv(65536):
    sys.stdout.buffer.write(d)
"""


class UmlGuest(_WgBase):
    """A UML guest in `ns` running the kernel's WireGuard as ``wg0`` (unconfigured at boot).

    `data_addr` is the guest's address on the test link (``192.168.241.2/24``). Use as a
    context manager or call :meth:`start`; :meth:`stop` undoes everything, also after a failure.
    """

    def __init__(
        self,
        ns: Namespace,
        data_addr: str,
        *,
        bridge: Sequence[str] = (),
        images: build.Images | None = None,
        mem: str = "256M",
        boot_timeout: float = 30.0,
    ) -> None:
        super().__init__(ns, "wg0")
        self.data_addr = data_addr
        self.bridge = list(bridge)
        self.images = images
        self.mem = mem
        self.boot_timeout = boot_timeout
        self.proc: subprocess.Popen[Any] | None = None
        self.run_dir: str | None = None
        self._log: IO[bytes] | None = None
        self.boot_seconds = 0.0  # guest uptime when wg0 was ready
        self._links_made = False

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Self:
        images = self.images or build.find()
        if images is None:
            raise TestbedError(build.missing_reason())
        _register(self)
        try:
            self._links()
            self._boot(images)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Self:
        return self.start() if self.proc is None else self

    def _links(self) -> None:
        ns = self.ns
        self._links_made = True
        for tap in (CTL_TAP, DATA_TAP):
            ns.ip("tuntap", "add", tap, "mode", "tap")
        ns.ip("addr", "add", f"{CTL_HOST}/30", "dev", CTL_TAP)
        ns.ip("link", "set", CTL_TAP, "up")
        ns.ip("link", "set", DATA_TAP, "up")
        if self.bridge:
            # the guest takes over the links' addresses: the namespace keeps none on them
            ns.ip("link", "add", BRIDGE, "type", "bridge")
            for dev in self.bridge:
                ns.ip("addr", "flush", "dev", dev)
            for dev in (*self.bridge, DATA_TAP):
                ns.ip("link", "set", dev, "master", BRIDGE)
            ns.ip("link", "set", BRIDGE, "up")

    def _boot(self, images: build.Images) -> None:
        self.run_dir = tempfile.mkdtemp(prefix=f"wgpy-uml-{os.getpid()}-")
        with open(os.path.join(self.run_dir, "guest.env"), "w") as f:
            f.write(
                f"DATA_DEV=eth0\nDATA_ADDR={self.data_addr}\n"
                f"CTL_DEV=eth1\nCTL_ADDR={CTL_GUEST}/30\n"
            )
        argv = [
            str(images.kernel),
            f"mem={self.mem}",
            f"umid={os.path.basename(self.run_dir)}",
            f"uml_dir={self.run_dir}",
            "rootfstype=hostfs",
            f"rootflags={images.rootfs}",
            "ro",
            "init=/sbin/wgpy-init",
            f"eth0=tuntap,{DATA_TAP}",
            f"eth1=tuntap,{CTL_TAP}",
            "con0=null,fd:1",
            "con=null",
            "ssl=null",
            f"wgpy_run={self.run_dir}",
        ]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - kept for output()
        # A session (process group) of its own: UML forks a host process per guest address
        # space, and the group's ID reaches them all. PDEATHSIG stops UML if we die.
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", *self.ns.exec_argv(argv)],
            env={**os.environ, "TMPDIR": self.run_dir},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ready = os.path.join(self.run_dir, "ready")
        proc = self.proc
        with contextlib.suppress(WaitTimeout):  # reported below, with the console
            wait_for(
                lambda: proc.poll() is not None or os.path.exists(ready),
                self.boot_timeout,
                interval=0.05,
            )
        if not os.path.exists(ready):
            state = f"exited with {proc.poll()}" if proc.poll() is not None else "not ready"
            raise TestbedError(
                f"UML guest in {self.ns.name} {state} after {self.boot_timeout}s; console:\n"
                + redact(self.output()[-3000:])
            )
        with open(ready) as f:
            self.boot_seconds = float(f.read().strip() or 0)

    def output(self) -> str:
        """The guest's console output so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """Kill the guest (its process group, by ID), remove the links and the run directory.
        Idempotent. The guest keeps no state (its root is read-only), so no shutdown is owed."""
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # our own session: UML and its helpers
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5.0)
        if self._links_made:
            self._links_made = False
            for dev in (BRIDGE, DATA_TAP, CTL_TAP):
                run(["ip", "-n", self.ns.name, "link", "del", dev], check=False)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
            self.run_dir = None
        self.proc = None
        _unregister(self)

    # --- the command channel ----------------------------------------------------------------

    def sh(self, script: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a shell script in the guest: returncode and combined output (stdout)."""
        res = self.ns.run(
            [sys.executable, "-c", _CLIENT, CTL_GUEST, str(CTL_PORT), str(timeout)],
            check=False,
            timeout=timeout + 10,
            input=script,
        )
        out, _, tail = res.stdout.rpartition(RC_MARK)
        if res.returncode != 0 or not tail.strip().isdigit():
            raise TestbedError(
                f"guest command channel in {self.ns.name} failed: {redact(res.stderr.strip())}"
            )
        return subprocess.CompletedProcess(["guest-sh"], int(tail), out, "")

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the guest (like :meth:`Namespace.run`; `input` via a here-document)."""
        cmd = shlex.join(argv)
        if input is not None:
            cmd += f" <<'WGPY_INPUT_END'\n{input.rstrip(chr(10))}\nWGPY_INPUT_END"
        res = self.sh(cmd + "\n", timeout=timeout)
        if check and res.returncode != 0:
            raise TestbedError(
                f"guest: {redact(shlex.join(argv))} failed ({res.returncode}): "
                f"{redact(res.stdout.strip())}"
            )
        return res

    # --- what _WgBase needs -----------------------------------------------------------------

    def wg(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.run(["wg", *args], input=input, check=check)

    def address(self, cidr: str) -> None:
        self.run(["ip", "addr", "add", cidr, "dev", self.iface])

    def up(self, mtu: int = 1420) -> None:
        self.run(["ip", "link", "set", self.iface, "mtu", str(mtu), "up"])

    @property
    def pids(self) -> list[int]:
        """The UML process (all guest work, kernel WireGuard included, runs under it)."""
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []
