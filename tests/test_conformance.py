"""``wgpy conformance``: runner and reports; the full suite against wgpy, wireguard-go and the
kernel (in a UML guest)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.support import needs_root, require_uml
from wgpy.harness import conformance
from wgpy.harness.checks import CHECKS, Check, CheckFailed, Context, NotApplicable
from wgpy.harness.report import Result, Status, render_junit, render_markdown, render_text
from wgpy.harness.target import Target


class _NoTarget(Target):
    def set_lines(self, lines: list[str]) -> None:
        raise AssertionError("not used")


def _raise(exc: Exception) -> Check:
    def run(ctx: Context) -> str:
        raise exc

    return Check("x", "d", run)


@pytest.mark.parametrize(
    ("check", "status", "detail"),
    [
        (Check("ok", "d", lambda ctx: "fine"), Status.PASS, "fine"),
        (_raise(CheckFailed("broke")), Status.FAIL, "broke"),
        (_raise(NotApplicable("no v6")), Status.NOT_APPLICABLE, "no v6"),
        (_raise(OSError("socket gone")), Status.ERROR, "OSError: socket gone"),
    ],
)
def test_run_check_maps_outcomes(check: Check, status: Status, detail: str) -> None:
    r = conformance.run_check(check, _NoTarget())
    assert (r.status, r.detail) == (status, detail)


def test_reports() -> None:
    results = [
        Result("a", "first", Status.PASS, "ok", 0.1),
        Result("b", "second", Status.FAIL, "bad <thing> & more", 0.2),
        Result("c", "third", Status.NOT_APPLICABLE, "n/a why", 0.0),
    ]
    suite = ET.fromstring(render_junit("wg", results)).find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    failure = cases["b"].find("failure")
    assert failure is not None and failure.get("message") == "bad <thing> & more"
    assert cases["c"].find("skipped") is not None and cases["a"].find("failure") is None
    text = render_text("wg", results)
    assert "FAIL  b" in text and text.strip().endswith("1 pass, 1 fail, 1 n/a (3 checks, 0.3s)")
    assert "| `b` | **fail** |" in render_markdown("wg", results)


def test_cli_list_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert conformance.main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in listed] == [c.name for c in CHECKS]
    assert conformance.main([]) == 2
    assert conformance.main(["--target", "wgpy", "--only", "no-such-check"]) == 2


def test_missing_implementation_is_not_applicable(tmp_path: Path) -> None:
    junit = tmp_path / "j.xml"
    rc = conformance.main(["--target", "/nonexistent/wg-impl", "--junit", str(junit)])
    assert rc == 0
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("skipped") == str(len(CHECKS))


@pytest.mark.interop
@needs_root
@pytest.mark.parametrize("target", ["wgpy", "wireguard-go", "kernel-uml"])
def test_full_suite(target: str, tmp_path: Path) -> None:
    if target == "kernel-uml":  # the kernel's WireGuard in a User-Mode Linux guest
        require_uml()
    junit = tmp_path / "conformance.xml"
    rc = conformance.main(["--target", target, "--junit", str(junit)])
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    failed = [
        (case.get("name"), bad.get("message"))
        for case in suite.iter("testcase")
        for bad in [*case.iter("failure"), *case.iter("error")]
    ]
    assert failed == [] and rc == 0
    assert suite.get("tests") == str(len(CHECKS)) and suite.get("skipped") == "0"
