"""``wgpy conformance``: run the protocol checks against a WireGuard implementation.

Usage::

    wgpy conformance --target wireguard-go [--junit FILE] [--markdown FILE]
    wgpy conformance --target wgpy --skip keepalive-timeout
    wgpy conformance --target "/opt/bin/my-wg --verbose"     # any `CMD -f IFACE` implementation
    wgpy conformance --target kernel                          # needs the wireguard module
    wgpy conformance --target kernel-uml      # the kernel's WireGuard in a User-Mode Linux guest
    wgpy conformance --uapi /run/wireguard/wg0.sock --tunnel-ip 10.0.0.1 [--netns NAME]
    wgpy conformance --list

With ``--target``, the implementation is started in a network namespace created for the run
(see :mod:`wgpy.harness.target`), configured over its UAPI socket, and removed afterwards. With
``--uapi``, an already configured device is used: the harness adds its own peers (and removes
them at the end) but leaves the private key, port and addresses alone.

Each check is reported as pass, fail or n/a (text on stdout, JUnit XML with ``--junit``).
The exit status is 0 when nothing failed, 1 otherwise, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence

from wgpy import testbed as tb
from wgpy.harness.checks import (
    CHECKS,
    FLOOD_INITIATIONS,
    Check,
    CheckFailed,
    Context,
    NotApplicable,
)
from wgpy.harness.peer import HarnessError
from wgpy.harness.report import Result, Status, render_junit, render_markdown, render_text
from wgpy.harness.target import KNOWN, NamespaceTarget, Target, TargetError, UapiTarget
from wgpy.harness.uml import UmlNamespaceTarget
from wgpy.testbed.uml import build as uml_build

WGPY_IMPL = [sys.executable, "-m", "wgpy.tools.userspace"]


def run_check(check: Check, target: Target, *, flood_count: int = FLOOD_INITIATIONS) -> Result:
    """Run one check with fresh peers; never raises for a target's misbehaviour."""
    ctx = Context(target, flood_count=flood_count)
    start = time.monotonic()
    try:
        detail = check.run(ctx)
        status = Status.PASS
    except CheckFailed as e:
        status, detail = Status.FAIL, str(e)
    except NotApplicable as e:
        status, detail = Status.NOT_APPLICABLE, str(e)
    except (HarnessError, TargetError, OSError) as e:
        status, detail = Status.ERROR, f"{type(e).__name__}: {e}"
    finally:
        ctx.close()
    return Result(check.name, check.description, status, detail, time.monotonic() - start)


def run_suite(
    target: Target,
    checks: Sequence[Check] = CHECKS,
    *,
    flood_count: int = FLOOD_INITIATIONS,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Run ``checks`` in order against ``target``; ``progress`` sees each result as it comes."""
    results = []
    for check in checks:
        r = run_check(check, target, flood_count=flood_count)
        results.append(r)
        if progress is not None:
            progress(r)
    return results


def not_applicable(checks: Sequence[Check], why: str) -> list[Result]:
    return [Result(c.name, c.description, Status.NOT_APPLICABLE, why, 0.0) for c in checks]


def resolve_target(spec: str) -> tuple[str, tb.ImplSpec, str | None]:
    """``(label, impl, missing-tool)`` for a ``--target`` value."""
    if spec == "wgpy":
        return "wgpy", WGPY_IMPL, None
    if spec == "kernel":
        return "kernel", tb.KERNEL, None
    if spec == "kernel-uml":
        return "kernel-uml", tb.KERNEL_UML, None
    argv = KNOWN.get(spec) or shlex.split(spec)
    missing = None if shutil.which(argv[0]) else argv[0]
    return spec, argv, missing


def _select(only: str | None, skip: str | None) -> list[Check]:
    names = {c.name for c in CHECKS}
    chosen = list(CHECKS)
    for arg in (only, skip):
        for n in (arg or "").split(","):
            if n and n not in names:
                raise SystemExit(f"unknown check {n!r} (see --list)")
    if only:
        wanted = set(only.split(","))
        chosen = [c for c in chosen if c.name in wanted]
    if skip:
        unwanted = set(skip.split(","))
        chosen = [c for c in chosen if c.name not in unwanted]
    return chosen


def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run WireGuard protocol conformance checks.")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--target",
        help="wireguard-go, wgpy, kernel, kernel-uml, boringtun, or a command run as "
        "`CMD -f IFACE`",
    )
    where.add_argument("--uapi", metavar="SOCKET", help="use an existing, configured device")
    p.add_argument("--netns", help="with --uapi: the device's network namespace")
    p.add_argument("--host", default="127.0.0.1", help="with --uapi: address it listens on")
    p.add_argument("--tunnel-ip", default="10.77.0.1", help="with --uapi: its tunnel address")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    p.add_argument("--markdown", metavar="FILE", help="also write a Markdown table")
    p.add_argument("--only", metavar="A,B", help="run only these checks")
    p.add_argument("--skip", metavar="A,B", help="skip these checks")
    p.add_argument("--flood", type=int, default=FLOOD_INITIATIONS, help="junk initiations for load")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    return p


def main(argv: list[str], prog: str = "wgpy conformance") -> int:
    """Entry point of ``wgpy conformance`` (see the module docstring)."""
    args = _parser(prog).parse_args(argv)
    if args.list:
        for c in CHECKS:
            print(f"{c.name:<32} {c.description}")
        return 0
    if not args.target and not args.uapi:
        print(f"{prog}: give --target or --uapi", file=sys.stderr)
        return 2
    if not 1 <= args.flood <= 10000:
        print(f"{prog}: --flood must be 1..10000", file=sys.stderr)
        return 2
    try:
        checks = _select(args.only, args.skip)
    except SystemExit as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2

    def show(r: Result) -> None:
        print(f"  {r.status.value.upper():<5} {r.name} ({r.duration:.1f}s) {r.detail}", flush=True)

    label = args.target or args.uapi
    tb.install_signal_handlers()
    results: list[Result]
    if args.uapi:
        target = UapiTarget(args.uapi, netns=args.netns, name="uapi")
        try:
            target.discover(host=args.host, tunnel_ip=args.tunnel_ip)
        except TargetError as e:
            print(f"{prog}: {e}", file=sys.stderr)
            return 2
        with target:
            results = run_suite(target, checks, flood_count=args.flood, progress=show)
    else:
        label, impl, missing = resolve_target(args.target)
        if missing is not None:
            results = not_applicable(checks, f"{missing} is not installed")
        elif isinstance(impl, tb.KernelImpl) and not tb.kernel_wireguard_available():
            results = not_applicable(checks, "no WireGuard kernel module")
        elif isinstance(impl, tb.KernelUmlImpl) and uml_build.find() is None:
            results = not_applicable(checks, uml_build.missing_reason())
        else:
            runner = (
                UmlNamespaceTarget(name=label)
                if isinstance(impl, tb.KernelUmlImpl)
                else NamespaceTarget(impl, name=label)
            )
            with runner as started:
                results = run_suite(started, checks, flood_count=args.flood, progress=show)
    text = render_text(label, results)
    print(text.splitlines()[-1])
    if args.junit:
        with open(args.junit, "w", encoding="utf-8") as f:
            f.write(render_junit(label, results))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(render_markdown(label, results))
    return 1 if any(r.status in (Status.FAIL, Status.ERROR) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
