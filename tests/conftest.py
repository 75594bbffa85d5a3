"""Shared pytest configuration.

* In CI (``CI=true``) the interop tools must be present: a missing binary fails the run instead
  of silently skipping the interop tests.
* ``tests/test_smoke.py`` runs first; when it fails, the run stops right after it with a clear
  message (``--no-smoke-gate`` runs the rest anyway).
* :mod:`tests.leftovers` fails the run if its tests left namespaces, links or processes behind.
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest_plugins = ["tests.leftovers"]

INTEROP_TOOLS = ("ip", "nsenter", "setpriv", "wg", "ping", "wireguard-go", "tcpdump", "iperf3")
SMOKE_FAILED = (
    "the smoke test failed: a fresh wgpy tunnel does not move data (see its failure above). "
    "Stopping here: the other interop tests would only time out. A dependency release that "
    "breaks the data plane looks like this; compare `pip list` with requirements/test.lock. "
    "Run with --no-smoke-gate to run the rest anyway."
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-smoke-gate",
        action="store_true",
        help="run the whole suite even when the smoke test (tests/test_smoke.py) fails",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("CI") == "true":
        missing = [t for t in INTEROP_TOOLS if shutil.which(t) is None]
        if missing or os.geteuid() != 0:
            pytest.exit(f"CI needs root and {', '.join(missing) or 'the tools'}", returncode=3)


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """The smoke tests first (stable order otherwise); remember the last of them."""
    del session
    smoke = [i for i in items if i.get_closest_marker("smoke") is not None]
    if not smoke:
        return
    items[:] = smoke + [i for i in items if i.get_closest_marker("smoke") is None]
    if not config.getoption("--no-smoke-gate"):
        config.stash[_LAST_SMOKE] = smoke[-1].nodeid


_LAST_SMOKE = pytest.StashKey[str]()
_SMOKE_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    config = item.config
    last = config.stash.get(_LAST_SMOKE, None)
    if last is None or item.get_closest_marker("smoke") is None:
        return
    if report.failed:
        config.stash[_SMOKE_FAILED] = True
    if item.nodeid == last and call.when == "teardown" and config.stash.get(_SMOKE_FAILED, False):
        item.session.shouldstop = SMOKE_FAILED
