"""The supervisor core: leadership → tunnels → forwarders, kept in line with the configuration.

Theory of operation
-------------------
The manager holds the *desired* state (validated tunnels from the Secret or the tunnels file,
forwarding rules from Services or the file) and the *running* state (one
:class:`~wgpy.supervisor.tunnel.TunnelRuntime` and its forwarders per tunnel). One function,
:meth:`Supervisor._reconcile`, moves running towards desired, under one lock, and it is the only
code that starts or stops anything; its target is "everything" while leading and "nothing"
otherwise. So every event (config change, rules change, leadership gained or lost, a device
loop that died) is just "record the new fact, reconcile", and ordering questions reduce to the
lock's FIFO order.

* Leading starts (elector ``on_started_leading``): bring up every tunnel, then its forwarders.
* Leading ends (``on_stopped_leading``): close every forwarder, then stop every tunnel, and only
  then return — the electors release the lock/Lease after this callback, so no other node can
  lead while a tunnel of ours is still up. The process stays a candidate.
* A changed tunnel (anything but its ``forward`` list) is restarted; an unchanged one is not
  touched; forwarding changes are applied to the running forwarders (targets updated live).

TAI64N floor (kubernetes.md §6, issue 8 point 5)
-----------------------------------------------
All nodes share the tunnel's private key, and the VPN node drops an initiation whose TAI64N is
not newer than the last it accepted from that key. So while leading we persist per tunnel a
*bound* ``B`` in the election record (annotation ``wgpy.io/tai64n-floor.<tunnel>``, hex) and
keep the device's timestamps below it: before bring-up, ``B = max(own clock, stored floor) +
FLOOR_AHEAD``; every ``floor_check`` seconds, if the device's newest timestamp (or our clock)
has come within ``FLOOR_AHEAD / 2`` of ``B``, a new ``B`` is written. Timestamps advance at
most one second per second (or 2**24 ns per initiation when the clock is behind), so with a
check every second and a margin of several seconds the device never sends beyond a bound that
is not stored. A new leader starts its devices with ``timestamp_floor = B``: its first
initiation is newer than anything the old leader can have sent, however far its clock is behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from noise import tai64n
from wgpy.supervisor import config
from wgpy.supervisor.config import Tunnel
from wgpy.supervisor.forward import Forwarder, Strategy, make_forwarder
from wgpy.supervisor.model import (
    ForwardRule,
    SupervisorStatus,
    Target,
    TunnelStatus,
)
from wgpy.supervisor.tunnel import TunnelRuntime

log = logging.getLogger(__name__)

FLOOR_ANNOTATION = "wgpy.io/tai64n-floor."
FLOOR_AHEAD = 10.0  # seconds a persisted bound runs ahead of what the device may send
FLOOR_CHECK = 1.0  # how often the bound is compared with the device's newest timestamp
RETRY_FAILED = 5.0  # a tunnel whose bring-up failed is retried after this many seconds
RESTART_DELAY = 1.0  # pause before running for leadership again after losing it
STALL_ATTEMPTS = 3  # handshake retries (5 s apart) before a stall is reported
_NS = 1_000_000_000

T = TypeVar("T")


# -- the parts the manager drives (structural types, so tests and Kubernetes mode can plug) ----


class Elector(Protocol):
    """What :class:`LeaderElector` and :class:`LocalLockElector` both offer."""

    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str: ...

    async def run(self) -> None: ...

    def stop(self, *, release: bool = True) -> None: ...

    def annotation(self, key: str) -> str | None: ...

    def set_annotation(self, key: str, value: str | None) -> None: ...

    async def flush_annotations(self) -> bool: ...


class ElectorFactory(Protocol):
    """Builds the elector with the manager's callbacks, e.g.
    ``lambda **cb: LocalLockElector(path, identity, retry_period=2, **cb)``."""

    def __call__(
        self,
        *,
        on_started_leading: Callable[[], Awaitable[None] | None],
        on_stopped_leading: Callable[[], Awaitable[None] | None],
        on_new_leader: Callable[[str], Awaitable[None] | None],
    ) -> Elector: ...


class Runtime(Protocol):
    """The shape of :class:`~wgpy.supervisor.tunnel.TunnelRuntime`."""

    @property
    def alive(self) -> bool: ...

    @property
    def last_timestamp_sent(self) -> bytes: ...

    def start(self, timestamp_floor: bytes) -> None: ...

    def stop(self) -> None: ...

    def status(self) -> TunnelStatus: ...


RuntimeFactory = Callable[[Tunnel], Runtime]
ForwarderFactory = Callable[[str, int, str, Sequence[Target]], Forwarder]


# -- TAI64N floor helpers (pure) --------------------------------------------------------------


def floor_key(tunnel: str) -> str:
    """The annotation holding the TAI64N bound of ``tunnel``."""
    return FLOOR_ANNOTATION + tunnel


def parse_floor(text: str | None) -> bytes:
    """A stored bound (hex TAI64N); ZERO when absent or malformed (logged)."""
    if not text:
        return tai64n.ZERO
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != tai64n.TAI64N_SIZE:
        log.warning("ignoring malformed TAI64N floor annotation %r", text)
        return tai64n.ZERO
    return raw


def next_bound(*, floor: bytes, last_sent: bytes, wall_ns: int, ahead: float) -> bytes:
    """A bound ``ahead`` seconds past the newest timestamp the device may send next."""
    newest = max(tai64n.stamp(wall_ns), floor, last_sent)
    return tai64n.stamp(tai64n.to_unix_ns(newest) + int(ahead * _NS))


def needs_renewal(*, bound: bytes, last_sent: bytes, wall_ns: int, ahead: float) -> bool:
    """True once the device (or the clock) is within ``ahead / 2`` of ``bound``."""
    newest = max(tai64n.stamp(wall_ns), last_sent)
    return tai64n.to_unix_ns(bound) - tai64n.to_unix_ns(newest) < int(ahead * _NS / 2)


# -- state ------------------------------------------------------------------------------------


@dataclass
class _Live:
    tunnel: Tunnel
    runtime: Runtime
    forwarders: dict[tuple[int, str], Forwarder] = field(default_factory=dict)
    rules: dict[tuple[int, str], ForwardRule] = field(default_factory=dict)
    bound: bytes = tai64n.ZERO
    stall_reported: bool = False


def _core(t: Tunnel) -> Tunnel:
    """The part of a tunnel whose change needs a restart (not its forward list)."""
    return dataclasses.replace(t, forward=())


def _done() -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.set_result(None)
    return fut


class Supervisor:
    """Orchestrates election, tunnels and forwarders for one node (``identity``).

    Call :meth:`apply_tunnels`, :meth:`reject_config` and :meth:`set_forward_rules` from the
    event loop, as the configuration sources change; ``await run()`` until :meth:`stop`.
    """

    def __init__(
        self,
        identity: str,
        *,
        elector_factory: ElectorFactory,
        runtime_factory: RuntimeFactory | None = None,
        forwarder_factory: ForwarderFactory | None = None,
        strategy: Strategy = "round-robin",
        wall_time_ns: Callable[[], int] = time.time_ns,
        clock: Callable[[], float] = time.monotonic,
        floor_ahead: float = FLOOR_AHEAD,
        floor_check: float = FLOOR_CHECK,
        retry_failed: float = RETRY_FAILED,
        restart_delay: float = RESTART_DELAY,
        keylogs: Mapping[str, str] | None = None,
    ) -> None:
        self.identity = identity
        self.wall_time_ns = wall_time_ns
        self.clock = clock
        self.floor_ahead = floor_ahead
        self.floor_check = floor_check
        self.retry_failed = retry_failed
        self.restart_delay = restart_delay
        keylog_paths = dict(keylogs or {})  # tunnel name -> key log (debugging only)
        self._runtime_factory: RuntimeFactory = runtime_factory or (
            lambda t: TunnelRuntime(
                t,
                wall_time_ns=wall_time_ns,
                lease_left=self.lease_left,
                targets=lambda: self._target_hosts(t),
                keylog=keylog_paths.get(t.name),
            )
        )
        self._forwarder_factory: ForwarderFactory = forwarder_factory or (
            lambda host, port, proto, targets: make_forwarder(
                host, port, proto, targets, strategy=strategy
            )
        )
        self.elector = elector_factory(
            on_started_leading=self._on_started,
            on_stopped_leading=self._on_stopped,
            on_new_leader=self._on_new_leader,
        )
        self._desired: dict[str, Tunnel] = {}
        self._rules: dict[str, dict[str, list[ForwardRule]]] = {}  # key → source → rules
        self._running: dict[str, _Live] = {}
        self._failed: dict[str, tuple[float, str]] = {}  # tunnel → (when, error)
        self._leading = False
        self._stopping = False
        self._lock = asyncio.Lock()
        self._config_event = asyncio.Event()
        self._stop_event = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_other_leader = ""
        self._status = SupervisorStatus(identity=identity)

    # -- configuration inputs ----------------------------------------------------------------

    def apply_tunnels(
        self, tunnels: Mapping[str, Tunnel], *, note: str = ""
    ) -> asyncio.Future[None]:
        """Make ``tunnels`` (already validated) the configuration; applied live if leading.

        An empty configuration is a configuration (``note`` says why, e.g. the Secret is
        absent): the supervisor runs for election and is ready, with nothing to bring up.
        Returns a future done when the change is applied (awaiting it is optional).
        """
        added, changed, removed = config.diff(self._desired, tunnels)
        if added or changed or removed or not self._status.config_loaded:
            log.info(
                "loaded WireGuard tunnel configurations: %d tunnel(s) (added %s, changed %s, "
                "removed %s)",
                len(tunnels),
                added or "-",
                changed or "-",
                removed or "-",
            )
        self._desired = dict(tunnels)
        self._status.config_loaded = True
        self._status.config_note = note
        self._status.last_config_error = ""
        self._config_event.set()
        return self._schedule()

    def set_problem(self, key: str, problem: str | None) -> None:
        """Record (or clear, with ``None``) a configuration that cannot be served; it makes
        ``/readyz`` fail with that text."""
        if problem:
            self._status.problems[key] = problem
        else:
            self._status.problems.pop(key, None)

    def reject_config(self, error: str) -> None:
        """Count and log a configuration that failed validation; the running one stays."""
        self._status.config_rejections += 1
        self._status.last_config_error = error
        log.error("rejected tunnels configuration (keeping the running one): %s", error)

    def set_forward_rules(
        self, vip_or_tunnel: str, rules: Sequence[ForwardRule], *, source: str | None = None
    ) -> asyncio.Future[None]:
        """Set the forwarding rules for the tunnel named ``vip_or_tunnel`` or whose VIP it is.

        Without ``source`` the whole list for that key is replaced; with ``source`` only the
        rules from that source (e.g. ``controlplane``, ``service/ns/name``). Rules given here
        override a tunnel's own ``forward:`` entries for the same port and protocol.
        """
        per_source = self._rules.setdefault(self._rule_key(vip_or_tunnel), {})
        if source is None:
            per_source.clear()
            per_source[""] = list(rules)
        elif rules:
            per_source[source] = list(rules)
        else:
            per_source.pop(source, None)
        return self._schedule()

    @staticmethod
    def _rule_key(key: str) -> str:
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_interface(key.strip()).ip)
        return key

    def _rules_for(self, t: Tunnel) -> dict[tuple[int, str], ForwardRule]:
        out: dict[tuple[int, str], ForwardRule] = {}
        for f in t.forward:
            out[(f.port, f.protocol)] = ForwardRule(
                f.port,
                f.protocol,  # type: ignore[arg-type]  # validated: TCP or UDP
                (Target(*f.target),),
                "file",
            )
        for key in (t.name, str(t.vip.ip)):
            for rules in self._rules.get(key, {}).values():
                for r in rules:
                    out[(r.port, r.protocol)] = r
        return out

    def _target_hosts(self, t: Tunnel) -> list[str]:
        return [tg.host for r in self._rules_for(t).values() for tg in r.targets]

    def lease_left(self) -> float:
        """Seconds of leadership left (0 when not leading); safe to call from any thread.

        Tunnels use it to bound their bring-up and as a fence on every datagram they send:
        a leader paused past its renew deadline sends nothing when it resumes."""
        if not self._leading:
            return 0.0
        time_left = getattr(self.elector, "time_left", None)
        return float(time_left()) if time_left is not None else math.inf

    # -- leadership callbacks ----------------------------------------------------------------

    async def _on_started(self) -> None:
        """Runs as a task for as long as we lead (the elector cancels it)."""
        if self._last_other_leader:
            self._status.failovers += 1
        self._leading = True
        self._status.leader = True
        self._status.leader_identity = self.identity
        log.info("%s: leading", self.identity)
        await self._reconcile()
        while True:
            await asyncio.sleep(self.floor_check)
            self._refresh_floors()
            self._report_stalls()
            if self._needs_repair():
                await self._reconcile()

    async def _on_stopped(self) -> None:
        self._leading = False
        self._status.leader = False
        log.info("%s: no longer leading, tearing down", self.identity)
        await self._reconcile()

    def _on_new_leader(self, holder: str) -> None:
        self._status.leader_identity = holder
        if holder != self.identity:
            self._last_other_leader = holder
            log.info("%s: new leader %s", self.identity, holder)

    # -- reconcile ---------------------------------------------------------------------------

    def _schedule(self) -> asyncio.Future[None]:
        if not self._leading and not self._running:
            return _done()
        task = asyncio.get_running_loop().create_task(self._reconcile_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _reconcile_logged(self) -> None:
        try:
            await self._reconcile()
        except Exception:
            log.exception("reconcile failed")

    async def _reconcile(self) -> None:
        async with self._lock:
            target = self._desired if self._leading else {}
            gone = [
                n
                for n, live in self._running.items()
                if n not in target
                or _core(live.tunnel) != _core(target[n])
                or not live.runtime.alive
            ]
            if gone:
                await self._teardown(gone)
            for name in list(self._failed):
                if name not in target:
                    del self._failed[name]
            now = self.clock()
            for name, t in target.items():
                if name in self._running:
                    continue
                failed = self._failed.get(name)
                if failed is not None and now - failed[0] < self.retry_failed:
                    continue
                await self._bring_up(t)
            for name, live in self._running.items():
                live.tunnel = target[name]
                await self._sync_forwarders(live)

    def _needs_repair(self) -> bool:
        now = self.clock()
        if any(not live.runtime.alive for live in self._running.values()):
            return True
        return any(now - when >= self.retry_failed for when, _ in self._failed.values())

    async def _bring_up(self, t: Tunnel) -> None:
        stored = parse_floor(self.elector.annotation(floor_key(t.name)))
        runtime = self._runtime_factory(t)
        live = _Live(t, runtime)
        # Persist the bound before the first initiation can carry a timestamp up to it:
        # written now, not with the next renewal, or a crash in between would leave a new
        # leader a floor below what this node sent.
        self._persist_bound(live, floor=stored)
        if not await self.elector.flush_annotations():
            self._failed[t.name] = (self.clock(), "cannot store the TAI64N bound")
            log.error("tunnel %s: bring-up postponed: cannot store the TAI64N bound on the "
                      "lease", t.name)
            return
        self._running[t.name] = live  # recorded first: a cancelled start is still torn down
        try:
            await _in_thread(runtime.start, stored)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            del self._running[t.name]
            self._failed[t.name] = (self.clock(), str(e))
            log.error("tunnel %s: bring-up failed: %s", t.name, e)
            return
        self._failed.pop(t.name, None)

    async def _sync_forwarders(self, live: _Live) -> None:
        wanted = self._rules_for(live.tunnel)
        host = str(live.tunnel.vip.ip)
        for key in [k for k in live.forwarders if k not in wanted]:
            await live.forwarders.pop(key).close()
            live.rules.pop(key, None)
        for key, rule in wanted.items():
            fwd = live.forwarders.get(key)
            if fwd is not None:
                if fwd.targets != rule.targets:
                    fwd.update_targets(rule.targets)
                live.rules[key] = rule
                continue
            fwd = self._forwarder_factory(host, rule.port, rule.protocol, rule.targets)
            try:
                await fwd.start()
            except OSError as e:
                log.error(
                    "tunnel %s: cannot forward %s %s:%d: %s",
                    live.tunnel.name,
                    rule.protocol,
                    host,
                    rule.port,
                    e.strerror or e,
                )
                continue
            live.forwarders[key] = fwd
            live.rules[key] = rule
            log.info(
                "tunnel %s: forwarding %s %s:%d to %s (%s)",
                live.tunnel.name,
                rule.protocol,
                host,
                rule.port,
                ", ".join(f"{t.host}:{t.port}" for t in rule.targets) or "nothing",
                rule.source,
            )

    async def _teardown(self, names: Sequence[str]) -> None:
        """Forwarders of every named tunnel first, then the tunnels themselves."""
        lives = [self._running[n] for n in names]
        for live in lives:
            for fwd in live.forwarders.values():
                with contextlib.suppress(Exception):
                    await fwd.close()
            live.forwarders.clear()
            live.rules.clear()
        for live in lives:
            try:
                await _in_thread(live.runtime.stop)
            finally:
                del self._running[live.tunnel.name]

    # -- TAI64N floor ------------------------------------------------------------------------

    def _persist_bound(self, live: _Live, *, floor: bytes = tai64n.ZERO) -> None:
        bound = next_bound(
            floor=max(floor, live.bound),
            last_sent=live.runtime.last_timestamp_sent,
            wall_ns=self.wall_time_ns(),
            ahead=self.floor_ahead,
        )
        live.bound = bound
        self.elector.set_annotation(floor_key(live.tunnel.name), bound.hex())

    def _refresh_floors(self) -> None:
        wall = self.wall_time_ns()
        for live in self._running.values():
            last = live.runtime.last_timestamp_sent
            if tai64n.after(last, live.bound):
                # Cannot happen with a check period well below the margin; say so loudly.
                log.error("tunnel %s: sent a TAI64N beyond the persisted bound", live.tunnel.name)
            if needs_renewal(
                bound=live.bound, last_sent=last, wall_ns=wall, ahead=self.floor_ahead
            ):
                self._persist_bound(live)

    def _report_stalls(self) -> None:
        """kubernetes.md §6 mitigation 3: say so when the handshake does not complete."""
        for live in self._running.values():
            st = live.runtime.status()
            if st.handshakes == 0 and st.handshake_failures >= STALL_ATTEMPTS:
                if not live.stall_reported:
                    live.stall_reported = True
                    log.warning(
                        "tunnel %s: handshake stalled after %d attempts (possible clock skew, "
                        "or the VPN node is unreachable)",
                        live.tunnel.name,
                        st.handshake_failures,
                    )
            elif st.handshakes and live.stall_reported:
                live.stall_reported = False
                log.info("tunnel %s: handshake completed", live.tunnel.name)

    # -- run / stop / status -----------------------------------------------------------------

    async def run(self) -> None:
        """Wait for a configuration, then run for leadership until :meth:`stop`.

        Losing leadership tears everything down (in the callbacks) and re-enters candidacy.
        """
        try:
            stop_wait = asyncio.ensure_future(self._stop_event.wait())
            cfg_wait = asyncio.ensure_future(self._config_event.wait())
            await asyncio.wait({stop_wait, cfg_wait}, return_when=asyncio.FIRST_COMPLETED)
            stop_wait.cancel()
            cfg_wait.cancel()
            while not self._stopping:
                await self.elector.run()
                if self._stopping:
                    break
                log.warning("%s: leadership lost; running for it again", self.identity)
                await asyncio.sleep(self.restart_delay)
        finally:
            for task in list(self._tasks):
                task.cancel()
            self._leading = False
            self._status.leader = False
            await self._reconcile()  # nothing may stay up once run() returns

    def stop(self, *, release: bool = True) -> None:
        """End :meth:`run`: tear down, release leadership (unless ``release`` is False)."""
        self._stopping = True
        self._stop_event.set()
        self.elector.stop(release=release)

    @property
    def is_leader(self) -> bool:
        return self._leading

    def status(self) -> SupervisorStatus:
        """A fresh snapshot (the HTTP server renders it at scrape time)."""
        st = dataclasses.replace(self._status, tunnels={}, problems=dict(self._status.problems))
        for name, t in self._desired.items():
            live = self._running.get(name)
            if live is None:
                st.tunnels[name] = TunnelStatus(name=name, vip=str(t.vip))
                continue
            ts = live.runtime.status()
            ts.forwards = {k: f.stats for k, f in live.forwarders.items()}
            st.tunnels[name] = ts
        return st

    @property
    def running(self) -> list[str]:
        """Names of the tunnels currently up (for tests and logs)."""
        return sorted(self._running)

    def failed(self) -> dict[str, str]:
        """Tunnels whose last bring-up failed, with the error."""
        return {n: err for n, (_, err) in self._failed.items()}


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` in a thread; if cancelled, still wait for it to finish, so the
    caller's state (a tunnel half started) is settled before the cancellation propagates."""
    fut = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise
