"""``wgpy show``: the text of ``wg show`` (wireguard-tools ``show.c``) from UAPI snapshots.

The formatting functions are pure: they take a :class:`~wgpy.core.uapi.DeviceSnapshot` and, for
the "ago" column, ``now`` in Unix seconds. Output matches ``wg`` with colours off (what ``wg``
prints into a pipe), with one deliberate difference: the private key and preshared keys are
never printed. ``wg`` shows them as ``(hidden)`` in the pretty form already, but prints them
in full in ``dump``, ``private-key`` and ``preshared-keys``; wgpy prints ``(hidden)`` there
too (``(none)`` still means "not set"), since keys are never shown by this project.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from wgpy.core.keys import HIDDEN, public_key, to_base64
from wgpy.core.uapi import DeviceSnapshot, Network, PeerSnapshot, format_ip
from wgpy.io import uapi_client

FIELDS = (
    "public-key",
    "private-key",
    "listen-port",
    "fwmark",
    "peers",
    "preshared-keys",
    "endpoints",
    "allowed-ips",
    "latest-handshakes",
    "transfer",
    "persistent-keepalive",
    "dump",
)
_USAGE = "Usage: {prog} {{ <interface> | all | interfaces }} [" + " | ".join(FIELDS) + "]"


# --- value formatting (show.c helpers) ------------------------------------------------------------


def pretty_time(seconds: int) -> str:
    """``1 minute, 5 seconds`` (empty for 0), as ``pretty_time`` in show.c."""
    units = (("year", 365 * 24 * 3600), ("day", 24 * 3600), ("hour", 3600), ("minute", 60))
    parts: list[str] = []
    left = seconds
    for name, size in units:
        n, left = divmod(left, size)
        if n:
            parts.append(f"{n} {name}{'' if n == 1 else 's'}")
    if left:
        parts.append(f"{left} second{'' if left == 1 else 's'}")
    return ", ".join(parts)


def ago(then: int, *, now: int) -> str:
    if now == then:
        return "Now"
    if now < then:
        return "(System clock wound backward; connection problems may ensue.)"
    return pretty_time(now - then) + " ago"


def human_bytes(n: int) -> str:
    """``1.23 KiB``: two decimals from KiB up, as ``bytes()`` in show.c."""
    if n < 1024:
        return f"{n} B"
    for i, unit in enumerate(("KiB", "MiB", "GiB"), 1):
        if n < 1024 ** (i + 1):
            return f"{n / 1024**i:.2f} {unit}"
    return f"{n / 1024**4:.2f} TiB"


def endpoint_text(value: str) -> str:
    """The endpoint as ``wg`` prints it: resolved numerically, ``[v6]:port`` for IPv6.

    ``wg`` runs the UAPI text through getaddrinfo and getnameinfo; do the same so that
    spellings such as ``[::ffff:1.2.3.4]:5`` come out identically.
    """
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
    try:
        infos = socket.getaddrinfo(
            host,
            port,
            socket.AF_UNSPEC,
            socket.SOCK_DGRAM,
            socket.IPPROTO_UDP,
            socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
        )
        name, serv = socket.getnameinfo(
            infos[0][4], socket.NI_NUMERICHOST | socket.NI_NUMERICSERV | socket.NI_DGRAM
        )
    except (OSError, IndexError):
        return value
    return f"[{name}]:{serv}" if ":" in name else f"{name}:{serv}"


def _net(net: Network) -> str:
    return f"{format_ip(net.network_address)}/{net.prefixlen}"


def _hidden(key: bytes | None) -> str:
    return "(none)" if key is None or not any(key) else HIDDEN


def _pub(snap: DeviceSnapshot) -> str:
    if snap.private_key is None or not any(snap.private_key):
        return "(none)"
    return to_base64(public_key(snap.private_key))


def _sorted_peers(peers: list[PeerSnapshot]) -> list[PeerSnapshot]:
    """Most recent handshake first, never-handshaked last (``sort_peers``; stable)."""
    return sorted(
        peers, key=lambda p: -(p.last_handshake_time_sec * 10**9 + p.last_handshake_time_nsec)
    )


# --- the three output forms ----------------------------------------------------------------------


def pretty(name: str, snap: DeviceSnapshot, *, now: int) -> str:
    """``wg show IFACE``. ``now`` is Unix time in whole seconds (``time(NULL)``)."""
    out = [f"interface: {name}"]
    if snap.private_key is not None and any(snap.private_key):
        out.append(f"  public key: {_pub(snap)}")
        out.append(f"  private key: {HIDDEN}")
    if snap.listen_port:
        out.append(f"  listening port: {snap.listen_port}")
    if snap.fwmark:
        out.append(f"  fwmark: 0x{snap.fwmark:x}")
    peers = _sorted_peers(snap.peers)
    for p in peers:
        out.append("")
        out.append(f"peer: {to_base64(p.public_key)}")
        if p.preshared_key is not None and any(p.preshared_key):
            out.append(f"  preshared key: {HIDDEN}")
        if p.endpoint:
            out.append(f"  endpoint: {endpoint_text(p.endpoint)}")
        ips = ", ".join(_net(n) for n in p.allowed_ips) or "(none)"
        out.append(f"  allowed ips: {ips}")
        if p.last_handshake_time_sec:
            out.append(f"  latest handshake: {ago(p.last_handshake_time_sec, now=now)}")
        if p.rx_bytes or p.tx_bytes:
            out.append(
                f"  transfer: {human_bytes(p.rx_bytes)} received, {human_bytes(p.tx_bytes)} sent"
            )
        if p.persistent_keepalive_interval:
            every = pretty_time(p.persistent_keepalive_interval)
            out.append(f"  persistent keepalive: every {every}")
    return "\n".join(out) + "\n"


def field(name: str, snap: DeviceSnapshot, what: str, *, with_interface: bool) -> str:
    """``wg show IFACE WHAT`` (``ugly_print``); ``with_interface`` prefixes ``IFACE\\t``.

    Raises ``ValueError`` for an unknown ``what``.
    """
    pre = f"{name}\t" if with_interface else ""
    lines: list[str] = []
    fw = f"0x{snap.fwmark:x}" if snap.fwmark else "off"
    if what == "public-key":
        lines.append(pre + _pub(snap))
    elif what == "private-key":
        lines.append(pre + _hidden(snap.private_key))
    elif what == "listen-port":
        lines.append(f"{pre}{snap.listen_port}")
    elif what == "fwmark":
        lines.append(pre + fw)
    elif what == "dump":
        lines.append(f"{pre}{_hidden(snap.private_key)}\t{_pub(snap)}\t{snap.listen_port}\t{fw}")
    elif what not in FIELDS:
        raise ValueError(what)
    for p in snap.peers if what not in FIELDS[:4] else []:
        key = pre + to_base64(p.public_key)
        ep = endpoint_text(p.endpoint) if p.endpoint else "(none)"
        keepalive = str(p.persistent_keepalive_interval or "off")
        if what == "peers":
            lines.append(key)
        elif what == "preshared-keys":
            lines.append(f"{key}\t{_hidden(p.preshared_key)}")
        elif what == "endpoints":
            # show.c prints the interface prefix once, before the loop, for this one field.
            lines.append(f"{key if not lines else key[len(pre) :]}\t{ep}")
        elif what == "allowed-ips":
            lines.append(f"{key}\t" + (" ".join(_net(n) for n in p.allowed_ips) or "(none)"))
        elif what == "latest-handshakes":
            lines.append(f"{key}\t{p.last_handshake_time_sec}")
        elif what == "transfer":
            lines.append(f"{key}\t{p.rx_bytes}\t{p.tx_bytes}")
        elif what == "persistent-keepalive":
            lines.append(f"{key}\t{keepalive}")
        else:  # dump
            ips = ",".join(_net(n) for n in p.allowed_ips) or "(none)"
            lines.append(
                f"{key}\t{_hidden(p.preshared_key)}\t{ep}\t{ips}\t{p.last_handshake_time_sec}"
                f"\t{p.rx_bytes}\t{p.tx_bytes}\t{keepalive}"
            )
    if what == "endpoints" and not lines:
        return pre  # the same quirk: a device without peers leaves "IFACE\t" unterminated
    return "".join(line + "\n" for line in lines)


# --- the command -------------------------------------------------------------------------------


def _fetch(name: str, directory: str | None) -> DeviceSnapshot:
    return uapi_client.get(name, directory=directory)


def _error_text(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def show(
    target: str | None, what: str | None, *, directory: str | None = None, out: list[str]
) -> tuple[int, list[str]]:
    """Run ``wg show [target] [what]``; append stdout text to ``out``, return (rc, errors)."""
    errors: list[str] = []
    now = int(time.time())
    if what is not None and what not in FIELDS:
        return 1, [f"Invalid parameter: `{what}'"]
    if target is None or target == "all":
        names = uapi_client.list_interfaces(directory)
        rc = 1 if names else 0  # as show.c: 0 once any interface could be shown
        for i, name in enumerate(names):
            try:
                snap = _fetch(name, directory)
            except (OSError, ValueError) as exc:
                errors.append(f"Unable to access interface {name}: {_error_text(exc)}")
                continue
            if what is None:
                out.append(pretty(name, snap, now=now) + ("\n" if i + 1 < len(names) else ""))
            else:
                out.append(field(name, snap, what, with_interface=True))
            rc = 0
        return rc, errors
    if target == "interfaces":
        if what is not None:
            return 1, []
        names = uapi_client.list_interfaces(directory)
        if names:
            out.append(" ".join(names) + "\n")
        return 0, errors
    try:
        snap = _fetch(target, directory)
    except (OSError, ValueError) as exc:
        return 1, [f"Unable to access interface: {_error_text(exc)}"]
    if what is None:
        out.append(pretty(target, snap, now=now))
    else:
        out.append(field(target, snap, what, with_interface=False))
    return 0, errors


def main(argv: list[str], prog: str) -> int:
    """``wgpy show [IFACE | all | interfaces] [FIELD]``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show userspace WireGuard interfaces, as `wg show` does (keys stay hidden).",
        usage=_USAGE.format(prog=prog),
    )
    parser.add_argument("target", nargs="?", help="interface name, `all' or `interfaces'")
    parser.add_argument("what", nargs="?", help="one field, or `dump' for all of them")
    parser.add_argument("--socket-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    usage_error = (args.target in FIELDS and args.what is None) or (
        args.target == "interfaces" and args.what is not None
    )
    if args.what is not None and args.what not in FIELDS:
        print(f"Invalid parameter: `{args.what}'", file=sys.stderr)
        usage_error = True
    if usage_error:
        print(_USAGE.format(prog=prog), file=sys.stderr)
        return 1
    out: list[str] = []
    rc, errors = show(args.target, args.what, directory=args.socket_dir, out=out)
    sys.stdout.write("".join(out))
    sys.stdout.flush()
    for e in errors:
        print(e, file=sys.stderr)
    return rc
