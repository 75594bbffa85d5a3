"""The ``wgpy`` command line: ``wgpy COMMAND [ARGS...]``.

Subcommands live in a registry of :class:`Command` entries naming a ``module:function`` that is
imported only when that command runs, so ``wgpy genkey`` never imports kubernetes or pyroute2.
To add a command, append one line to :data:`COMMANDS`; the function has the signature
``(argv: list[str], prog: str) -> int`` (it parses its own arguments, ``prog`` is
``"wgpy NAME"``, and it returns the exit status).

The key commands are here because they are tiny; they read and write exactly what
``wg genkey``, ``wg pubkey`` and ``wg genpsk`` do.
"""

from __future__ import annotations

import importlib
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from wgpy.core.keys import (
    KEY_B64_LEN,
    decode_base64_key,
    generate_preshared_key,
    generate_private_key,
    public_key,
    to_base64,
)

PROG = "wgpy"

Handler = Callable[[list[str], str], int]


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: ``target`` is ``"package.module:function"``, imported lazily."""

    name: str
    target: str
    help: str

    def load(self) -> Handler:
        module_name, _, attr = self.target.partition(":")
        return cast(Handler, getattr(importlib.import_module(module_name), attr))


COMMANDS: list[Command] = [
    Command("genkey", "wgpy.tools.cli:genkey_main",
            "generate a new private key (base64) to stdout"),
    Command("genpsk", "wgpy.tools.cli:genpsk_main",
            "generate a new preshared key (base64) to stdout"),
    Command("pubkey", "wgpy.tools.cli:pubkey_main",
            "read a private key on stdin, print its public key"),
    Command("show", "wgpy.tools.show:main", "show interfaces as `wg show` does (keys hidden)"),
    Command("up", "wgpy.tools.updown:up_main", "bring up an interface from a wg-quick config file"),
    Command("down", "wgpy.tools.updown:down_main",
            "take down an interface brought up by `wgpy up`"),
    Command("conformance", "wgpy.harness.conformance:main", "run protocol checks on a target"),
    Command("decode", "wgpy.harness.decode:main", "decode (and decrypt) WireGuard in a capture"),
    Command("allowed-ips", "wgpy.tools.allowed_ips:main", "AllowedIPs as minimal CIDRs"),
    Command("supervisor", "wgpy.supervisor.main:main", "hold a VIP over WireGuard (kube-vip mode)"),
    Command("demo", "wgpy.testbed.demo:main", "failover demo in network namespaces (needs root)"),
]


def find(name: str) -> Command | None:
    return next((c for c in COMMANDS if c.name == name), None)


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [f"Usage: {PROG} <cmd> [<args>]", "", "Available subcommands:"]
    lines += [f"  {c.name:<{width}}  {c.help}" for c in COMMANDS]
    lines += ["", f"Run `{PROG} <cmd> --help' for the arguments of one subcommand."]
    return "\n".join(lines) + "\n"


# --- keys (wireguard-tools genkey.c / pubkey.c) -------------------------------------------------

def _warn_if_world_accessible() -> None:
    """wg warns when the key goes to a regular file that others can read."""
    try:
        st = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IRWXO:
        sys.stderr.write(
            "Warning: writing to world accessible file.\n"
            "Consider setting the umask to 077 and trying again.\n"
        )


def _no_arguments(argv: list[str], prog: str) -> bool:
    if argv:
        print(f"Usage: {prog}", file=sys.stderr)
        return False
    return True


def genkey_main(argv: list[str], prog: str) -> int:
    """``wgpy genkey``: a clamped Curve25519 private key, base64, one line."""
    if not _no_arguments(argv, prog):
        return 1
    _warn_if_world_accessible()
    print(to_base64(generate_private_key()))
    return 0


def genpsk_main(argv: list[str], prog: str) -> int:
    """``wgpy genpsk``: 32 random bytes, base64, one line."""
    if not _no_arguments(argv, prog):
        return 1
    _warn_if_world_accessible()
    print(to_base64(generate_preshared_key()))
    return 0


def pubkey_main(argv: list[str], prog: str) -> int:
    """``wgpy pubkey``: 44 base64 characters on stdin, then only whitespace or NULs."""
    if not _no_arguments(argv, prog):
        return 1
    stdin = sys.stdin.buffer
    text = stdin.read(KEY_B64_LEN)
    if len(text) != KEY_B64_LEN:
        print(f"{PROG}: Key is not the correct length or format", file=sys.stderr)
        return 1
    # C's isspace in the "C" locale, plus NUL, as pubkey.c skips.
    while trailing := stdin.read(4096):
        if trailing.strip(b" \t\n\v\f\r\0"):
            print(f"{PROG}: Trailing characters found after key", file=sys.stderr)
            return 1
    key = decode_base64_key(text.split(b"\0", 1)[0])  # wg uses strlen: a NUL ends the key early
    if key is None:
        print(f"{PROG}: Key is not the correct length or format", file=sys.stderr)
        return 1
    print(to_base64(public_key(key)))
    return 0


# --- entry point --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a subcommand; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        (sys.stdout if args else sys.stderr).write(usage())
        return 0 if args else 1
    command = find(args[0])
    if command is None:
        sys.stderr.write(f"Invalid subcommand: `{args[0]}'\n" + usage())
        return 1
    try:
        return command.load()(args[1:], f"{PROG} {command.name}")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `wgpy show | head`: not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
