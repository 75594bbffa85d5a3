"""Conformance results and their three renderings: text, Markdown and JUnit XML."""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass


class Status(enum.Enum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    NOT_APPLICABLE = "n/a"
    ERROR = "error"  # the harness itself broke (not a verdict on the target)


@dataclass(frozen=True, slots=True)
class Result:
    """The verdict of one check. ``detail`` says what was observed (never a key)."""

    name: str
    description: str
    status: Status
    detail: str
    duration: float


def summary_counts(results: Sequence[Result]) -> dict[Status, int]:
    return {s: sum(1 for r in results if r.status is s) for s in Status}


def summary_line(results: Sequence[Result]) -> str:
    counts = summary_counts(results)
    return ", ".join(f"{counts[s]} {s.value}" for s in Status if counts[s] or s is Status.FAIL)


def render_text(target: str, results: Sequence[Result]) -> str:
    """One line per check (status, name, seconds, detail) and a summary line."""
    width = max((len(r.name) for r in results), default=10)
    lines = [f"conformance: {target}"]
    for r in results:
        lines.append(
            f"  {r.status.value.upper():<5} {r.name:<{width}} {r.duration:5.1f}s  {r.detail}"
        )
    total = sum(r.duration for r in results)
    lines.append(f"{summary_line(results)} ({len(results)} checks, {total:.1f}s)")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(target: str, results: Sequence[Result], *, version: str = "") -> str:
    """A Markdown table of the results (what docs/conformance-*.md are generated from)."""
    lines = [
        f"Target: `{target}`" + (f" ({version})" if version else ""),
        "",
        f"Result: {summary_line(results)} of {len(results)} checks.",
        "",
        "| Check | Result | Time | What was observed |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| `{r.name}` | **{r.status.value}** | {r.duration:.1f} s | {_cell(r.detail)} |"
        )
    return "\n".join(lines) + "\n"


def render_junit(target: str, results: Sequence[Result]) -> str:
    """JUnit XML: one ``testsuite`` named after the target, one ``testcase`` per check.

    fail → ``<failure>``, error → ``<error>``, n/a → ``<skipped>`` (what CI systems show).
    """
    counts = summary_counts(results)
    suite = ET.Element(
        "testsuite",
        name=f"wgpy-conformance-{target}",
        tests=str(len(results)),
        failures=str(counts[Status.FAIL]),
        errors=str(counts[Status.ERROR]),
        skipped=str(counts[Status.NOT_APPLICABLE]),
        time=f"{sum(r.duration for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"conformance.{target}",
            name=r.name,
            time=f"{r.duration:.3f}",
        )
        if r.status is Status.FAIL:
            ET.SubElement(case, "failure", message=r.detail).text = r.description
        elif r.status is Status.ERROR:
            ET.SubElement(case, "error", message=r.detail).text = r.description
        elif r.status is Status.NOT_APPLICABLE:
            ET.SubElement(case, "skipped", message=r.detail)
        else:
            ET.SubElement(case, "system-out").text = r.detail
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
