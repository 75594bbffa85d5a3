"""No test sleeps a fixed time: unit tests run on an injected or virtual clock, and tests that
wait for something poll for it (``wgpy.testbed.wait_for`` / ``wait_until``).

A ``time.sleep(0.5)`` or ``asyncio.sleep(2 * DURATION)`` in a test either wastes time or, on a
busy machine, is too short. The scan flags such calls whose argument is a number or an
expression of numbers and UPPER_CASE constants. Virtual-time tests let time pass with
``tests.vtime.advance``, which refuses a real loop.

Live end-to-end tests keep a few fixed waits on purpose; each is counted below, so a new one
still fails this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# module: (fixed sleeps allowed, why) -- live end-to-end tests only
ALLOWED: dict[str, tuple[int, str]] = {
    "test_faults.py": (3, "fault windows: nobody may lead during a partition or past an expiry"),
    "test_supervisor_embedded.py": (1, "a window in which nothing may come back up"),
    "test_split_brain.py": (1, "samples after settling, not a wait for a condition"),
    "test_seed_e2e.py": (1, "the sampling period of a traffic check over a fixed span"),
    "test_soak.py": (1, "the sampling period of a 10-minute soak"),
    "test_flood.py": (1, "lets a flood reach full rate before measuring through it"),
    "test_hostile.py": (1, "paces a burst so drops come from the device, not the socket"),
    "test_interop_device.py": (1, "lets a handshake settle before keepalive is switched on"),
    "test_decode.py": (1, "lets the capture write its last packets before it is stopped"),
    "test_uapi_live.py": (1, "lets the device accept (and evict) 200 connections"),
    "test_key_leaks.py": (2, "lets the supervisor and a daemon finish logging before the audit"),
}


def _constant(node: ast.expr) -> bool:
    """A number, an UPPER_CASE name, or arithmetic of those."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, int | float)
    if isinstance(node, ast.Name):
        return node.id.isupper()
    if isinstance(node, ast.BinOp):
        return _constant(node.left) and _constant(node.right)
    if isinstance(node, ast.UnaryOp):
        return _constant(node.operand)
    return False


def fixed_sleeps(source: str) -> list[int]:
    """Line numbers of ``time.sleep(K)`` / ``asyncio.sleep(K)`` with a constant ``K``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "sleep"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("time", "asyncio")
            and node.args
            and _constant(node.args[0])
        ):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_sees_fixed_sleeps_and_not_variable_ones() -> None:
    src = (
        "import asyncio, time\n"
        "time.sleep(0.5)\n"
        "async def f(step):\n"
        "    await asyncio.sleep(2 * DURATION)\n"
        "    await asyncio.sleep(step)\n"
        "    time.sleep(-1)\n"
        "    await advance(3)\n"
    )
    assert fixed_sleeps(src) == [2, 4, 6]


def test_no_test_module_sleeps_a_fixed_time() -> None:
    found = {
        p.name: fixed_sleeps(p.read_text()) for p in sorted(TESTS.rglob("test_*.py"))
    }
    over = {
        name: lines
        for name, lines in found.items()
        if lines and len(lines) > ALLOWED.get(name, (0, ""))[0]
    }
    assert over == {}, (
        "fixed sleeps in tests (poll with wgpy.testbed.wait_for / wait_until, or run on "
        f"tests.vtime): {over}"
    )
    stale = {name for name, (n, _) in ALLOWED.items() if len(found.get(name, [])) < n}
    assert stale == set(), f"allowances no longer needed, lower them: {stale}"
