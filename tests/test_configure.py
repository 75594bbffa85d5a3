"""Applying UAPI set requests to a Device: atomic, bounded, wireguard-go's semantics."""

from __future__ import annotations

import errno

import pytest

from noise import crypto
from wgpy.core import configure, uapi
from wgpy.core.device import Device
from wgpy.core.errors import UapiError


def _dev(**kw: int) -> Device:
    return Device(wall_time_ns=lambda: 1_700_000_000 * 10**9, **kw)  # type: ignore[arg-type]


def _pub() -> bytes:
    return crypto.public_key(crypto.generate_private_key())


def _apply(dev: Device, lines: list[str], **kw: object) -> None:
    configure.apply_set(dev, uapi.parse_set(lines), now=0.0, **kw)  # type: ignore[arg-type]


def test_peers_keys_and_allowed_ips_applied_and_snapshot_matches() -> None:
    dev = _dev()
    priv, p1, psk = crypto.generate_private_key(), _pub(), crypto.generate_private_key()
    _apply(dev, [
        f"private_key={priv.hex()}", "listen_port=51820", "fwmark=7",
        f"public_key={p1.hex()}", f"preshared_key={psk.hex()}", "endpoint=192.0.2.1:1",
        "persistent_keepalive_interval=0", "allowed_ip=10.1.2.3/16", "allowed_ip=fd00::/64",
    ])  # fmt: skip
    snap = configure.snapshot(dev)
    assert snap.private_key == crypto.clamp(priv) and snap.listen_port == 51820
    assert snap.fwmark == 7
    (peer,) = snap.peers
    assert peer.public_key == p1 and peer.preshared_key == psk
    assert peer.endpoint == "192.0.2.1:1"
    assert [str(n) for n in peer.allowed_ips] == ["10.1.0.0/16", "fd00::/64"]
    text = uapi.format_get(snap)
    assert uapi.parse_get(text).peers[0].public_key == p1


def test_too_many_peers_refused_before_any_change() -> None:
    dev = _dev(max_peers=2)
    _apply(dev, [f"public_key={_pub().hex()}"])
    before = configure.snapshot(dev)
    with pytest.raises(UapiError) as e:
        _apply(dev, ["listen_port=4000", *(f"public_key={_pub().hex()}" for _ in range(2))])
    assert e.value.errno == errno.ENOSPC
    assert configure.snapshot(dev) == before


def test_too_many_allowed_ips_refused_before_any_change() -> None:
    dev = _dev(max_allowed_ips=3)
    p = _pub()
    lines = [f"public_key={p.hex()}", *(f"allowed_ip=10.0.{i}.0/24" for i in range(4))]
    with pytest.raises(UapiError) as e:
        _apply(dev, lines)
    assert e.value.errno == errno.ENOSPC
    assert dev.peers == {} and len(dev.allowed_ips) == 0


def test_port_bind_failure_changes_nothing() -> None:
    dev = _dev()
    p = _pub()

    def refuse(port: int) -> int:
        raise UapiError("in use", errno.EADDRINUSE)

    with pytest.raises(UapiError):
        _apply(dev, ["listen_port=1234", f"public_key={p.hex()}"], bind_port=refuse)
    assert dev.peers == {} and dev.listen_port == 0


def test_update_only_remove_replace_and_own_key() -> None:
    dev = _dev()
    priv = crypto.generate_private_key()
    own = crypto.public_key(priv)
    p1, p2 = _pub(), _pub()
    _apply(dev, [f"private_key={priv.hex()}", f"public_key={own.hex()}", "allowed_ip=10.0.0.1/32"])
    assert dev.peers == {}  # a section for our own key is ignored
    _apply(dev, [f"public_key={p1.hex()}", "update_only=true"])
    assert dev.peers == {}  # update_only does not create
    _apply(dev, [f"public_key={p1.hex()}", "allowed_ip=10.0.0.1/32",
                 f"public_key={p2.hex()}", "allowed_ip=10.0.0.2/32"])  # fmt: skip
    _apply(dev, [f"public_key={p1.hex()}", "remove=true"])
    assert list(dev.peers) == [p2] and dev.allowed_ips.lookup_str("10.0.0.1") is None
    _apply(dev, ["replace_peers=true", f"public_key={p1.hex()}"])
    assert list(dev.peers) == [p1]
    # moving a prefix to another peer (last writer wins), then removing it by owner only
    _apply(dev, [f"public_key={p2.hex()}", "allowed_ip=10.9.0.0/16",
                 f"public_key={p1.hex()}", "allowed_ip=10.9.0.0/16"])  # fmt: skip
    assert dev.allowed_ips.lookup_str("10.9.1.1") is dev.peers[p1]
    _apply(dev, [f"public_key={p2.hex()}", "allowed_ip=-10.9.0.0/16"])
    assert dev.allowed_ips.lookup_str("10.9.1.1") is dev.peers[p1]
    _apply(dev, [f"public_key={p1.hex()}", "replace_allowed_ips=true"])
    assert dev.allowed_ips.lookup_str("10.9.1.1") is None


def test_enabling_persistent_keepalive_sends_one_when_session_exists() -> None:
    dev = _dev()
    _apply(dev, [f"private_key={crypto.generate_private_key().hex()}"])
    p = _pub()
    _apply(dev, [f"public_key={p.hex()}", "endpoint=192.0.2.1:1",
                 "persistent_keepalive_interval=25"])  # fmt: skip
    out = dev.datagrams_to_send()
    # no session yet: the keepalive waits and an initiation goes out instead
    assert [len(d) for d, _ in out] == [148]
    assert dev.peers[p].persistent_keepalive_interval == 25
