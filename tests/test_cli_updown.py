"""``wgpy up`` / ``wgpy down`` inside network namespaces the tests create and remove.

Each test runs ``ip netns exec NS python -m wgpy ...`` with a unique namespace and a unique
interface name (``wgt`` + 6 hex digits), so parallel runs never collide, and removes both in
``finally``. The daemon is ``wgpy-userspace`` (UAPI sockets in a private temp directory) or, to
check ``wgpy up`` on its own, ``wireguard-go`` (sockets in the shared /var/run/wireguard, under
the unique name, removed afterwards if left over).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tun import netlink
from wgpy import testbed as tb
from wgpy.core.keys import generate_private_key, public_key, to_base64
from wgpy.testbed import WaitTimeout, wait_for

ROOT = Path(__file__).resolve().parent.parent
BASE_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
for _var in ("WGPY_SOCKET_DIR", "WGPY_USERSPACE_IMPLEMENTATION", "WGPY_TUN_DEVICE"):
    BASE_ENV.pop(_var, None)

IS_ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not IS_ROOT or shutil.which("ip") is None, reason="needs root")


def _userspace_importable() -> bool:
    r = subprocess.run(
        [sys.executable, "-c", "import wgpy.tools.userspace"],
        capture_output=True,
        env=BASE_ENV,
        cwd=ROOT,
        check=False,
    )
    return r.returncode == 0


WGPY_DAEMON_OK = _userspace_importable()
IMPLS = [
    pytest.param(
        "wgpy",
        marks=pytest.mark.skipif(
            not WGPY_DAEMON_OK, reason="wgpy-userspace does not import yet (device in progress)"
        ),
    ),
    pytest.param(
        "wireguard-go",
        marks=pytest.mark.skipif(shutil.which("wireguard-go") is None, reason="no wireguard-go"),
    ),
]


def unique(prefix: str) -> str:
    return prefix + secrets.token_hex(3)


@dataclass
class Env:
    """How to run ``wgpy`` for one daemon implementation."""

    impl: str
    socket_dir: str
    vars: dict[str, str]

    def sock(self, ifname: str) -> Path:
        return Path(self.socket_dir) / f"{ifname}.sock"


@pytest.fixture(params=IMPLS)
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Env:
    if request.param == "wgpy":
        d = tmp_path / "sockets"
        return Env("wgpy", str(d), {**BASE_ENV, "WGPY_SOCKET_DIR": str(d)})
    return Env(
        "wireguard-go",
        "/var/run/wireguard",
        {**BASE_ENV, "WGPY_USERSPACE_IMPLEMENTATION": "wireguard-go"},
    )


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A fresh namespace; on the way out whatever still runs in it is stopped (a daemon that
    a failed test never took down would otherwise keep it, its TUN and itself alive)."""
    with tb.Namespace("wgcli") as ns:
        subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
        yield ns.name


@pytest.fixture
def ns() -> Iterator[str]:
    with namespace() as name:
        yield name


@pytest.fixture
def ifname(env: Env) -> Iterator[str]:
    name = unique("wgt")
    try:
        yield name
    finally:
        # The namespace's close stops the daemon, which removes the link; a socket left
        # behind under our unique name would only confuse `wg show all`, so drop it.
        sock = env.sock(name)
        with contextlib.suppress(WaitTimeout):
            wait_for(lambda: not sock.exists(), 3, interval=0.05)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()


def run_in(
    ns: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        env=env or BASE_ENV,
        cwd=ROOT,
        timeout=20,
        check=False,
    )


def wgpy(ns: str, env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return run_in(ns, sys.executable, "-m", "wgpy", *args, env=env.vars)


def ip_json(ns: str, *args: str) -> list[dict[str, Any]]:
    r = run_in(ns, "ip", "-j", *args)
    assert r.returncode == 0, r.stderr
    data: list[dict[str, Any]] = json.loads(r.stdout or "[]")
    return data


def write_conf(directory: Path, ifname: str, body: str) -> Path:
    path = directory / f"{ifname}.conf"
    path.write_text(body)
    path.chmod(0o600)
    return path


def conf_text(
    *,
    private: bytes,
    peer_public: bytes,
    address: str = "10.77.0.1/24",
    listen_port: int | None = None,
    allowed: str = "10.77.0.0/24, 10.78.0.0/16",
    endpoint: str | None = None,
    extra: str = "",
) -> str:
    lines = ["[Interface]", f"PrivateKey = {to_base64(private)}", f"Address = {address}"]
    if listen_port is not None:
        lines.append(f"ListenPort = {listen_port}")
    lines += [extra, "", "[Peer]", f"PublicKey = {to_base64(peer_public)}"]
    lines.append(f"AllowedIPs = {allowed}")
    if endpoint:
        lines.append(f"Endpoint = {endpoint}")
    return "\n".join(lines) + "\n"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- up and down --------------------------------------------------------------------------------


def test_up_configures_everything_and_down_removes_it(
    env: Env, ns: str, ifname: str, tmp_path: Path
) -> None:
    priv, peer = generate_private_key(), public_key(generate_private_key())
    port = free_udp_port()
    conf = write_conf(
        tmp_path,
        ifname,
        conf_text(private=priv, peer_public=peer, listen_port=port, endpoint="localhost:51000"),
    )
    r = wgpy(ns, env, "up", str(conf))
    assert r.returncode == 0, r.stderr
    assert env.sock(ifname).exists()

    (link,) = ip_json(ns, "link", "show", "dev", ifname)
    assert link["mtu"] == 1420 and "UP" in link["flags"]
    addrs = {a["local"] for a in ip_json(ns, "addr", "show", "dev", ifname)[0]["addr_info"]}
    assert "10.77.0.1" in addrs
    routes = {r["dst"] for r in ip_json(ns, "route", "show", "dev", ifname)}
    assert routes == {"10.77.0.0/24", "10.78.0.0/16"}  # connected route + one added

    dump = wgpy(ns, env, "show", ifname, "dump")
    assert dump.returncode == 0, dump.stderr
    dev_line, peer_line = dump.stdout.splitlines()
    assert dev_line.split("\t") == ["(hidden)", to_base64(public_key(priv)), str(port), "off"]
    fields = peer_line.split("\t")
    resolved = socket.getaddrinfo("localhost", 51000, type=socket.SOCK_DGRAM)[0][4][0]
    assert fields[0] == to_base64(peer)
    assert fields[2] in (f"{resolved}:51000", f"[{resolved}]:51000")
    assert fields[3] == "10.77.0.0/24,10.78.0.0/16"
    assert to_base64(priv) not in dump.stdout + r.stderr + r.stdout
    assert "accessible by others" not in r.stderr  # the file is 0600

    d = wgpy(ns, env, "down", str(conf))
    assert d.returncode == 0, d.stderr
    assert ip_json(ns, "link", "show") and not any(
        x["ifname"] == ifname for x in ip_json(ns, "link", "show")
    )
    assert not env.sock(ifname).exists()
    again = wgpy(ns, env, "down", ifname)
    assert again.returncode == 1 and f"`{ifname}' is not a WireGuard interface" in again.stderr


def test_up_warns_about_a_world_readable_config(
    env: Env, ns: str, ifname: str, tmp_path: Path
) -> None:
    priv, peer = generate_private_key(), public_key(generate_private_key())
    conf = write_conf(tmp_path, ifname, conf_text(private=priv, peer_public=peer))
    conf.chmod(0o644)
    r = wgpy(ns, env, "up", str(conf))
    assert r.returncode == 0, r.stderr
    assert f"{conf} holds keys and is accessible by others (mode 0644)" in r.stderr
    assert to_base64(priv) not in r.stderr
    assert wgpy(ns, env, "down", str(conf)).returncode == 0


def test_mtu_table_off_and_other_table(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    priv, peer = generate_private_key(), public_key(generate_private_key())
    text = conf_text(
        private=priv, peer_public=peer, allowed="10.78.0.0/16", extra="MTU = 1380\nTable = off"
    )
    conf = write_conf(tmp_path, ifname, text)
    r = wgpy(ns, env, "up", str(conf))
    assert r.returncode == 0, r.stderr
    assert ip_json(ns, "link", "show", "dev", ifname)[0]["mtu"] == 1380
    assert {x["dst"] for x in ip_json(ns, "route", "show", "dev", ifname)} == {"10.77.0.0/24"}
    assert wgpy(ns, env, "down", ifname).returncode == 0

    # A default route into a table of its own leaves the main table alone.
    text = conf_text(private=priv, peer_public=peer, allowed="0.0.0.0/0", extra="Table = 1234")
    conf = write_conf(tmp_path, ifname, text)
    r = wgpy(ns, env, "up", str(conf))
    assert r.returncode == 0, r.stderr
    in_table = ip_json(ns, "route", "show", "table", "1234")
    assert [x["dst"] for x in in_table] == ["default"] and in_table[0]["dev"] == ifname
    assert all(x["dst"] != "default" for x in ip_json(ns, "route", "show"))
    assert wgpy(ns, env, "down", ifname).returncode == 0


# --- refusals before anything is created ---------------------------------------------------------


def links(ns: str) -> set[str]:
    return {str(x["ifname"]) for x in ip_json(ns, "link", "show")}


def good_conf(
    tmp_path: Path,
    ifname: str,
    *,
    address: str = "10.77.0.1/24",
    listen_port: int | None = None,
    allowed: str = "10.77.0.0/24, 10.78.0.0/16",
) -> Path:
    text = conf_text(
        private=generate_private_key(),
        peer_public=public_key(generate_private_key()),
        address=address,
        listen_port=listen_port,
        allowed=allowed,
    )
    return write_conf(tmp_path, ifname, text)


def expect_refusal(ns: str, env: Env, ifname: str, argv: list[str], message: str) -> str:
    before = links(ns)
    r = wgpy(ns, env, *argv)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert links(ns) == before and not env.sock(ifname).exists()
    return r.stderr


def test_not_root(tmp_path: Path) -> None:
    ifname = unique("wgt")
    conf = good_conf(tmp_path, ifname)
    for args in (["up", str(conf)], ["down", ifname]):
        r = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                sys.executable,
                "-m",
                "wgpy.tools.cli",
                *args,
            ],
            capture_output=True,
            text=True,
            env=BASE_ENV,
            cwd=ROOT,
            timeout=20,
            check=False,
        )
        assert (
            r.returncode == 1
            and r.stderr == "wgpy: must be run as root (it creates network interfaces)\n"
        )


def test_no_tun_device(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    conf = good_conf(tmp_path, ifname)
    env.vars["WGPY_TUN_DEVICE"] = str(tmp_path / "no-such-tun")
    expect_refusal(ns, env, ifname, ["up", str(conf)], "no-such-tun does not exist")
    # The real device path hidden by a private mount namespace.
    env.vars.pop("WGPY_TUN_DEVICE")
    r = run_in(
        ns,
        "unshare",
        "-m",
        "sh",
        "-c",
        'mount -t tmpfs tmpfs /dev/net && exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "wgpy.tools.cli",
        "up",
        str(conf),
        env=env.vars,
    )
    assert r.returncode == 1 and "/dev/net/tun does not exist" in r.stderr
    assert ifname not in links(ns)


def test_interface_exists(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    made = run_in(ns, "ip", "link", "add", ifname, "type", "veth", "peer", ifname + "p")
    assert made.returncode == 0, made.stderr
    conf = good_conf(tmp_path, ifname)
    expect_refusal(ns, env, ifname, ["up", str(conf)], f"`{ifname}' already exists")
    assert ifname in links(ns)  # someone else's link is left alone


def test_bad_key_in_config(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    secret_like = "c2VjcmV0IHZhbHVlIHRoYXQgaXMgbm90IGEga2V5IQ"
    conf = write_conf(tmp_path, ifname, f"[Interface]\nPrivateKey = {secret_like}\n")
    err = expect_refusal(ns, env, ifname, ["up", str(conf)], "line 2: PrivateKey")
    assert secret_like not in err


def test_bad_config_line(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    text = conf_text(private=generate_private_key(), peer_public=public_key(generate_private_key()))
    lines = text.splitlines()
    lines.insert(3, "Frobnicate = yes")  # line 4
    conf = write_conf(tmp_path, ifname, "\n".join(lines) + "\n")
    expect_refusal(ns, env, ifname, ["up", str(conf)], "line 4: unknown key 'Frobnicate'")


def test_port_in_use(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    with netlink.in_netns(ns):
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with holder:
        holder.bind(("0.0.0.0", 0))  # inside the test's own namespace
        port = holder.getsockname()[1]
        conf = good_conf(tmp_path, ifname, listen_port=port)
        expect_refusal(ns, env, ifname, ["up", str(conf)], f"ListenPort {port} is already in use")


def test_full_tunnel_refused(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    conf = good_conf(tmp_path, ifname, allowed="10.1.0.0/16, ::/0")
    expect_refusal(
        ns, env, ifname, ["up", str(conf)], "full-tunnel default routes are not supported"
    )


def test_bad_names(env: Env, ns: str, ifname: str, tmp_path: Path) -> None:
    long_conf = good_conf(tmp_path, "x" * 16)
    expect_refusal(ns, env, ifname, ["up", str(long_conf)], "must be a valid interface name")
    expect_refusal(ns, env, ifname, ["up", str(tmp_path / "nope.conf")], "does not exist")


def test_failure_after_creation_deletes_the_link(
    env: Env, ns: str, ifname: str, tmp_path: Path
) -> None:
    # The second copy of the address fails with EEXIST once the link and daemon exist.
    conf = good_conf(tmp_path, ifname, address="10.5.0.1/24, 10.5.0.1/24")
    err = expect_refusal(ns, env, ifname, ["up", str(conf)], f"configuring {ifname} failed")
    assert f"ip link delete dev {ifname}" in err


# --- end to end ----------------------------------------------------------------------------------


def test_two_namespaces_ping_through_the_tunnel(env: Env, tmp_path: Path) -> None:
    ifa, ifb = unique("wgt"), unique("wgt")
    ka, kb = generate_private_key(), generate_private_key()
    port_a, port_b = 51820, 51821  # each namespace has its own port space
    with namespace() as nsa, namespace() as nsb:
        try:
            veth = unique("ve")
            netlink.add_veth(veth, veth + "p", netns=nsa, peer_netns=nsb)
            run_in(nsa, "ip", "addr", "add", "192.0.2.1/24", "dev", veth)
            run_in(nsb, "ip", "addr", "add", "192.0.2.2/24", "dev", veth + "p")
            run_in(nsa, "ip", "link", "set", veth, "up")
            run_in(nsb, "ip", "link", "set", veth + "p", "up")
            conf_a = write_conf(
                tmp_path,
                ifa,
                conf_text(
                    private=ka,
                    peer_public=public_key(kb),
                    address="10.99.0.1/24",
                    listen_port=port_a,
                    allowed="10.99.0.2/32",
                    endpoint=f"192.0.2.2:{port_b}",
                ),
            )
            conf_b = write_conf(
                tmp_path,
                ifb,
                conf_text(
                    private=kb,
                    peer_public=public_key(ka),
                    address="10.99.0.2/24",
                    listen_port=port_b,
                    allowed="10.99.0.1/32",
                    endpoint=f"192.0.2.1:{port_a}",
                ),
            )
            for ns_, conf in ((nsa, conf_a), (nsb, conf_b)):
                r = wgpy(ns_, env, "up", str(conf))
                assert r.returncode == 0, r.stderr
            ping = run_in(nsa, "ping", "-c", "3", "-i", "0.2", "-w", "10", "10.99.0.2")
            assert ping.returncode == 0, ping.stdout + ping.stderr
            show = wgpy(nsa, env, "show", ifa, "latest-handshakes")
            assert int(show.stdout.split("\t")[1]) > 0  # a real handshake happened
            for args in ((ifa,), (ifa, "dump")):
                before = wg_show(nsa, env, *args)
                ours = wgpy(nsa, env, "show", *args).stdout
                after = wg_show(nsa, env, *args)
                assert ours in {
                    before.replace(to_base64(ka), "(hidden)"),
                    after.replace(to_base64(ka), "(hidden)"),
                }
            for ns_, name in ((nsa, ifa), (nsb, ifb)):
                assert wgpy(ns_, env, "down", name).returncode == 0
                assert not env.sock(name).exists()
        finally:
            for name in (ifa, ifb):
                with contextlib.suppress(FileNotFoundError):
                    if not _answers(env.sock(name)):
                        env.sock(name).unlink()


def wg_show(ns: str, env: Env, *args: str) -> str:
    """The real ``wg show`` in ``ns``, reading ``env``'s socket directory as /var/run/wireguard."""
    argv = ["wg", "show", *args]
    if env.socket_dir != "/var/run/wireguard":
        script = (
            "mount -t tmpfs tmpfs /run && mkdir /run/wireguard"
            ' && mount --bind "$0" /run/wireguard && exec "$@"'
        )
        argv = ["unshare", "-m", "sh", "-c", script, env.socket_dir, *argv]
    r = run_in(ns, *argv)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _answers(path: Path) -> bool:
    with contextlib.suppress(WaitTimeout):  # a socket of a daemon that exits goes away
        wait_for(lambda: not path.exists(), 2, interval=0.05)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def test_config_path_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wgpy.tools import updown

    monkeypatch.chdir(tmp_path)
    (tmp_path / "wgx1.conf").write_text("")
    assert updown.config_path("wgx1.conf") == ("wgx1.conf", "wgx1")
    assert updown.config_path(str(tmp_path / "wgx1.conf")) == (str(tmp_path / "wgx1.conf"), "wgx1")
    with pytest.raises(
        updown.QuickError, match=re.escape("`/etc/wireguard/wgnothere.conf' does not exist")
    ):
        updown.config_path("wgnothere")
    assert updown.interface_name("/a/b/wg7.conf") == "wg7" == updown.interface_name("wg7")
    with pytest.raises(updown.QuickError):
        updown.interface_name("bad/name")


def test_route_plan_unit() -> None:
    from wgpy.tools import quickconf, updown

    cfg = quickconf.parse(
        conf_text(
            private=generate_private_key(),
            peer_public=public_key(generate_private_key()),
            allowed="10.0.0.0/8, 10.1.0.0/16, fd00::/8, 10.1.0.0/16",
        )
    )
    assert updown.plan_routes(cfg, updown.RT_TABLE_MAIN) == [
        ipaddress.ip_network("10.1.0.0/16"),  # most specific first, duplicates merged
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    ]
    assert updown.plan_routes(cfg, None) == []
    assert updown.route_table("off") is None and updown.route_table("main") == 254
    assert updown.route_table("42") == 42
    with pytest.raises(updown.QuickError):
        updown.route_table("no-such-table-name")
