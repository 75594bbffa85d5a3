"""TUN layer: the in-memory double fully; the Linux TUN inside a namespace the test creates."""

from __future__ import annotations

import errno
import ipaddress
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tun import MemoryTun, TunDevice, TunError, validate_ifname

REPO = Path(__file__).resolve().parent.parent

# --- packet helpers ----------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int = 0x1234) -> bytes:
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident,
        0x4000,
        64,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
    return hdr + payload


def udp4(src: str, sport: int, dst: str, dport: int, data: bytes) -> bytes:
    # UDP checksum 0 means "none" over IPv4: the kernel accepts it.
    return ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def icmp_echo(src: str, dst: str, ident: int, seq: int, data: bytes) -> bytes:
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    body = body[:2] + struct.pack("!H", _csum(body)) + body[4:]
    return ipv4(src, dst, 1, body)


# --- MemoryTun ---------------------------------------------------------------------------------


def _readable(fd: int, timeout: float = 0.0) -> bool:
    r, _, _ = select.select([fd], [], [], timeout)
    return bool(r)


def test_memory_tun_satisfies_protocol() -> None:
    t = MemoryTun("m0", mtu=1280)
    try:
        dev: TunDevice = t
        assert isinstance(dev, TunDevice)
        assert t.name == "m0"
        assert t.mtu == 1280
    finally:
        t.close()


def test_memory_tun_read_order_and_empty() -> None:
    t = MemoryTun()
    try:
        with pytest.raises(BlockingIOError):
            t.read()
        t.inject(b"first")
        t.inject(bytearray(b"second"))
        t.inject_many([memoryview(b"third")])
        assert t.pending() == 3
        assert [t.read(), t.read(), t.read()] == [b"first", b"second", b"third"]
        assert t.pending() == 0
        with pytest.raises(BlockingIOError):
            t.read()
    finally:
        t.close()


def test_memory_tun_fd_is_level_triggered() -> None:
    t = MemoryTun()
    try:
        assert not _readable(t.fileno())
        t.inject(b"a")
        t.inject(b"b")
        assert _readable(t.fileno())
        t.read()
        assert _readable(t.fileno())  # one packet still queued
        t.read()
        assert not _readable(t.fileno())
        t.inject(b"c")
        assert _readable(t.fileno())
    finally:
        t.close()


def test_memory_tun_fd_wakes_a_blocked_selector_thread() -> None:
    t = MemoryTun()
    got: list[bytes] = []

    def reader() -> None:
        if _readable(t.fileno(), timeout=5.0):
            got.append(t.read())

    th = threading.Thread(target=reader)
    th.start()
    t.inject(b"wake")
    th.join(5.0)
    t.close()
    assert got == [b"wake"]


def test_memory_tun_read_into_copies_and_truncates() -> None:
    t = MemoryTun()
    try:
        t.inject(b"0123456789")
        buf = bytearray(64)
        assert t.read_into(buf) == 10
        assert bytes(buf[:10]) == b"0123456789"
        t.inject(b"abcdefgh")
        small = bytearray(3)
        assert t.read_into(memoryview(small)) == 3  # truncated like the kernel does
        assert small == b"abc"
        assert t.pending() == 0
    finally:
        t.close()


def test_memory_tun_write_collects() -> None:
    t = MemoryTun()
    try:
        assert t.write(b"p1") == 2
        assert t.write(memoryview(b"packet2")) == 7
        assert t.written() == [b"p1", b"packet2"]
        assert t.written() == [b"p1", b"packet2"]  # written() does not consume
        assert t.take() == [b"p1", b"packet2"]
        assert t.take() == []
        with pytest.raises(OSError) as ei:
            t.write(b"")
        assert ei.value.errno == errno.EINVAL
        # the read side is independent of the write side
        with pytest.raises(BlockingIOError):
            t.read()
    finally:
        t.close()


def test_memory_tun_two_devices_talk() -> None:
    """The harness pattern: what one device writes is injected into the other."""
    a, b = MemoryTun("a"), MemoryTun("b")
    try:
        pkt = udp4("10.0.0.1", 1000, "10.0.0.2", 2000, b"ping")
        a.write(pkt)
        for p in a.take():
            b.inject(p)
        assert _readable(b.fileno())
        assert b.read() == pkt
        assert a.written() == []
    finally:
        a.close()
        b.close()


def test_memory_tun_close() -> None:
    t = MemoryTun()
    t.inject(b"x")
    t.close()
    t.close()  # idempotent
    assert t.closed
    for op in (t.read, t.fileno, lambda: t.write(b"y"), lambda: t.inject(b"z")):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.EBADF


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("wg0", True),
        ("a" * 15, True),
        ("a" * 16, False),
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("a b", False),
        ("a:1", False),
        ("é" * 8, False),
    ],
)
def test_validate_ifname(name: str, ok: bool) -> None:
    if ok:
        validate_ifname(name)
    else:
        with pytest.raises(TunError, match="invalid interface name"):
            validate_ifname(name)


# --- LinuxTun (root, namespaces) ---------------------------------------------------------------

linux = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or sys.platform != "linux",
    reason="needs root and /dev/net/tun",
)


@pytest.fixture
def netns() -> Iterator[str]:
    from tun import netlink

    name = f"wgpyt-{secrets.token_hex(4)}"
    netlink.netns_create(name)
    try:
        yield name
    finally:
        netlink.netns_remove(name)
        assert name not in netlink.netns_list()


def _read_matching(tun: TunDevice, want: object, timeout: float = 3.0) -> bytes:
    """Read packets until one satisfies ``want`` (IPv6 ND/MLD chatter is skipped)."""
    for _ in range(50):
        assert _readable(tun.fileno(), timeout), "nothing arrived on the TUN"
        pkt = tun.read()
        if callable(want) and want(pkt):
            return pkt
    raise AssertionError("expected packet never arrived")


@linux
@pytest.mark.parametrize("vnet_hdr", [False, True], ids=["plain", "vnet-hdr"])
def test_linux_tun_round_trip_in_netns(netns: str, vnet_hdr: bool) -> None:
    """The same packets either way: with IFF_VNET_HDR, read/write hide the virtio header."""
    from tun import netlink
    from tun.linux import LinuxTun

    with netlink.in_netns(netns):
        tun = LinuxTun("wgt0", mtu=1400, vnet_hdr=vnet_hdr)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dev: TunDevice = tun  # statically a TunDevice too (mypy checks this line)
        assert isinstance(dev, TunDevice)
        assert tun.name == "wgt0"
        assert netlink.link_exists("wgt0", netns=netns)
        assert not netlink.link_exists("wgt0")  # not in the host namespace
        assert tun.mtu == 1400 == netlink.link_mtu("wgt0", netns=netns)
        tun.set_mtu(1380)
        assert netlink.link_mtu("wgt0", netns=netns) == 1380
        assert not tun.is_up
        tun.up()
        assert tun.is_up and netlink.link_is_up("wgt0", netns=netns)
        netlink.add_address("wgt0", "10.99.0.1/24", netns=netns)
        assert ipaddress.ip_interface("10.99.0.1/24") in netlink.list_addresses("wgt0", netns=netns)
        assert ipaddress.ip_network("10.99.0.0/24") in netlink.list_routes("wgt0", netns=netns)
        with pytest.raises(BlockingIOError):  # non-blocking fd, nothing queued yet for v4
            while True:
                pkt = tun.read()
                assert pkt[0] >> 4 == 6  # only IPv6 link chatter may be there

        # Kernel → TUN: a datagram to an address routed into the TUN comes out of read().
        sock.bind(("10.99.0.1", 0))
        sock.sendto(b"out-through-tun", ("10.99.0.2", 9999))
        pkt = _read_matching(tun, lambda p: p[0] == 0x45 and p[9] == 17)
        assert socket.inet_ntoa(pkt[12:16]) == "10.99.0.1"
        assert socket.inet_ntoa(pkt[16:20]) == "10.99.0.2"
        assert struct.unpack("!H", pkt[22:24])[0] == 9999
        assert pkt[28:] == b"out-through-tun"

        # TUN → kernel: a datagram written to the TUN is delivered to the socket.
        port = sock.getsockname()[1]
        inbound = udp4("10.99.0.2", 4242, "10.99.0.1", port, b"in-through-tun")
        assert tun.write(inbound) == len(inbound)
        sock.settimeout(3.0)
        data, addr = sock.recvfrom(100)
        assert (data, addr) == (b"in-through-tun", ("10.99.0.2", 4242))

        # TUN → kernel → TUN: the kernel answers an echo request we write.
        tun.write(icmp_echo("10.99.0.2", "10.99.0.1", 0xBEEF, 7, b"are you there"))
        reply = _read_matching(tun, lambda p: p[0] == 0x45 and p[9] == 1)
        assert reply[20] == 0  # echo reply
        assert struct.unpack("!HH", reply[24:28]) == (0xBEEF, 7)
        assert reply[28:] == b"are you there"
        assert socket.inet_ntoa(reply[16:20]) == "10.99.0.2"

        # read_into fills a caller buffer.
        sock.sendto(b"x" * 100, ("10.99.0.2", 9998))
        buf = bytearray(2048)

        def is_udp(p: bytes) -> bool:
            return p[0] == 0x45 and p[9] == 17

        assert _readable(tun.fileno(), 3.0)
        n = 0
        for _ in range(50):
            n = tun.read_into(buf)
            if is_udp(bytes(buf[:n])):
                break
            assert _readable(tun.fileno(), 3.0)
        assert n == 20 + 8 + 100 and bytes(buf[28:n]) == b"x" * 100

        netlink.add_route("10.98.0.0/16", dev="wgt0", netns=netns)
        assert ipaddress.ip_network("10.98.0.0/16") in netlink.list_routes("wgt0", netns=netns)
        netlink.del_route("10.98.0.0/16", dev="wgt0", netns=netns)
        assert ipaddress.ip_network("10.98.0.0/16") not in netlink.list_routes("wgt0", netns=netns)
        netlink.del_address("wgt0", "10.99.0.1/24", netns=netns)
        assert ipaddress.ip_interface("10.99.0.1/24") not in netlink.list_addresses(
            "wgt0", netns=netns
        )
        tun.down()
        assert not netlink.link_is_up("wgt0", netns=netns)
    finally:
        sock.close()
        tun.close()
    # A non-persistent TUN vanishes with its last fd.
    assert netlink.wait_for_deletion("wgt0", timeout=3.0, netns=netns)
    with pytest.raises(TunError, match="no interface wgt0"):
        netlink.link_index("wgt0", netns=netns)


@linux
def test_linux_tun_create_only_and_attach(netns: str) -> None:
    import pytun

    from tun import netlink
    from tun.linux import LinuxTun

    with netlink.in_netns(netns):
        first = LinuxTun("wgt1")
        try:
            with pytest.raises(TunError, match="interface wgt1 already exists"):
                LinuxTun("wgt1", create_only=True)
            with pytest.raises(TunError, match="interface lo already exists"):
                LinuxTun("lo", create_only=True)
            with pytest.raises(TunError, match="in use"):
                LinuxTun("wgt1")  # an open single-queue TUN cannot be shared
        finally:
            first.close()
        # A persistent TUN (ip tuntap add) can be attached by name.
        keeper = pytun.TunTapDevice(name="wgt2", flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        keeper.persist(True)
        keeper.close()
        try:
            attached = LinuxTun("wgt2")
            assert attached.name == "wgt2"
            attached.close()
        finally:
            netlink.delete_link("wgt2", netns=netns)
        assert not netlink.link_exists("wgt2", netns=netns)


@linux
def test_linux_tun_multi_queue(netns: str) -> None:
    from tun import netlink
    from tun.linux import LinuxTun

    with netlink.in_netns(netns):
        q0 = LinuxTun("wgt3", multi_queue=True)
        try:
            q1 = q0.open_queue()
            assert q1.name == "wgt3" and q1.fileno() != q0.fileno()
            q1.close()
        finally:
            q0.close()
        single = LinuxTun("wgt4")
        try:
            with pytest.raises(TunError, match="multi_queue"):
                single.open_queue()
        finally:
            single.close()


@linux
def test_linux_tun_bad_names_and_missing_device(tmp_path: Path) -> None:
    from tun.linux import LinuxTun

    with pytest.raises(TunError, match="longer than 15"):
        LinuxTun("x" * 16)
    with pytest.raises(TunError, match=r"no .*/absent: "):
        LinuxTun("wgt5", dev_path=str(tmp_path / "absent"))


@linux
def test_linux_tun_closed_and_bad_mtu(netns: str) -> None:
    from tun import netlink
    from tun.linux import LinuxTun

    with netlink.in_netns(netns):
        tun = LinuxTun("wgt6")
    try:
        with pytest.raises(TunError, match="out of range"):
            tun.set_mtu(10)
    finally:
        tun.close()
    tun.close()
    assert tun.closed
    with pytest.raises(TunError, match="closed"):
        tun.up()


@linux
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_linux_tun_without_cap_net_admin_is_eperm() -> None:
    name = f"wgp{secrets.token_hex(4)}"
    code = (
        "from tun.linux import LinuxTun\n"
        "from tun.base import TunError\n"
        "try:\n"
        f"    LinuxTun({name!r})\n"
        "except TunError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [
            "setpriv",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--",
            sys.executable,
            "-c",
            code,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "permission denied" in out.stdout
    assert "CAP_NET_ADMIN" in out.stdout


@linux
def test_netlink_errors(netns: str) -> None:
    from tun import netlink

    with pytest.raises(TunError, match="no interface nope0"):
        netlink.set_link_up("nope0", netns=netns)
    with pytest.raises(TunError, match="not an interface address"):
        netlink.add_address("lo", "10.0.0.300/8", netns=netns)
    with pytest.raises(TunError, match="already exists"):
        netlink.netns_create(netns)
    netlink.delete_link("nope0", netns=netns)  # missing is fine
    assert netlink.wait_for_deletion("nope0", timeout=0.1, netns=netns)
    assert not netlink.wait_for_deletion("lo", timeout=0.05, netns=netns)
    with pytest.raises(TunError, match="no network namespace"), netlink.in_netns(netns + "x"):
        pass


def _ns_inode(path: str) -> int:
    return os.stat(path).st_ino


@linux
def test_in_netns_from_two_threads_at_once_returns_each_to_its_own(netns: str) -> None:
    """Each thread comes back to the namespace it left, however the blocks interleave.

    pyroute2's pushns saves ``/proc/self/ns/net`` (the *main* thread's namespace) on one stack
    shared by all threads: a sampler thread entering while the main thread was inside popped
    the main thread back into the node's namespace, where that namespace's cleanup (``ip netns
    pids``) then SIGKILLed the test run itself.
    """
    from tun import netlink

    home = _ns_inode("/proc/thread-self/ns/net")
    inside = _ns_inode(f"/run/netns/{netns}")
    wrong: list[str] = []

    def loop(who: str) -> None:
        for i in range(300):
            with netlink.in_netns(netns):
                if _ns_inode("/proc/thread-self/ns/net") != inside:
                    wrong.append(f"{who} {i}: not inside")
            if _ns_inode("/proc/thread-self/ns/net") != home:
                wrong.append(f"{who} {i}: not back home")
                return

    t = threading.Thread(target=loop, args=("thread",))
    t.start()
    loop("main")
    t.join(30)
    assert not t.is_alive()
    assert wrong == []
    assert _ns_inode("/proc/self/ns/net") == home


@linux
def test_netlink_veth_between_namespaces(netns: str) -> None:
    from tun import netlink

    other = f"wgpyt-{secrets.token_hex(4)}"
    netlink.netns_create(other)
    try:
        netlink.add_veth("va", "vb", netns=netns, peer_netns=other)
        assert netlink.link_exists("va", netns=netns)
        assert not netlink.link_exists("vb", netns=netns)
        assert netlink.link_exists("vb", netns=other)
        netlink.add_address("va", "10.97.0.1/30", netns=netns)
        with pytest.raises(TunError, match="EEXIST"):
            netlink.add_address("va", "10.97.0.1/30", netns=netns)
        netlink.set_link_mtu("va", 1300, netns=netns)
        assert netlink.link_mtu("va", netns=netns) == 1300
        netlink.delete_link("va", netns=netns)
        assert netlink.wait_for_deletion("vb", timeout=3.0, netns=other)
    finally:
        netlink.netns_remove(other)


@linux
def test_fast_path_drops_tun_reads_that_claim_offloads(netns: str) -> None:
    """No TUNSETOFFLOAD is done, so a read with a partial checksum cannot be a packet we may
    seal as it is: the fast path drops and counts it. Here the offload is forced on to see it
    (a packet without it, the control, reaches the route lookup: no peer, so "no_route")."""
    import fcntl

    from tun import netlink
    from tun.linux import LinuxTun
    from wgpy.core.device import Device
    from wgpy.io.fastpath import FastPath
    from wgpy.io.udp import UdpBind

    with netlink.in_netns(netns):
        tun = LinuxTun("wgt3", mtu=1420, vnet_hdr=True)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dev = Device(wall_time_ns=lambda: 0)
    fast = FastPath(dev, tun, UdpBind(), clock=lambda: 1.0, hand_over=None)
    try:
        tun.up()
        netlink.add_address("wgt3", "10.99.3.1/24", netns=netns)
        sock.bind(("10.99.3.1", 0))

        def send_and_read() -> None:
            sock.sendto(b"x" * 200, ("10.99.3.2", 9999))
            assert _readable(tun.fileno(), 3.0)
            assert fast.on_tun() is None

        send_and_read()
        assert dev.drops["no_route"] >= 1 and dev.drops["malformed_outbound"] == 0
        fcntl.ioctl(tun.fileno(), 0x400454D0, 0x01)  # TUNSETOFFLOAD: TUN_F_CSUM
        send_and_read()
        assert dev.drops["malformed_outbound"] == 1
    finally:
        sock.close()
        tun.close()
