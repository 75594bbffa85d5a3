"""Network namespaces and veth pairs, removed on exit; code run inside a namespace."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Self, TypeVar

from tun.netlink import NETNS_DIR, setns
from wgpy.testbed.proc import (
    NS_PREFIX,
    _register,
    _stop_process,
    _unregister,
    list_netns,
    pid_alive,
    run,
)

T = TypeVar("T")


def run_in_netns(netns: str, make: Callable[[], T]) -> T:
    """``make()`` run in a short-lived thread that joined network namespace ``netns`` (a name
    under ``/run/netns`` or a path); its result or exception comes back to the caller.

    The caller's thread never changes namespace, so a signal handled meanwhile (SIGTERM
    raising in the main thread) cannot leave it stranded in ``netns``, where cleaning up the
    namespace would then kill this very process.
    """
    path = netns if "/" in netns else os.path.join(NETNS_DIR, netns)
    result: list[T] = []
    error: list[BaseException] = []

    def worker() -> None:
        try:
            setns(path)
            result.append(make())
        except BaseException as e:  # handed to the caller's thread below
            error.append(e)

    t = threading.Thread(target=worker, name="wgpy-setns")
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]

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
