"""Network-namespace testbed: namespaces, veth pairs and WireGuard instances, cleaned up always.

Used by the interop tests, ``wgpy demo`` and the benchmarks. Everything lives inside network
namespaces created here (unique names), so traffic never leaves them and host routes and
interfaces are never touched. The recipe is the protocol doc's §11.2:

* each userspace implementation runs as ``ip netns exec NS sh -c 'mount -t tmpfs ... && exec
  IMPL -f IFACE'``: ``ip netns exec`` gives it a private mount namespace, the tmpfs on
  ``/run/wireguard`` makes its UAPI socket private (two ``wg0`` instances do not clash), and both
  ``ip`` and ``sh`` *exec*, so the PID we hold is the implementation's own;
* ``wg`` reaches it with ``nsenter -t PID -m -n``; the socket is visible from the host as
  ``/proc/PID/root/run/wireguard/IFACE.sock``.

Every namespace and process is registered; context managers remove them on exit (also on
error), ``atexit`` catches what is left, and :func:`install_signal_handlers` turns SIGTERM/SIGHUP
into ``SystemExit`` so ``with`` blocks unwind. Children get ``PR_SET_PDEATHSIG`` (via
``setpriv``) so they do not outlive a killed parent; :func:`sweep_stale` removes namespaces
whose creating process died.

Needs root, ``ip``, ``nsenter``, ``wg`` and the implementation binaries.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType, TracebackType
from typing import IO, Any, Protocol, Self

from wgpy.errors import WgpyError

DEFAULT_IMPL: tuple[str, ...] = ("wireguard-go",)
SOCKET_DIR = "/run/wireguard"
NS_PREFIX = "wgpy"
_KEY_RE = re.compile(r"[A-Za-z0-9+/]{42,43}=")


class TestbedError(WgpyError):
    """A testbed step failed (command error, start-up timeout, missing tool)."""


def redact(text: str) -> str:
    """Hide anything that looks like a base64 WireGuard key (keys are never shown)."""
    return _KEY_RE.sub("(key)", text)


class _Closeable(Protocol):
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Registry: everything created here is closed at exit, newest first.

_registry: list[_Closeable] = []


def _register(obj: _Closeable) -> None:
    _registry.append(obj)


def _unregister(obj: _Closeable) -> None:
    with contextlib.suppress(ValueError):
        _registry.remove(obj)


def cleanup_all() -> None:
    """Close every live namespace/instance created by this process (newest first)."""
    while _registry:
        obj = _registry.pop()
        with contextlib.suppress(Exception):
            obj.close()


atexit.register(cleanup_all)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """Make SIGTERM and SIGHUP raise ``SystemExit`` so ``with`` blocks and ``atexit`` clean up.

    Call from the main thread of a program (the benchmarks, ``wgpy demo``); a library import
    never changes signal dispositions by itself.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)


def run(
    argv: Sequence[str], *, check: bool = True, timeout: float = 30.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command on the host side (no network effect intended), capturing text output."""
    try:
        res = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except FileNotFoundError as e:
        raise TestbedError(f"command not found: {argv[0]}") from e
    except subprocess.TimeoutExpired as e:
        raise TestbedError(f"timed out after {timeout}s: {redact(' '.join(argv))}") from e
    if check and res.returncode != 0:
        raise TestbedError(
            f"{redact(' '.join(argv))} failed ({res.returncode}): "
            f"{redact(res.stderr.strip() or res.stdout.strip())}"
        )
    return res


def _stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`; the held Popen guarantees the PID is ours."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5.0)


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    out = run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Namespaces and veth pairs


class Namespace:
    """A named network namespace with ``lo`` up; removed with everything it started on close.

    Use as a context manager. ``run``/``popen`` execute inside it through ``ip netns exec``.
    """

    def __init__(self, prefix: str = NS_PREFIX) -> None:
        # The creator's PID is part of the name so sweep_stale() can tell dead runs apart.
        self.name = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.procs: list[subprocess.Popen[Any]] = []
        self._created = False

    def create(self) -> Self:
        """``ip netns add`` + ``lo up``; registered for cleanup before anything can fail."""
        run(["ip", "netns", "add", self.name])
        self._created = True
        _register(self)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """The argv that runs `argv` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ip -n NS ARGS...`` (checked)."""
        return run(["ip", "-n", self.name, *args])

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace and wait; text output captured."""
        return run(self.exec_argv(argv), check=check, timeout=timeout, input=input)

    def popen(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace; its PID is the command's own (``ip`` execs).

        The process is stopped (SIGTERM, then SIGKILL) when the namespace closes.
        """
        full_env = None if env is None else {**os.environ, **env}
        # setpriv (util-linux) sets PR_SET_PDEATHSIG and execs, as do `ip` and `sh`: if our
        # thread dies, even by SIGKILL, the kernel sends the child SIGTERM, and the PID we hold
        # stays the command's own. (No preexec_fn: unsafe once the caller has threads.)
        proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "TERM", *self.exec_argv(argv)],
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """PIDs of all processes currently in this namespace (``ip netns pids``)."""
        res = run(["ip", "netns", "pids", self.name], check=False)
        return [int(p) for p in res.stdout.split() if p.isdigit()]

    def close(self, timeout: float = 3.0) -> None:
        """Stop our processes by PID, then ``ip netns del``. Idempotent."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                _stop_process(proc, timeout)
        self.procs.clear()
        if self._created:
            _kill_leftovers(self.name)
            run(["ip", "netns", "del", self.name], check=False)
            self._created = False
        _unregister(self)


def _kill_leftovers(name: str) -> None:
    # A process still in the namespace after ours were stopped can only descend from them
    # (the name is unique to this run): without this it would keep the netns alive unseen.
    res = run(["ip", "netns", "pids", name], check=False)
    for pid in (int(p) for p in res.stdout.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def sweep_stale(prefix: str = NS_PREFIX) -> list[str]:
    """Delete namespaces named ``PREFIX-PID-xxxxxx`` whose creating PID no longer exists.

    Leftovers of a run that was SIGKILLed. Returns the names removed.
    """
    pat = re.compile(rf"^{re.escape(prefix)}-(\d+)-[0-9a-f]{{6}}$")
    removed = []
    for name in list_netns():
        m = pat.match(name)
        if m and not pid_alive(int(m.group(1))):
            _kill_leftovers(name)
            run(["ip", "netns", "del", name], check=False)
            removed.append(name)
    return removed


@dataclass(frozen=True)
class Veth:
    """A veth pair between two namespaces: link names and addresses (with prefix length)."""

    ns_a: Namespace
    ns_b: Namespace
    name_a: str
    name_b: str
    addr_a: str
    addr_b: str

    @property
    def ip_a(self) -> str:
        return self.addr_a.split("/")[0]

    @property
    def ip_b(self) -> str:
        return self.addr_b.split("/")[0]


def veth(ns_a: Namespace, ns_b: Namespace, addr_a: str, addr_b: str, *, mtu: int = 1500) -> Veth:
    """Create a veth pair directly inside `ns_a` and `ns_b` (never on the host), address it and
    bring both ends up. Removed with the namespaces."""
    tag = secrets.token_hex(4)
    name_a, name_b = f"v{tag}a", f"v{tag}b"  # 10 chars, within IFNAMSIZ - 1 = 15
    ns_a.ip(
        "link",
        "add",
        name_a,
        "mtu",
        str(mtu),
        "type",
        "veth",
        "peer",
        "name",
        name_b,
        "mtu",
        str(mtu),
        "netns",
        ns_b.name,
    )
    ns_a.ip("addr", "add", addr_a, "dev", name_a)
    ns_b.ip("addr", "add", addr_b, "dev", name_b)
    ns_a.ip("link", "set", name_a, "up")
    ns_b.ip("link", "set", name_b, "up")
    return Veth(ns_a, ns_b, name_a, name_b, addr_a, addr_b)


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise TestbedError(f"no VmRSS for pid {pid}")


def wait_for(cond: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `cond` until it is true or `timeout` seconds pass; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# WireGuard instances


class KernelImpl:
    """Marker implementation: the kernel's WireGuard (``ip link add IFACE type wireguard``)."""

    def __repr__(self) -> str:
        return "KERNEL"


KERNEL = KernelImpl()
ImplSpec = Sequence[str] | KernelImpl


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
    ``[sys.executable, "-m", "wgpy.userspace"]``. Call :meth:`start` (or use ``with``).
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
        except (FileNotFoundError, ProcessLookupError):
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
        wait_for(lambda: proc.poll() is not None or self._private_mount_ready(), self.start_timeout)
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


# ---------------------------------------------------------------------------------------------
# The pair testbed

VETH_A, VETH_B = "192.168.241.1/24", "192.168.241.2/24"
TUN_IP_A, TUN_IP_B = "10.99.0.1", "10.99.0.2"
TUN_A, TUN_B = f"{TUN_IP_A}/24", f"{TUN_IP_B}/24"


@dataclass
class Pair:
    """Two namespaces joined by a veth, one WireGuard instance each, configured as peers.

    Tunnel addresses ``10.99.0.1`` (A) and ``10.99.0.2`` (B); the veth carries the UDP.
    """

    ns_a: Namespace
    ns_b: Namespace
    veth: Veth
    wg_a: WgInstance | KernelWg
    wg_b: WgInstance | KernelWg
    pub_a: str
    pub_b: str
    port: int
    mtu: int
    tun_ip_a: str = TUN_IP_A
    tun_ip_b: str = TUN_IP_B

    def ping(
        self,
        *,
        from_a: bool = True,
        count: int = 1,
        size: int | None = None,
        dont_fragment: bool = False,
        timeout: float = 2.0,
        interval: float = 0.2,
    ) -> subprocess.CompletedProcess[str]:
        """Ping the other side's tunnel address (unchecked: look at ``returncode``)."""
        ns, dst = (self.ns_a, self.tun_ip_b) if from_a else (self.ns_b, self.tun_ip_a)
        argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", str(timeout)]
        if size is not None:
            argv += ["-s", str(size)]
        if dont_fragment:
            argv += ["-M", "do"]
        return ns.run([*argv, dst], check=False, timeout=count * (interval + timeout) + 10)

    def wait_handshake(self, timeout: float = 10.0) -> None:
        """Ping A→B until one reply arrives (the first packets trigger the handshake)."""
        if not wait_for(lambda: self.ping(timeout=1.0).returncode == 0, timeout, 0.0):
            raise TestbedError(f"no ping through the tunnel within {timeout}s")

    @property
    def pids(self) -> list[int]:
        """PIDs of both userspace implementations (for CPU/memory figures)."""
        return [*self.wg_a.pids, *self.wg_b.pids]

    def close(self) -> None:
        """Stop both instances, then remove both namespaces. Idempotent."""
        for obj in (self.wg_b, self.wg_a, self.ns_b, self.ns_a):
            with contextlib.suppress(Exception):
                obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _start_impl(
    ns: Namespace, impl: ImplSpec, env: dict[str, str] | None, start_timeout: float
) -> WgInstance | KernelWg:
    if isinstance(impl, KernelImpl):
        return KernelWg(ns, "wg0").start()
    return WgInstance(ns, impl, "wg0", env=env, start_timeout=start_timeout).start()


def make_pair(
    impl_a: ImplSpec = DEFAULT_IMPL,
    impl_b: ImplSpec = DEFAULT_IMPL,
    *,
    psk: bool = False,
    mtu: int = 1420,
    port: int = 51820,
    env: dict[str, str] | None = None,
    prefix: str = NS_PREFIX,
    start_timeout: float = 10.0,
) -> Pair:
    """Build the pair testbed (use as a context manager; everything is removed on exit).

    `impl_a`/`impl_b` are argv prefixes or :data:`KERNEL`. Keys come from ``wg genkey``;
    with `psk` both sides share a ``wg genpsk`` key. No handshake is forced: call
    :meth:`Pair.wait_handshake`.
    """
    ns_a = Namespace(prefix).create()
    ns_b: Namespace | None = None
    wgs: list[WgInstance | KernelWg] = []
    try:
        ns_b = Namespace(prefix).create()
        link = veth(ns_a, ns_b, VETH_A, VETH_B)
        wgs.append(_start_impl(ns_a, impl_a, env, start_timeout))
        wgs.append(_start_impl(ns_b, impl_b, env, start_timeout))
        priv_a, priv_b = genkey(), genkey()
        pub_a, pub_b = pubkey(priv_a), pubkey(priv_b)
        shared = genpsk() if psk else None
        wgs[0].set_conf(
            priv_a,
            listen_port=port,
            peers=[PeerConf(pub_b, f"{link.ip_b}:{port}", [f"{TUN_IP_B}/32"], shared)],
        )
        wgs[1].set_conf(
            priv_b,
            listen_port=port,
            peers=[PeerConf(pub_a, f"{link.ip_a}:{port}", [f"{TUN_IP_A}/32"], shared)],
        )
        for w, addr in zip(wgs, (TUN_A, TUN_B), strict=True):
            w.address(addr)
            w.up(mtu)
        return Pair(ns_a, ns_b, link, wgs[0], wgs[1], pub_a, pub_b, port, mtu)
    except BaseException:
        for obj in [*reversed(wgs), ns_b, ns_a]:
            if obj is not None:
                with contextlib.suppress(Exception):
                    obj.close()
        raise
