"""The real `wg` and `wg-quick` driving wgpy-userspace; wgpy-userspace's own error cases."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import WGPY, interop
from wgpy import testbed as tb
from wgpy.core.keys import parse_base64_key
from wgpy.tools import quickconf

pytestmark = interop


@pytest.fixture
def ns() -> Iterator[tb.Namespace]:
    with tb.Namespace() as n:
        yield n


@pytest.fixture
def dev(ns: tb.Namespace) -> Iterator[tb.WgInstance]:
    with tb.WgInstance(ns, WGPY) as w:
        yield w


def _keyfile(tmp_path: Path, name: str, key: str) -> str:
    p = tmp_path / name
    p.write_text(key + "\n")
    p.chmod(0o600)
    return str(p)


def test_wg_set_and_show_every_field(dev: tb.WgInstance, tmp_path: Path) -> None:
    priv, psk = tb.genkey(), tb.genpsk()
    p1, p2 = tb.pubkey(tb.genkey()), tb.pubkey(tb.genkey())
    dev.wg(
        "set", "wg0",
        "private-key", _keyfile(tmp_path, "priv", priv),
        "listen-port", "51999",
        "fwmark", "0x20",
        "peer", p1,
        "preshared-key", _keyfile(tmp_path, "psk", psk),
        "endpoint", "192.168.5.1:1234",
        "persistent-keepalive", "25",
        "allowed-ips", "10.1.2.3/16,fd00::1/64",
        "peer", p2,
        "endpoint", "[fd00::9]:5555",
        "allowed-ips", "10.9.0.0/24",
    )  # fmt: skip
    d = dev.show_dump()
    assert d.public_key == tb.pubkey(priv)
    assert d.listen_port == 51999 and d.fwmark == 0x20
    peers = {p.public_key: p for p in d.peers}
    assert set(peers) == {p1, p2}
    assert peers[p1].has_preshared_key and not peers[p2].has_preshared_key
    assert peers[p1].endpoint == "192.168.5.1:1234"
    assert peers[p2].endpoint == "[fd00::9]:5555"
    assert set(peers[p1].allowed_ips) == {"10.1.0.0/16", "fd00::/64"}  # masked on insert
    assert peers[p1].persistent_keepalive == 25 and peers[p2].persistent_keepalive is None
    # single-field forms of `wg show`
    assert dev.wg("show", "wg0", "listen-port").stdout.strip() == "51999"
    assert dev.wg("show", "wg0", "fwmark").stdout.strip() == "0x20"
    assert dev.wg("show", "wg0", "private-key").stdout.strip() == priv
    assert sorted(dev.wg("show", "wg0", "peers").stdout.split()) == sorted([p1, p2])
    psks = dict(
        ln.split("\t") for ln in dev.wg("show", "wg0", "preshared-keys").stdout.splitlines()
    )
    assert psks == {p1: psk, p2: "(none)"}
    keepalives = dict(
        ln.split("\t") for ln in dev.wg("show", "wg0", "persistent-keepalive").stdout.splitlines()
    )
    assert keepalives == {p1: "25", p2: "off"}
    pretty = dev.wg("show", "wg0").stdout
    assert "private key: (hidden)" in pretty and priv not in pretty and psk not in pretty
    assert "listening port: 51999" in pretty
    # showconf round-trips through the wg-quick parser
    conf = quickconf.parse(dev.wg("showconf", "wg0").stdout)
    assert conf.private_key == parse_base64_key(priv)
    assert conf.listen_port == 51999
    got = {p.public_key: p for p in conf.peers}
    assert got[parse_base64_key(p1)].preshared_key == parse_base64_key(psk)
    assert got[parse_base64_key(p1)].persistent_keepalive == 25
    # remove one peer, change another's allowed IPs (replace semantics)
    dev.wg("set", "wg0", "peer", p1, "remove")
    dev.wg("set", "wg0", "peer", p2, "allowed-ips", "10.8.0.0/16")
    d = dev.show_dump()
    assert [p.public_key for p in d.peers] == [p2]
    assert d.peers[0].allowed_ips == ("10.8.0.0/16",)
    # zero listen-port means random; fwmark off
    dev.wg("set", "wg0", "fwmark", "off")
    assert dev.show_dump().fwmark is None


def _conf(priv: str, port: int, peers: list[tuple[str, str]]) -> str:
    lines = ["[Interface]", f"PrivateKey = {priv}", f"ListenPort = {port}", ""]
    for pub, ips in peers:
        lines += ["[Peer]", f"PublicKey = {pub}", f"AllowedIPs = {ips}", ""]
    return "\n".join(lines)


def test_wg_setconf_addconf_syncconf(dev: tb.WgInstance, tmp_path: Path) -> None:
    priv = tb.genkey()
    pk = [tb.pubkey(tb.genkey()) for _ in range(4)]
    c1 = tmp_path / "c1.conf"
    c1.write_text(_conf(priv, 51820, [(pk[0], "10.0.0.1/32"), (pk[1], "10.0.0.2/32")]))
    dev.wg("setconf", "wg0", str(c1))
    d = dev.show_dump()
    assert {p.public_key for p in d.peers} == {pk[0], pk[1]} and d.listen_port == 51820
    c2 = tmp_path / "c2.conf"
    c2.write_text("\n".join(["[Peer]", f"PublicKey = {pk[2]}", "AllowedIPs = 10.0.0.3/32", ""]))
    dev.wg("addconf", "wg0", str(c2))
    assert {p.public_key for p in dev.show_dump().peers} == {pk[0], pk[1], pk[2]}
    c3 = tmp_path / "c3.conf"
    c3.write_text(_conf(priv, 51821, [(pk[1], "10.0.0.22/32"), (pk[3], "10.0.0.4/32")]))
    dev.wg("syncconf", "wg0", str(c3))
    d = dev.show_dump()
    peers = {p.public_key: p for p in d.peers}
    assert set(peers) == {pk[1], pk[3]} and d.listen_port == 51821
    assert peers[pk[1]].allowed_ips == ("10.0.0.22/32",)
    # setconf replaces everything
    dev.wg("setconf", "wg0", str(c1))
    assert {p.public_key for p in dev.show_dump().peers} == {pk[0], pk[1]}


def test_port_in_use_is_refused_and_nothing_changes(
    dev: tb.WgInstance, ns: tb.Namespace, tmp_path: Path
) -> None:
    priv = tb.genkey()
    dev.wg("set", "wg0", "private-key", _keyfile(tmp_path, "k", priv), "listen-port", "51820")
    holder = ns.popen(
        [sys.executable, "-c", "import socket,time;s=socket.socket(2,2);s.bind(('0.0.0.0',51555));"
         "print('ok',flush=True);time.sleep(60)"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().startswith(b"ok")
        r = dev.wg("set", "wg0", "listen-port", "51555", "peer", tb.pubkey(tb.genkey()),
                   check=False)  # fmt: skip
        assert r.returncode != 0
        assert "Address in use" in r.stderr or "Address already in use" in r.stderr
        d = dev.show_dump()
        assert d.listen_port == 51820 and d.peers == ()  # atomic: the peer was not added
        assert d.public_key == tb.pubkey(priv)
    finally:
        holder.kill()
        holder.wait()


def test_sigterm_removes_interface_and_socket(ns: tb.Namespace) -> None:
    w = tb.WgInstance(ns, WGPY).start()
    try:
        assert ns.run(["ip", "link", "show", "wg0"], check=False).returncode == 0
        sock = w.socket_path
        os.kill(w.pid, signal.SIGTERM)
        assert w.proc is not None and w.proc.wait(timeout=10) == 0, w.output()
        assert ns.run(["ip", "link", "show", "wg0"], check=False).returncode != 0
        assert not os.path.exists(sock)
    finally:
        w.stop()


@pytest.mark.parametrize("how", ["ip link del", "socket removed"])
def test_exits_when_interface_or_socket_goes(ns: tb.Namespace, how: str) -> None:
    w = tb.WgInstance(ns, WGPY).start()
    try:
        if how == "ip link del":
            ns.ip("link", "del", "wg0")
        else:
            os.unlink(w.socket_path)  # as soon as it exists: the device may not be running yet
        assert w.proc is not None and w.proc.wait(timeout=10) == 0, w.output()
    finally:
        w.stop()


def _userspace(
    ns: tb.Namespace, *args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ, WG_PROCESS_FOREGROUND="0", **(env or {}))
    return subprocess.run(
        ns.exec_argv([*(prefix or []), *WGPY, *args]),
        capture_output=True, text=True, timeout=30, env=e, check=False,
    )  # fmt: skip


def test_error_not_root(ns: tb.Namespace) -> None:
    r = _userspace(
        ns, "wgt0", prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    )
    assert r.returncode == 1 and "must be run as root" in r.stderr


def test_error_no_tun_device(ns: tb.Namespace) -> None:
    r = _userspace(ns, "wgt0", env={"WGPY_TUN_DEVICE": "/nonexistent/tun"})
    assert r.returncode == 1 and "no /nonexistent/tun" in r.stderr


def test_error_interface_exists(ns: tb.Namespace) -> None:
    ns.ip("link", "add", "wgt0", "type", "veth", "peer", "name", "wgt0p")
    r = _userspace(ns, "wgt0")
    assert r.returncode == 1 and "interface wgt0 already exists" in r.stderr
    assert ns.run(["ip", "link", "show", "wgt0"], check=False).returncode == 0  # untouched


def test_error_bad_interface_name(ns: tb.Namespace) -> None:
    r = _userspace(ns, "a-name-longer-than-15")
    assert r.returncode != 0 and "15" in r.stderr


def test_error_socket_in_use(ns: tb.Namespace, dev: tb.WgInstance) -> None:
    # a second instance in the same mount namespace (same socket directory) is refused
    r = subprocess.run(
        [*dev._prefix(), *WGPY, "-f", "wg0"], capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert "already exists" in r.stderr or "in use" in r.stderr
    assert dev.show_dump() is not None  # the running one is unharmed


def test_daemon_mode_returns_after_socket_exists(ns: tb.Namespace) -> None:
    script = (
        'mount -t tmpfs wgpysock /run/wireguard && "$@" && '
        "test -S /run/wireguard/wgt1.sock && ip link show wgt1 >/dev/null && "
        "wg show wgt1 listen-port && ip link del wgt1"
    )
    os.makedirs("/run/wireguard", exist_ok=True)
    r = subprocess.run(
        ns.exec_argv(["unshare", "-m", "sh", "-c", script, "sh", *WGPY, "wgt1"]),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().isdigit()  # a random listen port was bound at start


def test_wg_quick_up_and_down(ns: tb.Namespace, tmp_path: Path) -> None:
    peer = tb.pubkey(tb.genkey())
    conf = tmp_path / "wgq0.conf"
    conf.write_text(
        "[Interface]\n"
        f"PrivateKey = {tb.genkey()}\nListenPort = 51830\nAddress = 10.123.0.1/24\nMTU = 1400\n\n"
        f"[Peer]\nPublicKey = {peer}\nAllowedIPs = 10.124.0.0/16\nEndpoint = 127.0.0.1:51831\n"
    )
    conf.chmod(0o600)
    bindir = str(Path(sys.executable).parent)
    env_path = f"{bindir}:{os.environ.get('PATH', '')}"
    assert Path(bindir, "wgpy-userspace").exists(), "wgpy must be installed (pip install -e .)"
    script = (
        "mount -t tmpfs wgpysock /run/wireguard && "
        f"WG_QUICK_USERSPACE_IMPLEMENTATION=wgpy-userspace PATH={env_path} wg-quick up {conf} && "
        "wg show wgq0 dump && ip -o addr show dev wgq0 && ip -o link show wgq0 && "
        "ip route show dev wgq0 && "
        f"PATH={env_path} wg-quick down {conf} && "
        "for i in $(seq 50); do test -S /run/wireguard/wgq0.sock || exit 0; sleep 0.1; done; exit 7"
    )
    os.makedirs("/run/wireguard", exist_ok=True)
    r = subprocess.run(
        ns.exec_argv(["unshare", "-m", "sh", "-c", script]),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "10.123.0.1/24" in out and "mtu 1400" in out
    assert "10.124.0.0/16" in out  # the route wg-quick added for AllowedIPs
    dump_peer = [ln for ln in out.splitlines() if ln.startswith(peer)]
    assert dump_peer and "127.0.0.1:51831" in dump_peer[0]
    assert ns.run(["ip", "link", "show", "wgq0"], check=False).returncode != 0
    # the daemon exited: no wgpy process is left in the namespace
    tb.wait_for(lambda: ns.pids() == [] or all(not tb.pid_alive(p) for p in ns.pids()), 10,
                "the daemon to exit")


def test_uapi_socket_is_root_only(dev: tb.WgInstance) -> None:
    st = os.stat(dev.socket_path)
    assert st.st_mode & 0o077 == 0
    with socket.socket(socket.AF_UNIX) as s:  # a probe that sends nothing is tolerated
        s.connect(dev.socket_path)
    assert dev.show_dump() is not None
