"""Apply a UAPI ``set`` request to a ``Device`` and take the ``get`` snapshot (sans-IO).

wireguard-go applies ``set`` lines in order until the first error; wgpy validates the whole
request first (``wgpy.core.uapi.parse_set``), checks capacity, rebinds the port through a callback
before touching anything else, and only then applies, so a failing request changes nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from wgpy.core import uapi
from wgpy.core.device import Device
from wgpy.core.errors import CapacityError, UapiError
from wgpy.core.keys import public_key


def _own_public(device: Device, req: uapi.SetRequest) -> bytes | None:
    if req.private_key is uapi.REMOVE_KEY:
        return None
    if isinstance(req.private_key, bytes):
        return public_key(req.private_key)
    return device.public_key


def _check_capacity(device: Device, req: uapi.SetRequest) -> None:
    existing = 0 if req.replace_peers else len(device.peers)
    new_peers = {p.public_key for p in req.peers if not p.remove and not p.update_only}
    new_peers -= set(device.peers) if not req.replace_peers else set()
    if existing + len(new_peers) > device.max_peers:
        raise UapiError(f"too many peers (limit {device.max_peers})", errno.ENOSPC)
    adds = sum(1 for p in req.peers for op, _ in p.allowed_ip_ops if op == "add")
    if len(device.allowed_ips) + adds > device.max_allowed_ips:
        raise UapiError("too many allowed IPs", errno.ENOSPC)


def apply_set(
    device: Device,
    req: uapi.SetRequest,
    *,
    now: float,
    bind_port: Callable[[int], int] | None = None,
) -> None:
    """Apply a validated request. Raises ``UapiError`` before any change if it cannot apply.

    ``bind_port(port)`` opens the UDP socket(s) on ``port`` (0 = random) and returns the port
    actually bound; it raises ``UapiError(EADDRINUSE)`` on failure. After calling this, drain
    ``device.datagrams_to_send()``.
    """
    _check_capacity(device, req)
    if req.listen_port is not None and req.listen_port != device.listen_port:
        if bind_port is not None:
            device.listen_port = bind_port(req.listen_port)
        else:
            device.listen_port = req.listen_port
    if req.fwmark is not None:
        device.fwmark = req.fwmark
    if req.private_key is uapi.REMOVE_KEY:
        device.set_private_key(None, now=now)
    elif isinstance(req.private_key, bytes):
        device.set_private_key(req.private_key, now=now)
    if req.replace_peers:
        for pk in list(device.peers):
            device.remove_peer(pk)
    own = _own_public(device, req)
    for upd in req.peers:
        if own is not None and upd.public_key == own:
            continue
        existed = upd.public_key in device.peers
        if upd.update_only and not existed:
            continue
        try:
            peer = device.add_peer(upd.public_key, now=now)
        except CapacityError as e:  # pre-checked above; kept as a clear error
            raise UapiError(str(e), errno.ENOSPC) from None
        if upd.preshared_key is not None:
            device.set_preshared_key(peer, upd.preshared_key if any(upd.preshared_key) else None)
        if upd.endpoint is not None:
            device.set_endpoint(peer, upd.endpoint)
        for op, net in upd.allowed_ip_ops:
            if op == "replace":
                device.allowed_ips.remove_by_owner(peer)
            elif op == "add" and net is not None:
                device.allowed_ips.insert(net, peer)
            elif op == "remove" and net is not None:
                device.allowed_ips.remove(net, peer)
        if upd.remove:
            device.remove_peer(upd.public_key)
            continue
        if upd.persistent_keepalive_interval is not None:
            device.set_persistent_keepalive(peer, upd.persistent_keepalive_interval, now=now)
        # after each section: flush what waited for this configuration
        device.flush(peer, now=now)


def snapshot(device: Device) -> uapi.DeviceSnapshot:
    """What ``get=1`` reports, in wireguard-go's field order."""
    peers = []
    for peer in device.peers.values():
        sec, nsec = divmod(peer.last_handshake_ns, 1_000_000_000)
        peers.append(
            uapi.PeerSnapshot(
                public_key=peer.public_key,
                preshared_key=peer.preshared_key,
                endpoint=uapi.format_endpoint(*peer.endpoint) if peer.endpoint else None,
                last_handshake_time_sec=sec,
                last_handshake_time_nsec=nsec,
                tx_bytes=peer.tx_bytes,
                rx_bytes=peer.rx_bytes,
                persistent_keepalive_interval=peer.persistent_keepalive_interval,
                allowed_ips=device.allowed_ips.entries(peer),
            )
        )
    return uapi.DeviceSnapshot(
        private_key=device.static.private if device.static else None,
        listen_port=device.listen_port,
        fwmark=device.fwmark,
        peers=peers,
    )
