"""Tests of the network-namespace testbed against the real wireguard-go."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wgpy import testbed as tb

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("ip", "nsenter", "setpriv", "wg", "ping", "wireguard-go")
_missing = [t for t in TOOLS if shutil.which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(_missing),
    reason=f"needs root and {', '.join(TOOLS)} (missing: {', '.join(_missing) or 'none'})",
)
interop = [pytest.mark.interop, needs_root]

KEY = "YIpz9s6Ia9LLIE/M8lS+9Q+L6RQQ464QEECVqa3zPyc="
KEY2 = "/bq09LxlM3KEZAk9k0S3wvpPAMKKPmNX+MB7+jkyCSw="


# --- pure helpers (no root needed) ----------------------------------------------------------


def test_parse_dump_interface_and_peers() -> None:
    text = (
        f"{KEY}\t{KEY2}\t51820\toff\n"
        f"{KEY2}\t{KEY}\t192.168.241.2:51820\t10.99.0.2/32,10.98.0.0/16\t1795697046"
        "\t2056\t2112\t25\n"
        f"{KEY}\t(none)\t(none)\t(none)\t0\t0\t0\toff\n"
    )
    d = tb.parse_dump(text)
    assert (d.public_key, d.listen_port, d.fwmark) == (KEY2, 51820, None)
    p1, p2 = d.peers
    assert p1.has_preshared_key and p1.endpoint == "192.168.241.2:51820"
    assert p1.allowed_ips == ("10.99.0.2/32", "10.98.0.0/16")
    assert (p1.latest_handshake, p1.rx_bytes, p1.tx_bytes, p1.persistent_keepalive) == (
        1795697046,
        2056,
        2112,
        25,
    )
    assert not p2.has_preshared_key and p2.endpoint is None and p2.allowed_ips == ()
    assert p2.persistent_keepalive is None and p2.latest_handshake == 0
    # The private key (first field) is not kept anywhere in the parsed result.
    assert KEY not in repr(d).replace(p2.public_key, "")


def test_parse_dump_rejects_garbage() -> None:
    with pytest.raises(tb.TestbedError):
        tb.parse_dump("")
    with pytest.raises(tb.TestbedError):
        tb.parse_dump(f"{KEY}\t{KEY2}\t1\toff\nshort\tline\n")


def test_build_conf_and_redaction() -> None:
    conf = tb.build_conf(
        KEY,
        listen_port=51820,
        peers=[tb.PeerConf(KEY2, "192.168.241.2:51820", ["10.99.0.2/32", "10.98.0.0/16"], KEY, 25)],
    )
    assert conf.splitlines() == [
        "[Interface]",
        f"PrivateKey = {KEY}",
        "ListenPort = 51820",
        "",
        "[Peer]",
        f"PublicKey = {KEY2}",
        f"PresharedKey = {KEY}",
        "Endpoint = 192.168.241.2:51820",
        "AllowedIPs = 10.99.0.2/32, 10.98.0.0/16",
        "PersistentKeepalive = 25",
    ]
    assert KEY not in repr(tb.PeerConf(KEY2, preshared_key=KEY))
    assert tb.redact(f"bad line: PrivateKey = {KEY}") == "bad line: PrivateKey = (hidden)"


def test_wg_instance_rejects_string_impl() -> None:
    with pytest.raises(TypeError):
        tb.WgInstance(tb.Namespace(), "wireguard-go")  # type: ignore[arg-type]


# --- namespaces and veth --------------------------------------------------------------------


@pytest.mark.interop
@needs_root
def test_namespace_created_and_removed_with_its_processes() -> None:
    with tb.Namespace() as ns:
        assert ns.name in tb.list_netns()
        assert ns.run(["ip", "-o", "link", "show", "lo"]).stdout.find("UP") > 0
        proc = ns.popen(["sleep", "60"])
        assert tb.wait_for(lambda: proc.pid in ns.pids(), 5)
    assert ns.name not in tb.list_netns()
    assert proc.poll() is not None and not tb.pid_alive(proc.pid)


@pytest.mark.interop
@needs_root
def test_namespace_removed_after_exception() -> None:
    with pytest.raises(RuntimeError, match="boom"), tb.Namespace() as ns:
        proc = ns.popen(["sleep", "60"])
        raise RuntimeError("boom")
    assert ns.name not in tb.list_netns()
    assert not tb.pid_alive(proc.pid)


@pytest.mark.interop
@needs_root
def test_veth_ping_both_ways() -> None:
    with tb.Namespace() as a, tb.Namespace() as b:
        v = tb.veth(a, b, "192.168.241.1/24", "192.168.241.2/24")
        assert len(v.name_a) <= 15 and v.name_a != v.name_b
        assert a.run(["ping", "-n", "-c", "1", "-W", "2", v.ip_b], check=False).returncode == 0
        assert b.run(["ping", "-n", "-c", "1", "-W", "2", v.ip_a], check=False).returncode == 0
        # The link exists only inside the namespaces, never on the host.
        assert v.name_a not in tb.run(["ip", "-o", "link"]).stdout


@pytest.mark.interop
@needs_root
def test_sweep_stale_removes_only_dead_creators() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    dead = next(p for p in range(pid_max - 1, 1, -1) if not tb.pid_alive(p))
    stale, live = f"wgpysweep-{dead}-abcdef", f"wgpysweep-{os.getpid()}-abcdef"
    for name in (stale, live):
        tb.run(["ip", "netns", "add", name])
    try:
        assert tb.sweep_stale("wgpysweep") == [stale]
        names = tb.list_netns()
        assert stale not in names and live in names
    finally:
        for name in (stale, live):
            tb.run(["ip", "netns", "del", name], check=False)


# --- WireGuard instances --------------------------------------------------------------------


@pytest.mark.interop
@needs_root
def test_start_failure_reports_output_and_cleans_up() -> None:
    with tb.Namespace() as ns:
        inst = tb.WgInstance(
            ns, ["sh", "-c", "echo impl-said-no >&2; exit 3", "x"], start_timeout=5
        )
        with pytest.raises(tb.TestbedError, match=r"(?s)exited with 3.*impl-said-no"):
            inst.start()
        assert inst.proc is not None and not tb.pid_alive(inst.proc.pid)


@pytest.mark.interop
@needs_root
def test_wireguard_go_pair_ping_handshake_and_cleanup() -> None:
    with tb.make_pair(psk=True) as pair:
        pids, names = pair.pids, [pair.ns_a.name, pair.ns_b.name]
        assert len(pids) == 2 and all(tb.pid_alive(p) for p in pids)
        # The recorded PID really is wireguard-go (ip netns exec and sh exec into it).
        assert all(Path(f"/proc/{p}/comm").read_text().strip() == "wireguard-go" for p in pids)
        # Both are called wg0: each socket lives in its own tmpfs.
        assert isinstance(pair.wg_a, tb.WgInstance) and isinstance(pair.wg_b, tb.WgInstance)
        st_a, st_b = os.stat(pair.wg_a.socket_path), os.stat(pair.wg_b.socket_path)
        assert (st_a.st_dev, st_a.st_ino) != (st_b.st_dev, st_b.st_ino)
        # ... and those tmpfs mounts never show up in the host's mount namespace.
        assert "wgpysock" not in Path("/proc/self/mountinfo").read_text()
        assert pair.wg_a.show_dump().peers[0].latest_handshake == 0
        pair.wait_handshake()
        assert pair.ping(from_a=True, count=2, interval=0.05).returncode == 0
        assert pair.ping(from_a=False, count=2, interval=0.05).returncode == 0
        # MTU 1420: a 1392-byte DF ping (1420-byte packet) passes, one byte more does not.
        assert pair.ping(size=1392, dont_fragment=True).returncode == 0
        assert pair.ping(size=1393, dont_fragment=True, timeout=1).returncode != 0
        for mine, other in ((pair.wg_a, pair.pub_b), (pair.wg_b, pair.pub_a)):
            (peer,) = mine.show_dump().peers
            assert peer.public_key == other and peer.has_preshared_key
            assert peer.latest_handshake > 0 and peer.rx_bytes > 0 and peer.tx_bytes > 0
        assert tb.rss_kib(pids[0]) > 0 and tb.cpu_seconds(pids[0]) >= 0
    assert not any(tb.pid_alive(p) for p in pids)
    assert not set(names) & set(tb.list_netns())


@pytest.mark.interop
@needs_root
def test_pair_without_psk_and_stop_is_idempotent() -> None:
    with tb.make_pair(psk=False) as pair:
        pair.wait_handshake()
        assert not pair.wg_b.show_dump().peers[0].has_preshared_key
        assert isinstance(pair.wg_a, tb.WgInstance)
        pid = pair.wg_a.pid
        pair.wg_a.stop()
        pair.wg_a.stop()
        assert not tb.pid_alive(pid) and pair.wg_a.pids == []


def _child(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True
    )


@pytest.mark.interop
@needs_root
def test_sigterm_unwinds_and_cleans_up() -> None:
    child = _child("""
        import time
        from wgpy import testbed as tb
        tb.install_signal_handlers()
        with tb.make_pair() as p:
            print(p.ns_a.name, p.ns_b.name, *p.pids, flush=True)
            time.sleep(60)
    """)
    try:
        assert child.stdout is not None
        a, b, *pids = child.stdout.readline().split()
        child.send_signal(signal.SIGTERM)
        assert child.wait(15) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.wait()
    assert not {a, b} & set(tb.list_netns())
    assert not any(tb.pid_alive(int(p)) for p in pids)


@pytest.mark.interop
@needs_root
def test_sigkilled_creator_leaves_nothing_after_sweep() -> None:
    child = _child("""
        import time
        from wgpy import testbed as tb
        p = tb.make_pair(prefix="wgpykill")
        print(p.ns_a.name, p.ns_b.name, *p.pids, flush=True)
        time.sleep(60)
    """)
    try:
        assert child.stdout is not None
        a, b, *pids = child.stdout.readline().split()
        child.kill()
        child.wait()
        # PR_SET_PDEATHSIG: the implementations get SIGTERM when their creator dies.
        assert tb.wait_for(lambda: not any(tb.pid_alive(int(p)) for p in pids), 10)
        assert {a, b} <= set(tb.sweep_stale("wgpykill"))
    finally:
        child.kill()
        tb.sweep_stale("wgpykill")
    assert not {a, b} & set(tb.list_netns())


@pytest.mark.interop
@needs_root
def test_kernel_probe_leaves_nothing_and_agrees_with_sysfs() -> None:
    before = set(tb.list_netns())
    available = tb.kernel_wireguard_available()
    assert set(tb.list_netns()) == before
    if Path("/sys/module/wireguard").exists():
        assert available  # a loaded module must be found
    elif shutil.which("modinfo") and tb.run(["modinfo", "wireguard"], check=False).returncode:
        assert not available  # neither loaded nor loadable


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
def test_run_in_netns_leaves_the_callers_namespace_alone(fails: bool) -> None:
    """The namespace switch happens in a helper thread: the caller's thread never leaves its
    namespace (a SIGTERM handled there once stranded the demo in one, and cleaning that
    namespace up then SIGKILLed the demo itself)."""
    import socket
    import threading

    from wgpy.testbed.netns import run_in_netns

    own = os.readlink("/proc/thread-self/ns/net")
    caller = f"/proc/self/task/{threading.get_native_id()}/ns/net"
    seen: list[tuple[str, str]] = []
    with tb.Namespace("wgpyrun") as ns:
        ns.ip("link", "set", "lo", "up")
        ns.ip("addr", "add", "10.123.0.1/32", "dev", "lo")

        def make() -> socket.socket:
            # while the work runs in the namespace, the caller's thread is still outside
            seen.append((os.readlink("/proc/thread-self/ns/net"), os.readlink(caller)))
            if fails:
                raise OSError("refused")
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("10.123.0.1", 0))  # the address exists only inside the namespace
            return s

        if fails:
            with pytest.raises(OSError, match="refused"):
                run_in_netns(ns.name, make)
        else:
            with run_in_netns(ns.name, make) as s:
                assert s.getsockname()[0] == "10.123.0.1"
        assert len(seen) == 1 and seen[0][0] != own and seen[0][1] == own
        assert os.readlink("/proc/thread-self/ns/net") == own
        assert str(os.getpid()) not in ns.run(["ip", "netns", "pids", ns.name]).stdout.split()
