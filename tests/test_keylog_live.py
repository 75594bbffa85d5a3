"""Live: real devices write key logs, and one capture decrypts in ``wgpy decode`` and tshark.

Three namespaces: a hub running ``wgpy-userspace`` (A), a second ``wgpy-userspace`` (B) and
wireguard-go (C), each joined to the hub by a veth. Both wgpy devices run with ``WGPY_KEYLOG``;
wireguard-go writes nothing. B initiates to A, A initiates to C (with a preshared key), so A's
log holds both roles. tcpdump on the hub captures the encrypted UDP (classic pcap); editcap turns
it into pcapng. A known payload crosses each tunnel in each direction, and each tool must find
all four in the decrypted traffic: ``wgpy decode`` from the pcap, from the pcapng and from stdin,
tshark (where installed) from both files with the very same key log file.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.support import WGPY, WIREGUARD_GO, interop
from wgpy import testbed as tb
from wgpy.core.keys import generate_private_key, public_key, to_base64
from wgpy.harness.decode import Decoder, Event, decode_file
from wgpy.harness.keylog import parse_keylog

pytestmark = interop
TSHARK, EDITCAP = shutil.which("tshark"), shutil.which("editcap")
PORT = 51820
TUN = {"a": "10.98.0.1", "b": "10.98.0.2", "c": "10.98.0.3"}
MARK = f"wgpy-live-{secrets.token_hex(4)}"


def _send(ns: tb.Namespace, dst: str, tag: str) -> None:
    """One UDP datagram carrying ``MARK tag`` to ``dst:9999`` (nobody listens: that is fine)."""
    code = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.sendto(sys.argv[1].encode(), (sys.argv[2], 9999))")
    ns.run([sys.executable, "-c", code, f"{MARK} {tag}", dst])


def _found(events: list[Event]) -> set[str]:
    """The tags of the known payloads found in decrypted UDP packets."""
    out = set()
    for e in events:
        if e.kind == "data" and e.ip is not None and e.ip.proto == 17:
            text = e.ip.payload[8:].decode(errors="replace")
            if text.startswith(MARK):
                out.add(text.removeprefix(MARK).strip())
    return out


@contextlib.contextmanager
def _three(tmp: Path) -> Iterator[dict[str, object]]:
    with contextlib.ExitStack() as stack:
        ns = {n: stack.enter_context(tb.Namespace()) for n in "abc"}
        links = {
            "b": tb.veth(ns["a"], ns["b"], "192.168.51.1/24", "192.168.51.2/24"),
            "c": tb.veth(ns["a"], ns["c"], "192.168.52.1/24", "192.168.52.2/24"),
        }
        logs = {n: tmp / f"{n}.keys" for n in "ab"}
        wg = {
            n: stack.enter_context(tb.WgInstance(ns[n], impl, env=env))
            for n, impl, env in (
                ("a", WGPY, {"WGPY_KEYLOG": str(logs["a"])}),
                ("b", WGPY, {"WGPY_KEYLOG": str(logs["b"])}),
                ("c", WIREGUARD_GO, None),
            )
        }
        priv = {n: generate_private_key() for n in "abc"}
        pub = {n: to_base64(public_key(k)) for n, k in priv.items()}
        psk = to_base64(generate_private_key())
        wg["a"].set_conf(to_base64(priv["a"]), listen_port=PORT, peers=[
            tb.PeerConf(pub["b"], f"{links['b'].ip_b}:{PORT}", [f"{TUN['b']}/32"]),
            tb.PeerConf(pub["c"], f"{links['c'].ip_b}:{PORT}", [f"{TUN['c']}/32"], psk),
        ])
        wg["b"].set_conf(to_base64(priv["b"]), listen_port=PORT, peers=[
            tb.PeerConf(pub["a"], f"{links['b'].ip_a}:{PORT}", [f"{TUN['a']}/32"])])
        wg["c"].set_conf(to_base64(priv["c"]), listen_port=PORT, peers=[
            tb.PeerConf(pub["a"], f"{links['c'].ip_a}:{PORT}", [f"{TUN['a']}/32"], psk)])
        for n, w in wg.items():
            w.address(f"{TUN[n]}/24")
            w.up()
        yield {"ns": ns, "wg": wg, "logs": logs}


def _ping(ns: tb.Namespace, dst: str) -> bool:
    return ns.run(["ping", "-n", "-c", "1", "-W", "1", dst], check=False).returncode == 0


def _tshark_tags(cap: Path, keylog: Path) -> set[str]:
    assert TSHARK is not None
    r = subprocess.run(
        [TSHARK, "-r", str(cap), "-o", f"wg.keylog_file:{keylog}", "-o", "wg.dissect_packet:TRUE",
         "-Y", f'data.data contains "{MARK}"', "-T", "fields", "-e", "data.data"],
        capture_output=True, text=True, timeout=120, check=True)
    tags = set()
    for field in r.stdout.split():
        for value in field.split(","):
            text = bytes.fromhex(value).decode(errors="replace")
            if text.startswith(MARK):
                tags.add(text.removeprefix(MARK).strip())
    return tags


def test_device_key_logs_decrypt_one_capture_in_both_tools(tmp_path: Path) -> None:
    cap = tmp_path / "hub.pcap"
    with _three(tmp_path) as t:
        ns: dict[str, tb.Namespace] = t["ns"]  # type: ignore[assignment]
        wg: dict[str, tb.WgInstance] = t["wg"]  # type: ignore[assignment]
        logs: dict[str, Path] = t["logs"]  # type: ignore[assignment]
        err = tmp_path / "tcpdump.err"
        with open(err, "w") as errf:
            dump = ns["a"].popen(["tcpdump", "--immediate-mode", "-U", "-n", "-i", "any",
                                  "-w", str(cap), "udp", "port", str(PORT)], stderr=errf)
        try:
            tb.wait_for(lambda: "listening" in err.read_text(), 15, err.read_text)
            # handshakes: B initiates to A, A initiates to wireguard-go (preshared key)
            tb.wait_for(lambda: _ping(ns["b"], TUN["a"]), 30, interval=0.0)
            tb.wait_for(lambda: _ping(ns["a"], TUN["c"]), 30, interval=0.0)
            for src, dst in (("b", "a"), ("a", "b"), ("a", "c"), ("c", "a")):
                _send(ns[src], TUN[dst], f"{src}->{dst}")
            want = {"b->a", "a->b", "a->c", "c->a"}

            def all_captured() -> bool:
                with contextlib.suppress(Exception):
                    log = parse_keylog(logs["a"].read_text())
                    return _found(decode_file(str(cap), Decoder([], log))) == want
                return False

            tb.wait_for(all_captured, 30, "the known payloads in the capture", interval=0.2)
        finally:
            dump.terminate()
            dump.wait(10)
        output = {n: wg[n].output() for n in "ab"}
    # each wgpy device warned once, and wrote a 0600 log with both Wireshark and our lines
    for n in "ab":
        assert output[n].count("writing secret session keys") == 1, output[n]
        assert stat.S_IMODE(logs[n].stat().st_mode) == 0o600
        text = logs[n].read_text()
        assert "LOCAL_EPHEMERAL_PRIVATE_KEY = " in text and "TRANSPORT_KEY 0x" in text
    # wgpy decode: A's log opens everything; B's only its own tunnel
    a_log, b_log = parse_keylog(logs["a"].read_text()), parse_keylog(logs["b"].read_text())
    events = decode_file(str(cap), Decoder([], a_log))
    assert _found(events) == want
    assert any(e.kind == "response" and e.psk_used for e in events)  # the A-C handshake
    assert _found(decode_file(str(cap), Decoder([], b_log))) == {"b->a", "a->b"}
    # the Wireshark lines alone are enough (what tshark uses)
    wireshark_only = "\n".join(
        ln for ln in logs["a"].read_text().splitlines() if not ln.startswith("TRANSPORT_KEY"))
    assert _found(decode_file(str(cap), Decoder([], parse_keylog(wireshark_only)))) == want
    cli = [sys.executable, "-m", "wgpy", "decode", "--keylog", str(logs["a"])]
    by_file = subprocess.run([*cli, str(cap)], capture_output=True, text=True, timeout=120,
                             check=True).stdout
    assert "session keys derived (with preshared key)" in by_file
    files = [cap]
    if EDITCAP is not None:
        ng = tmp_path / "hub.pcapng"
        subprocess.run([EDITCAP, "-F", "pcapng", str(cap), str(ng)], check=True, timeout=60,
                       capture_output=True)
        assert ng.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
        files.append(ng)
        assert _found(decode_file(str(ng), Decoder([], a_log))) == want
        from_file = subprocess.run([*cli, str(ng)], capture_output=True, text=True,
                                   timeout=120, check=True)
        with open(ng, "rb") as stdin:
            from_stdin = subprocess.run([*cli, "-"], stdin=stdin, capture_output=True,
                                        text=True, timeout=120, check=True)
        assert from_file.stdout == from_stdin.stdout == by_file  # pcap, pcapng, stdin alike
    if TSHARK is not None:
        for f in files:
            assert _tshark_tags(f, logs["a"]) == want, f
        assert _tshark_tags(cap, logs["b"]) == {"b->a", "a->b"}
