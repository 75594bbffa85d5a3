"""Device key logs: the core's hook, the file's safety rules, and reading them back.

The core hands a :class:`SessionSecrets` to an injected sink and does no I/O; ``wgpy.io.keylog``
writes the lines. A capture of two in-memory devices (``tests.devpair``) is then decrypted from
either side's log, from the Wireshark lines alone or from the ``TRANSPORT_KEY`` lines alone.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

import pytest

from noise import crypto
from tests.devpair import PAYLOAD, Conversation, converse
from wgpy.core.keypair import SessionSecrets
from wgpy.harness.decode import Decoder, Event, main
from wgpy.harness.keylog import parse_keylog
from wgpy.harness.pcap import Frame, PcapWriter, udp_in_frame
from wgpy.io.keylog import KeyLogRefused, KeyLogWriter, device_sink, session_lines

PSK = b"\x42" * 32


def _decode(c: Conversation, text: str) -> list[Event]:
    dec = Decoder([], parse_keylog(text))
    out = []
    for ts, packet in c.records:
        d = udp_in_frame(Frame(ts, 101, packet))
        assert d is not None
        ev = dec.feed(d)
        assert ev is not None
        out.append(ev)
    return out


def _payloads(events: list[Event]) -> list[bytes]:
    return [e.plaintext[28:82] for e in events if e.kind == "data" and e.plaintext]


def test_the_core_hands_each_new_session_to_the_sink() -> None:
    got: dict[str, list[SessionSecrets]] = {"a": [], "b": []}
    c = converse(psk=PSK, sink_a=got["a"].append, sink_b=got["b"].append)
    # each side derived two sessions: responder then initiator (b), initiator then responder (a)
    assert [s.is_initiator for s in got["a"]] == [True, False]
    assert [s.is_initiator for s in got["b"]] == [False, True]
    assert c.a.static is not None and c.b.static is not None
    sides = ((got["a"], got["b"], c.a, c.b), (got["b"], got["a"], c.b, c.a))
    for mine, theirs, dev, other in sides:
        for s, t in zip(mine, theirs, strict=True):  # the same session seen from each side
            assert s.local_static_private == dev.static.private
            assert s.remote_static_public == other.static.public
            assert s.preshared_key == PSK
            assert len(s.local_ephemeral_private) == 32
            assert (s.send_key, s.receive_key) == (t.receive_key, t.send_key)
            assert (s.local_index, s.remote_index) == (t.remote_index, t.local_index)
            assert "keys hidden" in repr(s) and base64.b64encode(s.send_key).decode() not in repr(s)
    # the same keypairs the devices use: the current session's indices
    peer_a = next(iter(c.a.peers.values()))
    assert peer_a.current is not None and peer_a.current.local_index == got["a"][-1].local_index


def test_without_a_sink_nothing_is_collected() -> None:
    c = converse()
    assert c.a.key_log_sink is None and len(c.delivered["b"]) == 1


@pytest.mark.parametrize("psk", [None, PSK])
def test_either_sides_log_decrypts_the_capture(tmp_path: Path, psk: bytes | None) -> None:
    logs = {side: tmp_path / f"{side}.log" for side in "ab"}
    c = converse(
        psk=psk,
        sink_a=device_sink(KeyLogWriter(str(logs["a"])), "a"),
        sink_b=device_sink(KeyLogWriter(str(logs["b"])), "b"),
    )
    for side, path in logs.items():
        text = path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        lines = text.splitlines()
        assert len(lines) == 2 * 6  # two sessions: four Wireshark lines, two TRANSPORT_KEY
        wireshark = "\n".join(ln for ln in lines if not ln.startswith("TRANSPORT_KEY"))
        transport = "\n".join(ln for ln in lines if ln.startswith("TRANSPORT_KEY"))
        for text_part in (wireshark, transport):
            events = _decode(c, text_part)
            assert _payloads(events) == [PAYLOAD] * 3, side
            assert [e.kind for e in events].count("keepalive") == 1
        events = _decode(c, wireshark)
        assert [e.psk_used for e in events if e.kind == "response"] == [psk is not None] * 2
    assert _payloads(_decode(c, "")) == []  # control: no key, nothing decrypts


def test_session_lines_format() -> None:
    s = SessionSecrets(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, bytes(32), True, 0x0A0B0C0D,
                       7, b"\x04" * 32, b"\x05" * 32)
    b64 = {n: base64.b64encode(bytes([n]) * 32).decode() for n in range(6)}
    assert session_lines(s) == [
        f"LOCAL_STATIC_PRIVATE_KEY = {b64[1]}",
        f"REMOTE_STATIC_PUBLIC_KEY = {b64[2]}",
        f"LOCAL_EPHEMERAL_PRIVATE_KEY = {b64[3]}",
        f"PRESHARED_KEY = {b64[0]}",
        f"TRANSPORT_KEY 0x0a0b0c0d {b64[5]}",
        f"TRANSPORT_KEY 0x00000007 {b64[4]}",
    ]


# --- the file: 0600, no symlinks, nobody else's, nobody else may read it ------------------


def test_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        w = KeyLogWriter(str(tmp_path / "k.log"))
    finally:
        os.umask(old)
    w.transport(1, bytes(32))
    w.transport(2, bytes(32))
    assert stat.S_IMODE((tmp_path / "k.log").stat().st_mode) == 0o600
    assert len((tmp_path / "k.log").read_text().splitlines()) == 2  # appended


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602])
def test_refuses_a_file_others_can_read_or_write(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "k.log"
    p.write_text("")
    os.chmod(p, mode)
    with pytest.raises(KeyLogRefused, match="lets others"):
        KeyLogWriter(str(p))
    os.chmod(p, 0o600)
    KeyLogWriter(str(p))  # control


def test_refuses_symlinks_and_non_files(tmp_path: Path) -> None:
    target = tmp_path / "real.log"
    KeyLogWriter(str(target))
    link = tmp_path / "link.log"
    link.symlink_to(target)
    with pytest.raises(KeyLogRefused, match="symbolic link"):
        KeyLogWriter(str(link))
    dangling = tmp_path / "dangling.log"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(KeyLogRefused, match="symbolic link"):
        KeyLogWriter(str(dangling))
    assert not (tmp_path / "nowhere").exists()  # the link was not followed to create it
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeyLogRefused, match="cannot open"):  # and it does not block
        KeyLogWriter(str(fifo))
    with pytest.raises(KeyLogRefused, match="not a regular file"):
        KeyLogWriter("/dev/null")
    with pytest.raises(KeyLogRefused, match="cannot open"):
        KeyLogWriter(str(tmp_path / "missing-dir" / "k.log"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_refuses_a_file_owned_by_someone_else(tmp_path: Path) -> None:
    p = tmp_path / "k.log"
    p.write_text("")
    os.chmod(p, 0o600)
    os.chown(p, 65534, 65534)
    with pytest.raises(KeyLogRefused, match="owned by uid 65534"):
        KeyLogWriter(str(p))


def test_a_file_made_unsafe_later_stops_the_log_not_the_device(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = tmp_path / "k.log"
    sink = device_sink(KeyLogWriter(str(p)), "wg9")
    p.unlink()
    p.symlink_to(tmp_path / "elsewhere")  # swapped for a link after start
    s = SessionSecrets(*(bytes(32),) * 4, True, 1, 2, bytes(32), bytes(32))
    with caplog.at_level(logging.ERROR):
        sink(s)
        sink(s)  # logged once, not for every session
    errors = [r for r in caplog.records if "key log not written" in r.getMessage()]
    assert len(errors) == 1 and "symbolic link" in errors[0].getMessage()
    assert not (tmp_path / "elsewhere").exists()
    p.unlink()
    sink(s)  # the link gone: the file is created again and written
    assert p.read_text().count("TRANSPORT_KEY") == 2


# --- reading: unknown lines skipped, one warning per kind -----------------------------------


def test_unknown_and_malformed_lines_are_skipped_with_one_warning_per_kind(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "a.log"
    c = converse(sink_a=device_sink(KeyLogWriter(str(log)), "a"))
    secret = base64.b64encode(crypto.generate_private_key()).decode()
    noise_lines = [
        "CLIENT_RANDOM 00112233 445566",  # a TLS key log line, twice
        "CLIENT_RANDOM 778899 aabbcc",
        f"FUTURE_KEY_KIND = {secret}",
        f"{secret}",  # a bare key: its text must never appear in a warning
        "LOCAL_EPHEMERAL_PRIVATE_KEY = not-base64!",
        "TRANSPORT_KEY 0xzz AAAA",
    ]
    good = log.read_text()
    log.write_text("\n".join(noise_lines) + "\n# a comment\n\n" + good)
    parsed = parse_keylog(log.read_text())
    assert sorted(parsed.skipped) == [
        "malformed LOCAL_EPHEMERAL_PRIVATE_KEY", "malformed TRANSPORT_KEY",
        "unknown CLIENT_RANDOM", "unknown FUTURE_KEY_KIND", "unrecognised",
    ]
    assert parsed.skipped["unknown CLIENT_RANDOM"] == [1, 2]
    cap = tmp_path / "c.pcap"
    with open(cap, "wb") as f:
        w = PcapWriter(f)
        for ts, packet in c.records:
            w.write(ts, packet)
    assert main([str(cap), "--keylog", str(log)]) == 0
    out, err = capsys.readouterr()
    warnings = err.splitlines()
    assert len(warnings) == 5, err
    assert any("skipped 2 unknown CLIENT_RANDOM lines (line 1, 2)" in w for w in warnings)
    assert secret not in err and secret[:20] not in err
    assert out.count("udp len") == 3  # the good lines still decrypt everything
