"""pcapng reading, checked on files that tshark, editcap and mergecap wrote.

The fixtures (``tests/fixtures/pcapng``, made by ``make.py`` there) hold one conversation of two
wgpy devices, with the key log that one of them wrote. Every pcapng form must decode to exactly
what the classic pcap decodes to (``expected.txt``). Big-endian files and Simple Packet Blocks
are not written by any Wireshark tool on this machine, so they are derived here from the real
files block by block, and tshark (when installed) is asked to read the derived files too.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wgpy.harness.capture import read_frames, read_udp
from wgpy.harness.decode import main
from wgpy.harness.pcap import Frame, PcapError
from wgpy.harness.pcapng import BT_DSB, BT_EPB, BT_IDB, BT_SHB, BT_SPB, SHB_MAGIC

FIX = Path(__file__).parent / "fixtures" / "pcapng"
KEYS = str(FIX / "keys.log")
EXPECTED = (FIX / "expected.txt").read_text()
PCAPNG = ["editcap", "tshark", "merged", "commented", "secrets"]
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")


def _frames(data: bytes) -> list[Frame]:
    return list(read_frames(io.BytesIO(data)))


def _decode(path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main([str(path), *extra]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", PCAPNG)
def test_every_tool_written_form_decodes_like_the_pcap(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _decode(FIX / f"{name}.pcapng", capsys, "--keylog", KEYS) == EXPECTED
    assert "known payload" not in EXPECTED  # plaintext is summarised, never dumped


def test_the_pcap_itself_decodes_to_the_expected_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert _decode(FIX / "raw.pcap", capsys, "--keylog", KEYS) == EXPECTED
    assert "3 data, 1 keepalive" in EXPECTED and "with preshared key" in EXPECTED


def test_secrets_block_replaces_the_key_log(capsys: pytest.CaptureFixture[str]) -> None:
    assert _decode(FIX / "secrets.pcapng", capsys) == EXPECTED
    without = _decode(FIX / "editcap.pcapng", capsys)  # no keys at all: nothing opens
    assert "session keys derived" not in without and "(no key)" in without


def test_per_interface_link_types_and_timestamp_resolutions() -> None:
    pcap = _frames((FIX / "raw.pcap").read_bytes())
    merged = _frames((FIX / "merged.pcapng").read_bytes())
    # mergecap put the handshakes on interface 0 (Ethernet, ns) and the transport messages on
    # interface 1 (raw IP, µs), interleaved in time order
    assert [f.linktype for f in merged] == [1, 1, 101, 101, 1, 1, 101, 101]
    for a, b in zip(pcap, merged, strict=True):
        assert b.timestamp == pytest.approx(a.timestamp, abs=1e-6)
        assert b.data[-len(a.data) :] == a.data
    assert [len(f.data) - 14 if f.linktype == 1 else len(f.data) for f in merged] == [
        len(f.data) for f in pcap
    ]


# --- derived forms: other byte order, Simple Packet Blocks, several sections ------------------


def _blocks(data: bytes) -> list[tuple[int, bytes]]:
    """``(type, body)`` of each block of a little-endian pcapng file."""
    out, off = [], 0
    while off < len(data):
        btype, length = struct.unpack_from("<II", data, off)
        out.append((btype, data[off + 8 : off + length - 4]))
        off += length
    return out


def _block(btype: int, body: bytes, order: str) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(order + "II", btype, length) + body + struct.pack(order + "I", length)


def _swap_options(body: bytes, start: int, numeric: set[int]) -> bytes:
    """Options from ``start`` on in the other byte order (``numeric``: codes of integers)."""
    out, off = bytearray(body[:start]), start
    while off + 4 <= len(body):
        code, length = struct.unpack_from("<HH", body, off)
        value = body[off + 4 : off + 4 + length]
        if code in numeric:
            value = value[::-1]
        out += struct.pack(">HH", code, length) + value + b"\0" * (-length % 4)
        off += 4 + (length + 3) // 4 * 4
        if code == 0:
            break
    return bytes(out)


def big_endian(data: bytes) -> bytes:
    """The same file written by a big-endian machine (every field of the blocks in it)."""
    out = b""
    for btype, body in _blocks(data):
        if btype == BT_SHB:
            major, minor, seclen = struct.unpack_from("<HHq", body, 4)
            head = b"\x1a\x2b\x3c\x4d" + struct.pack(">HHq", major, minor, seclen)
            new = head + _swap_options(body, 16, set())[16:]
        elif btype == BT_IDB:
            head = struct.pack(">HHI", *struct.unpack_from("<HHI", body))
            new = head + _swap_options(body, 8, {8, 14})[8:]
        elif btype == BT_EPB:
            fields = struct.unpack_from("<5I", body)
            end = 20 + (fields[3] + 3) // 4 * 4
            opts = _swap_options(body, end, {2, 4, 5, 6})[end:]
            new = struct.pack(">5I", *fields) + body[20:end] + opts
        elif btype == BT_DSB:
            kind, size = struct.unpack_from("<II", body)
            new = struct.pack(">II", kind, size) + body[8:]
        else:
            raise AssertionError(f"cannot swap block type {btype:#x}")
        out += _block(btype, new, ">")
    return out


def simple_packets(data: bytes) -> bytes:
    """The same file with each Enhanced Packet Block replaced by a Simple Packet Block."""
    out = b""
    for btype, body in _blocks(data):
        if btype == BT_EPB:
            caplen, orig = struct.unpack_from("<II", body, 12)
            out += _block(BT_SPB, struct.pack("<I", orig) + body[20 : 20 + caplen], "<")
        else:
            out += _block(btype, body, "<")
    return out


def _tshark_lengths(path: Path) -> list[int]:
    assert TSHARK is not None
    r = subprocess.run([TSHARK, "-r", str(path), "-T", "fields", "-e", "frame.cap_len"],
                       capture_output=True, text=True, timeout=60, check=True)
    return [int(x) for x in r.stdout.split()]


@pytest.mark.parametrize("name", PCAPNG)
def test_big_endian(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    original = (FIX / f"{name}.pcapng").read_bytes()
    swapped = big_endian(original)
    assert swapped != original and swapped[:4] == SHB_MAGIC
    assert _frames(swapped) == _frames(original)
    path = tmp_path / f"{name}-be.pcapng"
    path.write_bytes(swapped)
    assert _decode(path, capsys, "--keylog", KEYS) == EXPECTED
    if TSHARK is not None:  # the derived file is a real big-endian pcapng
        assert _tshark_lengths(path) == [len(f.data) for f in _frames(original)]


def test_simple_packet_blocks(tmp_path: Path) -> None:
    original = _frames((FIX / "editcap.pcapng").read_bytes())
    path = tmp_path / "spb.pcapng"
    path.write_bytes(simple_packets((FIX / "editcap.pcapng").read_bytes()))
    spb = _frames(path.read_bytes())
    assert [(f.linktype, f.data) for f in spb] == [(f.linktype, f.data) for f in original]
    assert all(f.timestamp == 0.0 for f in spb)  # a Simple Packet Block has no timestamp
    if TSHARK is not None:
        assert _tshark_lengths(path) == [len(f.data) for f in original]
    # a snap length in the interface caps what a Simple Packet Block holds
    blocks = _blocks(path.read_bytes())
    idb = struct.pack("<HHI", 101, 0, 40)
    capped = b"".join(_block(t, idb if t == BT_IDB else b, "<") for t, b in blocks)
    assert [len(f.data) for f in _frames(capped)] == [40] * len(original)


def test_several_sections_each_with_its_own_byte_order_and_interfaces() -> None:
    a = (FIX / "editcap.pcapng").read_bytes()
    b = big_endian((FIX / "merged.pcapng").read_bytes())
    frames = _frames(a + b)
    assert [f.linktype for f in frames] == [101] * 8 + [1, 1, 101, 101, 1, 1, 101, 101]
    # interface 1 exists only in the second section
    only_first = a + _block(BT_EPB, struct.pack("<5I", 1, 0, 0, 0, 0), "<")
    with pytest.raises(PcapError, match="interface 1"):
        _frames(only_first)


def test_resolutions_offsets_skipped_blocks_and_truncation() -> None:
    def opt(code: int, value: bytes) -> bytes:
        return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)

    shb = _block(BT_SHB, b"\x4d\x3c\x2b\x1a" + struct.pack("<HHq", 1, 0, -1), "<")
    idb_pow2 = struct.pack("<HHI", 101, 0, 0) + opt(9, b"\x8a") + opt(14, struct.pack("<q", 100))
    idb_ms = struct.pack("<HHI", 101, 0, 0) + opt(9, b"\x03") + opt(0, b"")
    pkt = bytes(range(20))

    def epb(iface: int, ticks: int) -> bytes:
        head = struct.pack("<5I", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(pkt), len(pkt))
        return _block(BT_EPB, head + pkt, "<")

    custom = _block(0x00000BAD, b"anything at all", "<")
    isb = _block(0x00000005, struct.pack("<3I", 0, 0, 0), "<")
    data = (shb + _block(BT_IDB, idb_pow2, "<") + custom + _block(BT_IDB, idb_ms, "<")
            + epb(0, 3 * 1024 + 512) + isb + epb(1, 2_500))
    frames = _frames(data)
    assert [f.timestamp for f in frames] == [103.5, 2.5]  # 2^-10 s + 100 s offset; ms
    assert [f.data for f in frames] == [pkt, pkt]
    for cut in range(len(data) - len(epb(1, 0)) + 1, len(data)):
        assert len(_frames(data[:cut])) == 1  # a truncated last block is dropped quietly
    bad_len = bytearray(data)
    bad_len[len(data) - 4] ^= 0xFF  # trailing length of the last block
    with pytest.raises(PcapError, match="trailing length"):
        _frames(bytes(bad_len))
    with pytest.raises(PcapError, match="version 2"):
        _frames(_block(BT_SHB, b"\x4d\x3c\x2b\x1a" + struct.pack("<HHq", 2, 0, -1), "<"))
    with pytest.raises(PcapError, match="bad length"):
        _frames(shb + struct.pack("<II", BT_EPB, 10) + bytes(8))
    with pytest.raises(PcapError, match="byte-order magic"):
        _frames(SHB_MAGIC + bytes(40))


def test_stdin(tmp_path: Path) -> None:
    for name in ("merged.pcapng", "raw.pcap"):
        with open(FIX / name, "rb") as f:
            r = subprocess.run([sys.executable, "-m", "wgpy", "decode", "-", "--keylog", KEYS],
                               stdin=f, capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout == EXPECTED


@needs_tshark
def test_tshark_decrypts_with_the_device_key_log() -> None:
    """The key log that device A wrote (Wireshark lines plus TRANSPORT_KEY lines, which
    tshark ignores) lets tshark decrypt both sessions: A was initiator of one and responder of
    the other."""
    assert TSHARK is not None
    for name in ("editcap.pcapng", "raw.pcap"):
        r = subprocess.run(
            [TSHARK, "-r", str(FIX / name), "-o", f"wg.keylog_file:{KEYS}",
             "-o", "wg.dissect_packet:TRUE", "-Y", 'data.data contains "wgpy known payload"',
             "-T", "fields", "-e", "frame.number"],
            capture_output=True, text=True, timeout=60, check=True)
        assert r.stdout.split() == ["3", "4", "8"], r.stdout + r.stderr
    # the key log embedded in the file is enough too
    r = subprocess.run(
        [TSHARK, "-r", str(FIX / "secrets.pcapng"), "-Y", 'data.data contains "known payload"',
         "-T", "fields", "-e", "frame.number"],
        capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.split() == ["3", "4", "8"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from([*PCAPNG, "raw"]),
    edits=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 4000),
)
def test_damaged_files_raise_only_pcap_error(name: str, edits: list[tuple[int, int]],
                                             cut: int) -> None:
    """Whatever the damage, reading either succeeds or raises PcapError, never anything
    else (and never hangs: every block length is checked before it is used)."""
    path = FIX / (f"{name}.pcapng" if name != "raw" else "raw.pcap")
    data = bytearray(path.read_bytes())
    for at, value in edits:
        if at < len(data):
            data[at] = value
    try:
        for d in read_udp(io.BytesIO(bytes(data[: max(cut, 4)]))):
            assert isinstance(d.payload, bytes)
    except PcapError:
        pass


@settings(max_examples=400, deadline=None)
@given(
    blocks=st.lists(
        st.tuples(st.sampled_from([BT_SHB, BT_IDB, 2, BT_SPB, BT_EPB, BT_DSB, 5, 0x0BAD]),
                  st.binary(max_size=48)),
        max_size=6,
    )
)
def test_well_framed_blocks_with_garbage_bodies_raise_only_pcap_error(
    blocks: list[tuple[int, bytes]],
) -> None:
    """Framing intact, bodies of any length and content: the checks inside each block."""
    good = (FIX / "editcap.pcapng").read_bytes()
    data = good + b"".join(
        _block(t, (b"\x4d\x3c\x2b\x1a" + body) if t == BT_SHB else body, "<") for t, body in blocks
    )
    try:
        frames = _frames(data)
    except PcapError:
        return
    assert len(frames) >= 8
