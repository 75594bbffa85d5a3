"""``wgpy supervisor``: arguments, environment, logging, and the embedded (tunnels-file) mode.

Settings come from kube-vip's environment variable names where they exist (so a kube-vip
manifest carries over) and from flags for the rest; a flag given on the command line wins
over the environment. Durations are seconds (fractions allowed, kube-vip takes integers).

Two modes, one core (:class:`wgpy.supervisor.manager.Supervisor`):

* ``--tunnels-file FILE`` (embedded, no cluster): the ``tunnels`` YAML read from FILE, polled
  every second (mtime, inode, size) and re-applied live; leadership among the supervisors of
  this host through ``flock`` on ``--lock-file`` (shared by default); forwarding from each
  tunnel's ``forward:`` list. An invalid edit is logged and counted and changes nothing.
* otherwise Kubernetes mode, implemented by :mod:`wgpy.supervisor.kubemode`
  (``KubeSettings.from_env(env, **flags)``, ``run_kubernetes_mode(settings)``).

``--keylog TUNNEL=PATH`` (repeatable; debugging only) makes that tunnel's device append every
session's secrets to PATH, in Wireshark's key log format plus ``TRANSPORT_KEY`` lines
(:mod:`wgpy.io.keylog`). Each path is checked at start (created 0600; a symlink or a file others
can read is refused, exit status 2) and one warning per tunnel is logged.

``WGPY_CLOCK_OFFSET`` (seconds, may be negative) shifts the wall clock used for TAI64N
timestamps only. It exists to test a new leader whose clock is behind; never set it otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wgpy.core.errors import ConfigError
from wgpy.core.keys import redact
from wgpy.io.keyfiles import insecure_file_warning

log = logging.getLogger("wgpy.supervisor")

DEFAULT_LOCK_FILE = "/run/wgpy/supervisor.lock"
FILE_POLL = 1.0
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True)
class Settings:
    """Everything ``wgpy supervisor`` was told, resolved (flags > environment > defaults)."""

    node_name: str
    lease_name: str
    lease_namespace: str
    lease_duration: float
    renew_deadline: float
    retry_period: float
    secret_namespace: str
    cp_enable: bool
    svc_enable: bool
    vip_address: str
    pod_cidr: str | None
    service_cidr: str | None
    tunnels_file: str | None
    lock_file: str
    http_port: int | None
    log_format: str
    log_level: str
    kubeconfig: str | None
    clock_offset: float
    keylogs: tuple[tuple[str, str], ...] = ()  # (tunnel name, key log path)

    def wall_time_ns(self) -> Callable[[], int]:
        """The clock for TAI64N timestamps (shifted by ``WGPY_CLOCK_OFFSET``)."""
        offset = int(self.clock_offset * 1_000_000_000)
        if offset == 0:
            return time.time_ns
        return lambda: time.time_ns() + offset


# -- parsing ----------------------------------------------------------------------------------


def go_bool(text: str, what: str) -> bool:
    """Go's ``strconv.ParseBool``, as kube-vip reads its boolean variables."""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{what}={text!r} is not a boolean (use true or false)")


def _seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise ConfigError(f"{what} must be positive, got {text}")
    return value


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Hold a VIP over userspace WireGuard for the elected node (kube-vip's "
        "WireGuard mode). Environment variables as kube-vip: vip_nodename, vip_leasename, "
        "vip_leaseduration, vip_renewdeadline, vip_retryperiod, cp_enable, svc_enable, "
        "cp_namespace, vip_address (or address), POD_NAMESPACE, KUBECONFIG.",
    )
    p.add_argument("--tunnels-file", metavar="FILE", help="embedded mode: tunnels YAML file")
    p.add_argument(
        "--lock-file",
        metavar="PATH",
        help=f"embedded mode: election lock shared by this host's supervisors "
        f"(default {DEFAULT_LOCK_FILE})",
    )
    p.add_argument("--node-name", help="identity (env vip_nodename; default: hostname)")
    p.add_argument("--lease-name", help="Lease [ns/]name (env vip_leasename; plndr-cp-lock)")
    p.add_argument("--lease-duration", help="seconds (env vip_leaseduration; 15)")
    p.add_argument("--renew-deadline", help="seconds (env vip_renewdeadline; 10)")
    p.add_argument("--retry-period", help="seconds (env vip_retryperiod; 2)")
    p.add_argument("--namespace", help="Secret namespace (env cp_namespace; pod namespace)")
    p.add_argument("--vip-address", help="control-plane VIP (env vip_address or address)")
    p.add_argument("--pod-cidr", help="reject allowedIPs overlapping it (comma list)")
    p.add_argument("--service-cidr", help="reject allowedIPs overlapping it (comma list)")
    p.add_argument("--http-port", type=int, help="/healthz, /readyz, /metrics (default off)")
    p.add_argument("--kubeconfig", help="kubeconfig file (env KUBECONFIG; default in-cluster)")
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    p.add_argument(
        "--keylog",
        action="append",
        default=[],
        metavar="TUNNEL=PATH",
        help="debugging only: write TUNNEL's session keys to PATH (Wireshark key log format)",
    )
    return p


def _keylogs(items: list[str]) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--keylog {item!r}: expected TUNNEL=PATH")
        if name in out:
            raise ConfigError(f"--keylog: tunnel {name} given twice")
        out[name] = path
    return tuple(out.items())


def check_keylogs(keylogs: tuple[tuple[str, str], ...]) -> None:
    """Refuse an unsafe key log path now (``ConfigError``), and warn once per tunnel."""
    from wgpy.io.keylog import KeyLogRefused, KeyLogWriter, warning_text

    for name, path in keylogs:
        try:
            KeyLogWriter(path)
        except KeyLogRefused as e:
            raise ConfigError(f"--keylog {name}: {e}") from None
        log.warning("tunnel %s: %s", name, warning_text(path))


def resolve(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Combine flags and environment into :class:`Settings` (``ConfigError`` on bad input)."""

    def pick(flag: Any, *names: str) -> str | None:
        if flag is not None:
            return str(flag)
        for n in names:
            if env.get(n):
                return env[n]
        return None

    node = (pick(args.node_name, "vip_nodename") or socket.gethostname()).lower()
    pod_ns = env.get("POD_NAMESPACE") or ""
    cp_ns = pick(args.namespace, "cp_namespace")
    lease = pick(args.lease_name, "vip_leasename") or "plndr-cp-lock"
    if "/" in lease:
        lease_ns, lease = lease.split("/", 1)
    else:
        lease_ns = pod_ns or cp_ns or "kube-system"
    if not lease or not lease_ns:
        raise ConfigError(f"lease name {lease!r}: expected NAME or NAMESPACE/NAME")
    duration = _seconds(pick(args.lease_duration, "vip_leaseduration") or "15", "vip_leaseduration")
    renew = _seconds(pick(args.renew_deadline, "vip_renewdeadline") or "10", "vip_renewdeadline")
    retry = _seconds(pick(args.retry_period, "vip_retryperiod") or "2", "vip_retryperiod")
    http_port = args.http_port
    if http_port is not None and not 0 <= http_port <= 65535:
        raise ConfigError(f"--http-port {http_port} out of range 0..65535")
    offset_text = env.get("WGPY_CLOCK_OFFSET", "0") or "0"
    try:
        offset = float(offset_text)
    except ValueError:
        raise ConfigError(f"WGPY_CLOCK_OFFSET={offset_text!r} is not a number") from None
    return Settings(
        node_name=node,
        lease_name=lease,
        lease_namespace=lease_ns,
        lease_duration=duration,
        renew_deadline=renew,
        retry_period=retry,
        secret_namespace=cp_ns or pod_ns or "default",
        cp_enable=go_bool(env.get("cp_enable", "true") or "true", "cp_enable"),
        svc_enable=go_bool(env.get("svc_enable", "true") or "true", "svc_enable"),
        vip_address=pick(args.vip_address, "vip_address", "address") or "",
        pod_cidr=args.pod_cidr,
        service_cidr=args.service_cidr,
        tunnels_file=args.tunnels_file,
        lock_file=pick(args.lock_file) or DEFAULT_LOCK_FILE,
        http_port=http_port,
        log_format=args.log_format,
        log_level=args.log_level,
        kubeconfig=pick(args.kubeconfig, "KUBECONFIG"),
        clock_offset=offset,
        keylogs=_keylogs(args.keylog),
    )


# -- logging ----------------------------------------------------------------------------------


class TextFormatter(logging.Formatter):
    """kube-vip's slog text shape (``2026/09/04 08:37:59 INFO msg``), key-shaped strings
    hidden: no code path logs a key, and this is the defence in depth if one ever quotes one
    (an exception message, a library's debug output)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(message)s", "%Y/%m/%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg (and the exception, if any);
    key-shaped strings hidden as in :class:`TextFormatter`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out)


def setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# -- embedded mode ----------------------------------------------------------------------------


def _file_key(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def load_tunnels_file(path: str, s: Settings) -> dict[str, Any]:
    """Read and validate the file (``ConfigError`` with the reason)."""
    from wgpy.supervisor.config import parse_tunnels

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        return dict(parse_tunnels(text, pod_cidr=s.pod_cidr, service_cidr=s.service_cidr))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


async def _watch_file(path: str, s: Settings, sup: Any, key: Any) -> None:
    """Poll ``path``; apply a valid change, reject (log, count) an invalid one."""
    while True:
        await asyncio.sleep(FILE_POLL)
        new_key = _file_key(path)
        if new_key == key:
            continue
        key = new_key
        try:
            tunnels = load_tunnels_file(path, s)
        except ConfigError as e:
            sup.reject_config(str(e))
            continue
        log.info("%s changed: applying", path)
        sup.apply_tunnels(tunnels)


def _start_http(s: Settings, status: Callable[[], Any]) -> Any:
    """The k8s engineer's HTTP server if present (``HttpServer(status, loop=, port=)``)."""
    if s.http_port is None:
        return None
    if importlib.util.find_spec("wgpy.supervisor.http") is None:
        log.warning("--http-port given but this build has no HTTP server; skipping")
        return None
    http = importlib.import_module("wgpy.supervisor.http")
    server = http.HttpServer(status, loop=asyncio.get_running_loop(), port=s.http_port)
    port = server.start()
    log.info("serving /healthz, /readyz and /metrics on port %s", port)
    return server


async def run_embedded(s: Settings) -> int:
    """The tunnels-file mode; returns the exit status."""
    from wgpy.supervisor.locallock import LocalLockElector
    from wgpy.supervisor.manager import Supervisor

    assert s.tunnels_file is not None
    path = s.tunnels_file
    key = _file_key(path)
    warning = insecure_file_warning(path)  # the file holds the cluster's private keys
    if warning:
        log.warning("%s", warning.removeprefix("Warning: "))
    try:
        tunnels = load_tunnels_file(path, s)
        check_keylogs(s.keylogs)
    except ConfigError as e:
        log.error("%s", e)
        return 2

    def elector(**callbacks: Any) -> LocalLockElector:
        return LocalLockElector(s.lock_file, s.node_name, retry_period=s.retry_period, **callbacks)

    sup = Supervisor(
        s.node_name, elector_factory=elector, wall_time_ns=s.wall_time_ns(), keylogs=dict(s.keylogs)
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sup.stop)
    if s.clock_offset:
        log.warning("TAI64N clock offset %+.3f s (WGPY_CLOCK_OFFSET): testing only", s.clock_offset)
    log.info(
        "%s: embedded mode, tunnels from %s, lock %s (retry %.2f s)",
        s.node_name,
        path,
        s.lock_file,
        s.retry_period,
    )
    sup.apply_tunnels(tunnels)
    server = _start_http(s, sup.status)
    watcher = asyncio.create_task(_watch_file(path, s, sup, key))
    try:
        await sup.run()
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if server is not None:
            server.stop()
    log.info("%s: stopped", s.node_name)
    return 0


def run_kubernetes(args: argparse.Namespace, s: Settings) -> int:
    """Kubernetes mode, implemented by :mod:`wgpy.supervisor.kubemode`: its ``KubeSettings``
    reads kube-vip's environment; the flags given here override it."""
    if importlib.util.find_spec("wgpy.supervisor.kubemode") is None:
        log.error(
            "Kubernetes mode is not available in this build (no wgpy.supervisor.kubemode); "
            "use --tunnels-file FILE for the embedded mode"
        )
        return 2
    kube = importlib.import_module("wgpy.supervisor.kubemode")
    lease_ns = lease = None
    if args.lease_name is not None:
        lease_ns, lease = s.lease_namespace, s.lease_name
    flags = {
        "identity": s.node_name if args.node_name is not None else None,
        "lease_name": lease,
        "lease_namespace": lease_ns,
        "lease_duration": s.lease_duration if args.lease_duration is not None else None,
        "renew_deadline": s.renew_deadline if args.renew_deadline is not None else None,
        "retry_period": s.retry_period if args.retry_period is not None else None,
        "cp_namespace": args.namespace,
        "vip_address": args.vip_address,
        "pod_cidr": args.pod_cidr,
        "service_cidr": args.service_cidr,
        "http_port": args.http_port,
        "kubeconfig": s.kubeconfig,
        "keylogs": s.keylogs or None,
    }
    try:
        settings = kube.KubeSettings.from_env(os.environ, **flags)
        check_keylogs(s.keylogs)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    try:
        return int(asyncio.run(kube.run_kubernetes_mode(settings)))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # e.g. no usable kubeconfig / in-cluster config
        log.error("kubernetes mode failed: %s: %s", type(e).__name__, e)
        return 1


def main(argv: list[str], prog: str = "wgpy supervisor") -> int:
    """Entry point of ``wgpy supervisor`` (registered in :mod:`wgpy.tools.cli`)."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.log_format, args.log_level)
    try:
        s = resolve(args, os.environ)
    except ConfigError as e:
        log.error("%s", e)
        return 2
    if s.tunnels_file is not None:
        try:
            return asyncio.run(run_embedded(s))
        except KeyboardInterrupt:
            return 130
    return run_kubernetes(args, s)
