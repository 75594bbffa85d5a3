"""``wgpy supervisor --keylog TUNNEL=PATH``: parsed, checked at start, handed to one tunnel.

The live half (a supervisor that really writes the file, and writes keys nowhere else) is in
``tests/test_key_leaks.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_manager import tunnel
from wgpy.core.errors import ConfigError
from wgpy.core.keys import generate_private_key, public_key, to_base64
from wgpy.supervisor.main import build_parser, resolve
from wgpy.supervisor.manager import Supervisor
from wgpy.supervisor.tunnel import TunnelError, TunnelRuntime
from wgpy.testbed.topology import tunnels_yaml

ROOT = Path(__file__).resolve().parent.parent


def _resolve(*argv: str) -> Any:
    return resolve(build_parser("wgpy supervisor").parse_args(list(argv)), {})


def test_flag_parsing() -> None:
    assert _resolve().keylogs == ()
    s = _resolve("--keylog", "wg0=/tmp/a.log", "--keylog", "wg1=/tmp/b=c.log")
    assert s.keylogs == (("wg0", "/tmp/a.log"), ("wg1", "/tmp/b=c.log"))
    for bad in ("wg0", "=x", "wg0="):
        with pytest.raises(ConfigError, match="TUNNEL=PATH"):
            _resolve("--keylog", bad)
    with pytest.raises(ConfigError, match="given twice"):
        _resolve("--keylog", "wg0=/a", "--keylog", "wg0=/b")


class _Elector:
    def __init__(self, **_callbacks: Any) -> None:
        pass


def test_only_the_named_tunnel_gets_the_key_log(tmp_path: Path) -> None:
    sup = Supervisor("me", elector_factory=_Elector, keylogs={"wg0": str(tmp_path / "k")})
    factory = sup._runtime_factory
    logged, other = factory(tunnel("wg0", "10.9.0.1/32")), factory(tunnel("wg1", "10.9.0.2/32"))
    assert isinstance(logged, TunnelRuntime) and isinstance(other, TunnelRuntime)
    assert logged.keylog == str(tmp_path / "k") and other.keylog is None


def test_an_unsafe_path_fails_the_bring_up_before_anything_is_made(tmp_path: Path) -> None:
    link = tmp_path / "k.log"
    link.symlink_to(tmp_path / "target")
    rt = TunnelRuntime(tunnel("wgk0", "10.9.0.1/32"), keylog=str(link))
    with pytest.raises(TunnelError, match="symbolic link"):
        rt.start()
    assert rt.device is None and not rt.alive
    assert not (tmp_path / "target").exists()


def test_the_command_refuses_an_unsafe_key_log_at_start(tmp_path: Path) -> None:
    priv = to_base64(generate_private_key())
    peer = to_base64(public_key(generate_private_key()))
    conf = tmp_path / "tunnels.yaml"
    conf.write_text(tunnels_yaml({"wg0": {
        "vip": "10.200.0.1/32", "privateKey": priv, "peerPublicKey": peer,
        "peerEndpoint": "127.0.0.1:51820", "listenPort": 51820,
        "allowedIPs": ["10.100.0.0/16"]}}))
    os.chmod(conf, 0o600)
    readable = tmp_path / "keys.log"
    readable.write_text("")
    os.chmod(readable, 0o644)
    r = subprocess.run(
        [sys.executable, "-m", "wgpy", "supervisor", "--tunnels-file", str(conf),
         "--lock-file", str(tmp_path / "lock"), "--keylog", f"wg0={readable}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 2, r.stderr
    assert "--keylog wg0" in r.stderr and "lets others read or write it" in r.stderr
    assert priv not in r.stderr + r.stdout
    assert readable.read_text() == ""
