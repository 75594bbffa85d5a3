"""``wgpy genkey|genpsk|pubkey`` against the real ``wg``, and the command registry."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wgpy.core.keys import decode_base64_key
from wgpy.tools import cli

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
needs_wg = pytest.mark.skipif(shutil.which("wg") is None, reason="needs the wg tool")


def wgpy(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "wgpy", *args],
        input=stdin,
        capture_output=True,
        env=ENV,
        cwd=ROOT,
        timeout=20,
        check=False,
    )


def wg(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["wg", *args], input=stdin, capture_output=True, timeout=10, check=False)


@needs_wg
def test_genkey_is_accepted_by_wg_and_pubkeys_agree() -> None:
    for _ in range(3):
        gen = wgpy("genkey")
        assert gen.returncode == 0, gen.stderr
        assert len(gen.stdout) == 45 and gen.stdout.endswith(b"=\n")
        key = base64.b64decode(gen.stdout)
        assert key[0] & 7 == 0 and key[31] & 0x80 == 0 and key[31] & 0x40  # clamped
        ours = wgpy("pubkey", stdin=gen.stdout)
        theirs = wg("pubkey", stdin=gen.stdout)
        assert theirs.returncode == 0 and ours.returncode == 0
        assert ours.stdout == theirs.stdout and len(ours.stdout) == 45


@needs_wg
def test_pubkey_of_wg_genkey_and_unclamped_key() -> None:
    keys = [wg("genkey").stdout, wg("genpsk").stdout]  # a PSK is an unclamped 32-byte key
    for key in keys:
        assert wgpy("pubkey", stdin=key).stdout == wg("pubkey", stdin=key).stdout


def test_genpsk_is_random_32_bytes() -> None:
    a, b = wgpy("genpsk"), wgpy("genpsk")
    assert a.returncode == 0 and len(base64.b64decode(a.stdout.strip(), validate=True)) == 32
    assert a.stdout != b.stdout


GOOD = b"yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
BAD_INPUTS = [
    b"",
    GOOD[:43],  # too short
    GOOD[:-1] + b"A",  # no '=' at the end
    b"!" + GOOD[1:],  # not base64
    GOOD[:42] + b"l=",  # non-zero unused bits in the last character
    b" " + GOOD,  # leading space counts as one of the 44 characters
    GOOD + b"x",  # trailing garbage
    GOOD + b"\n\nx\n",
    GOOD[:10] + b"\0" + GOOD[11:],  # NUL inside the key
]
GOOD_INPUTS = [GOOD, GOOD + b"\n", GOOD + b" \t\r\n\v\f", GOOD + b"\0\n"]


@needs_wg
@pytest.mark.parametrize("data", BAD_INPUTS + GOOD_INPUTS)
def test_pubkey_input_handling_matches_wg(data: bytes) -> None:
    ours, theirs = wgpy("pubkey", stdin=data), wg("pubkey", stdin=data)
    assert ours.returncode == theirs.returncode
    assert ours.stdout == theirs.stdout
    assert ours.stderr.replace(b"wgpy:", b"wg:") == theirs.stderr
    assert (ours.returncode == 0) == (data in GOOD_INPUTS)


def test_bad_key_message() -> None:
    r = wgpy("pubkey", stdin=b"not a key")
    assert r.returncode == 1
    assert r.stderr == b"wgpy: Key is not the correct length or format\n"


@needs_wg
@pytest.mark.parametrize("command", ["genkey", "genpsk", "pubkey"])
def test_extra_arguments_are_usage_errors(command: str) -> None:
    r = wgpy(command, "extra", stdin=GOOD)
    assert r.returncode == 1 == wg(command, "extra", stdin=GOOD).returncode
    assert r.stderr == f"Usage: wgpy {command}\n".encode() and r.stdout == b""


@needs_wg
@pytest.mark.parametrize("mode", [0o644, 0o600])
@pytest.mark.parametrize("command", ["genkey", "genpsk"])
def test_world_accessible_warning(tmp_path: Path, mode: int, command: str) -> None:
    stderrs = []
    for tool in ("wgpy", "wg"):
        out = tmp_path / f"{tool}.key"
        out.touch()
        out.chmod(mode)
        with out.open("wb") as f:
            argv = (
                [sys.executable, "-m", "wgpy", command] if tool == "wgpy" else ["wg", command]
            )
            r = subprocess.run(
                argv, stdout=f, stderr=subprocess.PIPE, env=ENV, cwd=ROOT, check=True
            )
        stderrs.append(r.stderr)
        assert len(base64.b64decode(out.read_bytes().strip(), validate=True)) == 32
    assert stderrs[0] == stderrs[1]
    assert (b"Warning: writing to world accessible file." in stderrs[0]) == bool(mode & 0o007)


def test_genkey_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from wgpy.tools.cli import main; rc = main(['genkey']);"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('kubernetes', 'pyroute2', 'aiohttp', 'yaml', 'wgpy.tools.updown', 'wgpy.tools.show')];"
        "print(heavy); sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=ENV, cwd=ROOT, check=True
    )
    assert r.stdout.splitlines()[-1] == b"[]"


def test_registry_targets_all_load() -> None:
    names = [c.name for c in cli.COMMANDS]
    assert len(names) == len(set(names))
    for c in cli.COMMANDS:
        assert callable(c.load()), c.target
    assert cli.find("genkey") is not None and cli.find("nope") is None


def test_usage_and_unknown_command() -> None:
    r = wgpy("--help")
    assert r.returncode == 0
    for c in cli.COMMANDS:
        assert f"  {c.name} ".encode() in r.stdout
    r = wgpy("frobnicate")
    assert r.returncode == 1 and b"Invalid subcommand: `frobnicate'" in r.stderr
    assert wgpy().returncode == 1


def test_decode_key_matches_base64_on_canonical_keys() -> None:
    for _ in range(50):
        raw = os.urandom(32)
        assert decode_base64_key(base64.b64encode(raw)) == raw
    assert decode_base64_key(GOOD[:42] + b"l=") is None
