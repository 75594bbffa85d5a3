"""One strict base64 key decoder, as wg's ``key_from_base64``, used everywhere (issue 16)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from wgpy.core.errors import ConfigError
from wgpy.core.keys import decode_base64_key, parse_base64_key
from wgpy.harness import decode, keylog

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def spellings(raw: bytes) -> tuple[str, list[str]]:
    """The canonical base64 of ``raw`` and its 3 other spellings: the same 32 bytes with one
    of the 2 unused low bits of the 43rd character set (Python's base64 takes all four)."""
    good = base64.b64encode(raw).decode()
    v = _ALPHABET.index(good[42])
    assert v & 3 == 0
    bad = [good[:42] + _ALPHABET[v | low] + "=" for low in (1, 2, 3)]
    assert all(base64.b64decode(b) == raw for b in bad)  # what the old decoders accepted
    return good, bad


def test_the_issue_example_is_rejected() -> None:
    raw = base64.b64decode("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=")
    good, bad = spellings(raw)
    assert good.endswith("Bmk=")
    key = base64.b64decode(good[:40] + "Hh8=")
    good, bad = spellings(key)
    assert good.endswith("Hh8=") and good[:40] + "Hh9=" in bad  # the issue's example
    assert decode_base64_key(good) == key
    for b in bad:
        assert decode_base64_key(b) is None


@pytest.mark.parametrize("seed", range(8))
def test_every_decoder_accepts_only_the_canonical_spelling(seed: int) -> None:
    raw = os.urandom(32)
    good, bad = spellings(raw)
    assert parse_base64_key(f"  {good}\n") == raw
    log = keylog.parse_keylog(f"LOCAL_STATIC_PRIVATE_KEY = {good}\n")
    assert log.static_private == [raw]
    for b in bad:
        with pytest.raises(ConfigError):
            parse_base64_key(b)
        assert keylog.parse_keylog(f"LOCAL_STATIC_PRIVATE_KEY = {b}\n").static_private == []


def test_the_commands_use_the_strict_decoder(capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = spellings(os.urandom(32))
    assert decode.main(["/nonexistent.pcap", "--key", bad[0]]) == 1
    assert "--key: not a valid base64 WireGuard key" in capsys.readouterr().err
    assert decode.main(["/nonexistent.pcap", "--key", good]) == 1  # the key passes, the file not
    assert "No such file" in capsys.readouterr().err
    for text, ok in ((good, True), (bad[1], False)):
        r = subprocess.run(
            [sys.executable, "-m", "wgpy", "pubkey"], input=text + "\n", capture_output=True,
            text=True, check=False,
        )
        assert (r.returncode == 0) is ok, r.stderr


@pytest.mark.parametrize(
    "text",
    ["", "=" * 44, "A" * 44, "A" * 43 + "= ", "A" * 42 + "==", "A" * 41 + "-A=", "Ä" * 43 + "="],
)
def test_malformed_keys(text: str) -> None:
    assert decode_base64_key(text) is None
