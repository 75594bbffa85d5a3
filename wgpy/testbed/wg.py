"""WireGuard instances in namespaces (userspace or kernel), keys and `wg show` dumps."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self

from wgpy.core.keys import redact
from wgpy.testbed.netns import Namespace
from wgpy.testbed.proc import (
    DEFAULT_IMPL,
    NS_PREFIX,
    SOCKET_DIR,
    TestbedError,
    WaitTimeout,
    _register,
    _registry,
    _stop_process,
    _unregister,
    run,
    wait_for,
)

# ---------------------------------------------------------------------------------------------
# Keys and process statistics


def genkey() -> str:
    """A new base64 private key from ``wg genkey``."""
    return run(["wg", "genkey"]).stdout.strip()


def pubkey(private: str) -> str:
    """The base64 public key of `private` (``wg pubkey``)."""
    return run(["wg", "pubkey"], input=private + "\n").stdout.strip()


def genpsk() -> str:
    """A new base64 preshared key from ``wg genpsk``."""
    return run(["wg", "genpsk"]).stdout.strip()


# ---------------------------------------------------------------------------------------------
# WireGuard instances


class KernelImpl:
    """Marker implementation: the kernel's WireGuard (``ip link add IFACE type wireguard``)."""

    def __repr__(self) -> str:
        return "KERNEL"


KERNEL = KernelImpl()


class KernelUmlImpl:
    """Marker implementation: the kernel's WireGuard in a User-Mode Linux guest
    (:class:`wgpy.testbed.uml.guest.UmlGuest`), for machines without the wireguard module."""

    def __repr__(self) -> str:
        return "KERNEL_UML"


KERNEL_UML = KernelUmlImpl()
ImplSpec = Sequence[str] | KernelImpl | KernelUmlImpl


def kernel_wireguard_available() -> bool:
    """True if ``ip link add X type wireguard`` works (tried in a throwaway namespace)."""
    with Namespace(f"{NS_PREFIX}probe") as ns:
        return (
            run(
                ["ip", "-n", ns.name, "link", "add", "wgprobe", "type", "wireguard"], check=False
            ).returncode
            == 0
        )


@dataclass(frozen=True)
class PeerConf:
    """One ``[Peer]`` section for :meth:`WgInstance.set_conf` (base64 keys)."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: Sequence[str] = ()
    preshared_key: str | None = field(default=None, repr=False)
    persistent_keepalive: int | None = None


@dataclass(frozen=True)
class PeerDump:
    """A peer line of ``wg show IFACE dump`` (the preshared key itself is not kept)."""

    public_key: str
    has_preshared_key: bool
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # Unix seconds; 0 = never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None


@dataclass(frozen=True)
class InterfaceDump:
    """``wg show IFACE dump`` parsed; the private key is dropped."""

    public_key: str
    listen_port: int
    fwmark: int | None
    peers: tuple[PeerDump, ...]


def parse_dump(text: str) -> InterfaceDump:
    """Parse the tab-separated output of ``wg show IFACE dump``."""
    lines = [ln.split("\t") for ln in text.splitlines() if ln.strip()]
    if not lines or len(lines[0]) != 4:
        raise TestbedError("unexpected `wg show dump` output")
    _priv, pub, port, fwmark = lines[0]
    peers = []
    for f in lines[1:]:
        if len(f) != 8:
            raise TestbedError("unexpected peer line in `wg show dump` output")
        peers.append(
            PeerDump(
                public_key=f[0],
                has_preshared_key=f[1] != "(none)",
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=() if f[3] == "(none)" else tuple(f[3].split(",")),
                latest_handshake=int(f[4]),
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                persistent_keepalive=None if f[7] == "off" else int(f[7]),
            )
        )
    return InterfaceDump(pub, int(port), None if fwmark == "off" else int(fwmark, 0), tuple(peers))


def build_conf(
    private_key: str,
    *,
    listen_port: int | None = None,
    peers: Sequence[PeerConf] = (),
    fwmark: int | None = None,
) -> str:
    """The ``wg setconf`` text for an interface and its peers."""
    out = ["[Interface]", f"PrivateKey = {private_key}"]
    if listen_port is not None:
        out.append(f"ListenPort = {listen_port}")
    if fwmark is not None:
        out.append(f"FwMark = {fwmark}")
    for p in peers:
        out += ["", "[Peer]", f"PublicKey = {p.public_key}"]
        if p.preshared_key:
            out.append(f"PresharedKey = {p.preshared_key}")
        if p.endpoint:
            out.append(f"Endpoint = {p.endpoint}")
        if p.allowed_ips:
            out.append(f"AllowedIPs = {', '.join(p.allowed_ips)}")
        if p.persistent_keepalive is not None:
            out.append(f"PersistentKeepalive = {p.persistent_keepalive}")
    return "\n".join(out) + "\n"


class _WgBase:
    """What userspace and kernel instances share: ``wg`` access and link helpers."""

    def __init__(self, ns: Namespace, iface: str) -> None:
        self.ns = ns
        self.iface = iface

    def _prefix(self) -> list[str]:
        raise NotImplementedError

    @property
    def pids(self) -> list[int]:
        """PIDs doing this instance's work (empty for the kernel)."""
        return []

    def wg(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``wg ARGS...`` where it reaches this instance's UAPI socket."""
        return run([*self._prefix(), "wg", *args], input=input, check=check)

    def set_conf(
        self,
        private_key: str,
        *,
        listen_port: int | None = None,
        peers: Sequence[PeerConf] = (),
        fwmark: int | None = None,
    ) -> None:
        """Replace the whole configuration (``wg setconf``; keys pass on stdin, never argv)."""
        conf = build_conf(private_key, listen_port=listen_port, peers=peers, fwmark=fwmark)
        self.wg("setconf", self.iface, "/dev/stdin", input=conf)

    def show_dump(self) -> InterfaceDump:
        """``wg show IFACE dump``, parsed."""
        return parse_dump(self.wg("show", self.iface, "dump").stdout)

    def address(self, cidr: str) -> None:
        """Add an address (``10.99.0.1/24``) to the interface."""
        self.ns.ip("addr", "add", cidr, "dev", self.iface)

    def up(self, mtu: int = 1420) -> None:
        """Set the MTU and bring the interface up."""
        self.ns.ip("link", "set", self.iface, "mtu", str(mtu), "up")

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class WgInstance(_WgBase):
    """A userspace implementation run as ``IMPL -f IFACE`` in `ns`, with a private
    ``/run/wireguard`` (tmpfs in its own mount namespace).

    `impl` is an argv prefix: ``["wireguard-go"]``, ``["wgpy-userspace"]``,
    ``[sys.executable, "-m", "wgpy.tools.userspace"]``. Call :meth:`start` (or use ``with``).
    """

    def __init__(
        self,
        ns: Namespace,
        impl: Sequence[str] = DEFAULT_IMPL,
        iface: str = "wg0",
        *,
        env: dict[str, str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        if isinstance(impl, str):
            raise TypeError("impl is an argv list, not a string")
        super().__init__(ns, iface)
        self.impl = list(impl)
        self.env = env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The implementation's PID (``ip netns exec`` and ``sh`` both exec into it)."""
        if self.proc is None:
            raise TestbedError("instance not started")
        return self.proc.pid

    @property
    def pids(self) -> list[int]:
        return [self.pid] if self.proc is not None and self.proc.poll() is None else []

    @property
    def socket_path(self) -> str:
        """The UAPI socket as seen from the host, through the process's own root."""
        return f"/proc/{self.pid}/root{SOCKET_DIR}/{self.iface}.sock"

    def _prefix(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-n"]

    def _private_mount_ready(self) -> bool:
        # The socket alone is not proof: before `sh` mounts the tmpfs, the path shows the
        # host's /run/wireguard, where some unrelated wg0.sock may exist.
        try:
            with open(f"/proc/{self.pid}/mountinfo") as f:
                mounted = any(ln.split()[4] == SOCKET_DIR for ln in f)
        except OSError:  # gone or exiting (seen once as a bare OSError in test_testbed)
            return False
        return mounted and os.path.exists(self.socket_path)

    def output(self) -> str:
        """Everything the implementation wrote to stdout/stderr so far."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def start(self) -> Self:
        """Start the process and wait for its UAPI socket (TestbedError with its output)."""
        os.makedirs(SOCKET_DIR, exist_ok=True)  # the mount point must exist
        # A file, not a pipe: a chatty implementation must never block on a full pipe.
        # Kept after stop() so output() still works; the file closes when the instance goes.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        script = f'mount -t tmpfs wgpysock {SOCKET_DIR} && exec "$@"'
        self.proc = self.ns.popen(
            ["sh", "-c", script, "sh", *self.impl, "-f", self.iface],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        _register(self)
        proc = self.proc
        with contextlib.suppress(WaitTimeout):  # reported below, with the output
            wait_for(lambda: proc.poll() is not None or self._private_mount_ready(),
                     self.start_timeout, "the UAPI socket")
        if not self._private_mount_ready():
            rc = proc.poll()
            self.stop()  # before reading the output: the process may still be writing
            state = f"exited with {rc}" if rc is not None else "still running, no socket"
            raise TestbedError(
                f"{' '.join(self.impl)} -f {self.iface} in {self.ns.name}: no UAPI socket "
                f"after {self.start_timeout}s ({state}); output:\n{redact(self.output())}"
            )
        return self

    def __enter__(self) -> Self:
        return self.start() if self.proc is None else self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the implementation by PID, SIGKILL after `timeout` seconds. Idempotent."""
        if self.proc is not None:
            _stop_process(self.proc, timeout)
        _unregister(self)


class KernelWg(_WgBase):
    """The kernel's WireGuard in `ns` (``ip link add IFACE type wireguard``)."""

    def start(self) -> Self:
        self.ns.ip("link", "add", self.iface, "type", "wireguard")
        _register(self)
        return self

    def _prefix(self) -> list[str]:
        return self.ns.exec_argv([])

    def stop(self) -> None:
        """Delete the link (it also goes away with the namespace)."""
        if self in _registry:
            run(["ip", "-n", self.ns.name, "link", "del", self.iface], check=False)
        _unregister(self)
